"""Minibatch windows (docs/design.md §9): windows of ``2m + 1`` tokens, stride ``2m``.

The construction with ``minibatch=m`` equals GD on the first ``tm`` pairs at window ``t`` (every
prefix the windows reach), for the squared loss and, through the softmax, for cross-entropy; a
decay weighs pair ``i`` by ``λ`` per window after its own. ``m = 1`` is the stride-2 model itself.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import construction, gd, tasks
from ssm_gd.layers import GDSSM

F64 = jnp.float64
LR = 1.5
N = 30  # a multiple of every m below
TOL = 1e-12  # float64 rounding of sums of ~N products of O(1) numbers, far above 1e-16·N


def _task(d_in=3, d_out=2, n=N, seed=0):
    return tasks.linear_regression(
        jax.random.key(seed), batch=4, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
    )


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("impl", ["associative", "sequential", "chunked"])
def test_minibatch_construction_is_gd_on_every_window_prefix(m, steps, impl):
    task = _task()
    model = construction.gd_ssm(
        d_in=3, d_out=2, n_context=N, lr=LR, steps=steps, minibatch=m, impl=impl, dtype=F64
    )
    tokens = tasks.tokens(task)
    out = model(tokens)
    assert out.shape == (4, N // m, 2)
    ref = gd.predict_prefixes(task.x, task.y, task.x_query, lr=LR, steps=steps)
    np.testing.assert_allclose(out, ref[:, m - 1 :: m], rtol=0, atol=TOL)
    query = gd.predict(task.x, task.y, task.x_query, lr=LR, steps=steps)
    np.testing.assert_allclose(model.predict_query(tokens), query, rtol=0, atol=TOL)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_minibatch_decay_weighs_each_pair_by_its_window(m):
    lam = 0.8
    task = _task(seed=1)
    model = construction.gd_ssm(
        d_in=3, d_out=2, n_context=N, lr=LR, minibatch=m, decay=lam, dtype=F64
    )
    window = np.arange(N) // m + 1  # the window that holds pair i (1-based): ⌈i/m⌉
    omega = lam ** (N // m - window)
    x, y, xq = (np.asarray(v) for v in (task.x, task.y, task.x_query))
    expected = LR / N * np.einsum("i,bio,bij,bj->bo", omega, y, x, xq)
    np.testing.assert_allclose(model.predict_query(tasks.tokens(task)), expected, atol=TOL)
    np.testing.assert_allclose(model(tasks.tokens(task))[:, -1], expected, atol=TOL)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_minibatch_construction_gives_cross_entropy_gd_probabilities(m, n_classes):
    """One-hot y-tokens: the logits differ from one CE GD step's by the same number per class."""
    task = _task(d_in=4, d_out=n_classes, seed=2)
    y = jax.nn.one_hot(jnp.argmax(task.y, -1), n_classes, dtype=F64)
    task = task._replace(y=y)
    model = construction.gd_ssm(d_in=4, d_out=n_classes, n_context=N, lr=LR, minibatch=m, dtype=F64)
    logits = model(tasks.tokens(task))  # (B, N/m, K)
    x, yy = np.asarray(task.x), np.asarray(y)
    inputs = np.concatenate([x[:, 1:], np.asarray(task.x_query)[:, None]], axis=1)
    for t in range(1, N // m + 1):  # CE GD from 0 on the first tm pairs: W_1 = (η/N) Σ (y − 1/K) xᵀ
        w1 = LR / N * np.einsum("bio,bij->boj", yy[:, : t * m] - 1 / n_classes, x[:, : t * m])
        ce = np.einsum("boj,bj->bo", w1, inputs[:, t * m - 1])
        np.testing.assert_allclose(
            jax.nn.softmax(logits[:, t - 1]), jax.nn.softmax(ce), rtol=0, atol=TOL
        )


def test_minibatch_one_is_the_default_model_bit_for_bit():
    task = _task(d_out=1)
    a = GDSSM(3, 1, rngs=nnx.Rngs(3), param_dtype=F64)
    b = GDSSM(3, 1, minibatch=1, rngs=nnx.Rngs(3), param_dtype=F64)
    assert (a.window, a.stride) == (b.window, b.stride) == (3, 2)
    np.testing.assert_array_equal(a(tasks.tokens(task)), b(tasks.tokens(task)))
    chex.assert_trees_all_equal(nnx.state(a, nnx.Param), nnx.state(b, nnx.Param))


def test_minibatch_windows_have_2m_plus_1_tokens():
    model = GDSSM(3, 2, minibatch=4, rngs=nnx.Rngs(0))
    assert (model.window, model.stride) == (9, 8)
    assert model.yx_attention.q.shape == (9, 9) and model.d.shape == (9,)


def test_a_context_not_divisible_by_m_is_refused():
    """The rule: no partial last window. A clear error, at build time where N is known."""
    with pytest.raises(ValueError, match=r"n_context=10 is not a multiple of minibatch=3"):
        GDSSM(3, 1, minibatch=3, n_context=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"n_context=10 is not a multiple of minibatch=3"):
        construction.gd_ssm(d_in=3, d_out=1, n_context=10, lr=1.0, minibatch=3)
    model = GDSSM(3, 1, minibatch=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"n_context=10 is not a multiple of minibatch=3"):
        model(tasks.tokens(_task(d_out=1, n=10)))
    with pytest.raises(ValueError, match=r"n_context=10 is not a multiple of minibatch=3"):
        model.predict_query(tasks.tokens(_task(d_out=1, n=10)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(minibatch=0), "minibatch must be a positive integer"),
        (dict(minibatch=2.0), "minibatch must be"),
        (dict(minibatch=2, layout="constructed"), "minibatch > 1 reads interleaved tokens"),
    ],
)
def test_bad_minibatch_is_named(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        GDSSM(3, 1, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_per_window_weights_and_the_best_weighting(m):
    """``ω_i = λ^{N/m − ⌈i/m⌉}``; the best (η, λ) per window is what the construction computes."""
    lam = 0.7
    expected = lam ** (N // m - (np.arange(N) // m + 1))
    np.testing.assert_allclose(gd.sample_weights(N, lam, F64, minibatch=m), expected, atol=TOL)
    task = tasks.drifting_regression(
        jax.random.key(4), batch=64, n_context=N, d_in=3, d_out=1, dtype=F64
    )
    lr, decay, value = gd.best_weighted(*task[:4], minibatch=m)
    model = construction.gd_ssm(
        d_in=3, d_out=1, n_context=N, lr=float(lr), decay=float(decay), minibatch=m, dtype=F64
    )
    model_loss = gd.loss(model.predict_query(tasks.tokens(task)), task.y_query)
    np.testing.assert_allclose(model_loss, value, rtol=1e-12)
    # No λ on a fine grid (each with its best η, in closed form) does better.
    x, y, xq, yq = (np.asarray(v) for v in task[:4])
    c = (y[..., 0] * np.einsum("bni,bi->bn", x, xq) / N).reshape(64, N // m, m).sum(-1)
    for other in np.linspace(0.0, 1.0, 41):
        pred = c @ other ** (N // m - 1 - np.arange(N // m))  # (B,): Σ_t λ^{T−t} c_t
        best = 0.5 * np.mean((pred * (pred @ yq[:, 0]) / (pred @ pred) - yq[:, 0]) ** 2)
        assert best >= float(value) * (1 - 1e-12)
    with pytest.raises(ValueError, match="n_context=30 is not a multiple of minibatch=4"):
        gd.sample_weights(N, lam, minibatch=4)
