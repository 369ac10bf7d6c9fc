"""`chunked_readout` and `last_state_readout` against plain loops and the materialised states, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_scan import TOL, fast_jit  # the same tolerance and quick-compiling jit

from ssm_gd import readout
from ssm_gd.layers import LocalMixing, LocalSelfAttention
from ssm_gd.scan import linear_recurrence

jax.config.update("jax_enable_x64", True)


# --- chunked_readout ---------------------------------------------------------------------------


def _readout_reference(lam, b, v):
    """``o_t = h_t v_t`` from a plain loop over ``h_t = Λ ⊙ h_{t−1} + b_t``."""
    lam, b, v = (np.asarray(x, np.float64) for x in (lam, b, v))
    h = np.zeros((b.shape[0], *lam.shape))
    out = []
    for t in range(b.shape[1]):
        h = lam * h + b[:, t]
        out.append(np.einsum("brk,bk->br", h, v[:, t]))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("chunk", [1, 4, 7, 13, 50])
def test_chunked_readout_equals_loop(chunk):
    # T = 13: chunks that divide it, do not, equal it and exceed it. Signed Λ, R ≠ H.
    rng = np.random.default_rng(chunk)
    lam = rng.uniform(-1.0, 1.0, size=(2, 3))
    x = rng.normal(size=(4, 13, 2, 3))
    v = rng.normal(size=(4, 13, 3))
    got = fast_jit(lambda lam, x, v: readout.chunked_readout(lam, jnp.tanh, x, v, chunk=chunk))(
        lam, x, v
    )
    np.testing.assert_allclose(got, _readout_reference(lam, np.tanh(x), v), **TOL)


def test_chunked_readout_gradient_equals_the_materialised_states():
    rng = np.random.default_rng(0)
    lam, b, v = (
        rng.uniform(0.5, 1, (2, 3)),
        rng.normal(size=(2, 11, 2, 3)),
        rng.normal(size=(2, 11, 3)),
    )

    def chunked(lam, b, v):
        return jnp.sum(jnp.cos(readout.chunked_readout(lam, lambda x: x, b, v, chunk=4)))

    def materialised(lam, b, v):
        h, _ = linear_recurrence(lam, b, axis=1)
        return jnp.sum(jnp.cos(jnp.einsum("btrk,btk->btr", h, v)))

    got = fast_jit(jax.grad(chunked, argnums=(0, 1, 2)))(lam, b, v)
    want = fast_jit(jax.grad(materialised, argnums=(0, 1, 2)))(lam, b, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize(
    ("lam_shape", "v_shape", "chunk", "match"),
    [
        ((2, 3), (1, 5, 3), 0, "chunk must be a positive integer; got 0"),
        ((2, 3), (1, 5, 3), 2.0, "chunk must be a positive integer; got 2.0"),
        ((3,), (1, 5, 3), 2, r"lam must be \(R, H\) and v \(B, T, H\)"),
        ((2, 3), (1, 5, 4), 2, r"same H; got \(2, 3\) and \(1, 5, 4\)"),
    ],
)
def test_chunked_readout_rejects_bad_arguments(lam_shape, v_shape, chunk, match):
    with pytest.raises(ValueError, match=match):
        readout.chunked_readout(
            jnp.ones(lam_shape), lambda x: x, jnp.ones((1, 5, 2, 3)), jnp.ones(v_shape), chunk=chunk
        )


# --- last_state_readout ------------------------------------------------------------------------


def _factors(left, right):
    """``factors(start, size)`` slicing time-major, batch-minor terms ``(T, A, ·, B)``, as the callers do."""

    def factors(start, size):
        def cut(f):
            f = jax.lax.dynamic_slice_in_dim(jnp.asarray(f), start, size)
            return tuple(f[:, a] for a in range(f.shape[1]))

        return cut(left), cut(right)

    return factors


def _pairs_reference(lam, left, right, v):
    """``M_ac = h^{ac}_T v`` by a plain loop over ``h^{ac}_t = Λ ⊙ h^{ac}_{t−1} + left_{t,a} right_{t,c}ᵀ``."""
    lam, left, right, v = (np.asarray(x, np.float64) for x in (lam, left, right, v))
    t_len, n_a, _, batch = left.shape
    n_c = right.shape[1]
    m = np.zeros((n_a, n_c, lam.shape[0], batch))
    for a in range(n_a):
        for c in range(n_c):
            h = np.zeros((batch, *lam.shape))
            for t in range(t_len):
                h = lam * h + np.einsum("rb,kb->brk", left[t, a], right[t, c])
            m[a, c] = np.einsum("brk,kb->rb", h, v)
    return m


@pytest.mark.parametrize(
    ("length", "chunk"), [(1, None), (2, 1), (13, None), (13, 4), (12, 4), (13, 20)]
)
def test_last_state_readout_equals_the_loop(length, chunk):
    # chunk 4 at length 13: three chunks and a tail of one; 12: no tail; 20: capped at the length.
    # A = 2 left terms, C = 3 right terms, R ≠ H, signed Λ.
    rng = np.random.default_rng(length)
    lam = rng.uniform(-1.0, 1.0, size=(2, 3))
    left, right = rng.normal(size=(length, 2, 2, 4)), rng.normal(size=(length, 3, 3, 4))
    v = rng.normal(size=(3, 4))
    got = fast_jit(
        lambda lam, left, right, v: readout.last_state_readout(
            lam, _factors(left, right), length, v, chunk=chunk
        )
    )(lam, left, right, v)
    assert got.shape == (2, 3, 2, 4)
    np.testing.assert_allclose(got, _pairs_reference(lam, left, right, v), **TOL)


def test_last_state_readout_weighted_by_w_is_the_readout_of_the_weighted_inputs():
    # h_T v for b_t = Σ_ac w_ac left_a right_cᵀ is Σ_ac w_ac M_ac (the GD-SSM's U_t = X_tᵀ Q X_t).
    rng = np.random.default_rng(3)
    lam, w = rng.uniform(-1.0, 1.0, size=(3, 3)), rng.normal(size=(3, 3))
    x, v = rng.normal(size=(6, 3, 3, 5)), rng.normal(size=(3, 5))
    m = fast_jit(lambda lam, x, v: readout.last_state_readout(lam, _factors(x, x), 6, v, chunk=4))(
        lam, x, v
    )
    b = np.einsum("ac,tarb,tckb->btrk", w, x, x)
    want = _readout_reference(lam, b, np.broadcast_to(v.T[:, None], (5, 6, 3)))[:, -1]
    np.testing.assert_allclose(np.einsum("ac,acrb->br", w, m), want, **TOL)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("chunk", [None, 3])
def test_last_state_readout_gradient_equals_the_materialised_states(chunk, signed):
    # chunk 3 at length 7: two chunks and a tail of one (the decays are a power per chunk times
    # the powers inside a chunk); signed: negative entries and an exact zero in Λ.
    rng = np.random.default_rng(1)
    lam = rng.uniform(0.5, 1, (2, 3))
    if signed:
        lam = lam * np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, -1.0]])
    left, right, v = (
        rng.normal(size=(7, 2, 2, 2)),
        rng.normal(size=(7, 3, 3, 2)),
        rng.normal(size=(3, 2)),
    )
    w = jnp.asarray(rng.normal(size=(2, 3)))

    def weighted(lam, left, right, v):
        m = readout.last_state_readout(lam, _factors(left, right), 7, v, chunk=chunk)
        return jnp.sum(jnp.cos(jnp.einsum("ac,acrb->rb", w, m)))

    def materialised(lam, left, right, v):
        b = jnp.einsum("ac,tarb,tckb->tbrk", w, left, right)
        _, h = linear_recurrence(lam, b)
        return jnp.sum(jnp.cos(jnp.einsum("brk,kb->rb", h, v)))

    got = fast_jit(jax.grad(weighted, argnums=(0, 1, 2, 3)))(lam, left, right, v)
    want = fast_jit(jax.grad(materialised, argnums=(0, 1, 2, 3)))(lam, left, right, v)
    for g, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w_, **TOL)


@pytest.mark.parametrize(
    ("lam", "left", "right", "v", "length", "chunk", "match"),
    [
        ((3,), (5, 2, 3, 4), (5, 2, 3, 4), (3, 4), 5, None, r"lam must be \(R, H\) and v \(H, B\)"),
        ((3, 3), (5, 2, 3, 4), (5, 2, 3, 4), (2, 4), 5, None, "with the same H"),
        ((3, 3), (5, 2, 3, 4), (5, 2, 2, 4), (3, 4), 5, None, r"must give \(lefts, rights\)"),
        (
            (2, 3),
            (5, 2, 3, 4),
            (5, 2, 3, 4),
            (3, 4),
            5,
            None,
            r"got \(\(\(1, 3, 4\), \(1, 3, 4\)\)",
        ),
        ((3, 3), (5, 2, 3, 4), (5, 2, 3, 4), (3, 5), 5, None, r"must give \(lefts, rights\)"),
        ((3, 3), (5, 2, 3, 4), (5, 2, 3, 4), (3, 4), 0, None, "length must be a positive integer"),
        (
            (3, 3),
            (5, 2, 3, 4),
            (5, 2, 3, 4),
            (3, 4),
            5,
            0,
            "chunk must be a positive integer",
        ),
        ((3, 3), (5, 2, 3, 4), (5, 2, 3, 4), (3, 4), 5, 2.0, "chunk must be a positive integer"),
    ],
)
def test_last_state_readout_rejects_bad_arguments(lam, left, right, v, length, chunk, match):
    with pytest.raises(ValueError, match=match):
        readout.last_state_readout(
            jnp.ones(lam),
            _factors(jnp.ones(left), jnp.ones(right)),
            length,
            jnp.ones(v),
            chunk=chunk,
        )


def test_last_state_readout_rejects_factors_that_are_not_tuples_of_terms():
    with pytest.raises(ValueError, match="non-empty tuples of arrays"):
        readout.last_state_readout(
            jnp.ones((3, 3)), lambda start, size: (jnp.ones((size, 3, 4)),) * 2, 5, jnp.ones((3, 4))
        )


# --- the rules: auto_impl, transpose_per_chunk; window_factors ---------------------------------


@pytest.mark.parametrize(
    ("backend", "n_windows", "entries", "want"),
    [
        ("cpu", 10, 10**4, "associative"),
        ("cpu", 511, 10**4, "associative"),
        ("cpu", 512, 10**4, "chunked"),
        ("gpu", 10**5, 10**6, "associative"),
        ("gpu", 10, 2**24 + 1, "chunked"),
        ("tpu", 10, 2**24, "associative"),
    ],
)
def test_auto_impl_rule(backend, n_windows, entries, want):
    assert readout.auto_impl(backend, n_windows, entries) == want


@pytest.mark.parametrize(
    ("backend", "batch", "entries", "want"),
    [
        ("cpu", 64, 2**23, True),
        ("cpu", 256, 2**23, True),
        ("cpu", 64, 2**23 - 1, False),
        ("cpu", 257, 2**30, False),
        ("gpu", 64, 2**30, False),
        ("tpu", 64, 2**30, False),
    ],
)
def test_transpose_per_chunk_rule(backend, batch, entries, want):
    assert readout.transpose_per_chunk(backend, batch, entries) == want


@pytest.mark.parametrize("attention", ["self-attention", "mixing"])
def test_window_factors_per_chunk_equal_the_whole_transpose(attention):
    # Pure data movement: the two ways of cutting windows give the same arrays, bit for bit,
    # for a traced start (inside jit, as in the scan over chunks) and every window position.
    att = (LocalSelfAttention if attention == "self-attention" else LocalMixing)(rngs=nnx.Rngs(0))
    rows = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2 * 6 + 1, 4)))  # N = 6

    def cut(per_chunk, start, size):
        w, factors = readout.window_factors(att, rows, per_chunk=per_chunk)
        return w, factors(start, size)

    for start, size in [(0, 6), (0, 1), (2, 3), (5, 1)]:
        got, want = (
            jax.jit(cut, static_argnums=(0, 2))(per_chunk, start, size)
            for per_chunk in (True, False)
        )
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.shape == b.shape and np.array_equal(a, b)
        x = np.asarray(rows)
        (lefts, rights) = want[1]
        for a in range(3):  # position a of window t is row 2t + a, time-major and batch-minor
            expected = np.transpose(x[:, 2 * (start + np.arange(size)) + a], (1, 2, 0))
            np.testing.assert_array_equal(rights[a], expected)
