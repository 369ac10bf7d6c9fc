"""The GD-SSM layers against plain loops that mirror docs/design.md §3, in float64.

* ``windows``, ``local_self_attention`` / ``LocalSelfAttention`` / ``LocalMixing`` and
  ``gd_readout`` against explicit numpy loops;
* ``DiagonalRecurrence`` against ``h_t = Λ ⊙ h_{t−1} + u_t`` one step at a time, for every
  initializer and parametrization;
* ``GDSSM`` with random parameters: the sequential and associative scans agree, and a recurrent,
  window-by-window evaluation (``ssm_gd.scan.step`` on the states, the K-step readout unrolled)
  equals the parallel forward at every window, in both token layouts;
* bad input raises a ``ValueError`` that names the argument and what is accepted.

Values are O(1) and sums run over at most 8 windows, so float64 rounding stays near 1e-15;
tolerances are 1e-12 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import construction, readout, scan
from ssm_gd.initializers import fill_init, uniform_init
from ssm_gd.layers import (
    GDSSM,
    DiagonalRecurrence,
    GDSSMInit,
    LocalMixing,
    LocalSelfAttention,
    gd_readout,
    local_self_attention,
    windows,
)
from ssm_gd.tokens import Tokens

F64 = jnp.float64

# One jitted call for every model (eager first calls of a scan are slow); nnx.jit caches per
# module structure, so each configuration compiles once.
call = nnx.jit(lambda m, t: m(t))


def assert_close(got, want, rtol=1e-12):
    """Elementwise ``|got − want| ≤ rtol·(|want| + max|want|)``: relative to the output's scale."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-300))


# --- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "window", "stride", "expected"),
    [
        (7, 3, 2, [[0, 1, 2], [2, 3, 4], [4, 5, 6]]),  # the GD-SSM windows [x_t; y_t; x_{t+1}]
        (8, 3, 2, [[0, 1, 2], [2, 3, 4], [4, 5, 6]]),  # a tail (token 7) that fills no window
        (5, 2, 2, [[0, 1], [2, 3]]),  # non-overlapping, tail dropped
        (8, 2, 3, [[0, 1], [3, 4], [6, 7]]),  # stride > window: tokens 2 and 5 are skipped
        (4, 4, 1, [[0, 1, 2, 3]]),  # window = L: one window
        (3, 1, 1, [[0], [1], [2]]),  # window 1, stride 1: every token on its own
        (6, 2, 1, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]),
    ],
)
def test_windows_explicit(length, window, stride, expected):
    # Token l of batch b is [100 b + l, −(100 b + l)]: every entry says where it came from.
    ids = 100 * np.arange(2)[:, None] + np.arange(length)[None, :]
    tokens = jnp.asarray(np.stack([ids, -ids], axis=-1), F64)  # (B=2, L, H=2)
    out = np.asarray(windows(tokens, window, stride))
    expected = np.asarray(expected)
    assert out.shape == (2, len(expected), window, 2)
    for b in range(2):
        for t, row in enumerate(expected):
            for a, l in enumerate(row):
                assert out[b, t, a, 0] == 100 * b + l
                assert out[b, t, a, 1] == -(100 * b + l)


@pytest.mark.parametrize(
    ("shape", "window", "stride", "match"),
    [
        ((1, 4, 2), 5, 1, r"window=5 .*sequence \(L=4\)"),
        ((1, 4, 2), 0, 1, "window must be a positive integer; got 0"),
        ((1, 4, 2), -2, 1, "window must be a positive integer; got -2"),
        ((1, 4, 2), 2.0, 1, "window must be a positive integer; got 2.0"),
        ((1, 4, 2), 2, 0, "stride must be a positive integer; got 0"),
        ((1, 4, 2), 2, -1, "stride must be a positive integer; got -1"),
        ((4, 2), 2, 1, r"tokens must be \(B, L, H\)"),
    ],
)
def test_windows_rejects_bad_arguments(shape, window, stride, match):
    with pytest.raises(ValueError, match=match):
        windows(jnp.zeros(shape), window, stride)


# --- local self-attention and mixing --------------------------------------------------------


