"""In-context classification: the sampler, cross-entropy GD against numpy loops, the best step
size, and multinomial logistic regression (float64, as conftest sets)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_gd import gd, tasks


def _task(seed=0, batch=4, n=6, d_in=4, n_classes=3, **kw):
    return tasks.classification(
        jax.random.key(seed), batch=batch, n_context=n, d_in=d_in, n_classes=n_classes, **kw
    )


def _data(seed=0, batch=3, n=6, d_in=4, n_classes=3):
    """Classification tasks as :func:`tasks.classification` samples them (``W* ~ N(0, 1)``,
    ``x ~ N(0, I)``, the argmax class), made in numpy: the references' tests need no sampler, so
    no compilation of one per shape."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((batch, n_classes, d_in))
    x = rng.standard_normal((batch, n + 1, d_in))
    y = np.eye(n_classes)[np.argmax(np.einsum("bki,bni->bnk", w, x), axis=-1)]
    return tasks.LinearTask(
        *(jnp.asarray(v) for v in (x[:, :-1], y[:, :-1], x[:, -1], y[:, -1], w))
    )


def _argmax_labels(w, x):
    """The class ``argmax_k (W x)_k`` of every input, computed in numpy float64."""
    return np.argmax(np.einsum("bki,b...i->b...k", np.asarray(w), np.asarray(x)), axis=-1)


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("x_dist", ["normal", "uniform"])
def test_shapes_one_hot_labels_are_the_argmax_class(x_dist):
    t = _task(batch=8, n=12, d_in=4, n_classes=5, x_dist=x_dist)
    assert t.x.shape == (8, 12, 4) and t.y.shape == (8, 12, 5) and t.w.shape == (8, 5, 4)
    assert t.x_query.shape == (8, 4) and t.y_query.shape == (8, 5)
    assert all(v.dtype == jnp.float64 for v in t)
    for labels in (np.asarray(t.y), np.asarray(t.y_query)):
        assert set(np.unique(labels)) <= {0.0, 1.0}
        np.testing.assert_array_equal(labels.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(np.argmax(t.y, -1), _argmax_labels(t.w, t.x))
    np.testing.assert_array_equal(np.argmax(t.y_query, -1), _argmax_labels(t.w, t.x_query))
    if x_dist == "uniform":
        assert np.all(np.abs(np.asarray(t.x)) <= 0.5) and np.all(np.abs(t.x_query) <= 0.5)
    else:  # 384 + 32 standard normals: some beyond ±1/2 (all inside has probability ~1e-160)
        assert np.max(np.abs(np.asarray(t.x))) > 0.5
    # The same key gives the same task, another key another one.
    same = _task(batch=8, n=12, d_in=4, n_classes=5, x_dist=x_dist)
    for a, b in zip(t, same, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(t.x, _task(seed=1, batch=8, n=12, d_in=4, n_classes=5).x)
    # A regression task with d_out = K to the token layouts.
    toks = tasks.tokens(t, "interleaved")
    assert toks.shape == (8, 2 * 12 + 1, 5) and (toks.d_in, toks.d_out) == (4, 5)
    np.testing.assert_array_equal(np.asarray(toks)[:, 1, :], t.y[:, 0])


# 200 tasks × 20 inputs: 4000 labels per sampled task batch.
TEMP = {"batch": 200, "n": 19, "d_in": 3, "n_classes": 4}


def test_temperature_samples_the_class_from_the_softmax():
    plain = _task(seed=3, **TEMP)
    classes = lambda t: np.concatenate(  # noqa: E731
        [np.argmax(t.y, -1).ravel(), np.argmax(t.y_query, -1).ravel()]
    )
    argmax = classes(plain)
    logits = np.concatenate(
        [
            np.einsum("bki,bni->bnk", plain.w, plain.x).reshape(-1, 4),
            np.einsum("bki,bi->bk", plain.w, plain.x_query),
        ]
    )
    count = argmax.size  # 4000
    for temperature in (1e6, 1.0, 1e-6):
        t = _task(seed=3, temperature=temperature, **TEMP)
        # The same key draws the same maps and inputs; only the labels are sampled.
        np.testing.assert_array_equal(t.x, plain.x)
        np.testing.assert_array_equal(t.w, plain.w)
        for labels in (np.asarray(t.y), np.asarray(t.y_query)):
            assert set(np.unique(labels)) <= {0.0, 1.0}
            np.testing.assert_array_equal(labels.sum(axis=-1), 1.0)
        got = classes(t)
        p = _softmax(logits / temperature)
        # Each class's frequency is the mean of 4000 independent indicators of variance <= 1/4:
        # it lies within 5 standard errors (5 · 0.5/√4000 = 0.04) of its mean probability.
        freq = np.bincount(got, minlength=4) / count
        np.testing.assert_array_less(np.abs(freq - p.mean(axis=0)), 5 * 0.5 / math.sqrt(count))
        # So does the fraction of labels that are not the argmax class, around 1 − E[max p].
        mismatch = np.mean(got != argmax)
        assert abs(mismatch - (1 - p.max(axis=-1).mean())) < 5 * 0.5 / math.sqrt(count)
        if temperature == 1e6:  # logits/T ~ 1e-6: uniform classes to 1e-6
            np.testing.assert_allclose(p, 0.25, atol=1e-5)
            assert mismatch > 0.6  # 3/4 expected, 5 standard errors 0.04
        if temperature == 1.0:
            assert 0.1 < mismatch < 0.9  # sampled, not the argmax
        if temperature == 1e-6:
            # A label differs from the argmax only if its top two logits are within ~40·T of
            # each other: probability ~1e-4 per label for these O(1) logits, ~0.4 in 4000.
            assert mismatch <= 2e-3


def test_w_scale_zero_without_temperature_is_class_zero():
    t = _task(batch=8, n=12, d_in=4, n_classes=5, w_scale=0.0, x_dist="uniform")
    np.testing.assert_array_equal(t.w, 0)
    np.testing.assert_array_equal(np.argmax(t.y, -1), 0)


def test_float32_and_traced_temperature():
    t = _task(dtype=jnp.float32, temperature=0.5)
    assert all(v.dtype == jnp.float32 for v in t)
    # temperature and w_scale are traced: a caller may jit over them.
    sample = jax.jit(lambda temp: _task(dtype=jnp.float32, temperature=temp, w_scale=2 * temp))
    for a, b in zip(sample(0.5), t, strict=True):  # w_scale = 1, temperature = 0.5 alike
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)


def test_centred_shifts_the_labels_by_one_over_k():
    t = _data(n_classes=4)
    c = tasks.centred(t)
    np.testing.assert_array_equal(c.y, np.asarray(t.y) - 0.25)
    np.testing.assert_array_equal(c.y_query, np.asarray(t.y_query) - 0.25)
    np.testing.assert_allclose(np.sum(c.y, -1), 0, atol=1e-15)
    for a, b in ((c.x, t.x), (c.x_query, t.x_query), (c.w, t.w)):
        np.testing.assert_array_equal(a, b)
    assert isinstance(c, tasks.LinearTask)
    with pytest.raises(ValueError, match=r"^task.y must hold class labels.*already centred"):
        tasks.centred(c)
    with pytest.raises(ValueError, match="^task must be"):
        tasks.centred(t._replace(x=t.x[0]))


def _cls(**kw):
    args = {"batch": 2, "n_context": 4, "d_in": 3, "n_classes": 3} | kw
    return tasks.classification(jax.random.key(0), **args)


BAD = [
    (lambda: _cls(batch=0), "^batch must be a positive integer; got 0"),
    (lambda: _cls(n_context=0), "^n_context must be a positive integer"),
    (lambda: _cls(d_in=-1), "^d_in must be a positive integer"),
    (lambda: _cls(n_context=2.0), "^n_context must be a positive integer"),
    (lambda: _cls(n_classes=1), "^n_classes must be an integer >= 2; got 1"),
    (lambda: _cls(n_classes=0), "^n_classes must be an integer >= 2; got 0"),
    (lambda: _cls(n_classes=3.0), r"^n_classes must be an integer >= 2; got 3\.0"),
    (lambda: _cls(n_classes=True), "^n_classes must be an integer >= 2; got True"),
    (lambda: _cls(temperature=0.0), "^temperature must be a positive finite number; got 0.0"),
    (lambda: _cls(temperature=-1.0), "^temperature must be a positive finite number"),
    (lambda: _cls(temperature=float("inf")), "^temperature must be a positive finite number"),
    (lambda: _cls(temperature=float("nan")), "^temperature must be a positive finite number"),
    (lambda: _cls(temperature="1"), "^temperature must be a positive finite number"),
    (lambda: _cls(x_dist="laplace"), r"^x_dist must be one of \('normal', 'uniform'\)"),
    (lambda: _cls(w_scale=-1.0), "^w_scale must be a non-negative finite number"),
    (lambda: _cls(dtype=jnp.int32), "^dtype must be a float dtype"),
]


@pytest.mark.parametrize(("call", "match"), BAD)
def test_bad_input_to_the_sampler_raises_before_tracing(call, match, monkeypatch):
    def traced(*args):
        raise AssertionError("reached the jitted body")

    monkeypatch.setattr(tasks, "_classification", traced)
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------- cross-entropy GD


def numpy_ce_gd(x, y, lr, steps):
    """``steps`` cross-entropy GD steps from 0, one task and one pair at a time, in numpy."""
    out = []
    for xb, yb in zip(np.asarray(x), np.asarray(y), strict=True):
        w = np.zeros((yb.shape[1], xb.shape[1]))
        for _ in range(steps):
            grad = np.zeros_like(w)
            for xi, yi in zip(xb, yb, strict=True):
                grad += np.outer(_softmax(w @ xi) - yi, xi)
            w = w - lr * grad / xb.shape[0]
        out.append(w)
    return np.stack(out)


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_cross_entropy_gd_matches_numpy_loop(n_classes, steps):
    t = _data(batch=3, n=6, d_in=4, n_classes=n_classes)
    w = gd.cross_entropy_weights(t.x, t.y, lr=1.3, steps=steps)
    # A handful of O(1) sums and exponentials: rounding ~1e-15.
    np.testing.assert_allclose(w, numpy_ce_gd(t.x, t.y, 1.3, steps), rtol=1e-12, atol=1e-14)
    logits = gd.cross_entropy_predict(t.x, t.y, t.x_query, lr=1.3, steps=steps)
    np.testing.assert_allclose(logits, np.einsum("bki,bi->bk", w, t.x_query), rtol=1e-13)


def test_one_step_formula_and_the_update_is_minus_the_gradient():
    t = _data(batch=3, n=7, d_in=4, n_classes=3)
    eta, k, n = 0.7, 3, 7
    w1 = gd.cross_entropy_weights(t.x, t.y, lr=eta)
    want = eta / n * np.einsum("bnk,bni->bki", np.asarray(t.y) - 1 / k, t.x)
    np.testing.assert_allclose(w1, want, rtol=1e-13, atol=1e-15)
    # W_3 − W_2 = −η ∇L(W_2), L_b(W) the mean context cross-entropy of task b. cross_entropy
    # averages over the B·N rows, so its gradient is ∇L_b / B.
    w2 = gd.cross_entropy_weights(t.x, t.y, lr=eta, steps=2)
    w3 = gd.cross_entropy_weights(t.x, t.y, lr=eta, steps=3)
    grad = jax.jit(jax.grad(lambda w: gd.cross_entropy(jnp.einsum("bki,bni->bnk", w, t.x), t.y)))(
        w2
    )
    np.testing.assert_allclose(w3 - w2, -eta * 3 * grad, rtol=1e-12, atol=1e-15)


def test_one_step_softmax_equals_squared_loss_gd_softmax():
    # The logits differ by (η/(NK)) Σ_i x_iᵀ x_q in every class: the softmax cannot see it.
    t = _data(batch=5, n=8, d_in=3, n_classes=4)
    ce = gd.cross_entropy_predict(t.x, t.y, t.x_query, lr=2.5)
    sq = gd.predict(t.x, t.y, t.x_query, lr=2.5)
    np.testing.assert_allclose(jax.nn.softmax(ce), jax.nn.softmax(sq), rtol=1e-12, atol=1e-15)
    shift = 2.5 / (8 * 4) * np.einsum("bni,bi->b", t.x, t.x_query)
    np.testing.assert_allclose(sq - ce, np.repeat(shift[:, None], 4, 1), rtol=1e-12, atol=1e-14)


def test_cross_entropy_and_accuracy():
    y = jax.nn.one_hot(jnp.array([0, 2, 1]), 3, dtype=jnp.float64)
    np.testing.assert_allclose(gd.cross_entropy(jnp.zeros((3, 3)), y), math.log(3), rtol=1e-15)
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 3.0, -1.0]])
    want = -np.mean(np.log(_softmax(np.asarray(logits))[[0, 1, 2], [0, 2, 1]]))
    np.testing.assert_allclose(gd.cross_entropy(logits, y), want, rtol=1e-14)
    assert float(gd.accuracy(logits, y)) == pytest.approx(2 / 3, rel=1e-15)
    # A distribution as the label; a class of logit −inf that the label never names costs 0.
    soft = jnp.array([[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(
        gd.cross_entropy(jnp.array([[0.0, 0.0, -jnp.inf]]), soft), math.log(2), rtol=1e-15
    )
    with pytest.raises(ValueError, match=r"^logits and y must have the same shape"):
        gd.cross_entropy(logits, y[:, 0])
    with pytest.raises(ValueError, match=r"^logits and y must have the same shape"):
        gd.accuracy(logits[:2], y)


# ------------------------------------------------------------------------------ best step


BEST = {"seed": 5, "batch": 256, "n": 10, "d_in": 5, "n_classes": 3}
GRID = np.linspace(0.1, 30.0, 60)


def _query_loss(t, lr, steps=1):
    logits = gd.cross_entropy_predict(t.x, t.y, t.x_query, lr=jnp.asarray(lr), steps=steps)
    return float(gd.cross_entropy(logits, t.y_query))


def test_best_lr_one_step_solves_the_convex_problem_to_rounding():
    t = _data(**BEST)
    lr, value = gd.cross_entropy_best_lr(t.x, t.y, t.x_query, t.y_query, grid=GRID)
    lr = float(lr)
    assert lr > 0 and float(value) == pytest.approx(_query_loss(t, lr), rel=1e-14)
    # One step's logits are η a with a = W_1(η = 1) x_q: the loss in numpy on a grid of η, and
    # its derivative d/dη mean CE(η a, y) = mean ⟨softmax(η a) − y, a⟩.
    a = np.asarray(gd.cross_entropy_predict(t.x, t.y, t.x_query, lr=1.0))
    yq = np.asarray(t.y_query)
    np_loss = lambda eta: -np.mean(np.sum(yq * np.log(_softmax(eta * a)), -1))  # noqa: E731
    # The derivative vanishes (O(1) terms: rounding ~1e-16), and moving off η is never better.
    assert abs(np.mean(np.sum((_softmax(lr * a) - yq) * a, -1))) < 1e-13
    assert float(value) == pytest.approx(np_loss(lr), rel=1e-13)
    for factor in (1 - 1e-3, 1 + 1e-3):
        assert _query_loss(t, lr * factor) >= float(value) - 1e-14
    assert float(value) <= min(np_loss(eta) for eta in GRID) + 1e-15
    # Grids entirely below or above the minimiser: the bracket moves to it.
    for grid in (np.linspace(0.01, 0.02, 60), np.linspace(200.0, 800.0, 60)):
        other, _ = gd.cross_entropy_best_lr(t.x, t.y, t.x_query, t.y_query, grid=grid)
        np.testing.assert_allclose(other, lr, rtol=1e-12)


@pytest.mark.parametrize("steps", [2])
def test_best_lr_two_steps_is_at_least_the_best_grid_point(steps):
    t = _data(**BEST)
    grid = np.linspace(0.5, 20.0, 17)  # as many points as each refinement: one compilation
    lr, value = gd.cross_entropy_best_lr(
        t.x, t.y, t.x_query, t.y_query, steps=steps, grid=grid, refine=4, points=17
    )
    lr = float(lr)
    assert float(value) == pytest.approx(_query_loss(t, lr, steps), rel=1e-14)
    losses = gd.cross_entropy_lr_losses(t.x, t.y, t.x_query, t.y_query, grid, steps=steps)
    assert float(value) <= float(np.min(losses))
    # Refined to a spacing of 2·1.22/8⁴ ≈ 6e-4 around the minimum, inside ±1e-3·η (η > 2 here):
    # the loss a thousandth of η away is not lower.
    assert lr > 2
    for factor in (1 - 1e-3, 1 + 1e-3):
        assert _query_loss(t, lr * factor, steps) >= float(value) - 1e-14


# ------------------------------------------------------------------- logistic regression


def _objective(w, x, y, reg):
    """(1/N) Σ_i CE(W x_i, y_i) + (reg/2)‖W‖², summed over the tasks (each task's own W)."""
    z = jnp.einsum("bki,bni->bnk", w, x)
    data = -jnp.sum(y * jax.nn.log_softmax(z, axis=-1), axis=(1, 2)) / x.shape[1]
    return jnp.sum(data + 0.5 * reg * jnp.sum(jnp.square(w), axis=(1, 2)))


LOGISTIC = {"seed": 2, "batch": 64, "n": 40, "d_in": 3, "n_classes": 3}


def test_logistic_fit_converges_to_the_stationary_point():
    t = _data(**LOGISTIC)
    w, grad_norm, iterations = gd.logistic_regression_fit(t.x, t.y, reg=0.01, tol=1e-10)
    assert w.shape == (64, 3, 3) and grad_norm.shape == iterations.shape == (64,)
    assert np.all(np.asarray(grad_norm) <= 1e-10) and np.all(np.asarray(iterations) >= 1)
    grad = jax.jit(jax.grad(_objective))(w, t.x, t.y, 0.01)
    scale = np.mean(np.linalg.norm(np.asarray(t.x), axis=-1), axis=-1)  # (1/N) Σ ‖x_i‖ per task
    np.testing.assert_array_less(np.linalg.norm(np.asarray(grad), axis=(1, 2)), 1e-10 * scale)
    logits = gd.logistic_regression(t.x, t.y, t.x_query, reg=0.01)
    np.testing.assert_allclose(logits, np.einsum("bki,bi->bk", w, t.x_query), rtol=1e-13)


def test_logistic_fit_equals_long_plain_gradient_descent():
    t = _data(**LOGISTIC)
    x, y, reg = np.asarray(t.x)[:4], np.asarray(t.y)[:4], 0.5  # the first 4 tasks, in numpy
    w = np.zeros((4, 3, 3))
    # f is reg-strongly convex with ∇² ≼ (1/2 max‖x‖² + reg) I: step 1/L contracts by 1 − reg/L.
    big = 0.5 * np.max(np.sum(x * x, -1)) + reg
    for _ in range(3000):  # (1 − 0.5/L)^3000 < 1e-20 for L < 30
        p = _softmax(np.einsum("bki,bni->bnk", w, x))
        w = w - (np.einsum("bnk,bni->bki", p - y, x) / 40 + reg * w) / big
    assert big < 30
    # Strong convexity: ‖W − W*‖ <= ‖∇f(W)‖ / reg <= tol · (1/N)Σ‖x_i‖ / reg ≈ 1e-13 · 1.6 / 0.5.
    fitted, grad_norm, _ = gd.logistic_regression_fit(t.x, t.y, reg=reg, tol=1e-13)
    assert np.all(np.asarray(grad_norm) <= 1e-13)
    np.testing.assert_allclose(fitted[:4], w, rtol=0, atol=1e-12)


def test_logistic_with_a_small_penalty_learns_separable_classes():
    t = _data(**LOGISTIC)
    logits = gd.logistic_regression(t.x, t.y, t.x_query, reg=1e-3)
    # 64 queries, chance 1/3 (standard error 0.06): 0.7 is six standard errors above chance.
    assert float(gd.accuracy(logits, t.y_query)) > 0.7
    reg, value = gd.logistic_best_reg(t.x, t.y, t.x_query, t.y_query, grid=[1e-3, 1e-1, 10.0])
    losses = [
        float(gd.cross_entropy(gd.logistic_regression(t.x, t.y, t.x_query, reg=r), t.y_query))
        for r in (1e-3, 1e-1, 10.0)
    ]
    assert float(reg) == [1e-3, 1e-1, 10.0][int(np.argmin(losses))]
    assert float(value) == min(losses)
    # Too few iterations is an error, never a silent answer.
    with pytest.raises(RuntimeError, match=r"did not converge.*max_iter=1"):
        gd.logistic_regression(t.x, t.y, t.x_query, reg=1e-3, max_iter=1)
    _, grad_norm, iterations = gd.logistic_regression_fit(t.x, t.y, reg=1e-3, max_iter=1)
    assert np.all(np.asarray(iterations) == 1) and np.any(np.asarray(grad_norm) > 1e-10)


# ----------------------------------------------------------------------------- bad input


def _t():
    return _data(batch=2, n=4, d_in=3, n_classes=3)


BAD_GD = [
    (lambda t: gd.cross_entropy_weights(t.x, t.y, lr=0.0), "^lr must be a positive finite"),
    (lambda t: gd.cross_entropy_predict(t.x, t.y, t.x_query, lr=1.0, steps=0), "^steps must"),
    (lambda t: gd.cross_entropy_predict(t.x, t.y[:, :-1], t.x_query, lr=1.0), "same B, N"),
    (lambda t: gd.cross_entropy_predict(t.x, t.y, t.x_query[:, :-1], lr=1.0), "^x_query must"),
    (
        lambda t: gd.cross_entropy_best_lr(t.x, t.y, t.x_query, t.y_query[:, :-1]),
        r"^y_query must be \(B, d_out\)",
    ),
    (
        lambda t: gd.cross_entropy_best_lr(t.x, t.y, t.x_query, t.y_query - 1 / 3),
        "^y_query must hold class probabilities",
    ),
    (lambda t: gd.cross_entropy_best_lr(t.x, t.y, t.x_query, t.y_query, grid=[]), "^grid must"),
    (
        lambda t: gd.cross_entropy_best_lr(t.x, t.y, t.x_query, t.y_query, steps=2, points=2),
        "^points must be an integer >= 3",
    ),
    (
        lambda t: gd.cross_entropy_lr_losses(t.x, t.y, t.x_query, t.y_query, [[1.0]]),
        "^lrs must be a non-empty 1-D",
    ),
    (lambda t: gd.logistic_regression(t.x, t.y, t.x_query, reg=0.0), "^reg must be a positive"),
    (lambda t: gd.logistic_regression(t.x, t.y, t.x_query, reg=-1.0), "^reg must be a positive"),
    (lambda t: gd.logistic_regression_fit(t.x, t.y, reg=float("nan")), "^reg must be a finite"),
    (lambda t: gd.logistic_regression_fit(t.x, t.y, reg=1.0, tol=0.0), "^tol must be a positive"),
    (lambda t: gd.logistic_regression_fit(t.x, t.y, reg=1.0, max_iter=0), "^max_iter must be"),
    (lambda t: gd.logistic_regression_fit(t.x[0], t.y, reg=1.0), r"\(B, N, d_in\)"),
    (
        lambda t: gd.logistic_best_reg(t.x, t.y, t.x_query, t.y_query, grid=[0.1, 0.0]),
        "^grid must hold positive finite numbers",
    ),
]


@pytest.mark.parametrize(("call", "match"), BAD_GD)
def test_bad_input_to_the_references(call, match, monkeypatch):
    t = _t()

    def traced(*args):
        raise AssertionError("reached a compiled body")

    for name in ("_ce_weights", "_ce_one_step_lr", "_logistic_fit"):
        monkeypatch.setattr(gd.classification, name, traced)
    with pytest.raises(ValueError, match=match):
        call(t)
