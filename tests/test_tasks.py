"""Task samplers (shapes, distributions, exact labels) and token layouts, position by position."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_gd import tasks
from ssm_gd import tokens as tokens_module

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps


# Every distinct size, range or noise level is a separate sampler compile (~0.3-1 s), so the
# tests share a few configurations.
SMALL = {"batch": 4, "n": 6, "d_in": 3, "d_out": 1}  # scalar labels, d_in > d_out
WIDE = {"batch": 4, "n": 6, "d_in": 2, "d_out": 5}  # vector labels, d_in < d_out
# 2000 · (9 + 1) · 5 = 1e5 inputs, 2e4 weights, 3.6e4 + 4e3 noise samples.
BIG = {"batch": 2000, "n": 9, "d_in": 5, "d_out": 2, "x_range": 3.0, "w_scale": 2.5}


def _linear(seed=0, batch=4, n=6, d_in=3, d_out=1, **kw):
    return tasks.linear_regression(
        jax.random.key(seed), batch=batch, n_context=n, d_in=d_in, d_out=d_out, **kw
    )


def _np(task):
    return type(task)(*(np.asarray(v, np.float64) for v in task))


def _wx(w, x, eps=EPS64):
    """W x in float64 numpy, and the bound d_in·ε·(|W| |x|) on a d_in-term dot's rounding error."""
    d_in = w.shape[-1]
    ref = np.einsum("boi,b...i->b...o", w, x)
    return ref, d_in * eps * np.einsum("boi,b...i->b...o", np.abs(w), np.abs(x))


def _assert_mean_var(samples, mean, var, n_se=5):
    """Sample mean and variance within n_se standard errors (CLT; the variance's SE from μ₄)."""
    s = np.asarray(samples, np.float64).ravel()
    n = s.size
    assert abs(s.mean() - mean) < n_se * math.sqrt(var / n)
    mu4 = np.mean((s - mean) ** 4)  # fourth central moment, estimated: SE(s²) = √((μ₄ − σ⁴)/n)
    assert abs(s.var() - var) < n_se * math.sqrt((mu4 - var**2) / n)


# --------------------------------------------------------------------------- linear regression


@pytest.mark.parametrize("cfg", [SMALL, WIDE], ids=["scalar", "vector"])
def test_linear_shapes_dtype_and_exact_labels(cfg):
    t = _linear(**cfg)
    b, n, d_in, d_out = cfg["batch"], cfg["n"], cfg["d_in"], cfg["d_out"]
    assert isinstance(t, tasks.LinearTask)
    assert t.x.shape == (b, n, d_in) and t.y.shape == (b, n, d_out)
    assert t.x_query.shape == (b, d_in) and t.y_query.shape == (b, d_out)
    assert t.w.shape == (b, d_out, d_in)
    assert all(v.dtype == jnp.float64 for v in t)  # conftest enables x64: default float is f64
    # No noise: y = W x and y_q = W x_q up to the rounding of the dot.
    t = _np(t)
    ref, bound = _wx(t.w, t.x)
    assert np.all(np.abs(t.y - ref) <= bound)
    ref, bound = _wx(t.w, t.x_query)
    assert np.all(np.abs(t.y_query - ref) <= bound)
    # The default x_range = 1 gives U(-1/2, 1/2).
    assert np.all(np.abs(t.x) <= 0.5) and np.all(np.abs(t.x_query) <= 0.5)


