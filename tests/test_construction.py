"""The constructed GD-SSM equals explicit K-step GD on every prefix (docs/design.md §4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import construction, gd, tasks

# (d_in, d_out, layout): scalar and vector labels, d_in ≠ d_out both ways, both layouts.
CONFIGS = [
    (10, 1, "interleaved"),
    (10, 1, "constructed"),
    (4, 3, "interleaved"),
    (3, 5, "interleaved"),
    (10, 10, "interleaved"),
]
LR = 2.0  # a stable step size: (η/N)·λ_max(S_x) ≈ η/12 < 2 for x ~ U(-1/2, 1/2)


def _case(d_in, d_out, layout, n, steps, dtype, seed=0):
    task = tasks.linear_regression(
        jax.random.key(seed), batch=4, n_context=n, d_in=d_in, d_out=d_out, dtype=dtype
    )
    model = construction.gd_ssm(
        d_in=d_in, d_out=d_out, n_context=n, lr=LR, steps=steps, layout=layout, dtype=dtype
    )
    out = nnx.jit(lambda m, t: m(t))(model, tasks.tokens(task, layout))
    t64 = jax.tree.map(lambda v: v.astype(jnp.float64), task)
    ref = gd.predict_prefixes(t64.x, t64.y, t64.x_query, lr=LR, steps=steps)
    return out, ref, t64


# Every K at N = 10 and at the longest context N = 1000 (each such case compiles a 1000-step scan,
# about 4 s on 2 cores, so every configuration runs there at the largest K only).
GRID = [(cfg, 10, k) for cfg in CONFIGS for k in range(1, 6)]
GRID += [(cfg, 1000, 5) for cfg in CONFIGS] + [(CONFIGS[0], 1000, 1)]


@pytest.mark.parametrize(("cfg", "n", "steps"), GRID)
def test_construction_equals_gd_every_prefix_float64(cfg, n, steps):
    d_in, d_out, layout = cfg
    out, ref, task = _case(d_in, d_out, layout, n, steps, jnp.float64)
    assert out.shape == (4, n, d_out) and out.dtype == jnp.float64
    # Sums of ≤ 1000 O(1) terms, composed K ≤ 5 times: rounding ≲ 1e3 · K · 2.2e-16 ≈ 1e-12.
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10)
    query = gd.predict(task.x, task.y, task.x_query, lr=LR, steps=steps)
    np.testing.assert_allclose(out[:, -1], query, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n", [1, 2, 3, 37])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize(("d_in", "d_out", "layout"), [CONFIGS[1], CONFIGS[3]])
def test_construction_short_contexts_float64(d_in, d_out, layout, n, steps):
    out, ref, _ = _case(d_in, d_out, layout, n, steps, jnp.float64, seed=n)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10)


F32_GRID = [(cfg, 10, 3) for cfg in CONFIGS] + [(CONFIGS[1], 1000, 5), (CONFIGS[2], 1000, 5)]


@pytest.mark.parametrize(("cfg", "n", "steps"), F32_GRID)
def test_construction_equals_gd_float32(cfg, n, steps):
    d_in, d_out, layout = cfg
    out, ref, _ = _case(d_in, d_out, layout, n, steps, jnp.float32)
    assert out.dtype == jnp.float32
    # float32 eps is 1.2e-7; a scan over N = 1000 terms adds O(log N) roundings per entry.
    rel = np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref)
    assert rel <= 1e-5


@pytest.mark.parametrize("impl", ["sequential", "chunked"])
@pytest.mark.parametrize(("d_out", "layout"), [(2, "interleaved"), (1, "constructed")])
def test_construction_every_impl_matches(impl, d_out, layout):
    task = tasks.linear_regression(jax.random.key(5), batch=3, n_context=20, d_in=4, d_out=d_out)
    kwargs = dict(d_in=4, d_out=d_out, n_context=20, lr=LR, steps=3, layout=layout)
    toks = tasks.tokens(task, layout)
    out = construction.gd_ssm(impl=impl, dtype=jnp.float64, **kwargs)(toks)
    ref = gd.predict_prefixes(task.x, task.y, task.x_query, lr=LR, steps=3)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_construction_parameters_are_the_closed_form():
    model = construction.gd_ssm(d_in=3, d_out=2, n_context=5, lr=1.5, steps=2, dtype=jnp.float64)
    c = 1.5 / 5
    np.testing.assert_array_equal(model.yx_attention.q[...], [[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(model.xx_attention.q[...], [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(model.d[...], [0, 0, 1])
    np.testing.assert_array_equal(model.yx_recurrence.lam, np.ones((3, 3)))
    np.testing.assert_allclose(model.c_y[...], c * np.eye(2, 3), rtol=1e-15)
    np.testing.assert_allclose(model.c_x[...], c * np.eye(3), rtol=1e-15)


def test_construction_jits_and_differentiates():
    task = tasks.linear_regression(jax.random.key(3), batch=8, n_context=6, d_in=4, d_out=2)
    model = construction.gd_ssm(d_in=4, d_out=2, n_context=6, lr=1.0, steps=2, dtype=jnp.float64)
    toks = tasks.tokens(task)

    @jax.jit
    def query_loss(model, toks):
        return gd.loss(model(toks)[:, -1], task.y_query)

    value, grads = nnx.value_and_grad(lambda m: query_loss(m, toks))(model)
    expected = gd.loss(gd.predict(task.x, task.y, task.x_query, lr=1.0, steps=2), task.y_query)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(d_in=0, d_out=1, n_context=5, lr=1.0), "d_in"),
        (dict(d_in=3, d_out=-1, n_context=5, lr=1.0), "d_out"),
        (dict(d_in=3, d_out=1, n_context=0, lr=1.0), "n_context"),
        (dict(d_in=3, d_out=1, n_context=5, lr=float("nan")), "lr"),
        (dict(d_in=3, d_out=1, n_context=5, lr=1.0, steps=0), "n_steps"),
        (dict(d_in=3, d_out=2, n_context=5, lr=1.0, layout="constructed"), "d_out=1"),
        (dict(d_in=3, d_out=1, n_context=5, lr=1.0, layout="stacked"), "layout"),
        (dict(d_in=3, d_out=1, n_context=5, lr=1.0, impl="fft"), "impl"),
    ],
)
def test_construction_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        construction.gd_ssm(**kwargs)


def _weighted_preconditioned_gd_prefixes(x, y, x_query, *, lr, steps, gamma, decay):
    """Float64 loop: on the prefix of t pairs, K steps of W ← W − η ∇L(W) Γ from W = 0, where
    L(W) = 1/(2N) Σ_{i≤t} λ^{t−i} ||W x_i − y_i||²; the prediction at x_{t+1} (x_q for t = N)."""
    x, y, x_query = (np.asarray(a, np.float64) for a in (x, y, x_query))
    batch, n, _ = x.shape
    out = np.zeros((batch, n, y.shape[-1]))
    for b in range(batch):
        for t in range(1, n + 1):
            w = np.zeros((y.shape[-1], x.shape[-1]))
            for _ in range(steps):
                grad = (
                    sum(
                        decay ** (t - i) * np.outer(w @ x[b, i - 1] - y[b, i - 1], x[b, i - 1])
                        for i in range(1, t + 1)
                    )
                    / n
                )
                w = w - lr * grad @ gamma
            query = x[b, t] if t < n else x_query[b]
            out[b, t - 1] = w @ query
    return out


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize(("d_in", "d_out", "layout"), [(4, 1, "interleaved"), (3, 1, "constructed"),
                                                       (3, 4, "interleaved")])  # fmt: skip
@pytest.mark.parametrize(("use_gamma", "decay"), [(True, None), (False, 0.8), (True, 0.9)])
def test_construction_preconditioned_and_weighted_gd_float64(d_in, d_out, layout, steps, use_gamma,
                                                             decay):  # fmt: skip
    n = 7
    task = tasks.linear_regression(
        jax.random.key(11), batch=3, n_context=n, d_in=d_in, d_out=d_out, dtype=jnp.float64
    )
    a = np.asarray(jax.random.normal(jax.random.key(2), (d_in, d_in), jnp.float64))
    gamma = np.eye(d_in) + 0.3 * a @ a.T if use_gamma else None  # symmetric positive definite
    model = construction.gd_ssm(
        d_in=d_in, d_out=d_out, n_context=n, lr=LR, steps=steps, layout=layout,
        preconditioner=gamma, decay=decay, dtype=jnp.float64,
    )  # fmt: skip
    assert model.query_map == ("matrix" if use_gamma else "vector")
    toks = tasks.tokens(task, layout)
    ref = _weighted_preconditioned_gd_prefixes(
        task.x, task.y, task.x_query, lr=LR, steps=steps,
        gamma=np.eye(d_in) if gamma is None else gamma, decay=1.0 if decay is None else decay,
    )  # fmt: skip
    # A handful of O(1) sums composed K ≤ 3 times: float64 rounding ~1e-15 relative.
    np.testing.assert_allclose(model(toks), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.predict_query(toks), ref[:, -1], rtol=0, atol=1e-12)


def test_construction_preconditioned_one_step_closed_form():
    d_in, n, lam = 3, 6, 0.7
    task = tasks.linear_regression(
        jax.random.key(4), batch=2, n_context=n, d_in=d_in, d_out=1, dtype=jnp.float64
    )
    gamma = np.diag([2.0, 0.5, 1.0])
    model = construction.gd_ssm(d_in=d_in, d_out=1, n_context=n, lr=1.0, preconditioner=gamma,
                                decay=lam, dtype=jnp.float64)  # fmt: skip
    weights = lam ** (n - 1 - np.arange(n))  # λ^{N−i}
    w1 = np.einsum("i,bio,bij->boj", weights, task.y, task.x) / n @ gamma
    expected = np.einsum("boj,bj->bo", w1, task.x_query)
    np.testing.assert_allclose(model.predict_query(tasks.tokens(task)), expected, rtol=1e-13)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(preconditioner=np.eye(2)), "preconditioner"),
        (dict(preconditioner=np.full((3, 3), np.nan)), "preconditioner"),
        (dict(decay=float("inf")), "decay"),
        (dict(decay="0.9"), "decay"),
    ],
)
def test_construction_rejects_bad_neighbour_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr=1.0, **kwargs)
