"""Diagonal linear recurrences: ``h_t = a_t ⊙ h_{t-1} + b_t``.

One entry point, :func:`linear_recurrence`, with interchangeable implementations:

* ``"associative"`` — :func:`jax.lax.associative_scan` on the pairs ``(a_t, b_t)`` with the
  operator ``(a1, b1) • (a2, b2) = (a1 a2, a2 b1 + b2)``: ``O(log L)`` depth, the parallel form.
* ``"sequential"`` — :func:`jax.lax.scan`, one step at a time: ``O(L)`` depth, ``O(1)`` extra memory.

Both take the same arguments and return the same values; ``h0`` and ``reverse`` are handled once,
outside the implementations. Inputs in bfloat16/float16 are accumulated in float32 and the result
is cast back. :func:`step` is the single update for recurrent (token-by-token) inference, and
:func:`decay_powers` the powers ``Λ^{T−t}`` of a time-invariant recurrence's closed form
``h_T = Σ_t Λ^{T−t} ⊙ b_t``.

The readouts that never build the states ``h_t`` are in :mod:`ssm_gd.readout`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssm_gd import validate

__all__ = [
    "IMPLEMENTATIONS",
    "decay_powers",
    "linear_recurrence",
    "step",
]

Array = jax.Array


def step(a_t: Array, b_t: Array, h: Array) -> Array:
    """One recurrence step ``h_t = a_t ⊙ h_{t-1} + b_t`` (shapes broadcast elementwise)."""
    return a_t * h + b_t


def _combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2


def _associative(a: Array, b: Array) -> Array:
    _, h = jax.lax.associative_scan(_combine, (a, b), axis=0)
    return h


def _sequential(a: Array, b: Array) -> Array:
    def body(h, ab):
        h = step(ab[0], ab[1], h)
        return h, h

    _, h = jax.lax.scan(body, jnp.zeros_like(b[0]), (a, b))
    return h


IMPLEMENTATIONS: dict[str, Callable[[Array, Array], Array]] = {
    "associative": _associative,
    "sequential": _sequential,
}

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def _check(a, b, h0, axis, impl) -> int:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {sorted(IMPLEMENTATIONS)}; got {impl!r}")
    for name, v in (("a", a), ("b", b), ("h0", h0)):
        if v is None:
            continue
        if not hasattr(v, "dtype") or not hasattr(v, "shape"):
            raise TypeError(f"{name} must be an array; got {type(v).__name__}")
        if not jnp.issubdtype(v.dtype, jnp.inexact):
            raise TypeError(
                f"{name} must have a floating or complex dtype; got {v.dtype} "
                f"(cast integer inputs, e.g. {name}.astype(jnp.float32))"
            )
    if b.ndim == 0:
        raise ValueError("b must have a time axis; got a scalar")
    if not -b.ndim <= axis < b.ndim:
        raise ValueError(
            f"axis must be in [{-b.ndim}, {b.ndim}) for b of shape {b.shape}; got {axis}"
        )
    axis %= b.ndim
    if b.shape[axis] == 0:
        raise ValueError(f"b must have at least one time step; got length 0 on axis {axis}")
    try:
        target = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        target = None
    if target != b.shape:
        raise ValueError(f"a of shape {a.shape} must broadcast to b's shape {b.shape}")
    if h0 is not None:
        state = b.shape[:axis] + b.shape[axis + 1 :]
        try:
            fits = np.broadcast_shapes(h0.shape, state) == state
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"h0 of shape {h0.shape} must broadcast to the state shape {state} "
                f"(b's shape {b.shape} without the time axis {axis})"
            )
    return axis


def linear_recurrence(
    a: Array,
    b: Array,
    h0: Array | None = None,
    *,
    reverse: bool = False,
    impl: str = "associative",
    axis: int = 0,
) -> tuple[Array, Array]:
    """Solve ``h_t = a_t ⊙ h_{t-1} + b_t`` for every ``t`` along the time axis.

    Args:
      a: decays, broadcastable to ``b`` (e.g. ``(H,)`` for a time-invariant diagonal ``Λ``).
      b: inputs, ``(L, *state)`` with time on ``axis`` (default the leading axis); any trailing
        state shape (vectors, matrices), real or complex.
      h0: initial state ``h_0``, broadcastable to ``state``; zero when ``None``.
      reverse: run from the end: ``h_t = a_t ⊙ h_{t+1} + b_t`` with ``h_{L+1} = h0``.
      impl: ``"associative"`` (parallel, :func:`jax.lax.associative_scan`) or ``"sequential"``
        (:func:`jax.lax.scan`). Both give the same values up to float rounding.
      axis: the time axis of ``b`` (and of ``a`` once broadcast).

    Returns:
      ``(h, h_last)``: all states, shaped like ``b``, and the final state of the scan
      (``h_L``, or ``h_1`` when ``reverse``).

    Raises:
      ValueError: unknown ``impl``; shapes that do not broadcast. TypeError: integer inputs.
    """
    axis = _check(a, b, h0, axis, impl)
    return _solve(a, b, h0, reverse=reverse, impl=impl, axis=axis)


@functools.partial(jax.jit, static_argnames=("reverse", "impl", "axis"))
def _solve(a, b, h0, *, reverse, impl, axis):
    # Compiled as one computation, so that eager calls do not dispatch the scan op by op.
    out_dtype = jnp.result_type(a, b, *([] if h0 is None else [h0]))
    acc_dtype = jnp.float32 if out_dtype in _LOW_PRECISION else out_dtype
    a = jnp.broadcast_to(jnp.asarray(a, acc_dtype), b.shape)
    b = jnp.asarray(b, acc_dtype)
    a, b = jnp.moveaxis(a, axis, 0), jnp.moveaxis(b, axis, 0)
    if reverse:
        a, b = a[::-1], b[::-1]
    if h0 is not None:
        # Fold the initial state into the first input: h_1 = a_1 h0 + b_1.
        b = b.at[0].add(a[0] * jnp.asarray(h0, acc_dtype))
    h = IMPLEMENTATIONS[impl](a, b)
    if reverse:
        h = h[::-1]
    h = jnp.moveaxis(h, 0, axis).astype(out_dtype)
    h_last = jax.lax.index_in_dim(h, 0 if reverse else -1, axis=axis, keepdims=False)
    return h, h_last


def decay_powers(lam: Array, length: int) -> Array:
    """``Λ^{T−t}`` for ``t = 1 … T`` (``T = length``): ``(T, *Λ.shape)``, from ``Λ^{T−1}`` down to ``Λ^0 = 1``.

    Integer powers (exponentiation by squaring, ``O(log T)`` roundings each), so any real ``Λ`` —
    negative or zero entries included — is exact up to float rounding, and the gradient is
    ``n Λ^{n−1}``.
    """
    length = validate.positive_int("length", length)
    exponents = jnp.arange(length - 1, -1, -1).reshape((length,) + (1,) * lam.ndim)
    return jnp.power(lam[None], exponents)
