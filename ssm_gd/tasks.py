"""In-context regression tasks: pure, jittable, batched samplers and token layouts.

A task is a hidden map, ``N`` context pairs ``(x_i, y_i)`` and a query ``x_q`` whose label ``y_q``
is to be predicted. Samplers take an explicit PRNG key and static sizes and return a task pytree
(a ``NamedTuple``), so they can be called inside ``jax.jit`` (sizes static) and on any device.

Token layouts (:func:`tokens`) turn a task into the sequence a sequence model reads.

Besides the default task (:func:`linear_regression`, ``x ~ U(−r/2, r/2)^d``), two of its neighbours
share the :class:`LinearTask` pytree, so every GD reference and metric applies unchanged:
:func:`gaussian_regression` (non-isotropic inputs ``x ~ N(0, Σ)`` with a chosen spectrum) and
:func:`drifting_regression` (the map moves from an older to a newer one along the context).

In-context classification (:func:`classification`) shares it too: ``K`` classes, one-hot labels
``y = e_c`` with ``c = argmax_k (W* x)_k`` (or ``c ~ softmax(W* x / T)``), ``d_out = K``, so
:func:`tokens` lays it out unchanged; :func:`centred` shifts its labels to ``y − 1/K``, the
tokens whose one GD-SSM step gives the logits of one cross-entropy GD step
(:func:`ssm_gd.gd.cross_entropy_predict`).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssm_gd import validate
from ssm_gd.sampling import keyed_sampler as _sampler
from ssm_gd.tokens import (
    ALL_LAYOUTS,
    LAYOUTS,
    Tokens,
    check_layout,
    check_task,
    token_width,
    tokens,
)

__all__ = [
    "CLASSIFICATION_INPUTS",
    "INPUT_DISTRIBUTIONS",
    "ALL_LAYOUTS",
    "LAYOUTS",
    "LinearTask",
    "SineTask",
    "Tokens",
    "centred",
    "check_layout",
    "classification",
    "drift_coefficients",
    "drifting_regression",
    "gaussian_regression",
    "input_covariance",
    "input_spectrum",
    "linear_regression",
    "rotation_matrix",
    "shifted_regression",
    "sine_regression",
    "token_width",
    "tokens",
]

Array = jax.Array


class LinearTask(NamedTuple):
    """A batch of linear regression tasks ``y = W x``.

    Attributes:
      x: context inputs ``(B, N, d_in)``.
      y: context labels ``(B, N, d_out)``.
      x_query: query input ``(B, d_in)``.
      y_query: query label ``(B, d_out)``.
      w: the hidden maps ``(B, d_out, d_in)``.
    """

    x: Array
    y: Array
    x_query: Array
    y_query: Array
    w: Array


class SineTask(NamedTuple):
    """A batch of sine regression tasks ``y = amplitude · sin(x + phase)`` (``d_in = d_out = 1``).

    Attributes: ``x (B, N, 1)``, ``y (B, N, 1)``, ``x_query (B, 1)``, ``y_query (B, 1)``,
    ``amplitude (B,)``, ``phase (B,)``.
    """

    x: Array
    y: Array
    x_query: Array
    y_query: Array
    amplitude: Array
    phase: Array


def _linear_sizes(batch, n_context, d_in, d_out, w_scale, noise_std):
    """The arguments every linear-task sampler shares, checked (sizes as ints, scales as floats)."""
    return (
        validate.positive_int("batch", batch),
        validate.positive_int("n_context", n_context),
        validate.positive_int("d_in", d_in),
        validate.positive_int("d_out", d_out),
        validate.non_negative_number("w_scale", w_scale),
        validate.non_negative_number("noise_std", noise_std),
    )


def _maps(key, batch, d_out, d_in, w_scale, dtype):
    """``batch`` linear maps ``(d_out, d_in)`` with entries ``N(0, w_scale²)``."""
    return w_scale * jax.random.normal(key, (batch, d_out, d_in), dtype)


def _uniform(key, shape, x_range, dtype):
    """Entries ``U(−x_range/2, x_range/2)``."""
    return jax.random.uniform(key, shape, dtype, -x_range / 2, x_range / 2)


def _linear_inputs(batch, n_context, d_in, d_out, x_range, w_scale, noise_std, dtype):
    """The checked arguments of a sampler with uniform inputs: the sizes and scales of
    :func:`_linear_sizes`, ``x_range``, and the dtype JAX will use."""
    sizes = _linear_sizes(batch, n_context, d_in, d_out, w_scale, noise_std)
    return *sizes, validate.non_negative_number("x_range", x_range), _float_dtype(dtype)


def _float_dtype(dtype):
    """``dtype`` as a float dtype that JAX will really use (float64 needs ``jax_enable_x64``)."""
    if dtype is None:
        return jnp.result_type(float)
    try:
        out = jnp.dtype(dtype)
    except TypeError as err:
        raise validate.ArgumentTypeError(f"dtype must be a float dtype; got {dtype!r}") from err
    if not jnp.issubdtype(out, jnp.floating):
        raise ValueError(f"dtype must be a float dtype; got {dtype!r}")
    if out == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype='float64' needs jax_enable_x64 (jax.config.update('jax_enable_x64', True) "
            "first); without it JAX would silently use float32"
        )
    return out


def linear_regression(
    key: Array,
    *,
    batch: int,
    n_context: int,
    d_in: int,
    d_out: int = 1,
    x_range: float = 1.0,
    w_scale: float = 1.0,
    noise_std: float = 0.0,
    n_distract: int = 0,
    dtype=None,
) -> LinearTask:
    """Sample ``batch`` linear regression tasks.

    ``W ~ N(0, w_scale²)`` entrywise ``(d_out, d_in)``; inputs ``x ~ U(-x_range/2, x_range/2)^d_in``
    (the default ``x_range = 1`` gives ``U(-0.5, 0.5)``, which is what the published code samples,
    although its docstrings say ``U(-1, 1)``); ``y = W x + noise_std · ε`` with ``ε ~ N(0, I)``
    on context labels and query label alike.

    ``n_distract`` > 0 replaces the labels of the first ``n_distract`` context pairs by pure
    ``N(0, 1)`` noise (distractors that carry no information about ``W``).

    Args:
      key: a PRNG key. Sizes are static Python ints.
      dtype: float dtype of every returned array; ``None`` is JAX's default float (float32, or
        float64 under ``jax_enable_x64``).

    Returns:
      a :class:`LinearTask` with ``x (B, N, d_in)``, ``y (B, N, d_out)``, ``x_query (B, d_in)``,
      ``y_query (B, d_out)``, ``w (B, d_out, d_in)``.
    """
    batch, n_context, d_in, d_out, w_scale, noise_std, x_range, dtype = _linear_inputs(
        batch, n_context, d_in, d_out, x_range, w_scale, noise_std, dtype
    )
    n_distract = validate.non_negative_int("n_distract", n_distract)
    if not 0 <= n_distract <= n_context:
        raise ValueError(f"n_distract must be in [0, n_context={n_context}]; got {n_distract}")
    return _linear_regression(
        key, batch, n_context, d_in, d_out, x_range, w_scale, noise_std, n_distract, dtype
    )


@_sampler
def _linear_regression(
    key, batch, n_context, d_in, d_out, x_range, w_scale, noise_std, n_distract, dtype
):
    k_w, k_x, k_noise, k_distract = jax.random.split(key, 4)
    w = _maps(k_w, batch, d_out, d_in, w_scale, dtype)
    xs = _uniform(k_x, (batch, n_context + 1, d_in), x_range, dtype)
    ys = jnp.einsum("boi,bni->bno", w, xs)
    if noise_std > 0:
        ys = ys + noise_std * jax.random.normal(k_noise, ys.shape, dtype)
    if n_distract > 0:
        noise = jax.random.normal(k_distract, (batch, n_distract, d_out), dtype)
        ys = ys.at[:, :n_distract].set(noise)
    return LinearTask(x=xs[:, :-1], y=ys[:, :-1], x_query=xs[:, -1], y_query=ys[:, -1], w=w)


def sine_regression(
    key: Array,
    *,
    batch: int,
    n_context: int,
    x_range: float = 10.0,
    amplitude: tuple[float, float] = (0.1, 0.5),
    phase: tuple[float, float] = (0.0, jnp.pi),
    dtype=None,
) -> SineTask:
    """Sample ``batch`` sine regression tasks ``y = A sin(x + φ)``.

    ``A ~ U(amplitude)``, ``φ ~ U(phase)`` (defaults ``U(0.1, 0.5)`` and ``U(0, π)``), inputs
    ``x ~ U(-x_range/2, x_range/2)``. Returns a :class:`SineTask` with ``d_in = d_out = 1``.
    """
    batch = validate.positive_int("batch", batch)
    n_context = validate.positive_int("n_context", n_context)
    x_range = validate.non_negative_number("x_range", x_range)
    for name, pair in (("amplitude", amplitude), ("phase", phase)):
        if np.shape(pair) != (2,):
            raise ValueError(f"{name} must be a (low, high) pair; got {pair!r}")
        lo, hi = (validate.finite_number(name, v) for v in pair)
        if not lo <= hi:
            raise ValueError(f"{name} must be a (low, high) pair with low <= high; got {(lo, hi)}")
    dtype = _float_dtype(dtype)
    return _sine_regression(key, batch, n_context, x_range, tuple(amplitude), tuple(phase), dtype)


@_sampler
def _sine_regression(key, batch, n_context, x_range, amplitude, phase, dtype):
    k_a, k_p, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_a, (batch,), dtype, *amplitude)
    ph = jax.random.uniform(k_p, (batch,), dtype, *phase)
    xs = _uniform(k_x, (batch, n_context + 1, 1), x_range, dtype)
    ys = amp[:, None, None] * jnp.sin(xs + ph[:, None, None])
    return SineTask(
        x=xs[:, :-1], y=ys[:, :-1], x_query=xs[:, -1], y_query=ys[:, -1], amplitude=amp, phase=ph
    )


# ------------------------------------------------------------------ non-isotropic inputs


def _finite_at_least(name: str, value, low: float) -> float:
    out = validate.finite_number(name, value)
    if not out >= low:
        raise ValueError(f"{name} must be a finite number >= {low}; got {value!r}")
    return out


def _seed(name: str, value) -> int:
    return validate.non_negative_int(name, value)


def input_spectrum(d_in: int, *, condition: float = 1.0, mean: float = 1.0) -> np.ndarray:
    """Geometric eigenvalues ``s_k = c · κ^{−k/(d_in−1)}``, ``k = 0…d_in−1``, largest first.

    ``κ = condition`` is the ratio ``s_0 / s_{d_in−1}`` and ``c`` makes their mean ``mean``
    (``tr Σ = d_in · mean``). ``condition = 1`` (or ``d_in = 1``) gives ``mean`` everywhere.
    Returns a float64 numpy array ``(d_in,)``.
    """
    d_in = validate.positive_int("d_in", d_in)
    condition = _finite_at_least("condition", condition, 1.0)
    mean = validate.positive_number("mean", mean)
    s = condition ** (-np.arange(d_in) / max(d_in - 1, 1))
    return mean * s / s.mean()


def rotation_matrix(d_in: int, seed: int) -> np.ndarray:
    """A fixed orthogonal matrix ``R`` ``(d_in, d_in)`` (float64): ``I`` for ``seed = 0``, else a
    Haar-random rotation drawn from ``numpy.random.default_rng(seed)`` (QR of a Gaussian matrix,
    the signs of ``R``'s diagonal fixed), the same on every machine and call."""
    d_in = validate.positive_int("d_in", d_in)
    seed = _seed("rotation", seed)
    if seed == 0:
        return np.eye(d_in)
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d_in, d_in)))
    return q * np.sign(np.diag(r))[None, :]