def attention_loop(x, q):
    """U[b, t] = Σ_{a,c} Q_ac X_t[a] X_t[c]ᵀ, one outer product at a time."""
    x, q = np.asarray(x), np.asarray(q)
    bsz, n, w, h = x.shape
    u = np.zeros((bsz, n, h, h))
    for b in range(bsz):
        for t in range(n):
            for a in range(w):
                for c in range(w):
                    u[b, t] += q[a, c] * np.outer(x[b, t, a], x[b, t, c])
    return u


def windows_loop(tokens, window, stride):
    """Windows by index arithmetic: X_t[a] = tokens[t·stride + a]."""
    tokens = np.asarray(tokens)
    n = (tokens.shape[1] - window) // stride + 1
    return np.stack([tokens[:, t * stride : t * stride + window] for t in range(n)], axis=1)


def test_local_self_attention_function_equals_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 3, 4))  # (B, T, w, H)
    q = rng.normal(size=(3, 3))
    assert_close(local_self_attention(jnp.asarray(x), jnp.asarray(q)), attention_loop(x, q))


def test_local_self_attention_selects_products():
    # Q = e_2 e_1ᵀ picks U_t = X_t[1] X_t[0]ᵀ (y_t x_tᵀ), Q = e_1 e_1ᵀ picks x_t x_tᵀ.
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 4))
    e = np.eye(3)
    yx = local_self_attention(jnp.asarray(x), jnp.asarray(np.outer(e[1], e[0])))
    xx = local_self_attention(jnp.asarray(x), jnp.asarray(np.outer(e[0], e[0])))
    np.testing.assert_array_equal(yx, np.einsum("bti,btj->btij", x[:, :, 1], x[:, :, 0]))
    np.testing.assert_array_equal(xx, np.einsum("bti,btj->btij", x[:, :, 0], x[:, :, 0]))


@pytest.mark.parametrize(("window", "stride", "length"), [(3, 2, 7), (2, 1, 5), (4, 3, 8)])
def test_local_self_attention_module_equals_loop(window, stride, length):
    model = LocalSelfAttention(
        window, stride, q_init=nnx.initializers.normal(1.0), param_dtype=F64, rngs=nnx.Rngs(0)
    )
    q = np.asarray(model.q[...])
    assert q.shape == (window, window) and q.dtype == np.float64 and np.all(q != 0)
    tokens = np.random.default_rng(window).normal(size=(2, length, 3))
    out = call(model, jnp.asarray(tokens))
    n = (length - window) // stride + 1
    assert out.shape == (2, n, 3, 3)
    assert_close(out, attention_loop(windows_loop(tokens, window, stride), q))


def test_local_mixing_module_equals_loop():
    model = LocalMixing(
        3, 2, p_init=nnx.initializers.normal(1.0), param_dtype=F64, rngs=nnx.Rngs(1)
    )
    p = np.asarray(model.p[...])
    tokens = np.random.default_rng(2).normal(size=(2, 7, 4))
    out = call(model, jnp.asarray(tokens))
    want = np.zeros((2, 3, 1, 4))
    for b in range(2):
        for t in range(3):
            for a in range(3):
                want[b, t, 0] += p[a] * tokens[b, 2 * t + a]
    assert_close(out, want)