def test_linear_inputs_uniform_and_weights_gaussian():
    t = _np(_linear(**BIG))
    # 1e5 samples of U(-1.5, 1.5): mean 0, variance 3²/12.
    xs = np.concatenate([t.x.ravel(), t.x_query.ravel()])
    assert np.all(np.abs(xs) <= 1.5)
    # Both ends are reached: P(no sample within 3e-3 of an end) = (1 − 1e-3)^1e5 ≈ e^-100.
    assert xs.max() > 1.5 - 3e-3 and xs.min() < -1.5 + 3e-3
    _assert_mean_var(xs, 0.0, 3.0**2 / 12)
    # 2e4 entries of N(0, 2.5²).
    _assert_mean_var(t.w, 0.0, 2.5**2)
    # W and x are independent: any fixed pairing of their entries is uncorrelated (2e4 pairs;
    # the sample correlation of independent samples has SE 1/√n).
    m = t.w.size
    assert abs(np.corrcoef(t.w.ravel(), t.x.ravel()[:m])[0, 1]) < 5 / math.sqrt(m)


def test_linear_noise_is_gaussian_with_noise_std_on_context_and_query():
    clean, noisy = _np(_linear(seed=3, **BIG)), _np(_linear(seed=3, noise_std=0.3, **BIG))
    # Noise only touches the labels: the same key gives the same W and inputs.
    for name in ("x", "x_query", "w"):
        np.testing.assert_array_equal(getattr(noisy, name), getattr(clean, name))
    # Residuals y − W x: 3.6e4 context and 4e3 query samples of N(0, 0.3²) (rounding ~1e-15 aside).
    r = noisy.y - clean.y
    _assert_mean_var(r, 0.0, 0.3**2)
    _assert_mean_var(noisy.y_query - clean.y_query, 0.0, 0.3**2)
    # Independent per label: neighbouring pairs' residuals are uncorrelated (3.2e4 pairs; SE 1/√n).
    corr = np.corrcoef(r[:, :-1].ravel(), r[:, 1:].ravel())[0, 1]
    assert abs(corr) < 5 / math.sqrt(r[:, 1:].size)
    # ... and across the d_out = 2 label coordinates (1.8e4 pairs).
    corr = np.corrcoef(r[..., 0].ravel(), r[..., 1].ravel())[0, 1]
    assert abs(corr) < 5 / math.sqrt(r[..., 0].size)


def test_linear_distractors_replace_the_first_labels_by_standard_normals():
    t = _np(_linear(batch=2000, n=8, d_in=3, d_out=5, n_distract=3))
    ref, bound = _wx(t.w, t.x)
    assert np.all(np.abs(t.y[:, :3] - ref[:, :3]) > 1e-9)  # continuous noise never hits W x
    assert np.all(np.abs(t.y[:, 3:] - ref[:, 3:]) <= bound[:, 3:])
    ref, bound = _wx(t.w, t.x_query)
    assert np.all(np.abs(t.y_query - ref) <= bound)  # the query label is untouched
    # The distractors themselves: 2000 · 3 · 5 = 3e4 samples of N(0, 1), whatever W is.
    _assert_mean_var(t.y[:, :3], 0.0, 1.0)


def test_linear_under_jit_of_a_caller_with_all_labels_distractors():
    kw = {"batch": 3, "n_context": 5, "d_in": 4, "d_out": 2, "noise_std": 0.1, "n_distract": 5}
    jitted = jax.jit(lambda key: tasks.linear_regression(key, **kw))(jax.random.key(1))
    eager = tasks.linear_regression(jax.random.key(1), **kw)
    # The random bits are integer arithmetic and the floats the same elementwise ops and 4-term
    # dots, so inlining into the caller's program may move a value by a rounding at most.
    for u, v in zip(jitted, eager, strict=True):
        np.testing.assert_allclose(u, v, rtol=0, atol=8 * EPS64)
    # n_distract = n_context: every context label is replaced, the query still follows
    # W x_q + N(0, 0.1²) (6 residuals; |r| < 1 fails with probability ~1e-22).
    t = _np(eager)
    ref, _ = _wx(t.w, t.x)
    assert np.all(np.abs(t.y - ref) > 1e-9)
    ref, _ = _wx(t.w, t.x_query)
    assert 0 < np.abs(t.y_query - ref).max() < 1.0


