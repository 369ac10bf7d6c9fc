"""The metrics of ``ssm_gd.metrics`` (docs/design.md §7), in float64.

* ``sensitivity``: GD is linear in the query, so its sensitivity is its weights ``W_K``; the
  constructed GD-SSM's is the same; a random GD-SSM's equals a reverse-mode Jacobian and a
  central finite difference;
* ``alignment`` and ``preds_diff`` on exact cases and small examples worked out by hand;
* ``evaluate`` (jitted, as the trainer calls it) on the construction against GD at the
  construction's step size, and at another step size; ``sens_size``; ``gd_loss`` against the
  closed-form one-step optimum;
* ``param_match_error``: zero for the construction and for its exact symmetries (checked to be
  symmetries by the model's own predictions), linear in a small perturbation, large for a sign
  flip that is not a symmetry, and errors on models that cannot be compared.

Sizes are tiny (B ≤ 5, N ≤ 6, d ≤ 4) and every value is O(1): float64 rounding of a sum of a few
dozen products stays near 1e-15, so "equal" means within 1e-12.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import construction, gd, metrics, tasks
from ssm_gd.layers import GDSSM, GDSSMInit

F64 = jnp.float64
N = 6  # context pairs
LR = 1.0  # stable: x ~ U(-1/2, 1/2) gives S_x / N ≈ I/12, so (η/N)·λ_max(S_x) ≪ 2
TOL = 1e-12  # float64 rounding of O(1) sums of ≤ 50 terms is ~1e-15; three decades of slack

call = nnx.jit(lambda m, t: m(t))  # nnx.jit caches per module structure

# Two xdist groups of about equal cost, so that each worker compiles each model structure once.
SENSITIVITY = pytest.mark.xdist_group("metrics-sensitivity")
REST = pytest.mark.xdist_group("metrics-rest")

# (d_in, d_out, layout): scalar and vector labels, d_in ≠ d_out both ways, both layouts.
CONFIGS = [
    (3, 1, "interleaved"),
    (3, 1, "constructed"),
    (4, 2, "interleaved"),
    (2, 3, "interleaved"),
]


def _task(d_in, d_out, seed=0, batch=4, n=N):
    return tasks.linear_regression(
        jax.random.key(seed), batch=batch, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
    )


def _constructed(d_in, d_out, layout, steps, lr=LR):
    return construction.gd_ssm(
        d_in=d_in, d_out=d_out, n_context=N, lr=lr, steps=steps, layout=layout, dtype=F64
    )


@functools.cache
def _jitted_sensitivity(layout):
    """``(model, task) ↦ sensitivity`` of the model's query prediction, jitted per layout."""
    return nnx.jit(
        lambda m, t: metrics.sensitivity(metrics.query_predictor(m, t, layout), t.x_query)
    )


# --- sensitivity --------------------------------------------------------------------------------


@pytest.mark.parametrize(("d_in", "d_out"), [(3, 1), (4, 2), (2, 3)])
@SENSITIVITY
def test_sensitivity_of_gd_is_its_weights(d_in, d_out):
    task = _task(d_in, d_out, seed=d_in)

    @jax.jit
    def sens_and_weights(t):  # K = 1, 2, 3 in one program (one compile per shape)
        return [
            (
                metrics.sensitivity(
                    functools.partial(lambda xq, k: gd.predict(t.x, t.y, xq, lr=LR, steps=k), k=k),
                    t.x_query,
                ),
                gd.weights(t.x, t.y, lr=LR, steps=k),
            )
            for k in (1, 2, 3)
        ]

    for sens, w in sens_and_weights(task):
        assert sens.shape == (4, d_out, d_in) and sens.dtype == F64
        # ŷ = W x_q: the tangent W e_j is an exact column of W (products with 0 and 1).
        np.testing.assert_allclose(sens, w, rtol=0, atol=TOL)


# Each case compiles a model (≈ 0.5 s): every configuration and K = 1, 2, 3, not every pair.
SENS_GRID = [
    (3, 1, "interleaved", 3),
    (3, 1, "constructed", 2),
    (4, 2, "interleaved", 1),
    (2, 3, "interleaved", 2),
]