@pytest.mark.parametrize("module", [LocalSelfAttention, LocalMixing])
@pytest.mark.parametrize(("window", "stride", "name"), [(0, 2, "window"), (3, 0, "stride")])
def test_local_modules_reject_bad_sizes(module, window, stride, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        module(window, stride, rngs=nnx.Rngs(0))


# --- the K-step readout -----------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_gd_readout_equals_unrolled_sum(steps):
    # u_K = Σ_{j<K} (I − C_x S^x)^j q, so ŷ = C_y S^y Σ_{j<K} (I − C_x S^x)^j q (docs/design.md §5).
    rng = np.random.default_rng(steps)
    b, n, h, o = 2, 3, 3, 2
    s_y, s_x = rng.normal(size=(b, n, h, h)), 0.5 * rng.normal(size=(b, n, h, h))
    query, c_y, c_x = rng.normal(size=(b, n, h)), rng.normal(size=(o, h)), rng.normal(size=(h, h))
    out = gd_readout(*map(jnp.asarray, (s_y, s_x, query, c_y, c_x)), steps)
    want = np.zeros((b, n, o))
    for i in range(b):
        for t in range(n):
            m = np.eye(h) - c_x @ s_x[i, t]
            u = sum(np.linalg.matrix_power(m, j) @ query[i, t] for j in range(steps))
            want[i, t] = c_y @ s_y[i, t] @ u
    assert_close(out, want)


def test_gd_readout_one_step_needs_no_xx_branch():
    rng = np.random.default_rng(7)
    s_y, query, c_y = (
        rng.normal(size=(2, 3, 1, 4)),
        rng.normal(size=(2, 3, 4)),
        rng.normal(size=(1, 1)),
    )
    out = gd_readout(jnp.asarray(s_y), None, jnp.asarray(query), jnp.asarray(c_y), None, 1)
    assert_close(out, c_y[0, 0] * np.einsum("btk,btk->bt", s_y[:, :, 0], query)[..., None])


# --- the diagonal recurrence -----------------------------------------------------------------


def recurrence_loop(lam, u):
    """h_t = Λ ⊙ h_{t−1} + u_t over axis 1, h_0 = 0."""
    lam, u = np.asarray(lam), np.asarray(u)
    h, out = np.zeros((u.shape[0], *u.shape[2:])), np.empty(u.shape)
    for t in range(u.shape[1]):
        h = lam * h + u[:, t]
        out[:, t] = h
    return out


STATE = (2, 3)
# (name, initializer, parametrizations it is valid for, the Λ it must give for nnx.Rngs(3)).
LAM_INITS = [
    ("ones", "ones", ("direct", "bounded"), lambda: np.ones(STATE)),
    ("decay", fill_init(0.7), ("direct", "bounded"), lambda: np.full(STATE, 0.7)),
    ("decay-negative", fill_init(-0.5), ("direct",), lambda: np.full(STATE, -0.5)),
    (
        "uniform-signed",
        uniform_init(-0.9, 0.9),
        ("direct",),
        lambda: uniform_init(-0.9, 0.9)(nnx.Rngs(3).params(), STATE, F64),
    ),
    (
        "uniform-positive",
        uniform_init(0.2, 1.0),
        ("direct", "bounded"),
        lambda: uniform_init(0.2, 1.0)(nnx.Rngs(3).params(), STATE, F64),
    ),
]
REC_CASES = [
    pytest.param(init, param, impl, want, id=f"{name}-{param}-{impl}")
    for name, init, params, want in LAM_INITS
    for param in params
    for impl in sorted(scan.IMPLEMENTATIONS)
]


@pytest.mark.parametrize(("lam_init", "parametrization", "impl", "want_lam"), REC_CASES)
def test_diagonal_recurrence_equals_loop(lam_init, parametrization, impl, want_lam):
    rec = DiagonalRecurrence(
        STATE,
        lam_init=lam_init,
        parametrization=parametrization,
        impl=impl,
        param_dtype=F64,
        rngs=nnx.Rngs(3),
    )
    lam = np.asarray(rec.lam)
    assert lam.shape == STATE and lam.dtype == np.float64
    # direct stores Λ itself; bounded stores ν = log(−log Λ) and recovers Λ to a few ulps.
    np.testing.assert_allclose(lam, want_lam(), rtol=1e-14, atol=0)
    if parametrization == "direct":
        np.testing.assert_array_equal(rec.lam_param[...], lam)
    u = np.random.default_rng(4).normal(size=(2, 6, *STATE))
    out = call(rec, jnp.asarray(u))
    assert out.shape == u.shape and out.dtype == jnp.float64
    assert_close(out, recurrence_loop(lam, u))


def test_diagonal_recurrence_ones_is_a_prefix_sum():
    rec = DiagonalRecurrence(STATE, param_dtype=F64, rngs=nnx.Rngs(0))  # defaults: ones, direct
    np.testing.assert_array_equal(rec.lam, np.ones(STATE))
    u = np.random.default_rng(5).normal(size=(1, 5, *STATE))
    assert_close(call(rec, jnp.asarray(u)), np.cumsum(u, axis=1))


@pytest.mark.parametrize("impl", sorted(scan.IMPLEMENTATIONS))
def test_bounded_parametrization_keeps_lambda_in_unit_interval(impl):
    rec = DiagonalRecurrence(
        STATE, parametrization="bounded", impl=impl, param_dtype=F64, rngs=nnx.Rngs(0)
    )
    # Arbitrary raw values, as an optimiser might leave them: huge, tiny, ±∞, around 0.
    raw = np.array([[-np.inf, -1e300, -40.0], [0.0, 1e3, np.inf]])
    rec.lam_param[...] = jnp.asarray(raw)
    lam = np.asarray(rec.lam)
    assert np.all(np.isfinite(lam)) and np.all(np.abs(lam) <= 1) and np.all(lam >= 0)
    # XLA's exp may differ from numpy's by an ulp.
    np.testing.assert_allclose(lam, [[1.0, 1.0, 1.0], [np.exp(-1.0), 0.0, 0.0]], rtol=1e-15, atol=0)
    for seed in range(3):  # random raw values on a wide scale
        rec.lam_param[...] = jnp.asarray(np.random.default_rng(seed).normal(scale=30.0, size=STATE))
        lam = np.asarray(rec.lam)
        assert np.all((0 <= lam) & (lam <= 1))
        u = np.random.default_rng(10 + seed).normal(size=(2, 5, *STATE))
        out = np.asarray(call(rec, jnp.asarray(u)))
        assert_close(out, recurrence_loop(lam, u))
        # |Λ| ≤ 1: the state never exceeds the summed inputs.
        assert np.all(np.abs(out) <= np.cumsum(np.abs(u), axis=1) * (1 + 1e-12))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(parametrization="softplus"), r"parametrization must be one of .*'softplus'"),
        (dict(impl="fft"), r"impl must be one of .*'associative'.*'sequential'.*'fft'"),
        (dict(lam_init="zeros"), r"lam_init must be one of \['ones'\] or an initializer.*'zeros'"),
        (dict(parametrization="bounded", lam_init=fill_init(-0.5)), r"bounded.*\(0, 1\]"),
        (dict(parametrization="bounded", lam_init=fill_init(1.5)), r"bounded.*\(0, 1\]"),
    ],
)
def test_diagonal_recurrence_rejects_unknown_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiagonalRecurrence(STATE, rngs=nnx.Rngs(0), **kwargs)


