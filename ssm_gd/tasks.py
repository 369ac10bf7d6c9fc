"""In-context regression tasks: pure, jittable, batched samplers and token layouts.

A task is a hidden map, ``N`` context pairs ``(x_i, y_i)`` and a query ``x_q`` whose label ``y_q``
is to be predicted. Samplers take an explicit PRNG key and static sizes and return a task pytree
(a ``NamedTuple``), so they can be called inside ``jax.jit`` (sizes static) and on any device.

Token layouts (:func:`tokens`) turn a task into the sequence a sequence model reads.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "LAYOUTS",
    "LinearTask",
    "SineTask",
    "check_layout",
    "linear_regression",
    "sine_regression",
    "token_width",
    "tokens",
]

Array = jax.Array
LAYOUTS = ("interleaved", "constructed")


def _sampler(fn):
    """Jit a sampler (sizes static) that traces threefry in its non-partitionable form.

    On XLA:CPU (jaxlib 0.10) JAX's default, partitionable threefry takes 4-8 s to compile per
    sampler and shape; this form takes 0.3 s. Both are pure functions of the key (only the stream
    differs), and the setting is scoped to the sampler's own trace.
    """

    @functools.wraps(fn)
    def traced(key, *sizes):
        with jax.threefry_partitionable(False):
            return fn(key, *sizes)

    return jax.jit(traced, static_argnums=tuple(range(1, fn.__code__.co_argcount)))


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


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def _non_negative(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number; got {value!r}")
    return float(value)


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
    batch = _positive_int("batch", batch)
    n_context = _positive_int("n_context", n_context)
    d_in = _positive_int("d_in", d_in)
    d_out = _positive_int("d_out", d_out)
    x_range = _non_negative("x_range", x_range)
    w_scale = _non_negative("w_scale", w_scale)
    noise_std = _non_negative("noise_std", noise_std)
    if isinstance(n_distract, bool) or not isinstance(n_distract, int):
        raise ValueError(f"n_distract must be an integer in [0, n_context]; got {n_distract!r}")
    if not 0 <= n_distract <= n_context:
        raise ValueError(f"n_distract must be in [0, n_context={n_context}]; got {n_distract}")

    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    return _linear_regression(
        key, batch, n_context, d_in, d_out, x_range, w_scale, noise_std, n_distract, dtype
    )


@_sampler
def _linear_regression(
    key, batch, n_context, d_in, d_out, x_range, w_scale, noise_std, n_distract, dtype
):
    k_w, k_x, k_noise, k_distract = jax.random.split(key, 4)
    w = w_scale * jax.random.normal(k_w, (batch, d_out, d_in), dtype)
    half = x_range / 2
    xs = jax.random.uniform(k_x, (batch, n_context + 1, d_in), dtype, -half, half)
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
    batch = _positive_int("batch", batch)
    n_context = _positive_int("n_context", n_context)
    x_range = _non_negative("x_range", x_range)
    for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase)):
        if not lo <= hi:
            raise ValueError(f"{name} must be a (low, high) pair with low <= high; got {(lo, hi)}")
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    return _sine_regression(key, batch, n_context, x_range, tuple(amplitude), tuple(phase), dtype)


@_sampler
def _sine_regression(key, batch, n_context, x_range, amplitude, phase, dtype):
    k_a, k_p, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_a, (batch,), dtype, *amplitude)
    ph = jax.random.uniform(k_p, (batch,), dtype, *phase)
    xs = jax.random.uniform(k_x, (batch, n_context + 1, 1), dtype, -x_range / 2, x_range / 2)
    ys = amp[:, None, None] * jnp.sin(xs + ph[:, None, None])
    return SineTask(
        x=xs[:, :-1], y=ys[:, :-1], x_query=xs[:, -1], y_query=ys[:, -1], amplitude=amp, phase=ph
    )


def check_layout(layout: str, d_in: int, d_out: int) -> None:
    """Raise ``ValueError`` unless ``layout`` is known and fits the sizes."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    _positive_int("d_in", d_in)
    _positive_int("d_out", d_out)
    if layout == "constructed" and d_out != 1:
        raise ValueError(
            f"layout='constructed' needs scalar labels (d_out=1), since its tokens hold x_i·y_i; "
            f"got d_out={d_out}. Use layout='interleaved' for vector labels."
        )


def token_width(layout: str, d_in: int, d_out: int) -> int:
    """Token width ``H``: ``max(d_in, d_out)`` interleaved, ``2·d_in`` constructed."""
    check_layout(layout, d_in, d_out)
    return max(d_in, d_out) if layout == "interleaved" else 2 * d_in


def tokens(task, layout: str = "interleaved") -> Array:
    """Lay a task out as a token sequence ``(B, L, H)``.

    * ``"interleaved"``: ``[x_1, y_1, x_2, y_2, …, x_N, y_N, x_q]``, ``L = 2N + 1``,
      ``H = max(d_in, d_out)``; every token is zero-padded to ``H``.
    * ``"constructed"`` (scalar labels): ``[u_0, u_1, …, u_N]`` with ``u_i = [x_i·y_i, x_{i+1}]``
      (``x_{N+1} = x_q``) and a leading ``u_0 = [0, x_1]``; ``L = N + 1``, ``H = 2·d_in``. The label
      is already multiplied into the token. ``u_0`` carries ``x_1``, which the products alone
      lose and which multi-step GD needs (through ``Σ x_i x_iᵀ``).
    """
    x, y, xq = task.x, task.y, task.x_query
    if x.ndim != 3 or y.ndim != 3 or xq.ndim != 2:
        raise ValueError(
            f"task must be batched: x (B, N, d_in), y (B, N, d_out), x_query (B, d_in); "
            f"got {x.shape}, {y.shape}, {xq.shape}"
        )
    (b, n, d_in), d_out = x.shape, y.shape[-1]
    if y.shape[:2] != (b, n) or xq.shape != (b, d_in):
        raise ValueError(f"task shapes disagree: x {x.shape}, y {y.shape}, x_query {xq.shape}")
    return _tokens(x, y, xq, layout, token_width(layout, d_in, d_out))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _tokens(x, y, xq, layout, width):
    b, n, _ = x.shape
    if layout == "interleaved":
        pad = lambda v: jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, width - v.shape[-1])])  # noqa: E731
        pairs = jnp.stack([pad(x), pad(y)], axis=2).reshape(b, 2 * n, width)
        return jnp.concatenate([pairs, pad(xq)[:, None]], axis=1)
    nxt = jnp.concatenate([x[:, 1:], xq[:, None]], axis=1)
    body = jnp.concatenate([x * y, nxt], axis=-1)
    first = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :1]], axis=-1)
    return jnp.concatenate([first, body], axis=1)
