"""Diagonal linear recurrences: ``h_t = a_t ⊙ h_{t-1} + b_t``.

One entry point, :func:`linear_recurrence`, with interchangeable implementations:

* ``"associative"`` — :func:`jax.lax.associative_scan` on the pairs ``(a_t, b_t)`` with the
  operator ``(a1, b1) • (a2, b2) = (a1 a2, a2 b1 + b2)``: ``O(log L)`` depth, the parallel form.
* ``"sequential"`` — :func:`jax.lax.scan`, one step at a time: ``O(L)`` depth, ``O(1)`` extra memory.

Both take the same arguments and return the same values; ``h0`` and ``reverse`` are handled once,
outside the implementations. Inputs in bfloat16/float16 are accumulated in float32 and the result
is cast back. :func:`step` is the single update for recurrent (token-by-token) inference.

Two readouts never build the states ``h_t`` of a time-invariant recurrence whose inputs are sums
of outer products and whose states are only read through a vector:

* :func:`chunked_readout` — ``h_t v_t`` at every ``t``: matrix products inside chunks, a scan
  across chunks.
* :func:`last_state_readout` — ``h_T v`` at the last step only, as the pair readouts of inputs
  ``b_t = Σ_{a,c} w_ac left_{t,a} right_{t,c}ᵀ``: the recurrence collapses to the weighted sum
  ``h_T = Σ_t Λ^{T−t} ⊙ b_t`` (the convolutional view of a linear SSM), matrix products with no
  sequential dependency, a chunk of time steps at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssm_gd import validate

__all__ = [
    "CHUNK_ELEMENTS",
    "IMPLEMENTATIONS",
    "chunked_readout",
    "decay_powers",
    "last_state_readout",
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


def chunked_readout(lam: Array, make_b: Callable, xs, v: Array, *, chunk: int = 32) -> Array:
    """``o_t = h_t v_t`` for ``h_t = Λ ⊙ h_{t−1} + b_t`` (``h_0 = 0``), never holding every ``h_t``.

    The recurrence is time-invariant (one ``Λ`` ``(R, H)``, no broadcasting over time) and each state
    ``h_t`` ``(R, H)`` is only read through a vector, ``o_t = h_t v_t`` ``(R,)``. Time is cut into
    chunks of ``chunk`` steps; inside a chunk the outputs are matrix products with the decay matrix
    ``Λ^{t−i}`` (``t ≥ i``), and a :func:`jax.lax.scan` carries one state from chunk to chunk. The
    inputs ``b_t = make_b(xs_t)`` are built a chunk at a time, so memory is ``O(T·(R + H))`` plus
    one state per chunk, ``O(T/chunk · R·H)``, forward and backward (the chunk body is
    rematerialised, :func:`jax.checkpoint`), where the other implementations hold ``O(T·R·H)``.
    The work is ``O(T · chunk · R·H)``: a longer chunk trades flops for fewer sequential steps.

    Args:
      lam: ``Λ`` ``(R, H)``.
      make_b: ``xs`` of a chunk (each leaf ``(B, c, …)``) → ``b`` ``(B, c, R, H)``.
      xs: a pytree of arrays ``(B, T, …)``, batch first, time second.
      v: ``(B, T, H)``.
      chunk: time steps per chunk (a positive integer; capped at ``T``).

    Returns:
      ``o`` ``(B, T, R)``.
    """
    chunk = validate.positive_int("chunk", chunk)
    if lam.ndim != 2 or v.ndim != 3 or v.shape[-1] != lam.shape[-1]:
        raise ValueError(
            f"lam must be (R, H) and v (B, T, H) with the same H; got {lam.shape} and {v.shape}"
        )
    batch, length = v.shape[:2]
    c = min(chunk, length)
    n = -(-length // c)
    pad = n * c - length

    def to_chunks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, n, c, *x.shape[2:]), 1, 0)

    dtype = jnp.result_type(lam, v)
    lam = lam.astype(dtype)
    powers = jnp.cumprod(jnp.broadcast_to(lam, (c, *lam.shape)), axis=0)  # Λ^1 … Λ^c
    below = jnp.concatenate([jnp.ones_like(lam)[None], powers[:-1]])  # Λ^0 … Λ^{c−1}
    lag = jnp.arange(c)[:, None] - jnp.arange(c)[None, :]
    decay = jnp.where((lag >= 0)[..., None, None], below[jnp.maximum(lag, 0)], 0)  # (t, i, R, H)
    valid = (jnp.arange(n * c) < length).reshape(n, c).astype(dtype)

    @jax.checkpoint
    def body(h, inputs):
        x, vc, ok = inputs
        b = make_b(x).astype(dtype) * ok[None, :, None, None]
        inside = jnp.einsum("tijk,bijk->btjk", decay, b)
        o = jnp.einsum("btjk,btk->btj", inside, vc)
        o = o + jnp.einsum("tjk,bjk,btk->btj", powers, h, vc)
        h = powers[-1] * h + jnp.einsum("ijk,bijk->bjk", below[::-1], b)
        return h, o

    h0 = jnp.zeros((batch, *lam.shape), dtype)
    _, o = jax.lax.scan(body, h0, (jax.tree.map(to_chunks, xs), to_chunks(v), valid))
    return jnp.moveaxis(o, 0, 1).reshape(batch, n * c, -1)[:, :length]


def decay_powers(lam: Array, length: int) -> Array:
    """``Λ^{T−t}`` for ``t = 1 … T`` (``T = length``): ``(T, *Λ.shape)``, from ``Λ^{T−1}`` down to ``Λ^0 = 1``.

    Integer powers (exponentiation by squaring, ``O(log T)`` roundings each), so any real ``Λ`` —
    negative or zero entries included — is exact up to float rounding, and the gradient is
    ``n Λ^{n−1}``.
    """
    length = validate.positive_int("length", length)
    exponents = jnp.arange(length - 1, -1, -1).reshape((length,) + (1,) * lam.ndim)
    return jnp.power(lam[None], exponents)


def _sum_steps(x: Array) -> Array:
    """``Σ_t x[t]`` over the leading axis, as a product with a vector of ones.

    On XLA:CPU a reduction over a short leading axis ran several times slower than this product
    (3.5 ms against 0.1 ms per step at ``d = 50``, ``B = 2048``).
    """
    return jnp.einsum("t,t...->...", jnp.ones(x.shape[0], x.dtype), x)


@jax.custom_vjp
def _pair_readouts(p: Array, lefts: tuple, rights: tuple, v: Array) -> tuple:
    """``M_ac = Σ_t left_{t,a} ⊙ (P_t (right_{t,c} ⊙ v))``: one chunk of :func:`last_state_readout`.

    ``p`` ``(T, R, H)``, each ``left_a`` ``(T, R, B)``, each ``right_c`` ``(T, H, B)``, ``v``
    ``(H, B)``; the result is a tuple of tuples, ``M[a][c]`` ``(R, B)``. The terms stay separate
    arrays (a stack of them on a middle axis is a slow copy on XLA:CPU, inside a loop even more
    so), the time steps' matrix products ``(R, H) × (H, B)`` are batch-minor, and the backward
    pass is written out (:func:`_pair_readouts_bwd`) so that it keeps that layout.
    """
    return _pair_readouts_fwd(p, lefts, rights, v)[0]


def _pair_readouts_fwd(p, lefts, rights, v):
    h = [jnp.einsum("trk,tkb->trb", p, r * v) for r in rights]
    out = tuple(tuple(_sum_steps(left * hc) for hc in h) for left in lefts)
    return out, (p, lefts, rights, v, h)


def _pair_readouts_bwd(residuals, d_m):
    p, lefts, rights, v, h = residuals
    # M_ac is linear in left_a and in h_c = P (right_c ⊙ v): the cotangent of h_c gathers the
    # lefts, that of left_a gathers the h_c; P and right_c ⊙ v meet in one product each way.
    d_h = [sum(left * d_m[a][c] for a, left in enumerate(lefts)) for c in range(len(rights))]
    d_p = sum(jnp.einsum("trb,tkb->trk", dh, r * v) for dh, r in zip(d_h, rights, strict=True))
    d_z = [jnp.einsum("trk,trb->tkb", p, dh) for dh in d_h]  # the cotangents of right_c ⊙ v
    d_lefts = tuple(sum(hc * d_m[a][c] for c, hc in enumerate(h)) for a in range(len(lefts)))
    d_rights = tuple(dz * v for dz in d_z)
    d_v = _sum_steps(sum(dz * r for dz, r in zip(d_z, rights, strict=True)))
    return d_p, d_lefts, d_rights, d_v


_pair_readouts.defvjp(_pair_readouts_fwd, _pair_readouts_bwd)


CHUNK_ELEMENTS = 2**18


def last_state_readout(
    lam: Array, factors: Callable, length: int, v: Array, *, chunk: int | None = None
) -> Array:
    """The pair readouts ``M_ac = h^{ac}_T v`` of ``h^{ac}_t = Λ ⊙ h^{ac}_{t−1} + left_{t,a} right_{t,c}ᵀ``, without any state.

    A recurrence whose inputs are weighted sums of outer products,
    ``b_t = Σ_{a,c} w_ac left_{t,a} right_{t,c}ᵀ`` (the GD-SSM's ``U_t = X_tᵀ Q X_t``: ``w = Q``,
    ``left = right = X_t``), has the last state readout ``h_T v = Σ_{a,c} w_ac M_ac``. Each
    ``M_ac`` is a weighted sum of the inputs (``h_T = Σ_t Λ^{T−t} ⊙ b_t``),

        M_{ac,r} = Σ_t left_{t,a,r} · Σ_k (Λ^{T−t})_{rk} right_{t,c,k} v_k,

    one matrix product per time step and term ``c`` (all independent: no sequential dependency)
    and a sum over the steps. The weights ``w`` stay with the caller, so their gradient is a sum
    of the ``M_ac``. The work is ``O(T·C·R·H)`` per sequence, like the scans'. Time is cut into
    chunks of ``chunk`` steps whose factors are built by ``factors`` when the chunk is reached
    (inside a :func:`jax.lax.scan` over the chunks, rematerialised for the backward pass,
    :func:`jax.checkpoint`), so nothing of size ``T`` is held beyond what the caller already has,
    forward and backward, and a chunk's arrays stay in the cache.

    Arrays are batch-minor (the batch ``B`` last), the layout in which XLA's CPU matrix products
    ``(R, H) × (H, B)`` run fastest for small ``R, H`` (measured by ``experiments.bench``); each
    term is its own array, and a chunk's backward pass is written out to keep that layout
    (:func:`_pair_readouts`).

    Args:
      lam: ``Λ`` ``(R, H)``.
      factors: ``(start, size) ↦ (lefts, rights)``, the factors of steps ``start, …, start + size − 1``:
        ``lefts`` a tuple of ``A`` arrays ``(size, R, B)``, ``rights`` a tuple of ``C`` arrays
        ``(size, H, B)``. ``size`` is a Python int and ``start`` may be traced;
        ``start + size ≤ length`` always.
      length: ``T``, the number of steps.
      v: ``(H, B)``.
      chunk: steps per chunk; by default as many as keep one chunk's terms within
        :data:`CHUNK_ELEMENTS` entries (1 MiB in float32).

    Returns:
      ``M`` ``(A, C, R, B)``.
    """
    length = validate.positive_int("length", length)
    if lam.ndim != 2 or v.ndim != 2 or v.shape[0] != lam.shape[1]:
        raise ValueError(
            f"lam must be (R, H) and v (H, B) with the same H; got {lam.shape}, {v.shape}"
        )
    lefts, rights = jax.eval_shape(lambda start: factors(start, 1), 0)
    (r, h), b = lam.shape, v.shape[1]
    terms = (lefts, rights)
    if not all(isinstance(t, tuple | list) and t for t in terms) or (
        any(x.shape != (1, r, b) for x in lefts) or any(x.shape != (1, h, b) for x in rights)
    ):
        raise ValueError(
            f"factors(start, size) must give (lefts, rights), non-empty tuples of arrays "
            f"(size, R, B) and (size, H, B), for lam {lam.shape} (R, H) and v {v.shape} (H, B); "
            f"got {jax.tree.map(lambda x: tuple(x.shape), terms)}"
        )
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // (h * len(rights) * b))
    chunk = validate.positive_int("chunk", chunk)
    chunk = min(chunk, length)
    dtype = jnp.result_type(lam, *lefts, *rights, v)
    lam, v = lam.astype(dtype), v.astype(dtype)

    def part(start, size, inside):
        # Λ^{T−t} = Λ^{T−start−size} ⊙ Λ^{start+size−1−t}: one power per chunk times the powers
        # inside a chunk, the same for every chunk (a power per entry and step made the readout
        # 1.1–1.6 times slower at B = 64, measured side by side).
        lefts, rights = factors(start, size)
        after = length - start - size  # the steps after the chunk (0 for the last: Λ^0 = 1)
        decay = inside if isinstance(after, int) and after == 0 else jnp.power(lam, after) * inside
        lefts, rights = (tuple(x.astype(dtype) for x in terms) for terms in (lefts, rights))
        return _pair_readouts(decay, lefts, rights, v)

    n_chunks, tail = divmod(length, chunk)
    if n_chunks == 1 and tail == 0:
        m = part(0, chunk, decay_powers(lam, chunk))
    else:
        inside = decay_powers(lam, chunk)  # Λ^{chunk−1} … Λ^0, computed once for every chunk

        @jax.checkpoint
        def body(m, j):
            return jax.tree.map(jnp.add, m, part(j * chunk, chunk, inside)), None

        zeros = tuple(tuple(jnp.zeros((r, b), dtype) for _ in rights) for _ in lefts)
        m, _ = jax.lax.scan(body, zeros, jnp.arange(n_chunks))
        if tail:
            m = jax.tree.map(jnp.add, m, part(n_chunks * chunk, tail, inside[-tail:]))
    return jnp.stack([jnp.stack(row) for row in m])