# --- GDSSM with random parameters -------------------------------------------------------------

# (layout, d_in, d_out, n_steps, parametrization): both layouts, d_in ≠ d_out both ways, K = 1..3.
GDSSM_CONFIGS = [
    ("interleaved", 2, 1, 1, "direct"),
    ("interleaved", 2, 3, 2, "direct"),
    ("interleaved", 3, 2, 3, "bounded"),
    ("constructed", 2, 1, 1, "bounded"),
    ("constructed", 3, 1, 2, "direct"),
    ("constructed", 2, 1, 3, "direct"),
]
GDSSM_IDS = ["-".join(map(str, c)) for c in GDSSM_CONFIGS]
# One xdist group per configuration: its tests then share one worker and its compiled programs.
GDSSM_PARAMS = [
    pytest.param(c, id=i, marks=pytest.mark.xdist_group(f"gdssm-{i}"))
    for c, i in zip(GDSSM_CONFIGS, GDSSM_IDS, strict=True)
]
N_CONTEXT, BATCH = 4, 3


def random_init(parametrization):
    """Every parameter random; Λ_x ≠ Λ_y, and signed Λ where the parametrization allows it."""
    normal = nnx.initializers.normal
    lam, lam_x = (
        (uniform_init(0.3, 1.0), uniform_init(0.5, 1.0))
        if parametrization == "bounded"
        else (uniform_init(-1.0, 1.0), uniform_init(0.5, 1.0))
    )
    return GDSSMInit(
        q_y=normal(0.7),
        q_x=normal(0.5),
        lam=lam,
        lam_x=lam_x,
        c_y=normal(0.7),
        c_x=normal(0.5),
        d=normal(1.0),
    )


def random_model(cfg, impl="associative", seed=0, query_map="vector"):
    layout, d_in, d_out, n_steps, parametrization = cfg
    return GDSSM(
        d_in,
        d_out,
        n_steps=n_steps,
        layout=layout,
        init=random_init(parametrization),
        parametrization=parametrization,
        impl=impl,
        query_map=query_map,
        param_dtype=F64,
        rngs=nnx.Rngs(seed),
    )


