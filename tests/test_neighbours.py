"""The neighbours (linear self-attention, H3, the plain SSM): constructions equal their GD
variants exactly (float64), query-only forwards equal the full ones, causality, bad arguments, and
the neighbours through the trainer."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import gd, neighbours, regression, tasks, train
from ssm_gd.tokens import Tokens

EPS64 = np.finfo(np.float64).eps

# One compiled program per model structure (eager calls would compile op by op).
forward = nnx.jit(lambda model, toks: model(toks))
query_only = nnx.jit(lambda model, toks: model.predict_query(toks))


def _task(seed=0, batch=4, n=7, d_in=4, d_out=1):
    return tasks.linear_regression(
        jax.random.key(seed), batch=batch, n_context=n, d_in=d_in, d_out=d_out
    )


def _gamma(d, seed=0):
    """A non-symmetric preconditioner (so a transposed Γ would be caught)."""
    return np.eye(d) + 0.3 * np.random.default_rng(seed).standard_normal((d, d))


def numpy_prefixes(task, gamma, decay=1.0):
    """``ŷ_t = (1/N) Σ_{j≤t} λ^{t−j} y_j x_jᵀ Γ x_{t+1}`` for t = 1…N, one task at a time."""
    x, y, xq = (np.asarray(v, np.float64) for v in (task.x, task.y, task.x_query))
    b, n, _ = x.shape
    queries = np.concatenate([x[:, 1:], xq[:, None]], axis=1)
    out = np.zeros((b, n, y.shape[-1]))
    for i in range(b):
        for t in range(n):
            w = sum(decay ** (t - j) * np.outer(y[i, j], x[i, j]) for j in range(t + 1))
            out[i, t] = w @ gamma @ queries[i, t] / n
    return out


def _tol(ref):
    """Sums of ≤ N = 7 terms, each a d ≤ 6-term dot and a d×d product: rounding below
    ~(N + 2d) ε ≈ 4e-15 of the terms' magnitude; 1e-13 of the largest output leaves 25× margin."""
    return 1e-13 * max(1.0, float(np.abs(ref).max()))


# ------------------------------------------------------------------------------ constructions

SIZES = [(4, 1), (3, 5), (6, 2)]  # scalar labels, d_out > d_in, vector labels with d_in > d_out


@pytest.mark.parametrize(("d_in", "d_out"), SIZES)
@pytest.mark.parametrize("n", [1, 7])
def test_linear_attention_construction_is_preconditioned_gd(d_in, d_out, n):
    t = _task(n=n, d_in=d_in, d_out=d_out, seed=n)
    g = _gamma(d_in)
    model = neighbours.linear_attention_gd(d_in=d_in, d_out=d_out, gamma=g, dtype=jnp.float64)
    toks = tasks.tokens(t, "pairs")
    out = np.asarray(forward(model, toks))
    assert out.shape == (4, n, d_out) and out.dtype == np.float64
    ref = numpy_prefixes(t, g)
    np.testing.assert_allclose(out, ref, rtol=0, atol=_tol(ref))
    query = gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=g)
    np.testing.assert_allclose(query_only(model, toks), query, rtol=0, atol=_tol(ref))
    # A scalar Γ = η I: plain GD with step size η.
    plain = neighbours.linear_attention_gd(d_in=d_in, d_out=d_out, gamma=0.7, dtype=jnp.float64)
    np.testing.assert_allclose(
        query_only(plain, toks), gd.predict(t.x, t.y, t.x_query, lr=0.7), rtol=0, atol=_tol(ref)
    )