def test_linear_same_key_same_task_different_key_different_task():
    a, b, c = _linear(seed=7, **SMALL), _linear(seed=7, **SMALL), _linear(seed=8, **SMALL)
    for u, v, w in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(u, v)
        assert np.all(np.asarray(u) != np.asarray(w))


def test_linear_float32():
    t = _linear(batch=8, n=10, d_in=6, d_out=3, dtype=jnp.float32)
    assert all(v.dtype == jnp.float32 for v in t)
    t = _np(t)
    # A 6-term dot rounded in float32 (float64 reference from the same float32 inputs).
    ref, bound = _wx(t.w, t.x, EPS32)
    assert np.all(np.abs(t.y - ref) <= bound)
    assert np.all(np.abs(t.x) <= 0.5)


# --------------------------------------------------------------------------- sine regression


def test_sine_shapes_ranges_formula_and_distributions():
    t = tasks.sine_regression(jax.random.key(0), batch=5000, n_context=19)
    assert isinstance(t, tasks.SineTask)
    assert t.x.shape == (5000, 19, 1) and t.y.shape == (5000, 19, 1)
    assert t.x_query.shape == (5000, 1) and t.y_query.shape == (5000, 1)
    assert t.amplitude.shape == (5000,) and t.phase.shape == (5000,)
    assert all(v.dtype == jnp.float64 for v in t)
    t = _np(t)
    assert np.all((t.amplitude >= 0.1) & (t.amplitude <= 0.5))
    assert np.all((t.phase >= 0) & (t.phase <= np.pi))
    xs = np.concatenate([t.x.ravel(), t.x_query.ravel()])
    assert np.all(np.abs(xs) <= 5.0)
    # y = A sin(x + φ): x + φ rounds identically; sin implementations agree to a few ulps, and
    # |y| ≤ 0.5 where an ulp is 1.1e-16.
    a, p = t.amplitude[:, None], t.phase[:, None]
    np.testing.assert_allclose(t.y, a[..., None] * np.sin(t.x + p[..., None]), rtol=0, atol=1e-15)
    np.testing.assert_allclose(t.y_query, a * np.sin(t.x_query + p), rtol=0, atol=1e-15)
    # 1e5 inputs of U(-5, 5); 5000 amplitudes of U(0.1, 0.5) and phases of U(0, π).
    _assert_mean_var(xs, 0.0, 10.0**2 / 12)
    _assert_mean_var(t.amplitude, 0.3, 0.4**2 / 12)
    _assert_mean_var(t.phase, np.pi / 2, np.pi**2 / 12)
    # Amplitude and phase are independent (5000 pairs: correlation SE 1/√5000 ≈ 0.014).
    assert abs(np.corrcoef(t.amplitude, t.phase)[0, 1]) < 5 / math.sqrt(5000)


def test_sine_degenerate_ranges_pin_the_parameters():
    # U(c, c) is exactly c, which separates A sin(x + φ) from e.g. sin(A x + φ) or A sin(x) + φ.
    kw = {"x_range": 4.0, "amplitude": (2.0, 2.0), "phase": (0.7, 0.7)}
    t = _np(tasks.sine_regression(jax.random.key(1), batch=3, n_context=9, **kw))
    assert np.all(t.amplitude == 2.0) and np.all(t.phase == 0.7)
    np.testing.assert_allclose(t.y, 2.0 * np.sin(t.x + 0.7), rtol=0, atol=1e-14)  # |y| ≤ 2
    assert np.all(np.abs(t.x) <= 2.0)


def _sine32(seed):
    return tasks.sine_regression(jax.random.key(seed), batch=2, n_context=4, dtype=jnp.float32)


def test_sine_float32_and_determinism():
    t, u, v = _sine32(4), _sine32(4), _sine32(5)
    assert all(a.dtype == jnp.float32 for a in t)
    for a, b, c in zip(t, u, v, strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.asarray(a) != np.asarray(c))


# --------------------------------------------------------------------------- token layouts