def random_tokens(model, seed=0, n=N_CONTEXT):
    """Random tokens (any real numbers: the layer is a function of the whole sequence)."""
    length = 2 * n + 1 if model.layout == "interleaved" else n + 1
    rng = np.random.default_rng(seed)
    return as_tokens(model, rng.uniform(-1, 1, size=(BATCH, length, model.token_width)))


def as_tokens(model, array):
    """``array`` as Tokens made for ``model``'s layout and sizes."""
    return Tokens(jnp.asarray(array), layout=model.layout, d_in=model.d_in, d_out=model.d_out)


def window_rows(model, tokens):
    """The windows X_t = [x_t; (y_t | x_t y_t); x_{t+1}] read off the tokens by hand: (B, N, 3, h)."""
    tokens = np.asarray(tokens)
    if model.layout == "interleaved":  # [x_1, y_1, …, x_N, y_N, x_q]
        n = (tokens.shape[1] - 1) // 2
        return np.stack([tokens[:, 2 * t : 2 * t + 3] for t in range(n)], axis=1)
    # constructed: u_0 = [0, x_1], u_i = [x_i y_i, x_{i+1}], so X_t = [u_{t−1}[d:], u_t[:d], u_t[d:]].
    d, n = model.d_in, tokens.shape[1] - 1
    rows = [
        np.stack([tokens[:, t, d:], tokens[:, t + 1, :d], tokens[:, t + 1, d:]], axis=1)
        for t in range(n)
    ]
    return np.stack(rows, axis=1)


def recurrent_reference(model, tokens):
    """Window by window, batch by batch: the states advance by ``scan.step``, then the readout.

    U^y_t = X_tᵀ Q_y X_t (constructed: P_yᵀ X_t as a 1×d row), S^y_t = Λ_y ⊙ S^y_{t−1} + U^y_t;
    U^x_t = X_tᵀ Q_x X_t, S^x_t = Λ_x ⊙ S^x_{t−1} + U^x_t; q_t = X_tᵀ D;
    q_t = Σ_a D_a X_t[a] (matrices D_a for the matrix query map);
    u_1 = q_t, u_{k+1} = q_t + u_k − C_x S^x_t u_k; ŷ_t = C_y S^y_t u_K.
    """
    x = window_rows(model, tokens)
    bsz, n, _, h = x.shape
    steps = model.n_steps
    interleaved = model.layout == "interleaved"
    p = lambda v: np.asarray(v[...])  # noqa: E731
    q_y = p(model.yx_attention.q) if interleaved else p(model.yx_attention.p)
    lam_y, c_y, d = np.asarray(model.yx_recurrence.lam), p(model.c_y), p(model.d)
    if steps > 1:
        q_x, lam_x, c_x = p(model.xx_attention.q), np.asarray(model.xx_recurrence.lam), p(model.c_x)
    out = np.empty((bsz, n, model.d_out))
    for b in range(bsz):
        s_y, s_x = np.zeros(lam_y.shape), np.zeros((h, h))
        for t in range(n):
            xt = x[b, t]  # (3, h)
            u_y = xt.T @ q_y @ xt if interleaved else (q_y @ xt)[None, :]
            s_y = scan.step(lam_y, u_y, s_y)
            if steps > 1:
                s_x = scan.step(lam_x, xt.T @ q_x @ xt, s_x)
            query = xt.T @ d if d.ndim == 1 else np.einsum("aih,ah->i", d, xt)  # Σ_a D_a X_t[a]
            u = query
            for _ in range(steps - 1):
                u = query + u - c_x @ (s_x @ u)
            out[b, t] = c_y @ (s_y @ u)
    return out


@pytest.mark.parametrize("cfg", GDSSM_PARAMS)
def test_gdssm_sequential_equals_associative(cfg):
    seq, par = random_model(cfg, "sequential", seed=1), random_model(cfg, "associative", seed=1)
    for a, b in zip(jax.tree.leaves(nnx.state(seq)), jax.tree.leaves(nnx.state(par)), strict=True):
        np.testing.assert_array_equal(a, b)  # the same parameters: only the scan differs
    tokens = random_tokens(seq, seed=1)
    assert_close(call(seq, tokens), call(par, tokens))