@pytest.mark.parametrize(("d_in", "d_out"), SIZES)
@pytest.mark.parametrize("decay", [1.0, 0.7, 0.0, -0.5])
def test_h3_construction_is_preconditioned_sample_weighted_gd(d_in, d_out, decay):
    t = _task(d_in=d_in, d_out=d_out, seed=3)
    g = _gamma(d_in, seed=1)
    toks = tasks.tokens(t, "pairs")
    ref = numpy_prefixes(t, g, decay)
    query = gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=g, decay=decay)
    for impl in ("associative", "sequential"):
        model = neighbours.h3_gd(
            d_in=d_in, d_out=d_out, gamma=g, decay=decay, impl=impl, dtype=jnp.float64
        )
        out = np.asarray(forward(model, toks))
        assert out.shape == (4, 7, d_out)
        np.testing.assert_allclose(out, ref, rtol=0, atol=_tol(ref))
        np.testing.assert_allclose(query_only(model, toks), query, rtol=0, atol=_tol(ref))
    # A scalar Γ = η I: sample-weighted GD.
    model = neighbours.h3_gd(d_in=d_in, d_out=d_out, gamma=1.3, decay=decay, dtype=jnp.float64)
    want = gd.weighted_predict(t.x, t.y, t.x_query, lr=1.3, decay=decay)
    np.testing.assert_allclose(query_only(model, toks), want, rtol=0, atol=_tol(ref))


def test_constructions_are_built_not_edited():
    # The construction's parameters are what its initializers asked for, nothing else.
    g = _gamma(3)
    la = neighbours.linear_attention_gd(d_in=3, d_out=2, gamma=g, dtype=jnp.float64)
    kq, pv = np.asarray(la.w_kq[...]), np.asarray(la.w_pv[...])
    np.testing.assert_array_equal(kq[:3, :3], g)
    assert not kq[3:].any() and not kq[:, 3:].any()
    np.testing.assert_array_equal(pv, np.diag([0, 0, 0, 1.0, 1.0]))
    h3 = neighbours.h3_gd(d_in=3, d_out=2, gamma=g, decay=0.5, dtype=jnp.float64)
    np.testing.assert_array_equal(h3.shift[...], [1.0, 0.0])
    np.testing.assert_array_equal(h3.decay.lam, np.full((3, 1), 0.5))
    np.testing.assert_array_equal(h3.w_q[...], np.hstack([g, np.zeros((3, 2))]))


# ---------------------------------------------------- every model: query-only forward, causality


@functools.cache  # built once per worker: the tests below share one worker (xdist_group)
def _models(d_in, d_out):
    rngs = nnx.Rngs(5)
    # A random decay and a 3-tap shift, so that the H3 checks exercise every parameter.
    init = neighbours.H3Init(lam=lambda k, s, dtype: jax.random.uniform(k, s, dtype, 0.3, 1.0),
                             shift=nnx.initializers.normal(1.0))  # fmt: skip
    return {
        "linear_attention": neighbours.LinearSelfAttention(
            d_in, d_out, param_dtype=jnp.float64, rngs=rngs
        ),
        "h3": neighbours.H3(
            d_in, d_out, state=5, value=3, shift=3, init=init, param_dtype=jnp.float64, rngs=rngs
        ),
        "plain_ssm": neighbours.PlainSSM(
            d_in, d_out, hidden=8, state=6, n_layers=3, param_dtype=jnp.float64, rngs=rngs
        ),
    }


@pytest.mark.xdist_group("neighbour_models")
@pytest.mark.parametrize(("d_in", "d_out"), [(4, 1), (3, 2)])
def test_predict_query_is_the_last_output(d_in, d_out):
    toks = tasks.tokens(_task(d_in=d_in, d_out=d_out, seed=2), "pairs")
    for name, model in _models(d_in, d_out).items():
        full = np.asarray(forward(model, toks))
        assert full.shape == (4, 7, d_out), name
        # Different summation orders (a decayed sum against a scan): rounding only.
        np.testing.assert_allclose(
            query_only(model, toks), full[:, -1], rtol=0, atol=_tol(full), err_msg=name
        )


