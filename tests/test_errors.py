"""Bad input fails at the call, naming the argument, and never gives a silent wrong answer.

Every case here gave a wrong number, a crash deep inside JAX or numpy, or a message that named the
wrong thing before the checks of :mod:`ssm_gd.validate` and :class:`ssm_gd.tokens.Tokens`.
The command line's bad values are tested in ``test_cli.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import construction, gd, metrics, neighbours, scan, tasks, train, validate
from ssm_gd.layers import GDSSM
from ssm_gd.tokens import Tokens

F64 = jnp.float64


def _task(seed=0, batch=6, n=5, d_in=3, d_out=1):
    return tasks.linear_regression(
        jax.random.key(seed), batch=batch, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
    )


# ----------------------------------------------------- silent wrong answers: shapes that broadcast


def test_loss_refuses_a_prediction_and_target_that_would_broadcast():
    t = _task()
    pred = gd.predict(t.x, t.y, t.x_query, lr=1.0)  # (B, 1)
    with pytest.raises(ValueError, match=r"^pred and target must have the same shape.*\(6, 1\)"):
        gd.loss(pred, t.y_query[:, 0])  # (B,): would broadcast to (B, B)
    with pytest.raises(ValueError, match=r"^pred and ref must have the same shape"):
        metrics.preds_diff(pred, t.y_query[:, 0])
    with pytest.raises(ValueError, match=r"^sens and ref must have the same shape"):
        metrics.alignment(jnp.zeros((6, 1, 3)), jnp.zeros((6, 3)))


def test_reference_searches_refuse_query_labels_of_another_shape():
    t = _task()
    args = (t.x, t.y, t.x_query, t.y_query[:, 0])
    with pytest.raises(ValueError, match=r"^y_query must be \(B, d_out\) = \(6, 1\)"):
        gd.optimal_lr(*args)
    with pytest.raises(ValueError, match=r"^y_query must be"):
        gd.best_lr(*args, steps=2)
    with pytest.raises(ValueError, match=r"^y_query must be"):
        gd.grid_search_lr(*args)
    with pytest.raises(ValueError, match=r"^y_query must be"):
        gd.lr_losses(*args, jnp.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"^y_query must be"):
        gd.best_weighted(*args)
    with pytest.raises(ValueError, match=r"^y_query must be"):
        gd.best_preconditioner(t.x, t.y, t.x_query, t.y_query[:, 0])
    # The right shape gives the closed form's value.
    g = gd.predict(t.x, t.y, t.x_query, lr=1.0)
    want = float(jnp.sum(g * t.y_query) / jnp.sum(g * g))
    assert math.isclose(float(gd.optimal_lr(t.x, t.y, t.x_query, t.y_query)), want, rel_tol=1e-13)


# ------------------------------------------ silent wrong answers: tokens made for another model


@pytest.mark.parametrize(
    ("model_sizes", "task_sizes"),
    [((3, 1), (3, 3)), ((1, 3), (3, 1)), ((3, 3), (3, 1)), ((2, 2), (3, 1))],
)
def test_a_gdssm_refuses_tokens_made_for_other_sizes(model_sizes, task_sizes):
    model = GDSSM(*model_sizes, rngs=nnx.Rngs(0))
    toks = tasks.tokens(_task(d_in=task_sizes[0], d_out=task_sizes[1]))
    match = (
        rf"^tokens were made for layout='interleaved', d_in={task_sizes[0]}, d_out={task_sizes[1]}"
    )
    with pytest.raises(ValueError, match=match):
        model(toks)
    with pytest.raises(ValueError, match=match):
        model.predict_query(toks)


def test_a_gdssm_refuses_a_bare_array_and_tokens_of_another_layout():
    model = GDSSM(3, 1, rngs=nnx.Rngs(0))
    toks = tasks.tokens(_task())
    with pytest.raises(TypeError, match=r"^tokens must be ssm_gd\.tokens\.Tokens.*d_in=3, d_out=1"):
        model(toks.array)
    with pytest.raises(ValueError, match=r"^tokens were made for layout='constructed'"):
        model(tasks.tokens(_task(), "constructed"))


def test_a_construction_refuses_tokens_of_another_context_size():
    model = construction.gd_ssm(d_in=3, d_out=1, n_context=10, lr=0.5, dtype=F64)
    toks = tasks.tokens(_task(n=5))
    with pytest.raises(ValueError, match=r"built for n_context=10 pairs.*tokens hold N=5"):
        model(toks)
    with pytest.raises(ValueError, match=r"built for n_context=10"):
        model.predict_query(toks)
    # Built for 5 pairs it is GD on them.
    t = _task(n=5)
    model = construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr=0.5, dtype=F64)
    want = gd.predict(t.x, t.y, t.x_query, lr=0.5)
    np.testing.assert_allclose(model.predict_query(toks), want, rtol=1e-12, atol=1e-15)


def test_the_neighbours_refuse_tokens_made_for_other_sizes():
    model = neighbours.make("h3", 3, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^tokens were made for layout='pairs', d_in=2, d_out=2"):
        model(tasks.tokens(_task(d_in=2, d_out=2), "pairs"))  # the width of (3, 1) pairs


def test_tokens_survive_jit_with_their_layout_and_sizes():
    toks = jax.jit(lambda t: tasks.tokens(t, "interleaved"))(_task())
    assert isinstance(toks, Tokens) and (toks.layout, toks.d_in, toks.d_out) == (
        "interleaved",
        3,
        1,
    )
    assert toks.n_context == 5 and toks.shape == (6, 11, 3)
    model = GDSSM(3, 1, rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, t: m.predict_query(t))(model, toks)
    np.testing.assert_allclose(out, model(toks)[:, -1], rtol=1e-14, atol=1e-16)


# ----------------------------------------------------------------- errors that name the cause


def test_data_that_overflows_the_dtype_is_named_as_the_cause():
    config = train.Config(n_context=4, d_in=2, d_out=1, train_steps=4, batch_size=8, eval_every=2,
                          eval_size=16, sens_size=8, x_range=1e30)  # fmt: skip
    with pytest.raises(ValueError, match=r"evaluation tasks are out of range.*x_range=1e\+30"):
        train.train(config, progress=False)


def test_float64_samples_without_x64_are_refused():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"^dtype='float64' needs jax_enable_x64"):
            tasks.linear_regression(
                jax.random.key(0), batch=2, n_context=3, d_in=2, dtype="float64"
            )
        with pytest.raises(ValueError, match=r"^dtype='float64' needs jax_enable_x64"):
            tasks.sine_regression(jax.random.key(0), batch=2, n_context=3, dtype=jnp.float64)


def test_numpy_integers_are_integers():
    n = np.int64(5)
    t = tasks.linear_regression(jax.random.key(0), batch=np.int32(4), n_context=n, d_in=np.int64(3))
    assert t.x.shape == (4, 5, 3)
    config = train.Config(n_context=n, d_in=np.int64(3), d_out=np.int64(1))
    assert type(config.n_context) is int and config.n_context == 5  # stored as a plain int
    model = construction.gd_ssm(d_in=np.int64(3), d_out=np.int64(1), n_context=n, lr=0.5)
    assert model.predict_query(tasks.tokens(t)).shape == (4, 1)
    assert GDSSM(np.int64(3), np.int64(1), n_steps=np.int64(2), rngs=nnx.Rngs(0)).n_steps == 2
    assert gd.predict(t.x, t.y, t.x_query, lr=np.float32(0.5), steps=np.int64(2)).shape == (4, 1)


def test_the_helpers_say_type_errors_are_value_errors_too():
    # A string for a number is a TypeError, and a ValueError for callers that catch those.
    with pytest.raises(TypeError, match=r"^lr must be a positive finite number; got '0.5' \(str\)"):
        validate.positive_number("lr", "0.5")
    with pytest.raises(ValueError, match=r"^lr must be"):
        validate.positive_number("lr", "0.5")
    assert validate.positive_int("n", np.uint8(3)) == 3 and validate.number_in("f", 1, 0, 1) == 1.0


# ---------------------------------------------------- bad arguments of the public API, by name

_T = _task()
_ARGS = (_T.x, _T.y, _T.x_query, _T.y_query)
_TOKS = tasks.tokens(_T)
_MODEL = GDSSM(3, 1, rngs=nnx.Rngs(0))
_INF, _NAN = float("inf"), float("nan")


def _lin(**kw):
    return tasks.linear_regression(
        jax.random.key(0), **({"batch": 2, "n_context": 3, "d_in": 2} | kw)
    )


def _cfg(**kw):
    return train.Config(**kw)


def _evaluate(**kw):
    args = {"layout": "interleaved", "gd_lr": 1.0} | kw
    return metrics.evaluate(_MODEL, _T, **args)


BAD = [
    # samplers
    (lambda: _lin(x_range=_INF), "x_range", ValueError),
    (lambda: _lin(noise_std=_INF), "noise_std", ValueError),
    (lambda: _lin(w_scale=_NAN), "w_scale", ValueError),
    (lambda: _lin(batch=np.float64(2.0)), "batch", TypeError),
    (lambda: _lin(d_in="2"), "d_in", TypeError),
    (lambda: _lin(dtype="int32"), "dtype", ValueError),
    (lambda: _lin(dtype="not a dtype"), "dtype", TypeError),
    (
        lambda: tasks.sine_regression(jax.random.key(0), batch=2, n_context=3, x_range=_INF),
        "x_range",
        ValueError,
    ),  # fmt: skip
    (
        lambda: tasks.sine_regression(jax.random.key(0), batch=2, n_context=3, amplitude=(0, _NAN)),
        "amplitude",
        ValueError,
    ),  # fmt: skip
    (
        lambda: tasks.gaussian_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, x_var=_INF
        ),
        "x_var",
        ValueError,
    ),  # fmt: skip
    (lambda: tasks.input_spectrum(3, condition=_INF), "condition", ValueError),
    (
        lambda: tasks.shifted_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, x_std=0.0
        ),
        "x_std",
        ValueError,
    ),  # fmt: skip
    (
        lambda: tasks.shifted_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, x_std=1.0, dist="cauchy"
        ),
        "dist",
        ValueError,
    ),  # fmt: skip
    (lambda: tasks.tokens((1, 2, 3)), "task", TypeError),
    (lambda: tasks.tokens(_T._replace(y_query=jnp.zeros(6))), "task.y_query", ValueError),
    (lambda: tasks.tokens(_T, "pair"), "layout", ValueError),
    # tokens
    (lambda: Tokens([[1.0]], layout="interleaved", d_in=1, d_out=1), "array", TypeError),
    (
        lambda: Tokens(jnp.zeros((2, 4, 3)), layout="interleaved", d_in=3, d_out=1),
        "interleaved tokens need L",
        ValueError,
    ),
    (
        lambda: Tokens(jnp.zeros((2, 5, 3)), layout="interleaved", d_in=3, d_out=0),
        "d_out",
        ValueError,
    ),
    # GD references
    (lambda: gd.predict(*_ARGS[:3], lr=_NAN), "lr", ValueError),
    (lambda: gd.predict(*_ARGS[:3], lr=0.0), "lr", ValueError),
    (lambda: gd.predict(*_ARGS[:3], lr=-1.0), "lr", ValueError),
    (lambda: gd.predict(*_ARGS[:3], lr=jnp.ones(2)), "lr", ValueError),
    (lambda: gd.predict(*_ARGS[:3], lr=1.0, steps=0), "steps", ValueError),
    (lambda: gd.predict(*_ARGS[:3], lr=1.0, steps=1.5), "steps", TypeError),
    (lambda: gd.predict(_T.x, _T.y, _T.x_query[:, :2], lr=1.0), "x_query", ValueError),
    (lambda: gd.predict(_T.x, _T.y[:, :4], _T.x_query, lr=1.0), "x must be", ValueError),
    (lambda: gd.predict([[0.0]], _T.y, _T.x_query, lr=1.0), "x", TypeError),
    (lambda: gd.weights(_T.x, _T.y, lr=_INF), "lr", ValueError),
    (lambda: gd.predict_prefixes(*_ARGS[:3], lr=-0.5), "lr", ValueError),
    (lambda: gd.weighted_predict(*_ARGS[:3], lr=0.0, decay=0.5), "lr", ValueError),
    (lambda: gd.weighted_predict(*_ARGS[:3], lr=1.0, decay=_NAN), "decay", ValueError),
    (lambda: gd.ridge(*_ARGS[:3], reg=_INF), "reg", ValueError),
    (lambda: gd.lr_losses(*_ARGS, jnp.zeros((2, 2))), "lrs", ValueError),
    (lambda: gd.best_lr(*_ARGS, steps=2, points=2), "points", ValueError),
    (lambda: gd.best_lr(*_ARGS, steps=2, refine=-1), "refine", ValueError),
    (lambda: gd.sample_weights(0, 0.5), "n_context", ValueError),
    (lambda: gd.optimal_preconditioner(np.eye(2), 5, w_scale=_INF), "w_scale", ValueError),
    (lambda: gd.optimal_preconditioner(np.eye(2), 5, noise_std=-1.0), "noise_std", ValueError),
    # constructions and models
    (lambda: construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr="0.5"), "lr", TypeError),
    (lambda: construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr=0), "lr", ValueError),
    (lambda: construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr=-1), "lr", ValueError),
    (lambda: construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr=_NAN), "lr", ValueError),
    (lambda: construction.gd_ssm(d_in=3, d_out=1, n_context=0, lr=1.0), "n_context", ValueError),
    (
        lambda: construction.gd_ssm(d_in=3, d_out=1, n_context=5, lr=1.0, decay=_INF),
        "decay",
        ValueError,
    ),
    (lambda: neighbours.h3_gd(d_in=3, d_out=1, gamma=1.0, decay="0.5"), "decay", TypeError),
    (lambda: GDSSM(3, 1, n_context=0, rngs=nnx.Rngs(0)), "n_context", ValueError),
    (lambda: GDSSM(3, 1, chunk=-2, rngs=nnx.Rngs(0)), "chunk", ValueError),
    # scans
    (
        lambda: scan.linear_recurrence(jnp.ones((0, 2)), jnp.ones((0, 2))),
        "b must have at least one time step",
        ValueError,
    ),
    (lambda: scan.decay_powers(jnp.ones(3), 0), "length", ValueError),
    # metrics
    (lambda: _evaluate(sens_size=0), "sens_size", ValueError),
    (lambda: _evaluate(max_batch=-1), "max_batch", ValueError),
    (lambda: _evaluate(gd_lr=_NAN), "gd_lr", ValueError),
    (lambda: _evaluate(steps=0), "steps", ValueError),
    (lambda: _evaluate(layout="pair"), "layout", ValueError),
    (lambda: metrics.evaluate(_MODEL, (1, 2), layout="interleaved", gd_lr=1.0), "task", TypeError),
    # the training config
    (lambda: _cfg(final_lr_fraction=5.0), "final_lr_fraction", ValueError),
    (lambda: _cfg(final_lr_fraction=-0.1), "final_lr_fraction", ValueError),
    (lambda: _cfg(x_range=_INF), "x_range", ValueError),
    (lambda: _cfg(noise_std=_INF), "noise_std", ValueError),
    (lambda: _cfg(lr="0.02"), "lr", TypeError),
    (lambda: _cfg(train_steps=True), "train_steps", TypeError),
    (lambda: _cfg(seed=-1), "seed", ValueError),
    (lambda: _cfg(condition=0.5), "condition", ValueError),
    (lambda: _cfg(warmup_steps=-1), "warmup_steps", ValueError),
    (lambda: _cfg(impl="fast"), "impl", ValueError),
    (lambda: _cfg(model="transformer"), "model", ValueError),
]


@pytest.mark.parametrize(("call", "name", "kind"), BAD)
def test_bad_arguments_are_named(call, name, kind):
    with pytest.raises(kind) as info:
        call()
    assert str(info.value).startswith(name), str(info.value)
