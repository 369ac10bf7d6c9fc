"""GRIL's training forms as pure functions (ssm_gd.seq.gril_forms), in float64.

Every form of every decay equals the reference (every state by an associative scan) in values and
in gradients (with respect to the decays, keys, values and queries) for sequence lengths
L ∈ {1, 7, 64, 129}, chunks ∈ {1, 4, 16, 64} and windows of w ∈ {1, 2, 3, 5} streams: eight
(L, chunk, w) that hold each length, chunk and window twice and every case of the chunk's loop —
a chunk of one update, a chunk longer than L, one that divides L, one that leaves a partial last
chunk (each compiled program costs seconds: the full product of the three would cost minutes).
Decays of 1e-6 and exactly 1 stay finite in float32 and exact in float64. The window, the stride
and the projections around the forms are tested on the mixer (tests/test_gril.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_gd.seq import gril_forms as forms

F64 = jnp.float64
B, H, DK, DV = 2, 2, 3, 4
LENGTHS, CHUNKS, WINDOWS = (1, 7, 64, 129), (1, 4, 16, 64), (1, 2, 3, 5)
SIZES = [
    (1, 1, 1),
    (1, 16, 2),
    (7, 4, 3),
    (7, 64, 5),
    (64, 16, 1),
    (64, 1, 2),
    (129, 64, 3),
    (129, 4, 5),
]  # (L, chunk, w)
assert {s[0] for s in SIZES} == set(LENGTHS) and {s[1] for s in SIZES} == set(CHUNKS)
assert {s[2] for s in SIZES} == set(WINDOWS)
# Float64 rounding of sums of up to ~L·w products of O(1) numbers, states up to ~L·w in size:
# 1e-10 leaves two orders of magnitude above what the forms differ by (about 1e-13).
TOL = 1e-10
FACTORISED = {  # a factorised decay's (log α, log β) for each kind
    "structured": lambda key: (_log_decay(key, (H, DK)), _log_decay(jax.random.fold_in(key, 1), (H, DV))),
    "scalar": lambda key: (_log_decay(key, (H, 1)), None),
    "none": lambda key: (None, None),
}  # fmt: skip
ENTRY_FORMS = {"chunked": forms.chunked, "chunk_scan": forms.chunk_scan, "scan": forms.scan,
               "scaled": forms.scaled}  # fmt: skip


def _log_decay(key, shape, low=0.8, high=1.0):
    return jnp.log(jax.random.uniform(key, shape, F64, low, high))


def _streams(length, window, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    k = jax.random.normal(keys[0], (B, H, length, window, DK), F64)
    vt = jax.random.normal(keys[1], (B, H, length, window, DV), F64)
    q = jax.random.normal(keys[2], (B, H, length, DK), F64)
    return k, vt, q


def _lam(log_alpha, log_beta):
    return forms.factorised_lam(log_alpha, log_beta, (H, DK, DV), F64)


def _value_and_grads(fn, args, cotangent):
    """``fn(*args)`` and the gradient of ``Σ fn(*args) ⊙ cotangent`` with respect to every
    argument that is an array (``None`` stays ``None``)."""

    def both(args, cotangent):  # one compiled program: faster than op by op
        return fn(*args), jax.grad(lambda a: jnp.sum(fn(*a) * cotangent))(args)

    return jax.jit(both)(args, cotangent)


def _assert_close(got, want):
    """Values and gradients to ``TOL``; a decay's gradient sums every output's dependence on it
    (``O(10⁴)`` here), so it is compared relative to its size as well (float64 eps 2.2e-16, times
    the ~10³ terms of those sums: 1e-12)."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=TOL)


