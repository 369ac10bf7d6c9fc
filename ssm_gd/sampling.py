"""Jitted, keyed samplers (core): :func:`keyed_sampler`, the decorator every task sampler uses."""

from __future__ import annotations

import functools

import jax

__all__ = ["keyed_sampler"]


def keyed_sampler(fn=None, *, dynamic: int = 1):
    """Jit a sampler (sizes static) that traces threefry in its non-partitionable form.

    On XLA:CPU (jaxlib 0.10) JAX's default, partitionable threefry takes 4-8 s to compile per
    sampler and shape; this form takes 0.3 s. Both are pure functions of the key (only the stream
    differs), and the setting is scoped to the sampler's own trace.

    The first ``dynamic`` arguments (the key, then any numbers that may change without a new
    compilation) are traced; the rest are static.
    """
    if fn is None:
        return functools.partial(keyed_sampler, dynamic=dynamic)

    @functools.wraps(fn)
    def traced(*args):
        with jax.threefry_partitionable(False):
            return fn(*args)

    return jax.jit(traced, static_argnums=tuple(range(dynamic, fn.__code__.co_argcount)))
