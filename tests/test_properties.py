"""Property tests over sizes, shapes and values of the public functions (hypothesis).

Each call either returns finite values equal to a float64 numpy reference, or raises
``ValueError``/``TypeError`` whose message starts with the name of an argument it was given:
never a wrong number, never an error from deep inside JAX.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssm_gd import construction, gd, tasks

F64 = jnp.float64
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

# Mostly valid sizes, sometimes not: zero, negative, a float, a bool, a numpy integer.
size = st.one_of(
    st.integers(1, 4),
    st.integers(1, 4).map(np.int64),
    st.sampled_from([0, -1, 2.0, True, "3"]),
)
rate = st.one_of(
    st.floats(0.05, 3.0),
    st.sampled_from([0.0, -0.5, float("nan"), float("inf"), "1.0", None]),
)


def gd_reference(x, y, x_query, lr, steps):
    """K steps of GD from W = 0, one task at a time, in float64 numpy."""
    out = []
    for xb, yb, qb in zip(
        np.asarray(x, np.float64), np.asarray(y, np.float64), x_query, strict=True
    ):
        w = np.zeros((yb.shape[1], xb.shape[1]))
        for _ in range(steps):
            w = w - lr / xb.shape[0] * (w @ xb.T - yb.T) @ xb
        out.append(w @ np.asarray(qb, np.float64))
    return np.stack(out)


def assert_names_an_argument(error, names):
    message = str(error)
    assert isinstance(error, ValueError | TypeError), repr(error)
    assert any(message.startswith(n) for n in names), message


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@SETTINGS
@given(
    batch=size,
    n=size,
    d_in=size,
    d_out=size,
    steps=size,
    lr=rate,
    layout=st.sampled_from(["interleaved", "constructed", "pairs", "other"]),
)
def test_construction_is_gd_or_names_the_bad_argument(batch, n, d_in, d_out, steps, lr, layout):
    names = ("batch", "n_context", "d_in", "d_out", "steps", "n_steps", "lr", "layout")
    try:
        task = tasks.linear_regression(
            jax.random.key(0), batch=batch, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
        )
        model = construction.gd_ssm(
            d_in=d_in, d_out=d_out, n_context=n, lr=lr, steps=steps, layout=layout, dtype=F64
        )
        got = np.asarray(model.predict_query(tasks.tokens(task, layout)))
    except (ValueError, TypeError) as error:
        assert_names_an_argument(error, names)
        return
    want = gd_reference(task.x, task.y, task.x_query, float(lr), int(steps))
    assert got.shape == (int(batch), int(d_out)) and np.all(np.isfinite(got))
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * scale * int(steps))


shape = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


@SETTINGS
@given(pred_shape=shape, target_shape=shape)
def test_loss_is_the_mean_square_of_equal_shapes_or_names_them(pred_shape, target_shape):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=pred_shape), rng.normal(size=target_shape)
    try:
        got = float(gd.loss(jnp.asarray(pred), jnp.asarray(target)))
    except ValueError as error:
        assert pred_shape != target_shape
        assert_names_an_argument(error, ("pred and target",))
        return
    assert pred_shape == target_shape
    np.testing.assert_allclose(got, 0.5 * np.mean((pred - target) ** 2), rtol=1e-14)


@settings(SETTINGS, max_examples=12)  # each new shape compiles: fewer examples than the others
@given(
    batch=st.integers(1, 4),
    n=st.integers(1, 4),
    d_in=st.integers(1, 3),
    d_out=st.integers(1, 3),
    query_shape=st.sampled_from(["right", "flat", "wide", "transposed"]),
)
def test_optimal_lr_is_the_closed_form_or_names_the_bad_shape(batch, n, d_in, d_out, query_shape):
    t = tasks.linear_regression(
        jax.random.key(1), batch=batch, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
    )
    y_query = {
        "right": t.y_query,
        "flat": t.y_query.reshape(-1),
        "wide": jnp.zeros((batch, d_out + 1)),
        "transposed": t.y_query.T,
    }[query_shape]
    try:
        got = float(gd.optimal_lr(t.x, t.y, t.x_query, y_query))
    except ValueError as error:
        assert y_query.shape != (batch, d_out)
        assert_names_an_argument(error, ("y_query",))
        return
    assert y_query.shape == (batch, d_out)
    g = gd_reference(t.x, t.y, np.asarray(t.x_query), 1.0, 1)
    want = np.sum(g * np.asarray(y_query)) / np.sum(g * g)  # transposed fits when B = d_out
    np.testing.assert_allclose(got, want, rtol=1e-12)