@pytest.mark.parametrize("impl", [*sorted(scan.IMPLEMENTATIONS), "chunked"])
@pytest.mark.parametrize("cfg", GDSSM_PARAMS)
def test_gdssm_recurrent_equals_parallel_every_window(cfg, impl):
    model = random_model(cfg, impl, seed=2)
    tokens = random_tokens(model, seed=2)
    out = call(model, tokens)
    assert out.shape == (BATCH, N_CONTEXT, cfg[2]) and out.dtype == jnp.float64
    want = recurrent_reference(model, tokens)
    assert np.abs(want).max() > 1e-3  # random parameters give a non-trivial output
    assert_close(out, want)


CHUNK_CASES = [(c, 3) for c in GDSSM_CONFIGS] + [(GDSSM_CONFIGS[2], 1), (GDSSM_CONFIGS[5], 16)]


@pytest.mark.parametrize(
    ("cfg", "chunk"), CHUNK_CASES, ids=[f"{'-'.join(map(str, c))}-chunk{k}" for c, k in CHUNK_CASES]
)
def test_gdssm_chunked_equals_associative_values_and_gradients(cfg, chunk):
    """Several chunks, a last one part full, or one chunk longer than the sequence (N = 10)."""
    par = random_model(cfg, "associative", seed=5)
    chunked = random_model(cfg, "chunked", seed=5)
    chunked.chunk = chunk
    tokens = random_tokens(par, seed=5, n=10)

    def loss(model):
        return jnp.sum(jnp.sin(model(tokens)))

    assert_close(call(chunked, tokens), call(par, tokens))
    grads = [nnx.grad(loss)(m) for m in (chunked, par)]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cfg", GDSSM_PARAMS)
def test_gdssm_perturbed_construction_equals_recurrent(cfg):
    """Start from the exact GD construction and move every parameter off it."""
    layout, d_in, d_out, n_steps, _ = cfg
    model = construction.gd_ssm(
        d_in=d_in, d_out=d_out, n_context=N_CONTEXT, lr=1.0, steps=n_steps, layout=layout, dtype=F64
    )
    rng = np.random.default_rng(3)
    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            param[...] = param[...] + 0.3 * rng.normal(size=param[...].shape)
    tokens = random_tokens(model, seed=3)
    assert_close(call(model, tokens), recurrent_reference(model, tokens))


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("cfg", [GDSSM_PARAMS[1], GDSSM_PARAMS[5]])
def test_gdssm_output_shape_and_causality(cfg, n):
    model = random_model(cfg, seed=4)
    tokens = random_tokens(model, seed=4, n=n)
    out = np.asarray(call(model, tokens))
    assert out.shape == (BATCH, n, cfg[2])
    assert_close(out, recurrent_reference(model, tokens))
    # Window t reads only tokens up to its query: changing the last token moves only the last output.
    changed = np.asarray(tokens).copy()
    changed[:, -1] += 1.0
    moved = np.asarray(call(model, as_tokens(model, changed)))
    np.testing.assert_array_equal(moved[:, :-1], out[:, :-1])
    assert np.all(moved[:, -1] != out[:, -1])