@pytest.mark.parametrize(("d_in", "d_out", "layout", "steps"), SENS_GRID)
@SENSITIVITY
def test_sensitivity_of_construction_is_gd_weights(d_in, d_out, layout, steps):
    task = _task(d_in, d_out, seed=10 + steps)
    model = _constructed(d_in, d_out, layout, steps)
    sens = _jitted_sensitivity(layout)(model, task)
    w = gd.weights(task.x, task.y, lr=LR, steps=steps)
    assert sens.shape == (4, d_out, d_in)
    np.testing.assert_allclose(sens, w, rtol=0, atol=TOL)


def _random_model(d_in, d_out, layout, steps):
    """A GD-SSM with the default random initialisation: not GD."""
    return GDSSM(d_in, d_out, n_steps=steps, layout=layout, rngs=nnx.Rngs(steps), param_dtype=F64)


@pytest.mark.parametrize(
    ("d_in", "d_out", "layout", "steps"),
    [(3, 1, "constructed", 2), (2, 3, "interleaved", 1)],  # and (4, 2, interleaved, 2) below
)
@SENSITIVITY
def test_sensitivity_of_random_model_matches_finite_differences(d_in, d_out, layout, steps):
    task = _task(d_in, d_out, seed=20 + steps)
    model = _random_model(d_in, d_out, layout, steps)
    predict = jax.jit(metrics.query_predictor(model, task, layout))
    xq = task.x_query
    base = predict(xq)
    # Not GD: the prediction is not linear in the query (Q mixes x_q into the last state).
    assert not np.allclose(predict(2 * xq), 2 * base, rtol=1e-6, atol=0)
    # Tasks are independent (what lets sensitivity broadcast one direction over the batch):
    # moving task 0's query leaves the other tasks' predictions bit for bit.
    moved = predict(xq.at[0].add(0.1))
    assert np.abs(moved[0] - base[0]).max() > 0
    np.testing.assert_array_equal(moved[1:], base[1:])

    sens = _jitted_sensitivity(layout)(model, task)
    assert sens.shape == (4, d_out, d_in)
    # A central difference, independent of autodiff: truncation h²·|f⁽³⁾|/6 ≈ 1e-11 and
    # rounding eps·|f|/h ≈ 1e-11 for O(1) values; 1e-8 leaves three decades.
    h = 1e-5
    eye = np.eye(d_in)
    fd = np.stack(
        [(predict(xq + h * eye[j]) - predict(xq - h * eye[j])) / (2 * h) for j in range(d_in)],
        axis=-1,
    )
    assert np.abs(fd).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(sens, fd, rtol=0, atol=1e-8 * max(1.0, np.abs(fd).max()))


@SENSITIVITY
def test_sensitivity_of_random_model_matches_jacrev():
    task = _task(4, 2, seed=25)
    model = _random_model(4, 2, "interleaved", 2)
    predict = metrics.query_predictor(model, task, "interleaved")
    jac = np.array(jax.jit(jax.jacrev(predict))(task.x_query))  # (B, d_out, B, d_in)
    diag = np.stack([jac[b, :, b] for b in range(4)])
    sens = _jitted_sensitivity("interleaved")(model, task)
    # Forward and reverse mode evaluate the same derivative in a different order: rounding only.
    np.testing.assert_allclose(sens, diag, rtol=0, atol=1e-12 * np.abs(diag).max())
    for b in range(4):  # and the cross-task blocks are exactly zero
        jac[b, :, b] = 0
    np.testing.assert_array_equal(jac, 0)


# --- alignment and preds_diff -------------------------------------------------------------------