@pytest.mark.xdist_group("neighbour_models")
def test_models_are_causal_and_never_read_the_predicted_label():
    toks = np.asarray(tasks.tokens(_task(d_in=3, d_out=2, seed=4), "pairs"))
    wrap = lambda a: Tokens(jnp.asarray(a), layout="pairs", d_in=3, d_out=2)  # noqa: E731
    rng = np.random.default_rng(0)
    for name, model in _models(3, 2).items():
        base = np.asarray(forward(model, wrap(toks)))
        for k in (2, 5, 7):  # 0-based token index; output t reads tokens ≤ t and token t+1's x
            moved = toks.copy()
            moved[:, k] += rng.standard_normal(moved[:, k].shape)
            out = np.asarray(forward(model, wrap(moved)))
            # Outputs before k − 1 never see token k: the same operations on the same numbers.
            np.testing.assert_array_equal(out[:, : k - 1], base[:, : k - 1], err_msg=name)
            assert np.abs(out[:, k - 1] - base[:, k - 1]).max() > 1e-6, name  # x_k is read
            label = toks.copy()
            label[:, k, 3:] += 1.0  # token k's label: read from output k on, never at k − 1
            out = np.asarray(forward(model, wrap(label)))
            np.testing.assert_array_equal(out[:, :k], base[:, :k], err_msg=name)
            if k < toks.shape[1] - 1:
                assert np.abs(out[:, k] - base[:, k]).max() > 1e-6, name


@pytest.mark.xdist_group("neighbour_models")
def test_plain_ssm_last_output_is_the_stack_read_at_the_query_token():
    # Output N is the stack run on the real tokens, read at the query token [x_q, 0]: checked
    # against a token-by-token loop of the layer equations.
    model = _models(3, 2)["plain_ssm"]  # 3 layers
    tokens = tasks.tokens(_task(d_in=3, d_out=2, seed=6), "pairs")
    toks = np.asarray(tokens)
    u = np.einsum("hd,btd->bth", np.asarray(model.w_in[...]), toks)
    for i, layer in enumerate(model.layers):
        if i:
            u = np.asarray(jax.nn.gelu(u))
        ssm = layer.ssm
        lam, b, c, d = (np.asarray(v) for v in (ssm.recurrence.lam, ssm.b[...], ssm.c[...],
                                                 ssm.d[...]))  # fmt: skip
        s = np.zeros((u.shape[0], b.shape[1]))
        z = np.zeros_like(u)
        for t in range(u.shape[1]):
            s = lam * s + u[:, t] @ b
            z[:, t] = s @ c + d * u[:, t]
        u = z
    want = u[:, -1] @ np.asarray(model.w_out[...]).T
    np.testing.assert_allclose(query_only(model, tokens), want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------ bad arguments

BAD = [
    (lambda: neighbours.make("lsa", 3, 1, rngs=nnx.Rngs(0)), "^name must be one of"),
    (lambda: neighbours.make("h3", 3, 1, impl="fft", rngs=nnx.Rngs(0)), "^impl must be one of"),
    (lambda: neighbours.LinearSelfAttention(0, 1, rngs=nnx.Rngs(0)), "^d_in must be a positive"),
    (lambda: neighbours.H3(3, 0, rngs=nnx.Rngs(0)), "^d_out must be a positive"),
    (lambda: neighbours.H3(3, 1, shift=0, rngs=nnx.Rngs(0)), "^shift must be a positive"),
    (lambda: neighbours.H3(3, 1, state=-1, rngs=nnx.Rngs(0)), "^state must be a positive"),
    (lambda: neighbours.H3(3, 1, parametrization="x", rngs=nnx.Rngs(0)), "^parametrization must"),
    (lambda: neighbours.PlainSSM(3, 1, hidden=0, rngs=nnx.Rngs(0)), "^hidden must be a positive"),
    (lambda: neighbours.PlainSSM(3, 1, n_layers=0, rngs=nnx.Rngs(0)), "^n_layers must be a posi"),
    (lambda: neighbours.linear_attention_gd(d_in=3, d_out=1, gamma=np.eye(2)), r"^gamma .*\(3, 3\)"),
    (lambda: neighbours.h3_gd(d_in=3, d_out=1, gamma=np.eye(4)), r"^gamma .*shape \(4, 4\)"),
    (lambda: neighbours.h3_gd(d_in=3, d_out=1, gamma=1.0, decay=float("nan")), "^decay must be"),
    (lambda: neighbours.split_pairs(jnp.zeros((2, 5, 4)), 3, 2), "^tokens have width 4.*H = d_in"),
    (lambda: neighbours.split_pairs(jnp.zeros((2, 1, 5)), 3, 2), r"^pairs tokens need L = N \+ 1"),
    (lambda: neighbours.split_pairs(jnp.zeros((5, 5)), 3, 2), r"^tokens must be \(B, L, H\)"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "match"), BAD)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tokens_of_another_layout_or_size_are_rejected():
    model = neighbours.LinearSelfAttention(3, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tokens were made for layout='interleaved', d_in=3"):
        model(tasks.tokens(_task(d_in=3), "interleaved"))
    # Pairs tokens of d_in = d_out = 2 have the width of (3, 1) ones: the sizes tell them apart.
    with pytest.raises(ValueError, match="made for layout='pairs', d_in=2, d_out=2"):
        model(tasks.tokens(_task(d_in=2, d_out=2), "pairs"))
    with pytest.raises(TypeError, match="^tokens must be ssm_gd.tokens.Tokens"):
        model(np.asarray(tasks.tokens(_task(d_in=3), "pairs")))


# ------------------------------------------------------------------------------- the trainer

TINY = train.Config(
    n_context=6,
    d_in=3,
    d_out=1,
    layout="pairs",
    model="linear_attention",
    task="anisotropic",
    condition=10.0,
    train_steps=60,
    batch_size=64,
    warmup_steps=5,
    eval_every=30,
    eval_size=512,
    sens_size=64,
    lr=0.05,
    dtype="float64",
)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"model": "transformer"}, "^model must be one of"),
        ({"task": "sine"}, "^task must be one of"),
        ({"layout": "interleaved"}, "model='linear_attention' reads layout='pairs'"),
        ({"model": "gdssm"}, "layout='pairs' is read by the neighbour models"),
        ({"model": "h3", "n_steps": 2}, "n_steps must be 1"),
        ({"query_map": "matrix"}, "query_map is a GD-SSM option"),
        ({"query_map": "tensor"}, "^query_map must be one of"),
        ({"condition": 0.5}, "^condition must be a finite number >= 1"),
        ({"rotation": -1}, "^rotation must be a non-negative integer"),
        ({"switch_at": 7}, r"^switch_at must be in \[0, n_context=6\]"),
    ],
)
def test_bad_configs(fields, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **fields)