def test_layouts_and_token_width():
    assert tasks.LAYOUTS == ("interleaved", "constructed")
    assert tasks.token_width("interleaved", 3, 1) == 3
    assert tasks.token_width("interleaved", 2, 5) == 5
    assert tasks.token_width("interleaved", 4, 4) == 4
    assert tasks.token_width("constructed", 4, 1) == 8
    for layout in tasks.LAYOUTS:
        assert tasks.check_layout(layout, 3, 1) is None
    assert tasks.check_layout("interleaved", 3, 4) is None


@pytest.mark.parametrize("cfg", [SMALL, WIDE], ids=["scalar", "vector"])
def test_interleaved_tokens_position_by_position(cfg):
    t = _linear(**cfg)
    tok = np.asarray(tasks.tokens(t, "interleaved"))
    b, n, d_in, d_out = cfg["batch"], cfg["n"], cfg["d_in"], cfg["d_out"]
    assert tok.shape == (b, 2 * n + 1, max(d_in, d_out)) and tok.dtype == np.float64
    x, y, xq = (np.asarray(v) for v in (t.x, t.y, t.x_query))
    for i in range(n):  # pure data movement: exact
        np.testing.assert_array_equal(tok[:, 2 * i, :d_in], x[:, i])
        np.testing.assert_array_equal(tok[:, 2 * i, d_in:], 0)
        np.testing.assert_array_equal(tok[:, 2 * i + 1, :d_out], y[:, i])
        np.testing.assert_array_equal(tok[:, 2 * i + 1, d_out:], 0)
    np.testing.assert_array_equal(tok[:, 2 * n, :d_in], xq)
    np.testing.assert_array_equal(tok[:, 2 * n, d_in:], 0)
    # The default layout is interleaved.
    np.testing.assert_array_equal(tasks.tokens(t), tok)


@pytest.mark.parametrize("n", [1, 6])
def test_constructed_tokens_position_by_position(n):
    t = _linear(**SMALL)
    t = t._replace(x=t.x[:, :n], y=t.y[:, :n])  # N = 1 from the same sample: no new compile
    tok = np.asarray(tasks.tokens(t, "constructed"))
    assert tok.shape == (4, n + 1, 6) and tok.dtype == np.float64
    x, y, xq = (np.asarray(v) for v in (t.x, t.y, t.x_query))
    np.testing.assert_array_equal(tok[:, 0, :3], 0)  # u_0 = [0, x_1]
    np.testing.assert_array_equal(tok[:, 0, 3:], x[:, 0])
    for i in range(1, n + 1):  # u_i = [x_i·y_i, x_{i+1}], x_{N+1} = x_q (1-based)
        # One float64 multiply, correctly rounded in numpy and XLA alike: exact.
        np.testing.assert_array_equal(tok[:, i, :3], x[:, i - 1] * y[:, i - 1])
        np.testing.assert_array_equal(tok[:, i, 3:], x[:, i] if i < n else xq)


def test_tokens_of_a_float32_sine_task_under_jit():
    s = _sine32(4)
    inter = jax.jit(lambda t: tasks.tokens(t, "interleaved"))(s).array
    assert inter.shape == (2, 9, 1) and inter.dtype == jnp.float32
    np.testing.assert_array_equal(inter[:, 0:8:2, 0], s.x[..., 0])
    np.testing.assert_array_equal(inter[:, 1:8:2, 0], s.y[..., 0])
    np.testing.assert_array_equal(inter[:, 8], s.x_query)
    cons = jax.jit(lambda t: tasks.tokens(t, "constructed"))(s).array
    assert cons.shape == (2, 5, 2) and cons.dtype == jnp.float32
    np.testing.assert_array_equal(cons[:, 1:, 0], (s.x * s.y)[..., 0])
    np.testing.assert_array_equal(
        cons[:, :, 1], jnp.concatenate([s.x, s.x_query[:, None]], 1)[..., 0]
    )


# --------------------------------------------------------------------------- bad input