def _random_sens(seed=0, shape=(5, 2, 3)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@REST
def test_alignment_identical():
    s = _random_sens()
    out = metrics.alignment(s, s)
    assert set(out) == {"model_diff", "model_cos"}
    assert float(out["model_diff"]) == 0.0
    np.testing.assert_allclose(out["model_cos"], 1.0, rtol=0, atol=1e-15)


@REST
def test_alignment_scaled_copy():
    s = _random_sens(1)
    out = metrics.alignment(s, 2 * s)
    np.testing.assert_allclose(out["model_cos"], 1.0, rtol=0, atol=1e-15)
    # S − 2S = −S exactly (doubling is exact): the mean Frobenius norm of S.
    mean_norm = np.mean(np.linalg.norm(np.asarray(s).reshape(5, -1), axis=-1))
    np.testing.assert_allclose(out["model_diff"], mean_norm, rtol=1e-15)
    # Symmetric in its arguments.
    back = metrics.alignment(2 * s, s)
    np.testing.assert_allclose(back["model_diff"], out["model_diff"], rtol=1e-15)
    np.testing.assert_allclose(back["model_cos"], out["model_cos"], rtol=1e-15)


@REST
def test_alignment_negated():
    s = _random_sens(2)
    out = metrics.alignment(s, -s)
    np.testing.assert_allclose(out["model_cos"], -1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        out["model_diff"],
        2 * np.mean(np.linalg.norm(np.asarray(s).reshape(5, -1), axis=-1)),
        rtol=1e-15,
    )


@REST
def test_alignment_by_hand():
    # Task 1: orthogonal unit matrices: cos 0, ‖S − R‖ = √2.
    # Task 2: S = diag(3, 4), R = diag(3, 0): ⟨S, R⟩ = 9, ‖S‖ = 5, ‖R‖ = 3: cos 0.6, ‖S − R‖ = 4.
    # The cosine is over the whole flattened matrix, not per output row (task 2's rows would give
    # 1 and 0/0).
    s = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]])
    r = jnp.asarray([[[0.0, 0.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 0.0]]])
    out = metrics.alignment(s, r)
    np.testing.assert_allclose(out["model_cos"], (0.0 + 0.6) / 2, rtol=1e-15)
    np.testing.assert_allclose(out["model_diff"], (np.sqrt(2) + 4) / 2, rtol=1e-15)


@REST
def test_alignment_zero_sensitivity_is_finite():
    s = _random_sens(3, (2, 1, 3))
    out = metrics.alignment(jnp.zeros_like(s), s)
    assert float(out["model_cos"]) == 0.0
    np.testing.assert_allclose(
        out["model_diff"], np.mean(np.linalg.norm(np.asarray(s)[:, 0], axis=-1)), rtol=1e-15
    )