@pytest.mark.parametrize("decay", list(FACTORISED))
def test_matrix_product_form_equals_the_reference(decay):
    for length, chunk, window in SIZES:
        log_alpha, log_beta = FACTORISED[decay](jax.random.key(length + chunk))
        k, vt, q = _streams(length, window)
        cotangent = jax.random.normal(jax.random.key(9), (B, H, length, DV), F64)

        def products(log_alpha, log_beta, k, vt, q, chunk=chunk):
            return forms.products(log_alpha, log_beta, k, vt, q, chunk=chunk)

        def reference(log_alpha, log_beta, k, vt, q):
            return forms.every_state(_lam(log_alpha, log_beta), k, vt, q)

        args = (log_alpha, log_beta, k, vt, q)
        got, want = (_value_and_grads(f, args, cotangent) for f in (products, reference))
        assert got[0].shape == (B, H, length, DV)
        _assert_close(got, want)
        assert float(jnp.abs(want[0]).max()) > 0.1  # real outputs compared


def test_every_entry_form_equals_the_reference():
    for length, chunk, window in SIZES:
        lam = jnp.exp(_log_decay(jax.random.key(length + chunk), (H, DK, DV)))
        k, vt, q = _streams(length, window)
        cotangent = jax.random.normal(jax.random.key(9), (B, H, length, DV), F64)
        args = (lam, k, vt, q)
        want = _value_and_grads(forms.every_state, args, cotangent)
        for form in ENTRY_FORMS.values():
            got = _value_and_grads(lambda *a, f=form, c=chunk: f(*a, chunk=c), args, cotangent)
            _assert_close(got, want)


EXTREMES = (np.log(1e-6), 0.0)  # the smallest decay asked for, and no decay at all


@pytest.mark.parametrize("decay", ["structured", "scalar"])
def test_matrix_product_form_is_finite_and_exact_for_extreme_decays(decay):
    """Decays of 1e-6 and exactly 1 side by side, a chunk of 64 over 129 updates: every power is
    ``exp(n · log α)`` with ``n ≥ 0`` (a form dividing by ``α^j`` would meet ``1e6^63``)."""
    log_a = jnp.asarray(EXTREMES * (DK if decay == "structured" else 1), F64)[
        : H * (DK if decay == "structured" else 1)
    ]
    log_alpha = log_a.reshape(H, -1)
    log_beta = (
        jnp.tile(jnp.asarray(EXTREMES[::-1], F64), (H, DV // 2)) if decay == "structured" else None
    )
    k, vt, q = _streams(129, 3)
    cotangent = jnp.ones((B, H, 129, DV), F64)
    args = (log_alpha, log_beta, k, vt, q)
    got = _value_and_grads(lambda *a: forms.products(*a, chunk=64), args, cotangent)
    want = _value_and_grads(lambda la, lb, *s: forms.every_state(_lam(la, lb), *s), args, cotangent)
    _assert_close(got, want)
    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), args)
    out, grads = _value_and_grads(lambda *a: forms.products(*a, chunk=64), f32, cotangent)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves((out, grads)))


@pytest.mark.parametrize("name", ["chunked", "chunk_scan", "scan"])
def test_entry_forms_are_finite_and_exact_for_extreme_decays(name):
    lam = jnp.exp(jnp.resize(jnp.asarray(EXTREMES, F64), (H, DK, DV)))
    k, vt, q = _streams(129, 2)
    cotangent = jnp.ones((B, H, 129, DV), F64)
    form = ENTRY_FORMS[name]
    got = _value_and_grads(lambda *a: form(*a, chunk=64), (lam, k, vt, q), cotangent)
    want = _value_and_grads(forms.every_state, (lam, k, vt, q), cotangent)
    _assert_close(got, want)
    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), (lam, k, vt, q))
    out, grads = _value_and_grads(lambda *a: form(*a, chunk=64), f32, cotangent)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves((out, grads)))


def _data_log_decay(length, seed=3, low=0.5, high=1.0):
    """A decay per head and update, ``(B, H, L)``, drawn in ``[low, high]``."""
    return jnp.log(jax.random.uniform(jax.random.key(seed), (B, H, length), F64, low, high))


