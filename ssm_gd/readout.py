"""Readouts of diagonal recurrences that never build every state, and the rules that choose them.

Both readouts take a time-invariant recurrence ``h_t = Λ ⊙ h_{t−1} + b_t`` (``h_0 = 0``,
:mod:`ssm_gd.scan`) whose inputs are sums of outer products and whose states are only read through
a vector:

* :func:`chunked_readout` — ``h_t v_t`` at every ``t``: matrix products inside chunks, a scan
  across chunks.
* :func:`last_state_readout` — ``h_T v`` at the last step only, as the pair readouts of inputs
  ``b_t = Σ_{a,c} w_ac left_{t,a} right_{t,c}ᵀ``: the recurrence collapses to the weighted sum
  ``h_T = Σ_t Λ^{T−t} ⊙ b_t`` (the convolutional view of a linear SSM), matrix products with no
  sequential dependency, a chunk of time steps at a time.

For the GD-SSM's windows, :func:`window_factors` gives :func:`last_state_readout` its factors
(transposed at once or a chunk at a time, :func:`transpose_per_chunk`), and :func:`auto_impl` is
the rule by which ``impl="auto"`` picks between the scans and :func:`chunked_readout`. The rules'
thresholds are measured in ``results/bench/README.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp

from ssm_gd import validate
from ssm_gd.scan import decay_powers

__all__ = [
    "AUTO_CPU_CHUNKED_FROM",
    "AUTO_STATE_LIMIT",
    "CHUNK_ELEMENTS",
    "TRANSPOSE_PER_CHUNK_ENTRIES",
    "TRANSPOSE_PER_CHUNK_MAX_BATCH",
    "WindowProducts",
    "auto_impl",
    "chunked_readout",
    "last_state_readout",
    "transpose_per_chunk",
    "window_factors",
]

Array = jax.Array

# ------------------------------------------------------------------------------------- every window


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


# --------------------------------------------------------------------------------------- last state


def _sum_steps(x: Array) -> Array:
    """``Σ_t x[t]`` over the leading axis, as a product with a vector of ones.

    On XLA:CPU this product runs faster than a reduction over a short leading axis (measured in
    ``results/bench/README.md``).
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


def _check_factors(lam, factors, v):
    """The shapes of one step's ``(lefts, rights)``, checked against ``lam`` and ``v``."""
    if lam.ndim != 2 or v.ndim != 2 or v.shape[0] != lam.shape[1]:
        raise ValueError(
            f"lam must be (R, H) and v (H, B) with the same H; got {lam.shape}, {v.shape}"
        )
    lefts, rights = terms = jax.eval_shape(lambda start: factors(start, 1), 0)
    (r, h), b = lam.shape, v.shape[1]
    if not all(isinstance(t, tuple | list) and t for t in terms) or (
        any(x.shape != (1, r, b) for x in lefts) or any(x.shape != (1, h, b) for x in rights)
    ):
        raise ValueError(
            f"factors(start, size) must give (lefts, rights), non-empty tuples of arrays "
            f"(size, R, B) and (size, H, B), for lam {lam.shape} (R, H) and v {v.shape} (H, B); "
            f"got {jax.tree.map(lambda x: tuple(x.shape), terms)}"
        )
    return lefts, rights


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
    lefts, rights = _check_factors(lam, factors, v)
    (r, h), b = lam.shape, v.shape[1]
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // (h * len(rights) * b))
    chunk = validate.positive_int("chunk", chunk)
    chunk = min(chunk, length)
    dtype = jnp.result_type(lam, *lefts, *rights, v)
    lam, v = lam.astype(dtype), v.astype(dtype)

    def part(start, size, inside):
        # Λ^{T−t} = Λ^{T−start−size} ⊙ Λ^{start+size−1−t}: one power per chunk times the powers
        # inside a chunk, the same for every chunk, rather than a power per entry and step (slower:
        # measured in results/bench/README.md).
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


# ----------------------------------------------------------------------------------- GD-SSM windows


class WindowProducts(Protocol):
    """What :func:`window_factors` reads of a window layer (``LocalSelfAttention``, ``LocalMixing``)."""

    window: int
    stride: int

    def weights(self) -> Array: ...

    def factors(self, rows: tuple) -> tuple[tuple, tuple]: ...


TRANSPOSE_PER_CHUNK_ENTRIES = 2**23
TRANSPOSE_PER_CHUNK_MAX_BATCH = 256