@REST
def test_preds_diff_by_hand():
    # Euclidean distance per task (not squared), then the mean: (‖(−3, −4)‖ + 0) / 2 = 2.5.
    pred = jnp.asarray([[0.0, 0.0], [1.0, 1.0]])
    ref = jnp.asarray([[3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(metrics.preds_diff(pred, ref), 2.5, rtol=1e-15)
    # Scalar labels: (|1| + |−2|) / 2.
    np.testing.assert_allclose(
        metrics.preds_diff(jnp.asarray([[1.0], [-2.0]]), jnp.zeros((2, 1))), 1.5, rtol=1e-15
    )
    assert float(metrics.preds_diff(pred, pred)) == 0.0


# --- evaluate and gd_loss -----------------------------------------------------------------------

KEYS = {"loss", "gd_loss", "preds_diff", "model_diff", "model_cos"}


@functools.cache
def _jitted_evaluate(layout, steps):
    return nnx.jit(lambda m, t, lr: metrics.evaluate(m, t, layout=layout, gd_lr=lr, steps=steps))


@pytest.mark.parametrize(
    ("d_in", "d_out", "layout", "steps"),
    [
        (3, 1, "interleaved", 2),
        (3, 1, "constructed", 1),
        (4, 2, "interleaved", 2),
        (2, 3, "interleaved", 1),
    ],
)
@REST
def test_evaluate_construction_is_gd(d_in, d_out, layout, steps):
    task = _task(d_in, d_out, seed=30 + steps)
    model = _constructed(d_in, d_out, layout, steps)
    out = _jitted_evaluate(layout, steps)(model, task, LR)
    assert set(out) == KEYS
    ref = gd.predict(task.x, task.y, task.x_query, lr=LR, steps=steps)
    np.testing.assert_allclose(out["gd_loss"], gd.loss(ref, task.y_query), rtol=1e-14)
    np.testing.assert_allclose(out["loss"], out["gd_loss"], rtol=TOL)
    assert float(out["preds_diff"]) <= TOL
    assert float(out["model_diff"]) <= TOL
    np.testing.assert_allclose(out["model_cos"], 1.0, rtol=0, atol=TOL)


@REST
def test_evaluate_sens_size_uses_the_first_tasks():
    # A random model (not GD), so each task's alignment differs. One compiled program, three
    # batches: the same tasks reordered, and the first two tasks with a different tail.
    task = _task(4, 2, seed=45)
    model = _random_model(4, 2, "interleaved", 2)
    part = nnx.jit(
        lambda m, t: metrics.evaluate(m, t, layout="interleaved", gd_lr=LR, steps=2, sens_size=2)
    )
    pick = lambda idx: jax.tree.map(lambda v: v[np.asarray(idx)], task)  # noqa: E731
    base = part(model, task)
    swapped = part(model, pick([2, 3, 0, 1]))
    same_head = part(model, pick([0, 1, 1, 0]))
    assert set(base) == KEYS
    for k in ("loss", "gd_loss", "preds_diff"):
        # Means over the whole batch: invariant to reordering it; changed with its tail.
        np.testing.assert_allclose(swapped[k], base[k], rtol=1e-13, err_msg=k)
        assert abs(float(same_head[k]) - float(base[k])) > 1e-6, k
    for k in ("model_diff", "model_cos"):
        # Means over the first two tasks only: unchanged with the tail, changed with the head.
        np.testing.assert_allclose(same_head[k], base[k], rtol=1e-13, err_msg=k)
        assert abs(float(swapped[k]) - float(base[k])) > 1e-6, k


@pytest.mark.parametrize("steps", [1, 2])
@REST
def test_evaluate_against_another_step_size(steps):
    # The construction at η against GD at 1.5η: the metrics see the difference. One step scales
    # W by 1.5 (cosine still 1: it ignores scale); two steps also change W's direction.
    task = _task(4, 2, seed=50)
    model = _constructed(4, 2, "interleaved", steps)
    out = _jitted_evaluate("interleaved", steps)(model, task, 1.5 * LR)
    w = gd.weights(task.x, task.y, lr=LR, steps=steps)
    w_ref = gd.weights(task.x, task.y, lr=1.5 * LR, steps=steps)
    diff = np.mean(np.linalg.norm(np.asarray(w - w_ref).reshape(4, -1), axis=-1))
    np.testing.assert_allclose(out["model_diff"], diff, rtol=1e-10)
    assert float(out["preds_diff"]) > 1e-3
    assert float(out["loss"]) != pytest.approx(float(out["gd_loss"]), rel=1e-6)
    if steps == 1:
        np.testing.assert_allclose(out["model_cos"], 1.0, rtol=0, atol=TOL)
    else:
        assert float(out["model_cos"]) < 1 - 1e-6


@REST
def test_gd_loss_one_step_is_the_closed_form_optimum():
    task = _task(4, 2, seed=60)
    lr, value = metrics.gd_loss(task, steps=1)
    best = gd.optimal_lr(task.x, task.y, task.x_query, task.y_query)
    np.testing.assert_allclose(lr, best, rtol=1e-15)
    at = lambda eta: gd.loss(gd.predict(task.x, task.y, task.x_query, lr=eta), task.y_query)  # noqa: E731
    np.testing.assert_allclose(value, at(best), rtol=1e-14)
    # It is the minimum: the loss is a parabola in η, so 1% away costs ∝ (0.01 η)².
    assert float(value) < float(at(0.99 * best)) and float(value) < float(at(1.01 * best))


@REST
def test_gd_loss_passes_steps_to_best_lr(monkeypatch):
    # K ≥ 2 is gd.best_lr's grid search (tested in test_gd.py, seconds to compile): check only
    # that gd_loss hands it the task and K and returns its answer.
    task = _task(4, 2, seed=61)
    calls = []

    def spy(x, y, x_query, y_query, *, steps):
        calls.append((x, y, x_query, y_query, steps))
        return "lr", "loss"

    monkeypatch.setattr(metrics.gd, "best_lr", spy)
    assert metrics.gd_loss(task, steps=2) == ("lr", "loss")
    ((x, y, x_query, y_query, steps),) = calls
    assert steps == 2
    assert x is task.x and y is task.y and x_query is task.x_query and y_query is task.y_query


# --- param_match_error --------------------------------------------------------------------------


def _const(value):
    """An initializer returning ``value`` broadcast to the requested shape."""
    value = np.asarray(value, np.float64)

    def init(key, shape, dtype=F64):
        del key
        return jnp.asarray(np.broadcast_to(value, shape), dtype)

    return init


def _from_values(d_in, d_out, layout, steps, v, lam_y=1.0, lam_x=1.0):
    """A GDSSM with the given parameter values, built through the initializers."""
    init = GDSSMInit(
        q_y=_const(v["q_y"]),
        q_x=_const(v["q_x"]),
        lam=_const(lam_y),
        lam_x=_const(lam_x),
        c_y=_const(v["c_y"]),
        c_x=_const(v["c_x"]),
        d=_const(v["d"]),
    )
    return GDSSM(
        d_in, d_out, n_steps=steps, layout=layout, init=init, param_dtype=F64, rngs=nnx.Rngs(0)
    )


def _values(d_in, d_out, layout):
    return construction.gd_ssm_values(d_in=d_in, d_out=d_out, n_context=N, lr=LR, layout=layout)


def _transformed(d_in, d_out, layout, steps, alpha=-2.0, beta=-0.25, gamma=2.0, a=-3.0):
    """The construction moved along its symmetries: scalings and unreachable padding entries.

    Returns the model and whether any padding entry was changed.
    """
    assert alpha * beta * gamma == 1.0
    v = dict(_values(d_in, d_out, layout))
    v.update(q_y=alpha * v["q_y"], c_y=beta * v["c_y"], d=gamma * v["d"])
    v.update(q_x=a * v["q_x"], c_x=v["c_x"] / a)
    rng = np.random.default_rng(7)
    h = max(d_in, d_out) if layout == "interleaved" else d_in
    rows = h if layout == "interleaved" else 1
    # S^y = Σ y xᵀ is zero past row d_out and column d_in, S^x past [:d_in, :d_in] (zero padding).
    # So Λ_y matters only on [:d_out, :d_in], Λ_x only on [:d_in, :d_in], C_y only on its first
    # d_out columns and C_x only on [:d_in, :d_in]. Everything else is arbitrary.
    lam_y = rng.uniform(-2, 2, (rows, h))
    lam_y[:d_out, :d_in] = 1.0
    lam_x = rng.uniform(-2, 2, (h, h))
    lam_x[:d_in, :d_in] = 1.0
    c_y, c_x = v["c_y"].copy(), v["c_x"].copy()
    c_y[:, d_out:] = rng.uniform(-2, 2, c_y[:, d_out:].shape)
    c_x[d_in:] = rng.uniform(-2, 2, c_x[d_in:].shape)
    c_x[:, d_in:] = rng.uniform(-2, 2, c_x[:, d_in:].shape)
    v.update(c_y=c_y, c_x=c_x)
    padded = (lam_y != 1).any() or (c_y[:, d_out:] != 0).any() or (c_x[:, d_in:] != 0).any()
    return _from_values(d_in, d_out, layout, steps, v, lam_y, lam_x), padded


BLOCKS_1 = {"Q_y", "C_y", "D", "scale_y", "lambda_y", "total"}
BLOCKS_2 = BLOCKS_1 | {"Q_x", "C_x", "scale_x", "lambda_x"}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize(("d_in", "d_out", "layout"), CONFIGS)
@REST
def test_param_match_construction_against_itself(d_in, d_out, layout, steps):
    model = _constructed(d_in, d_out, layout, steps)
    other = _constructed(d_in, d_out, layout, steps)
    out = metrics.param_match_error(model, other)
    assert set(out) == (BLOCKS_1 if steps == 1 else BLOCKS_2)
    assert all(isinstance(v, float) for v in out.values())
    assert out["total"] <= TOL
    assert out["total"] == max(v for k, v in out.items() if k != "total")


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize(("d_in", "d_out", "layout"), CONFIGS)
@REST
def test_param_match_symmetries_score_zero(d_in, d_out, layout, steps):
    constructed = _constructed(d_in, d_out, layout, steps)
    # The test's own rebuild of the construction from its values is the construction.
    rebuilt = _from_values(d_in, d_out, layout, steps, _values(d_in, d_out, layout))
    for a, b in zip(
        jax.tree.leaves(nnx.state(rebuilt)), jax.tree.leaves(nnx.state(constructed)), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    moved, padded = _transformed(d_in, d_out, layout, steps)
    # Not vacuous: the parameters really moved (Q_y's one entry 1 → α = −2) and, in the
    # interleaved configurations (all have padding), some unreachable Λ and C entries too.
    q_y = moved.yx_attention.q if layout == "interleaved" else moved.yx_attention.p
    assert np.min(q_y[...]) == -2.0
    assert padded == (layout == "interleaved")
    # It is a symmetry: every prefix prediction equals the construction's.
    task = _task(d_in, d_out, seed=70 + steps)
    toks = tasks.tokens(task, layout)
    np.testing.assert_allclose(call(moved, toks), call(constructed, toks), rtol=0, atol=TOL)

    out = metrics.param_match_error(moved, constructed)
    # Unit-normalised blocks agree up to the admissible signs and the norm products to rounding.
    assert out["total"] <= TOL, out


def _perturbed(model, eps, seed=0):
    """``model`` with ``eps`` times a fixed standard-normal direction added to every parameter."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    noise = [rng.standard_normal(leaf.shape) for leaf in leaves]
    moved = [leaf + eps * n for leaf, n in zip(leaves, noise, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, moved))


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize(("d_in", "d_out", "layout"), [CONFIGS[0], CONFIGS[1], CONFIGS[2]])
@REST
def test_param_match_linear_in_a_perturbation(d_in, d_out, layout, steps):
    constructed = _constructed(d_in, d_out, layout, steps)
    eps = 1e-5
    e1 = metrics.param_match_error(_perturbed(constructed, eps), constructed)
    e2 = metrics.param_match_error(_perturbed(constructed, 2 * eps), constructed)
    assert e1["total"] > 0
    # Every block error is first-order homogeneous in ε; the second-order remainder is relative
    # O(ε·|noise|/|block|) ≈ 1e-5 · 3 / 0.17 ≈ 2e-4 (C = η/N = 1/6; ≤ 3e-4 seen), and rounding
    # ~1e-16/1e-5. 1e-2 leaves a decade and a half yet fails for anything not linear in ε.
    np.testing.assert_allclose(e2["total"] / e1["total"], 2.0, rtol=1e-2)
    # Also each block on its own, except C_y for scalar labels: one compared entry (the rest is
    # padding), whose direction is ±1, so no directional error (its size is in scale_y).
    for k, v in e1.items():
        if k == "C_y" and d_out == 1:
            assert v == 0.0
            continue
        assert v > 0, k
        np.testing.assert_allclose(e2[k] / v, 2.0, rtol=1e-2, err_msg=k)


@REST
def test_param_match_different_step_size_is_a_scale_error():
    # Doubling η doubles C_y (and C_x): directions agree, the product of norms is off by 2×.
    a = _constructed(4, 2, "interleaved", 2, lr=2 * LR)
    out = metrics.param_match_error(a, _constructed(4, 2, "interleaved", 2))
    np.testing.assert_allclose(out["scale_y"], 1.0, rtol=1e-14)
    np.testing.assert_allclose(out["scale_x"], 1.0, rtol=1e-14)
    for k in ("Q_y", "C_y", "D", "lambda_y", "Q_x", "C_x", "lambda_x"):
        assert out[k] <= TOL, k


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize(("d_in", "d_out", "layout"), [CONFIGS[1], CONFIGS[2]])
@REST
def test_param_match_non_symmetries_score_large(d_in, d_out, layout, steps):
    constructed = _constructed(d_in, d_out, layout, steps)
    task = _task(d_in, d_out, seed=80)
    toks = tasks.tokens(task, layout)
    ref = call(constructed, toks)

    # Negating D alone (an odd number of sign flips) negates every prediction.
    v = dict(_values(d_in, d_out, layout))
    flipped = _from_values(d_in, d_out, layout, steps, {**v, "d": -v["d"]})
    np.testing.assert_allclose(call(flipped, toks), -ref, rtol=0, atol=TOL)
    out = metrics.param_match_error(flipped, constructed)
    # Every admissible sign pattern leaves one block pointing the opposite way: distance 2.
    np.testing.assert_allclose(out["total"], 2.0, rtol=1e-15)

    # Changing a reachable Λ entry (a forgetting factor on S^y[0, 0]) changes the predictions
    # and is caught.
    h = max(d_in, d_out) if layout == "interleaved" else d_in
    rows = h if layout == "interleaved" else 1
    lam_y = np.ones((rows, h))
    lam_y[0, 0] = 0.5
    decayed = _from_values(d_in, d_out, layout, steps, v, lam_y=lam_y)
    assert np.abs(call(decayed, toks) - ref).max() > 1e-3
    out = metrics.param_match_error(decayed, constructed)
    np.testing.assert_allclose(out["lambda_y"], 0.5 / np.sqrt(min(rows, d_out) * d_in), rtol=1e-14)
    assert out["total"] == out["lambda_y"]


@REST
def test_param_match_rejects_mismatched_models():
    base = _constructed(3, 1, "interleaved", 2)
    for other in (
        _constructed(4, 1, "interleaved", 2),  # d_in
        _constructed(3, 2, "interleaved", 2),  # d_out
        _constructed(3, 1, "interleaved", 1),  # n_steps
        _constructed(3, 1, "constructed", 2),  # layout
    ):
        with pytest.raises(ValueError, match="must share"):
            metrics.param_match_error(other, base)
        with pytest.raises(ValueError, match="must share"):
            metrics.param_match_error(base, other)
    linear = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="GDSSM"):
        metrics.param_match_error(linear, base)
    with pytest.raises(TypeError, match="GDSSM"):
        metrics.param_match_error(base, linear)
    with pytest.raises(TypeError, match="GDSSM"):
        metrics.param_match_error(base, {"q": np.eye(3)})


@pytest.mark.parametrize("steps", [1, 2])
@REST
def test_evaluate_against_other_references(steps):
    # The construction at η against GD at 1.5η, with other references: GD at η itself (the model's
    # own implicit model: distance 0, cosine 1) and GD at 1.5η (the main reference again).
    task = _task(4, 2, seed=51)
    model = _constructed(4, 2, "interleaved", steps)
    others = {
        "own": gd.weights(task.x, task.y, lr=LR, steps=steps),
        "main": gd.weights(task.x, task.y, lr=1.5 * LR, steps=steps),
    }
    out = nnx.jit(
        lambda m, t, o: metrics.evaluate(
            m, t, layout="interleaved", gd_lr=1.5 * LR, steps=steps, other_refs=o
        )
    )(model, task, others)
    assert set(out) == KEYS | {f"{k}_{n}" for k in ("model_diff", "model_cos") for n in others}
    np.testing.assert_allclose(out["model_diff_own"], 0.0, rtol=0, atol=TOL)
    np.testing.assert_allclose(out["model_cos_own"], 1.0, rtol=0, atol=TOL)
    for k in ("model_diff", "model_cos"):
        np.testing.assert_allclose(out[f"{k}_main"], out[k], rtol=1e-13, err_msg=k)