def test_neighbours_train_and_are_compared_with_every_gd_variant():
    result = train.train(TINY, None, progress=False)
    first, last = result.history[0], result.history[-1]
    assert result.constructed is None and last["param_match_error"] is None
    assert last["val_loss"] < first["val_loss"]
    s = result.summary
    for key in ("pgd_loss", "pgd_fitted_loss", "wgd_loss", "wgd_lr", "wgd_decay",
                "loss_ratio_pgd", "loss_ratio_wgd", "model_cos_pgd", "model_cos_wgd"):  # fmt: skip
        assert np.isfinite(s[key]), key
    # Σ has condition number 10: the optimal preconditioner beats plain GD; the best weights never
    # do worse than λ = 1 (plain GD), and the fit on the set itself bounds Γ* from below.
    assert s["pgd_loss"] < s["gd_loss"]
    assert s["wgd_loss"] <= s["gd_loss"] * (1 + 1e-12)
    assert s["pgd_fitted_loss"] <= s["pgd_loss"] * (1 + 1e-12)
    np.testing.assert_allclose(s["loss_ratio_pgd"], s["val_loss"] / s["pgd_loss"], rtol=1e-12)
    # The reference preconditioner is the closed form for this task's Σ.
    sigma = train.input_covariance(TINY)
    np.testing.assert_allclose(
        train.reference_preconditioner(TINY, 1.0), gd.optimal_preconditioner(sigma, 6), rtol=0
    )


def test_gdssm_with_a_matrix_query_map_matches_the_preconditioned_construction():
    # At the construction itself the parameter match is zero: build a GD-SSM run's constructed
    # model and check it predicts optimal preconditioned GD on the evaluation task.
    config = dataclasses.replace(
        TINY, model="gdssm", layout="interleaved", query_map="matrix", task="anisotropic"
    )
    gamma = train.reference_preconditioner(config, 1.0)
    refs = {"pgd_gamma": gamma}
    model = regression._construction(config, 1.0, refs)
    t = train.sample(config, jax.random.key(0), 32)
    want = gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=gamma)
    # The construction runs in float32 (the config's dtype): ~1e-6 relative.
    got = query_only(model, tasks.tokens(t, "interleaved"))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