def test_data_dependent_decay_chunk_form_equals_the_reference():
    for length, chunk, window in SIZES:
        log_lam = _data_log_decay(length, seed=length + chunk)
        k, vt, q = _streams(length, window)
        cotangent = jax.random.normal(jax.random.key(9), (B, H, length, DV), F64)
        args = (log_lam, k, vt, q)
        got = _value_and_grads(lambda *a, c=chunk: forms.selective(*a, chunk=c), args, cotangent)
        want = _value_and_grads(forms.selective_states, args, cotangent)
        assert got[0].shape == (B, H, length, DV)
        _assert_close(got, want)
        assert float(jnp.abs(want[0]).max()) > 0.1


def test_data_dependent_decay_reference_is_the_recurrence():
    """The reference itself, against the recurrence written out a step at a time in numpy."""
    log_lam, (k, vt, q) = _data_log_decay(7), _streams(7, 2)
    s = np.zeros((B, H, DK, DV))
    want = []
    for t in range(7):
        s = np.exp(np.asarray(log_lam[:, :, t]))[..., None, None] * s + np.einsum(
            "bhak,bhav->bhkv", k[:, :, t], vt[:, :, t]
        )
        want.append(np.einsum("bhkv,bhk->bhv", s, q[:, :, t]))
    np.testing.assert_allclose(forms.selective_states(log_lam, k, vt, q),
                               np.stack(want, axis=2), rtol=1e-13, atol=1e-13)  # fmt: skip


def test_data_dependent_decay_is_finite_and_exact_for_extreme_decays():
    """Decays of 1e-6 and exactly 1 in turn inside chunks of 64: every exponent of the chunk form
    is a sum of logs ≤ 0 (a form dividing by the cumulative decay would meet 1e6^63)."""
    log_lam = jnp.resize(jnp.asarray(EXTREMES, F64), (B, H, 129))
    k, vt, q = _streams(129, 3)
    cotangent = jnp.ones((B, H, 129, DV), F64)
    args = (log_lam, k, vt, q)
    got = _value_and_grads(lambda *a: forms.selective(*a, chunk=64), args, cotangent)
    _assert_close(got, _value_and_grads(forms.selective_states, args, cotangent))
    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), args)
    out, grads = _value_and_grads(lambda *a: forms.selective(*a, chunk=64), f32, cotangent)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves((out, grads)))


def test_segment_sums_are_the_sums_between():
    a = np.random.default_rng(0).normal(size=(3, 6))
    got = np.asarray(forms.segment_sums(jnp.asarray(a)))
    for i in range(6):
        for j in range(6):
            want = a[:, j + 1 : i + 1].sum(-1) if i >= j else np.full(3, -np.inf)
            np.testing.assert_allclose(got[:, i, j], want, rtol=0, atol=1e-15)


def test_segment_sums_keep_small_decays_exact_after_large_ones_in_float32():
    """Decays near 1 (log λ = −1e-4) after a few tiny ones (log λ = −14) in a chunk of 64: the
    sums over segments of near-1 decays keep float32's relative precision, where the difference
    of two cumulative sums from the chunk's start loses the digits the large sums hold (it is
    shown to, so that this test can tell the two apart)."""
    a = np.concatenate([np.full(4, -14.0), np.full(60, -1e-4)])
    exact = np.asarray(forms.segment_sums(jnp.asarray(a, F64)))
    got = np.asarray(forms.segment_sums(jnp.asarray(a, jnp.float32)))
    late = np.tril(np.ones((64, 64), bool)) & (np.arange(64)[None, :] >= 4)  # j past the tiny ones
    # float32 eps 6e-8 per addition, at most 60 additions of the segment's own terms
    np.testing.assert_allclose(got[late], exact[late], rtol=60 * 6e-8, atol=0)
    cumsum = np.cumsum(a.astype(np.float32))
    naive = cumsum[:, None] - cumsum[None, :]
    assert np.abs(naive[late] - exact[late]).max() > 100 * np.abs(got[late] - exact[late]).max()