def input_covariance(
    d_in: int, *, condition: float = 1.0, x_var: float = 1 / 12, rotation: int = 0
) -> np.ndarray:
    """``Σ = R diag(s) Rᵀ`` ``(d_in, d_in)`` (float64) of :func:`gaussian_regression`'s inputs.

    ``s = input_spectrum(d_in, condition, mean=x_var)`` (so ``tr Σ / d_in = x_var``), and
    ``R = rotation_matrix(d_in, rotation)`` (``rotation = 0``: ``Σ`` is diagonal).
    """
    s = input_spectrum(d_in, condition=condition, mean=x_var)
    r = rotation_matrix(d_in, rotation)
    return (r * s[None, :]) @ r.T


def gaussian_regression(
    key: Array,
    *,
    batch: int,
    n_context: int,
    d_in: int,
    d_out: int = 1,
    condition: float = 1.0,
    x_var: float = 1 / 12,
    rotation: int = 0,
    w_scale: float = 1.0,
    noise_std: float = 0.0,
    dtype=None,
) -> LinearTask:
    """Linear regression tasks with non-isotropic Gaussian inputs ``x ~ N(0, Σ)``.

    ``Σ = input_covariance(d_in, condition, x_var, rotation)``: a geometric spectrum with
    condition number ``condition`` and mean eigenvalue ``x_var`` (default ``1/12``, the variance
    of the default ``U(−1/2, 1/2)`` inputs, so ``E‖y‖²`` matches :func:`linear_regression`'s),
    rotated by the fixed orthogonal matrix of seed ``rotation`` (``0``: axis-aligned). Context
    inputs and the query alike are ``x = A z`` with ``A = R diag(√s)``, ``z ~ N(0, I)``.
    ``W ~ N(0, w_scale²)`` entrywise, ``y = W x + noise_std · ε``.

    Returns a :class:`LinearTask` (``x (B, N, d_in)``, ``y (B, N, d_out)``, ``x_query (B, d_in)``,
    ``y_query (B, d_out)``, ``w (B, d_out, d_in)``). One-step GD's best preconditioner for these
    tasks is :func:`ssm_gd.gd.optimal_preconditioner` of this ``Σ``.
    """
    batch, n_context, d_in, d_out, w_scale, noise_std = _linear_sizes(
        batch, n_context, d_in, d_out, w_scale, noise_std
    )
    condition = _finite_at_least("condition", condition, 1.0)
    x_var = validate.positive_number("x_var", x_var)
    rotation = _seed("rotation", rotation)
    dtype = _float_dtype(dtype)
    return _gaussian_regression(
        key, batch, n_context, d_in, d_out, condition, x_var, rotation, w_scale,
        noise_std, dtype,
    )  # fmt: skip


