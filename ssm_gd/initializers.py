"""Parameter initializers ``(key, shape, dtype) → array``, for the modules of :mod:`ssm_gd.layers`
and :mod:`ssm_gd.neighbours` and the closed-form constructions.

Fixed values (the key is ignored): :func:`constant_init` (a given array, its shape checked),
:func:`fill_init` (one value everywhere), :func:`ones_init`, :func:`identity_init` and
:func:`first_tap_init`. Random: :func:`uniform_init`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Initializer",
    "constant_init",
    "fill_init",
    "first_tap_init",
    "identity_init",
    "ones_init",
    "uniform_init",
]

Array = jax.Array
Initializer = Callable[..., Array]


def constant_init(value) -> Initializer:
    """An initializer that returns ``value`` (and checks that the requested shape matches)."""
    value = np.asarray(value)

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) != value.shape:
            raise ValueError(f"constructed value has shape {value.shape}, module asked {shape}")
        return jnp.asarray(value, dtype)

    return init


def fill_init(value: float) -> Initializer:
    """An initializer that fills any requested shape with ``value``.

    As a decay, ``Λ = value`` everywhere: ``0 < value ≤ 1`` weights sample ``i`` by ``value^{t−i}``.
    """

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


def ones_init(key, shape, dtype=jnp.float32) -> Array:
    """``Λ = 1``: a pure accumulator (the GD construction's choice)."""
    del key
    return jnp.ones(shape, dtype)


def identity_init(key, shape, dtype=jnp.float32) -> Array:
    """The (rectangular) identity ``I``."""
    del key
    return jnp.eye(*shape, dtype=dtype)


def first_tap_init(key, shape, dtype=jnp.float32) -> Array:
    """The shift filter ``(1, 0, …, 0)``: ``k_t = W_k e_t`` (H3's construction)."""
    del key
    return jnp.zeros(shape, dtype).at[0].set(1)


def uniform_init(low: float, high: float) -> Initializer:
    """``Λ ~ U(low, high)`` entrywise."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init