# --- GDSSM bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0,), {}, "d_in must be a positive integer; got 0"),
        ((-2, 1), {}, "d_in must be a positive integer; got -2"),
        ((2.5, 1), {}, "d_in must be a positive integer; got 2.5"),
        ((2, 0), {}, "d_out must be a positive integer; got 0"),
        ((2, 1), dict(n_steps=0), "n_steps must be a positive integer; got 0"),
        ((2, 1), dict(n_steps=-1), "n_steps must be a positive integer; got -1"),
        ((2, 1), dict(n_steps=2.0), "n_steps must be a positive integer; got 2.0"),
        ((2, 1), dict(layout="stacked"), r"layout must be one of \('interleaved', 'constructed'\)"),
        ((2, 3), dict(layout="constructed"), r"d_out=1.*got d_out=3"),
        ((2, 1), dict(parametrization="exp"), "parametrization must be one of"),
        ((2, 1), dict(impl="fft"), "impl must be one of"),
        ((2, 1), dict(impl="chunked", chunk=0), "chunk must be a positive integer; got 0"),
    ],
)
def test_gdssm_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GDSSM(*args, **kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("layout", "d_in", "d_out", "shape", "match"),
    [
        ("interleaved", 2, 3, (1, 5, 2), r"width 2.*needs H=3"),
        ("interleaved", 3, 2, (1, 5, 4), r"width 4.*needs H=3"),
        ("interleaved", 2, 1, (1, 4, 2), r"L = 2N \+ 1 >= 3.*got L=4"),
        ("interleaved", 2, 1, (1, 1, 2), r"L = 2N \+ 1 >= 3.*got L=1"),
        ("constructed", 2, 1, (1, 3, 2), r"width 2.*layout='constructed'.*needs H=4"),
        ("constructed", 2, 1, (1, 1, 4), r"L = N \+ 1 >= 2.*got L=1"),
        ("interleaved", 2, 1, (5, 2), r"must be \(B, L, H\)"),
    ],
)
def test_gdssm_rejects_bad_tokens(layout, d_in, d_out, shape, match):
    # Tokens check their shape against their layout and sizes: the check reads only the shape, so
    # it fails on a shape-only stand-in before any array work, and the same way under jit.
    with pytest.raises(ValueError, match=match):
        Tokens(jax.ShapeDtypeStruct(shape, jnp.float32), layout=layout, d_in=d_in, d_out=d_out)
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a: Tokens(a, layout=layout, d_in=d_in, d_out=d_out))(jnp.zeros(shape))
    # A bare array is refused by the model, eagerly and under jit.
    model = GDSSM(d_in, d_out, n_steps=2, layout=layout, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"^tokens must be ssm_gd\.tokens\.Tokens"):
        model(jnp.zeros(shape))
    with pytest.raises(TypeError, match=r"^tokens must be ssm_gd\.tokens\.Tokens"):
        call(model, jnp.zeros(shape))


@pytest.mark.parametrize(
    ("query_map", "per_chunk"), [("vector", False), ("matrix", False), ("vector", True)]
)
@pytest.mark.parametrize("cfg", GDSSM_PARAMS)
def test_gdssm_predict_query_equals_last_window_values_and_gradients(
    cfg, query_map, per_chunk, monkeypatch
):
    """The weighted-sum query prediction against every window's scan, and the loop reference,
    with the window rows transposed at once and, as for large tokens on the CPU, chunk by chunk."""
    monkeypatch.setattr(readout, "transpose_per_chunk", lambda *_: per_chunk)
    model = random_model(cfg, seed=6, query_map=query_map)
    tokens = random_tokens(model, seed=6)
    got = nnx.jit(lambda m, t: m.predict_query(t))(model, tokens)
    assert got.shape == (BATCH, cfg[2])
    assert_close(got, recurrent_reference(model, tokens)[:, -1])

    def loss(model, method):
        return jnp.sum(jnp.sin(method(model, tokens)))

    grads = [
        nnx.grad(loss)(model, method)
        for method in (lambda m, t: m.predict_query(t), lambda m, t: m(t)[:, -1])
    ]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        assert_close(a, b)


def test_gdssm_matrix_query_map_shape_and_init():
    model = GDSSM(3, 2, query_map="matrix", rngs=nnx.Rngs(0))
    assert model.d[...].shape == (3, 3, 3)
    # D_a ~ N(0, 1/h) entrywise: 27 draws, a loose check of the scale only.
    assert 0.2 < float(jnp.std(model.d[...])) < 1.0
    with pytest.raises(ValueError, match="query_map must be one of"):
        GDSSM(3, 2, query_map="diagonal", rngs=nnx.Rngs(0))


def test_gdssm_auto_resolves_by_size_and_equals_the_associative_scan():
    cfg = GDSSM_CONFIGS[1]
    auto, par = random_model(cfg, "auto", seed=8), random_model(cfg, "associative", seed=8)
    expected = "chunked" if jax.default_backend() == "cpu" else "associative"
    assert auto.resolve_impl(2, 600) == expected and auto.resolve_impl(2, 10) == "associative"
    assert auto.resolve_impl(10**6, 10) == "chunked"  # 10^6 · 10 · 3 · 3 states: the memory rule
    tokens = random_tokens(auto, seed=8, n=600)
    assert_close(call(auto, tokens), call(par, tokens))
