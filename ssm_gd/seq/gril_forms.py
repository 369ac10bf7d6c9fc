"""GRIL's forms as pure functions of arrays (docs/design.md §13): the module
:class:`ssm_gd.seq.gril.GRILMixer` holds the parameters and picks one.

Per head, on the windows of the positions where the state is updated: keys ``k`` ``(B, T, w, H,
d_k)``, values ``v`` ``(B, T, w, H, d_v)`` (row ``a`` of a window is position ``t − w + 1 + a``), the
windowed queries ``q̃`` ``(B, T, H, d_k)``, the window matrix ``Q`` ``(H, w, w)`` and the decay ``Λ``
``(H, d_k, d_v)``:

    U_t = Σ_{a,b} Q_ab k_a v_bᵀ,        S_t = Λ ⊙ S_{t−1} + U_t,        o_t = S_tᵀ q̃_t.

Every form returns ``o`` ``(B, T, H, d_v)``; they agree to rounding (tests, float64):
:func:`chunked` (masked products inside chunks, a state carried across them), :func:`scan` (the
recurrence a step at a time, a chunk per checkpointed segment), :func:`every_state` (all states by
an associative scan: the reference) and :func:`step` (one token, for generation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_gd import scan as linear_scan
from ssm_gd.readout import chunked_readout

__all__ = ["chunked", "every_state", "head_norm", "scan", "step"]

Array = jax.Array


def chunked(lam: Array, q_mix: Array, k: Array, v: Array, query: Array, *, chunk: int) -> Array:
    """``o_t`` by :func:`ssm_gd.readout.chunked_readout` per head, on the transposed state
    ``S_tᵀ`` (inside a chunk, masked products weighted by ``Λ^{t−i}``)."""

    def head(lam_t, q_mix, k, v, query):  # one head; k (B, T, w, d_k), v (B, T, w, d_v)
        def make_b(kv):  # U_tᵀ = Σ_ab Q_ab v_b k_aᵀ, a chunk at a time
            return jnp.einsum("bcak,ae,bcev->bcvk", kv[0], q_mix, kv[1])

        return chunked_readout(lam_t, make_b, (k, v), query, chunk=chunk)

    heads = jax.vmap(head, in_axes=(0, 0, 3, 3, 2), out_axes=2)
    return heads(jnp.swapaxes(lam, 1, 2), q_mix, k, v, query)


def scan(lam: Array, q_mix: Array, k: Array, v: Array, query: Array, *, chunk: int) -> Array:
    """``o_t`` by the recurrence a step at a time, ``chunk`` steps per checkpointed segment (the
    backward pass keeps one state per chunk and recomputes the chunk)."""
    batch, length, _, h, dk = k.shape
    c = min(chunk, length)
    n = -(-length // c)
    lam = lam.astype(k.dtype)
    qv = jnp.einsum("hae,btehv->btahv", q_mix, v)  # U_t = Σ_a k_a (Σ_b Q_ab v_b)ᵀ

    def to_chunks(x):  # (B, T, …) → (n, c, B, …); zero keys past the end: no update there
        x = jnp.pad(x, [(0, 0), (0, n * c - length)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, n, c, *x.shape[2:]), (1, 2), (0, 1))

    def one(s, x):
        k_t, qv_t, q_t = x
        s = lam * s + jnp.einsum("bahk,bahv->bhkv", k_t, qv_t)
        return s, jnp.einsum("bhkv,bhk->bhv", s, q_t)

    @jax.checkpoint
    def segment(s, xs):
        return jax.lax.scan(one, s, xs)

    s0 = jnp.zeros((batch, h, dk, v.shape[-1]), jnp.result_type(k, lam))
    _, o = jax.lax.scan(segment, s0, tuple(map(to_chunks, (k, qv, query))))
    o = o.reshape(n * c, *o.shape[2:])[:length]  # (T, B, H, d_v)
    return jnp.moveaxis(o, 0, 1)


def every_state(lam: Array, q_mix: Array, k: Array, v: Array, query: Array) -> Array:
    """``o_t`` from every state ``S_t`` ``(B, T, H, d_k, d_v)``, by an associative scan."""
    updates = jnp.einsum("btahk,hae,btehv->bthkv", k, q_mix, v)
    states, _ = linear_scan.linear_recurrence(lam, updates, axis=1)
    return jnp.einsum("bthkv,bthk->bthv", states, query)


def step(lam, q_mix, d_mix, s, k, v, q, active) -> tuple[Array, Array]:
    """One position: the window ending there (``k`` ``(B, w, H, d_k)``, ``v``, ``q``), the state
    ``s`` ``(B, H, d_k, d_v)`` before it; ``(s, o)`` after it. Where ``active`` is false (not an
    update position of the stride) the state is kept and ``o = 0``."""
    update = jnp.einsum("bahk,hae,behv->bhkv", k, q_mix, v)
    s = jnp.where(active, lam * s + update, s)
    query = jnp.einsum("bahk,ha->bhk", q, d_mix)
    return s, jnp.where(active, jnp.einsum("bhkv,bhk->bhv", s, query), 0.0)


def head_norm(o: Array, scale: Array) -> Array:
    """Each head's output ``(…, H, d_v)`` divided by its root mean square (``+ 1e-6``), times
    ``scale`` ``(H, d_v)``."""
    rms = jnp.sqrt(jnp.mean(jnp.square(o), axis=-1, keepdims=True) + 1e-6)
    return o / rms * scale