def _zeros_task(b=2, n=4, d_in=3, d_out=1):
    z = jnp.zeros
    return tasks.LinearTask(
        z((b, n, d_in)), z((b, n, d_out)), z((b, d_in)), z((b, d_out)), z((b, d_out, d_in))
    )


def _lin(**kw):
    args = {"batch": 2, "n_context": 4, "d_in": 3, "d_out": 1} | kw
    return tasks.linear_regression(jax.random.key(0), **args)


def _sine(**kw):
    return tasks.sine_regression(jax.random.key(0), **({"batch": 2, "n_context": 4} | kw))


BAD = [
    (lambda: _lin(batch=0), "^batch must be a positive integer; got 0"),
    (lambda: _lin(batch=-2), "^batch must be a positive integer; got -2"),
    (lambda: _lin(n_context=0), "^n_context must be a positive integer"),
    (lambda: _lin(d_in=0), "^d_in must be a positive integer"),
    (lambda: _lin(d_out=0), "^d_out must be a positive integer"),
    (lambda: _lin(d_out=-1), "^d_out must be a positive integer"),
    (lambda: _lin(batch=2.0), r"^batch must be a positive integer; got 2\.0"),
    (lambda: _lin(n_context=3.5), "^n_context must be a positive integer"),
    (lambda: _lin(d_in="3"), "^d_in must be a positive integer"),
    (lambda: _lin(d_out=True), "^d_out must be a positive integer; got True"),
    (lambda: _lin(x_range=-1.0), "^x_range must be a non-negative finite number"),
    (lambda: _lin(w_scale=-0.5), "^w_scale must be a non-negative finite number"),
    (lambda: _lin(noise_std=-0.1), "^noise_std must be a non-negative finite number"),
    (lambda: _lin(noise_std=float("nan")), "^noise_std must be a non-negative finite number"),
    (lambda: _lin(n_distract=-1), r"^n_distract must be a non-negative integer; got -1"),
    (lambda: _lin(n_distract=5), r"^n_distract must be in \[0, n_context=4\]; got 5"),
    (lambda: _lin(n_distract=1.0), "^n_distract must be a non-negative integer"),
    (lambda: _sine(batch=0), "^batch must be a positive integer"),
    (lambda: _sine(n_context=-1), "^n_context must be a positive integer"),
    (lambda: _sine(n_context=2.0), "^n_context must be a positive integer"),
    (lambda: _sine(x_range=-1.0), "^x_range must be a non-negative finite number"),
    (lambda: _sine(amplitude=(0.5, 0.1)), "^amplitude must be a .* pair with low <= high"),
    (lambda: _sine(phase=(1.0, 0.0)), "^phase must be a .* pair with low <= high"),
    (lambda: tasks.check_layout("foo", 3, 1), "^layout must be one of"),
    (lambda: tasks.check_layout("interleaved", 0, 1), "^d_in must be a positive integer"),
    (lambda: tasks.check_layout("interleaved", 3, 0), "^d_out must be a positive integer"),
    (lambda: tasks.check_layout("constructed", 3, 2), "needs scalar labels.*got d_out=2"),
    (lambda: tasks.token_width("constructed", 2, 3), "needs scalar labels.*got d_out=3"),
    (lambda: tasks.token_width("Interleaved", 2, 1), "^layout must be one of"),
    (lambda: tasks.tokens(_zeros_task(), "foo"), "^layout must be one of"),
    (lambda: tasks.tokens(_zeros_task(d_out=2), "constructed"), "layout='constructed'.*d_out=2"),
    (lambda: tasks.tokens(_zeros_task()._replace(x=jnp.zeros((4, 3)))), "^task must be batched"),
    (lambda: tasks.tokens(_zeros_task()._replace(y=jnp.zeros((2, 3, 1)))), "^task shapes disagree"),
    (
        lambda: tasks.tokens(_zeros_task()._replace(x_query=jnp.zeros((2, 2)))),
        "^task shapes disagree",
    ),
]