@_sampler
def _gaussian_regression(
    key, batch, n_context, d_in, d_out, condition, x_var, rotation, w_scale, noise_std, dtype
):
    k_w, k_x, k_noise = jax.random.split(key, 3)
    s = input_spectrum(d_in, condition=condition, mean=x_var)
    a = jnp.asarray(rotation_matrix(d_in, rotation) * np.sqrt(s)[None, :], dtype)  # Σ = A Aᵀ
    w = _maps(k_w, batch, d_out, d_in, w_scale, dtype)
    xs = jax.random.normal(k_x, (batch, n_context + 1, d_in), dtype) @ a.T
    ys = jnp.einsum("boi,bni->bno", w, xs)
    if noise_std > 0:
        ys = ys + noise_std * jax.random.normal(k_noise, ys.shape, dtype)
    return LinearTask(x=xs[:, :-1], y=ys[:, :-1], x_query=xs[:, -1], y_query=ys[:, -1], w=w)


# ------------------------------------------------------------------------- drifting maps


def drift_coefficients(
    n_context: int, switch_at: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The mixing coefficients ``(a_old, a_new)`` ``(N,)`` of :func:`drifting_regression`.

    Context pair ``i = 1…N`` follows ``W_i = a_old[i] W_old + a_new[i] W_new`` with
    ``a_old² + a_new² = 1``:

    * ``switch_at=None`` (a smooth drift): ``θ_i = (π/2)·i/N``, ``a_old = cos θ_i``,
      ``a_new = sin θ_i`` (computed as ``sin(π/2 − θ_i)`` and ``sin θ_i``, so the last pair's
      coefficients are exactly ``(0, 1)``);
    * ``switch_at=k`` (an abrupt switch): ``(1, 0)`` for ``i ≤ k``, ``(0, 1)`` after.
    """
    n_context = validate.positive_int("n_context", n_context)
    i = np.arange(1, n_context + 1)
    if switch_at is None:
        return np.sin(np.pi / 2 * (1 - i / n_context)), np.sin(np.pi / 2 * i / n_context)
    switch_at = validate.non_negative_int("switch_at", switch_at)
    if not 0 <= switch_at <= n_context:
        raise ValueError(f"switch_at must be in [0, n_context={n_context}]; got {switch_at}")
    old = (i <= switch_at).astype(np.float64)
    return old, 1.0 - old


def drifting_regression(
    key: Array,
    *,
    batch: int,
    n_context: int,
    d_in: int,
    d_out: int = 1,
    x_range: float = 1.0,
    w_scale: float = 1.0,
    noise_std: float = 0.0,
    switch_at: int | None = None,
    dtype=None,
) -> LinearTask:
    """Non-stationary linear regression: the map drifts from ``W_old`` to ``W_new`` along the
    context.

    ``W_old, W_new ~ N(0, w_scale²)`` entrywise and independent; context pair ``i`` is
    ``y_i = W_i x_i (+ noise_std · ε)`` with ``W_i = a_old[i] W_old + a_new[i] W_new``
    (:func:`drift_coefficients`: a smooth rotation ``θ_i = (π/2)·i/N`` by default, or an abrupt
    switch after ``switch_at`` pairs). Since ``a_old² + a_new² = 1`` every ``W_i`` has the distribution of
    ``W_new``; the query follows the newest map, ``y_q = W_new x_q (+ noise)``, and ``w`` holds
    ``W_new``. Inputs ``x ~ U(−x_range/2, x_range/2)^d_in`` as in :func:`linear_regression`.

    Returns a :class:`LinearTask`; recent pairs are the more informative, which sample-weighted
    GD (:func:`ssm_gd.gd.weighted_predict`) exploits and plain GD cannot.
    """
    batch, n_context, d_in, d_out, w_scale, noise_std, x_range, dtype = _linear_inputs(
        batch, n_context, d_in, d_out, x_range, w_scale, noise_std, dtype
    )
    drift_coefficients(n_context, switch_at)  # checks switch_at
    switch = None if switch_at is None else int(switch_at)
    return _drifting_regression(
        key, batch, n_context, d_in, d_out, x_range, w_scale, noise_std, switch, dtype
    )


@_sampler
def _drifting_regression(
    key, batch, n_context, d_in, d_out, x_range, w_scale, noise_std, switch_at, dtype
):
    k_old, k_new, k_x, k_noise = jax.random.split(key, 4)
    w_old = _maps(k_old, batch, d_out, d_in, w_scale, dtype)
    w_new = _maps(k_new, batch, d_out, d_in, w_scale, dtype)
    a_old, a_new = (jnp.asarray(a, dtype) for a in drift_coefficients(n_context, switch_at))
    xs = _uniform(k_x, (batch, n_context + 1, d_in), x_range, dtype)
    x, xq = xs[:, :-1], xs[:, -1]
    y = a_old[None, :, None] * jnp.einsum("boi,bni->bno", w_old, x)
    y = y + a_new[None, :, None] * jnp.einsum("boi,bni->bno", w_new, x)
    yq = jnp.einsum("boi,bi->bo", w_new, xq)
    if noise_std > 0:
        noise = noise_std * jax.random.normal(k_noise, (batch, n_context + 1, d_out), dtype)
        y, yq = y + noise[:, :-1], yq + noise[:, -1]
    return LinearTask(x=x, y=y, x_query=xq, y_query=yq, w=w_new)


# ------------------------------------------------------------------ out of distribution

#: Input distributions :func:`shifted_regression` draws from, each with mean 0.
INPUT_DISTRIBUTIONS = ("uniform", "normal", "laplace", "exponential")


def shifted_regression(
    key: Array,
    *,
    batch: int,
    n_context: int,
    d_in: int,
    d_out: int = 1,
    x_std: float,
    w_scale: float = 1.0,
    dist: str = "uniform",
    dtype=None,
) -> LinearTask:
    """Linear tasks with inputs of standard deviation ``x_std`` from ``dist`` (mean 0; the
    exponential is centred) and maps ``W ~ N(0, w_scale²)``, no noise: the training tasks of
    :func:`linear_regression` (``x_std = x_range/√12``, ``dist="uniform"``) moved out of their
    distribution, for out-of-distribution tests. Drawn eagerly, with JAX's default PRNG stream.
    """
    batch, n_context, d_in, d_out, w_scale, _ = _linear_sizes(
        batch, n_context, d_in, d_out, w_scale, 0.0
    )
    x_std = validate.positive_number("x_std", x_std)
    dist = validate.one_of("dist", dist, INPUT_DISTRIBUTIONS)
    dtype = _float_dtype(dtype)
    kx, kq, kw = jax.random.split(key, 3)
    x = _inputs(kx, (batch, n_context, d_in), dist, x_std, dtype)
    xq = _inputs(kq, (batch, d_in), dist, x_std, dtype)
    w = _maps(kw, batch, d_out, d_in, w_scale, dtype)
    y = jnp.einsum("boi,bni->bno", w, x)
    return LinearTask(x=x, y=y, x_query=xq, y_query=jnp.einsum("boi,bi->bo", w, xq), w=w)


def _inputs(key, shape, dist: str, std: float, dtype):
    """Inputs with mean 0 and standard deviation ``std`` from ``dist``."""
    if dist == "uniform":
        half = std * np.sqrt(3.0)
        return jax.random.uniform(key, shape, dtype, -half, half)
    if dist == "normal":
        return std * jax.random.normal(key, shape, dtype)
    if dist == "laplace":
        return std / np.sqrt(2.0) * jax.random.laplace(key, shape, dtype)
    return std * (jax.random.exponential(key, shape, dtype) - 1.0)


# ------------------------------------------------------------------------ classification

#: Input distributions of :func:`classification`: ``N(0, I)``, or ``U(−1/2, 1/2)`` entrywise (the
#: inputs of :func:`linear_regression` at its default ``x_range = 1``).
CLASSIFICATION_INPUTS = ("normal", "uniform")


def _n_classes(value) -> int:
    """``n_classes`` as a Python ``int`` ``>= 2`` (one class leaves nothing to learn)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise validate.ArgumentTypeError(
            f"n_classes must be an integer >= 2; got {value!r} ({type(value).__name__})"
        )
    if value < 2:
        raise ValueError(f"n_classes must be an integer >= 2; got {value!r}")
    return int(value)


def classification(
    key: Array,
    *,
    batch: int,
    n_context: int,
    d_in: int,
    n_classes: int,
    temperature: float | None = None,
    x_dist: str = "normal",
    w_scale: float = 1.0,
    dtype=None,
) -> LinearTask:
    """Sample ``batch`` in-context classification tasks with ``K = n_classes`` linear classes.

    ``W* ~ N(0, w_scale²)`` entrywise ``(K, d_in)``; inputs ``x ~ N(0, I)`` (``x_dist="normal"``)
    or ``U(−1/2, 1/2)^d_in`` (``"uniform"``), ``N`` context inputs and one query. Each input's
    class is ``c = argmax_k (W* x)_k`` (``temperature=None``: noiseless, linearly separable) or
    ``c ~ softmax(W* x / temperature)`` (:func:`jax.random.categorical`), context and query alike;
    its label is the one-hot ``y = e_c``. (``w_scale = 0`` makes every logit 0: class 0 without a
    temperature, uniformly random classes with one.)

    Returns a :class:`LinearTask` with ``x (B, N, d_in)``, one-hot ``y (B, N, K)``,
    ``x_query (B, d_in)``, one-hot ``y_query (B, K)`` and ``w = W* (B, K, d_in)``, all of the float
    ``dtype`` (``None``: JAX's default float). Sizes, ``x_dist`` and ``dtype`` are static;
    ``temperature`` and ``w_scale`` are traced (a new value does not recompile, and a caller's
    ``jax.jit`` may trace them). It is a regression task with ``d_out = K`` to every
    function that reads one (:func:`tokens` included); :func:`ssm_gd.gd.cross_entropy_predict` is
    its gradient-descent reference and :func:`centred` its centred-label variant.
    """
    batch = validate.positive_int("batch", batch)
    n_context = validate.positive_int("n_context", n_context)
    d_in = validate.positive_int("d_in", d_in)
    n_classes = _n_classes(n_classes)
    if temperature is not None:
        temperature = validate.positive_number("temperature", temperature)
    x_dist = validate.one_of("x_dist", x_dist, CLASSIFICATION_INPUTS)
    w_scale = validate.non_negative_number("w_scale", w_scale)
    dtype = _float_dtype(dtype)
    return _classification(
        key, temperature, w_scale, batch, n_context, d_in, n_classes, x_dist, dtype
    )


# The temperature (None or a number) and w_scale are traced: changing them does not recompile.
@_sampler(dynamic=3)
def _classification(key, temperature, w_scale, batch, n_context, d_in, n_classes, x_dist, dtype):
    k_w, k_x, k_c = jax.random.split(key, 3)
    w = _maps(k_w, batch, n_classes, d_in, jnp.asarray(w_scale, dtype), dtype)
    shape = (batch, n_context + 1, d_in)
    if x_dist == "normal":
        xs = _inputs(k_x, shape, "normal", 1.0, dtype)
    else:
        xs = _uniform(k_x, shape, 1.0, dtype)
    logits = jnp.einsum("bki,bni->bnk", w, xs)
    if temperature is None:
        classes = jnp.argmax(logits, axis=-1)
    else:
        classes = jax.random.categorical(k_c, logits / jnp.asarray(temperature, dtype), axis=-1)
    ys = jax.nn.one_hot(classes, n_classes, dtype=dtype)
    return LinearTask(x=xs[:, :-1], y=ys[:, :-1], x_query=xs[:, -1], y_query=ys[:, -1], w=w)


def centred(task: LinearTask) -> LinearTask:
    """The same classification task with centred labels: ``y − 1/K`` on context and query.

    Every label row then sums to 0 (a one-hot ``e_c`` becomes ``e_c − 1/K``). At ``W_0 = 0`` the
    softmax is uniform, so one cross-entropy GD step is ``W_1 = (η/N) Σ_i (y_i − 1/K) x_iᵀ``: one
    squared-loss GD step on the centred labels. A GD-SSM that reads the centred task's tokens
    (:func:`tokens`) therefore computes one cross-entropy GD step's logits exactly
    (:func:`ssm_gd.gd.cross_entropy_predict`).

    ``task`` needs ``x``, ``y (B, N, K)``, ``x_query`` and ``y_query (B, K)`` (a
    :class:`LinearTask` from :func:`classification`) whose label rows sum to 1 (one-hot, or any
    class distribution); centring twice is refused. Traced labels are shifted unchecked.
    """
    check_task(task)
    if not hasattr(task, "_replace") or getattr(task, "y_query", None) is None:
        raise validate.ArgumentTypeError(
            f"task must be a LinearTask with query labels (from classification); got "
            f"{type(task).__name__}"
        )
    for name in ("y", "y_query"):
        labels = getattr(task, name)
        if not validate.is_traced(labels):
            sums = np.sum(np.asarray(labels, np.float64), axis=-1)
            if not np.allclose(sums, 1.0, rtol=0, atol=1e-4):
                raise ValueError(
                    f"task.{name} must hold class labels whose rows sum to 1 (one-hot, as "
                    f"classification samples); got row sums in [{sums.min():.3g}, "
                    f"{sums.max():.3g}] (already centred?)"
                )
    shift = 1.0 / task.y.shape[-1]
    return task._replace(y=task.y - shift, y_query=task.y_query - shift)


def __getattr__(name: str):
    """``tasks.mqar`` and ``tasks.RecallTask`` moved to :mod:`ssm_gd.seq.mqar`; kept here, with a
    warning, for one release (imported on first use: this module does not import ``ssm_gd.seq``)."""
    if name in ("mqar", "RecallTask"):
        import importlib
        import warnings

        warnings.warn(
            f"ssm_gd.tasks.{name} moved to ssm_gd.seq.mqar.{name}; the old name goes in the next "
            "release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("ssm_gd.seq.mqar"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