def transpose_per_chunk(backend: str, batch: int, entries: int) -> bool:
    """Whether :meth:`ssm_gd.layers.GDSSM.predict_query` transposes its window rows a chunk at a time.

    The weighted readout reads the rows time-major and batch-minor (:func:`window_factors`).
    Transposing all the tokens at once writes a copy of them; transposing each chunk's rows when
    the chunk is reached writes none, but gathers runs of ``h`` numbers from ``B`` places.

    The rule: a chunk at a time on the CPU for tokens of at least
    :data:`TRANSPOSE_PER_CHUNK_ENTRIES` entries (2^23, 32 MiB in float32: past that size every call
    writes its copy to fresh pages) and batches of at most :data:`TRANSPOSE_PER_CHUNK_MAX_BATCH`;
    at once otherwise, and on GPU and TPU, where nothing has been measured yet. Measured in
    ``results/bench/README.md``.
    """
    return (
        backend == "cpu"
        and batch <= TRANSPOSE_PER_CHUNK_MAX_BATCH
        and entries >= TRANSPOSE_PER_CHUNK_ENTRIES
    )


def window_factors(
    attention: WindowProducts, rows: Array, *, per_chunk: bool | None = None
) -> tuple[Array, Callable]:
    """``(w, factors)``: the weights and the ``factors(start, size)`` of windows ``start … start + size − 1``.

    ``rows`` ``(B, L, h)`` are window rows; window ``t`` holds rows ``s·t, …, s·t + w − 1``
    (``w = attention.window`` rows, stride ``s = attention.stride``). The factors are time-major and batch-minor, one array ``(size, h, B)`` per
    window position: the rows are transposed once, here (``per_chunk=False``), and each position's
    rows gathered when asked for (on XLA:CPU a gather of whole rows is fast where strided slices
    of a slice inside a loop are not), or each position's rows are gathered from ``rows`` and
    transposed when asked for (``per_chunk=True``: no transposed copy of the whole tokens;
    by default :func:`transpose_per_chunk` decides, for the default backend and the size of
    ``rows``). Both give the same arrays.
    ``attention.factors`` turns them into ``(lefts, rights)``: ``factors`` is the argument of
    :func:`last_state_readout`, and ``h_T v = Σ_{a,c} w_ac M_ac`` of its result ``M``,
    ``w = attention.weights()``.
    """
    if per_chunk is None:
        per_chunk = transpose_per_chunk(jax.default_backend(), rows.shape[0], rows.size)
    if not per_chunk:
        rows = jnp.transpose(rows, (1, 2, 0))  # (2N + 1, h, B)

    window, stride = attention.window, attention.stride

    def factors(start, size):
        first = stride * (start + jnp.arange(size))  # each window's first row
        if per_chunk:
            x = tuple(
                jnp.transpose(rows.at[:, first + a].get(mode="promise_in_bounds"), (1, 2, 0))
                for a in range(window)
            )
        else:
            x = tuple(rows.at[first + a].get(mode="promise_in_bounds") for a in range(window))
        return attention.factors(x)

    return attention.weights(), factors


# -------------------------------------------------------------------------------------- impl="auto"


AUTO_STATE_LIMIT = 2**24
AUTO_CPU_CHUNKED_FROM = 512


def auto_impl(backend: str, n_windows: int, state_entries: int) -> str:
    """The implementation ``impl="auto"`` runs for every window's prediction
    (:meth:`ssm_gd.layers.GDSSM.__call__`).

    * ``"chunked"`` when one branch's states would hold more than :data:`AUTO_STATE_LIMIT` entries
      (2^24 float32 = 64 MiB; the scans keep them, and their cotangents, for the backward pass);
    * on the CPU, ``"chunked"`` from :data:`AUTO_CPU_CHUNKED_FROM` windows on as well: there the
      associative scan is the fastest below a few hundred windows, the chunked readout above
      (measured in ``results/bench/README.md``);
    * ``"associative"`` otherwise. On GPU and TPU, where the associative scan's parallel depth pays,
      only the memory rule applies (nothing has been measured there yet).

    The query's prediction alone (:meth:`ssm_gd.layers.GDSSM.predict_query`, what training and
    the metrics use) does not depend on this choice: it is always the weighted sum.
    """
    if state_entries > AUTO_STATE_LIMIT:
        return "chunked"
    if backend == "cpu" and n_windows >= AUTO_CPU_CHUNKED_FROM:
        return "chunked"
    return "associative"