@pytest.mark.parametrize(("call", "match"), BAD)
def test_bad_input_raises_before_tracing(call, match, monkeypatch):
    # Replace the jitted bodies: a ValueError from the Python front end, never from a trace.
    def traced(*args):
        raise AssertionError("reached the jitted body")

    for name in ("_linear_regression", "_sine_regression"):
        monkeypatch.setattr(tasks, name, traced)
    monkeypatch.setattr(tokens_module, "_tokens", traced)
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------ non-isotropic inputs

GAUSS = {"batch": 4000, "n": 9, "d_in": 4, "d_out": 2}  # 4e4 input vectors, 8000 maps of 8 entries


def test_input_spectrum_rotation_and_covariance():
    s = tasks.input_spectrum(5, condition=20.0, mean=0.3)
    np.testing.assert_allclose(s[0] / s[-1], 20.0, rtol=1e-14)
    np.testing.assert_allclose(s.mean(), 0.3, rtol=1e-15)
    assert np.all(np.diff(s) < 0)  # geometric, largest first
    np.testing.assert_allclose(s[1:] / s[:-1], 20.0 ** (-1 / 4), rtol=1e-14)
    np.testing.assert_array_equal(tasks.input_spectrum(1, condition=20.0, mean=0.3), [0.3])
    np.testing.assert_array_equal(tasks.rotation_matrix(3, 0), np.eye(3))
    r = tasks.rotation_matrix(5, 7)
    np.testing.assert_allclose(r @ r.T, np.eye(5), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(r, tasks.rotation_matrix(5, 7))  # fixed by its seed
    assert np.abs(r - tasks.rotation_matrix(5, 8)).max() > 0.1
    sigma = tasks.input_covariance(5, condition=20.0, x_var=0.3, rotation=7)
    np.testing.assert_allclose(np.linalg.eigvalsh(sigma), np.sort(s), rtol=1e-13)
    assert np.abs(sigma - np.diag(np.diag(sigma))).max() > 1e-3  # rotated: not diagonal
    np.testing.assert_allclose(
        tasks.input_covariance(5, condition=20.0, x_var=0.3), np.diag(s), rtol=0, atol=0
    )


def test_gaussian_inputs_have_the_stated_covariance_and_exact_labels():
    sigma = tasks.input_covariance(4, condition=10.0, x_var=0.5, rotation=3)
    t = _np(
        tasks.gaussian_regression(
            jax.random.key(0), batch=GAUSS["batch"], n_context=GAUSS["n"], d_in=4, d_out=2,
            condition=10.0, x_var=0.5, rotation=3, w_scale=1.5,
        )
    )  # fmt: skip
    assert t.x.shape == (4000, 9, 4) and t.y.shape == (4000, 9, 2) and t.w.shape == (4000, 2, 4)
    ref, bound = _wx(t.w, t.x)
    assert np.all(np.abs(t.y - ref) <= bound)
    ref, bound = _wx(t.w, t.x_query)
    assert np.all(np.abs(t.y_query - ref) <= bound)
    # Context inputs and queries alike ~ N(0, Σ): each entry of the sample covariance of n = 4e4
    # vectors within 5 standard errors, SE(x_a x_b) = √((Σ_aa Σ_bb + Σ_ab²) / n) for Gaussians.
    xs = np.concatenate([t.x.reshape(-1, 4), t.x_query])
    n = xs.shape[0]
    se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)
    assert np.all(np.abs(xs.T @ xs / n - sigma) < 5 * se)
    assert np.all(np.abs(xs.mean(0)) < 5 * np.sqrt(np.diag(sigma) / n))
    # Whitened, the inputs are N(0, I): a Gaussian's fourth moment is 3.
    z = xs @ np.linalg.inv(np.linalg.cholesky(sigma)).T
    _assert_mean_var(z, 0.0, 1.0)
    assert abs(np.mean(z**4) - 3.0) < 5 * np.sqrt(96 / z.size)  # Var(z⁴) = 105 − 9 = 96
    _assert_mean_var(t.w, 0.0, 1.5**2)


def test_gaussian_isotropic_and_noise():
    clean = _np(tasks.gaussian_regression(jax.random.key(1), batch=2000, n_context=9, d_in=5))
    noisy = _np(
        tasks.gaussian_regression(jax.random.key(1), batch=2000, n_context=9, d_in=5,
                                  noise_std=0.2)
    )  # fmt: skip
    # condition = 1: N(0, I/12) (the default x_var matches U(−1/2, 1/2)'s variance).
    _assert_mean_var(clean.x, 0.0, 1 / 12)
    np.testing.assert_array_equal(noisy.x, clean.x)
    _assert_mean_var(noisy.y - clean.y, 0.0, 0.2**2)


# ------------------------------------------------------------------------- drifting maps


def test_drift_coefficients():
    old, new = tasks.drift_coefficients(8)
    np.testing.assert_allclose(old**2 + new**2, 1.0, rtol=0, atol=2 * EPS64)
    assert (old[-1], new[-1]) == (0.0, 1.0)  # the last pair follows W_new exactly
    np.testing.assert_allclose(new, np.sin(np.pi / 2 * np.arange(1, 9) / 8), rtol=1e-15)
    assert np.all(np.diff(new) > 0) and np.all(np.diff(old) < 0)
    old, new = tasks.drift_coefficients(8, switch_at=3)
    np.testing.assert_array_equal(old, [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(new, 1 - old)


@pytest.mark.parametrize("switch_at", [None, 6])
def test_drifting_labels_follow_the_moving_map(switch_at):
    n, d_in, d_out = 12, 3, 2
    t = _np(
        tasks.drifting_regression(
            jax.random.key(2), batch=3000, n_context=n, d_in=d_in, d_out=d_out, w_scale=2.0,
            switch_at=switch_at,
        )
    )  # fmt: skip
    old, new = tasks.drift_coefficients(n, switch_at)
    # The query follows W_new (= w) exactly, and so does every pair where a_old = 0.
    ref, bound = _wx(t.w, t.x_query)
    assert np.all(np.abs(t.y_query - ref) <= bound)
    ref, bound = _wx(t.w, t.x)
    later = old == 0
    assert np.all(np.abs(t.y[:, later] - ref[:, later]) <= bound[:, later])
    # The rest, r_i = y_i − a_new[i] W_new x_i = a_old[i] W_old x_i, follow one W_old per task:
    # recover it by least squares (N_old ≥ d_in pairs) and check every pair, to rounding.
    early = ~later
    r = (t.y - new[None, :, None] * ref)[:, early] / old[None, early, None]
    xs = t.x[:, early]
    w_old = np.stack([np.linalg.lstsq(a, b, rcond=None)[0].T for a, b in zip(xs, r, strict=True)])
    np.testing.assert_allclose(np.einsum("boi,bni->bno", w_old, xs), r, rtol=0, atol=1e-12)
    # W_old ~ N(0, 2²) like W_new, and independent of it (6000 entry pairs; SE 1/√n).
    _assert_mean_var(w_old, 0.0, 4.0)
    assert abs(np.corrcoef(w_old.ravel(), t.w.ravel())[0, 1]) < 5 / math.sqrt(w_old.size)
    xs_all = np.concatenate([t.x.ravel(), t.x_query.ravel()])
    assert np.all(np.abs(xs_all) <= 0.5)


def test_drift_noise_on_context_and_query():
    kw = {"batch": 2000, "n_context": 5, "d_in": 3}
    clean = _np(tasks.drifting_regression(jax.random.key(5), **kw))
    noisy = _np(tasks.drifting_regression(jax.random.key(5), noise_std=0.3, **kw))
    _assert_mean_var(noisy.y - clean.y, 0.0, 0.09)
    _assert_mean_var(noisy.y_query - clean.y_query, 0.0, 0.09)


# --------------------------------------------------------------------------- the pairs layout


@pytest.mark.parametrize("cfg", [SMALL, WIDE], ids=["scalar", "vector"])
def test_pairs_tokens_position_by_position(cfg):
    t = _linear(**cfg)
    tok = np.asarray(tasks.tokens(t, "pairs"))
    b, n, d_in, d_out = cfg["batch"], cfg["n"], cfg["d_in"], cfg["d_out"]
    assert tok.shape == (b, n + 1, d_in + d_out) and tok.dtype == np.float64
    assert tasks.token_width("pairs", d_in, d_out) == d_in + d_out
    np.testing.assert_array_equal(tok[:, :n, :d_in], t.x)  # pure data movement: exact
    np.testing.assert_array_equal(tok[:, :n, d_in:], t.y)
    np.testing.assert_array_equal(tok[:, n, :d_in], t.x_query)
    np.testing.assert_array_equal(tok[:, n, d_in:], 0)
    jitted = jax.jit(lambda task: tasks.tokens(task, "pairs"))(t)
    np.testing.assert_array_equal(jitted, tok)


def test_pairs_is_not_a_gdssm_layout():
    # check_layout's default is the GD-SSM's layouts (the GD-SSM cannot read pairs tokens).
    assert tasks.ALL_LAYOUTS == tasks.LAYOUTS + ("pairs",)
    with pytest.raises(
        ValueError, match=r"^layout must be one of \('interleaved', 'constructed'\)"
    ):
        tasks.check_layout("pairs", 3, 1)
    assert tasks.check_layout("pairs", 3, 4, allowed=tasks.ALL_LAYOUTS) is None


BAD_NEW = [
    (lambda: tasks.gaussian_regression(jax.random.key(0), batch=0, n_context=3, d_in=2), "^batch"),
    (
        lambda: tasks.gaussian_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, condition=0.5
        ),
        "^condition must be a finite number >= 1",
    ),
    (
        lambda: tasks.gaussian_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, condition=float("inf")
        ),
        "^condition must be a finite number",
    ),
    (
        lambda: tasks.gaussian_regression(jax.random.key(0), batch=2, n_context=3, d_in=2, x_var=0),
        "^x_var must be a positive finite number",
    ),
    (
        lambda: tasks.gaussian_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, rotation=-1
        ),
        "^rotation must be a non-negative integer",
    ),
    (
        lambda: tasks.gaussian_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, rotation=1.5
        ),
        "^rotation must be a non-negative integer",
    ),
    (
        lambda: tasks.drifting_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, switch_at=4
        ),
        r"^switch_at must be in \[0, n_context=3\]; got 4",
    ),
    (
        lambda: tasks.drifting_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, switch_at=True
        ),
        "^switch_at must be a non-negative integer",
    ),
    (
        lambda: tasks.drifting_regression(
            jax.random.key(0), batch=2, n_context=3, d_in=2, w_scale=-1
        ),
        "^w_scale must be a non-negative finite number",
    ),
    (lambda: tasks.input_spectrum(3, condition=2.0, mean=-1.0), "^mean must be a positive"),
    (lambda: tasks.rotation_matrix(0, 1), "^d_in must be a positive integer"),
    (lambda: tasks.token_width("pair", 2, 1), "^layout must be one of"),
]


@pytest.mark.parametrize(("call", "match"), BAD_NEW)
def test_bad_input_to_the_new_samplers_raises_before_tracing(call, match, monkeypatch):
    def traced(*args):
        raise AssertionError("reached the jitted body")

    for name in ("_gaussian_regression", "_drifting_regression"):
        monkeypatch.setattr(tasks, name, traced)
    monkeypatch.setattr(tokens_module, "_tokens", traced)
    with pytest.raises(ValueError, match=match):
        call()
