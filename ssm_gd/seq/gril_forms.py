"""GRIL's forms as pure functions of arrays (docs/design.md §13): the module
:class:`ssm_gd.seq.gril.GRILMixer` holds the parameters and picks one.

Per head, on the positions where the state is updated, the window written as ``w`` streams:
keys ``k`` ``(B, H, T, w, d_k)`` (stream ``a`` at update ``t`` is the key of position
``t − w + 1 + a``), mixed values ``ṽ`` ``(B, H, T, w, d_v)`` (``ṽ_a = Σ_b Q_ab v_b``, ``Q`` the
window matrix), the windowed queries ``q̃`` ``(B, H, T, d_k)`` and the decay ``Λ`` ``(H, d_k, d_v)``:

    U_t = Σ_a k_a ṽ_aᵀ,        S_t = Λ ⊙ S_{t−1} + U_t,        o_t = S_tᵀ q̃_t.

Every training form returns ``o`` ``(B, H, T, d_v)``; they agree to rounding (tests, float64):
:func:`products` (a factorised decay ``Λ = α βᵀ``: matrix products inside chunks, a state carried
across them), :func:`chunked` (any ``Λ``: products weighted by ``Λ`` per state entry inside
chunks), :func:`chunk_scan` (any ``Λ``: the recurrence a step at a time inside every chunk at
once, then the carried states), :func:`scan` (the recurrence a step at a time, a chunk per
checkpointed segment), :func:`every_state` (all states by an associative scan: the reference) and
:func:`step` (one token, for generation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_gd import scan as linear_scan
from ssm_gd.readout import chunked_readout

__all__ = ["chunk_scan", "chunked", "every_state", "factorised_lam", "head_norm", "products", "scan",
           "scaled", "segment_sums", "selective", "selective_states", "step", "streams",
           "unit"]  # fmt: skip

Array = jax.Array


def streams(u: Array, w_k, w_v, w_q, q_mix, d_mix, *, window: int, stride: int,
            qk_norm: bool = False):  # fmt: skip
    """The window as streams at the update positions ``p ≡ w − 1 (mod s)``: keys ``(B, H, T, w,
    d_k)`` (stream ``a`` the key of position ``t − w + 1 + a``, zero before the start), mixed
    values ``ṽ_a = Σ_b Q_ab v_b`` ``(B, H, T, w, d_v)`` and the windowed query ``q̃ = Σ_a D_a q_a``
    ``(B, H, T, d_k)``, from tokens ``u`` ``(B, L, D)``, projections ``(D, H, d)``, ``Q`` ``(H, w,
    w)`` and ``D`` ``(H, w)``. Head-major; shifted slices of the projections summed elementwise
    (no window is stacked and contracted), the stride a strided slice. ``qk_norm``: every key
    and query of a head divided by its length first (:func:`unit`)."""
    length, first = u.shape[1], (window - 1) % stride

    def shifted(weight, norm=False):  # stream a at each update position t: (B, H, T, d)
        x = jnp.einsum("bld,dhx->bhlx", u, weight)
        x = unit(x) if norm else x
        x = jnp.pad(x, [(0, 0), (0, 0), (window - 1, 0), (0, 0)])
        return [x[:, :, a : a + length][:, :, first::stride] for a in range(window)]

    k, v, q = shifted(w_k, qk_norm), shifted(w_v), shifted(w_q, qk_norm)
    keys = jnp.stack(k, axis=3)
    mixed = jnp.stack([sum(q_mix[:, a, b, None, None] * v[b] for b in range(window))
                       for a in range(window)], axis=3)  # fmt: skip
    query = sum(d_mix[:, a, None, None] * q[a] for a in range(window))
    return keys, mixed, query


def factorised_lam(log_alpha, log_beta, shape, dtype) -> Array:
    """``Λ = α βᵀ`` ``(H, d_k, d_v)`` (``shape``) from :func:`products`' ``log α``, ``log β``
    (``None``: that factor is 1)."""
    lam = jnp.ones(shape, dtype)
    if log_alpha is not None:
        lam = lam * jnp.exp(log_alpha)[:, :, None]
    if log_beta is not None:
        lam = lam * jnp.exp(log_beta)[:, None, :]
    return lam


def _to_chunks(x: Array, c: int) -> Array:
    """``(B, H, T, …) → (B, H, n, c, …)``, ``n = ⌈T / c⌉``; zeros past the end (zero keys: no
    update there)."""
    n = -(-x.shape[2] // c)
    x = jnp.pad(x, [(0, 0), (0, 0), (0, n * c - x.shape[2])] + [(0, 0)] * (x.ndim - 3))
    return x.reshape(*x.shape[:2], n, c, *x.shape[3:])


def _powers(log_decay: Array, exponents: Array) -> Array:
    """``decay^n = exp(n · log decay)`` for every ``n`` of ``exponents`` (≥ 0 where it is used):
    ``(*exponents.shape, *log_decay.shape)``. A negative exponent (above the diagonal of a causal
    table) is replaced by 0 before the exponential, so that nothing overflows, even in the
    gradient; the caller masks it."""
    n = jnp.maximum(exponents, 0).astype(log_decay.dtype)
    return jnp.exp(n.reshape(*n.shape, *(1,) * log_decay.ndim) * log_decay)


def products(log_alpha, log_beta, k: Array, vt: Array, q: Array, *, chunk: int) -> Array:
    """``o_t`` for a factorised decay ``Λ_jk = α_j β_k`` by matrix products inside chunks of
    ``chunk`` updates (gated linear attention's chunk form; docs/design.md §13).

    ``log_alpha``: ``(H, d_k)``, ``(H, 1)`` (one decay per head) or ``None`` (``α = 1``);
    ``log_beta``: ``(H, d_v)`` or ``None`` (``β = 1``); every ``log`` ≤ 0. The window is ``w``
    key-shifted streams (``U_t = Σ_a k_a ṽ_aᵀ``), so ``U_t`` is never formed. For a chunk starting
    at ``t0`` and ``i, j`` relative to it:

    * intra-chunk: ``o_i = Σ_{j ≤ i} Σ_a (q̃_i ⊙ α^{i−j})ᵀ k_{j,a} (β^{i−j} ⊙ ṽ_{j,a})``;
    * inter-chunk: ``o_i += β^{i+1} ⊙ ((α^{i+1} ⊙ q̃_i)ᵀ S_{t0−1})``;
    * carried state: ``S_{t0+c−1} = Λ^c ⊙ S_{t0−1} + Σ_{j,a} (α^{c−1−j} ⊙ k_{j,a})
      (β^{c−1−j} ⊙ ṽ_{j,a})ᵀ``, every chunk's sum at once, then an associative scan over chunks.

    Every power has a non-negative exponent (``exp(n · log α)``, ``n ≥ 0``): nothing overflows for
    any decay in ``(0, 1]``. One decay per head makes the intra-chunk weights a ``(c, c)`` table and
    the step two matrix products; one per key channel, a ``(c, c, d_k)`` table (work ``c · d_k``
    per update, memory ``c`` times the keys'); ``β`` a ``(c, c, d_v)`` table likewise.
    """
    batch, h, length, w = k.shape[:4]
    c = min(chunk, length)
    dtype = jnp.result_type(k, vt, q)
    # The keys and values of a chunk flattened to c·w rows (position-major): every product below
    # is a batched matrix product over (B, H, chunk) with its operands contiguous.
    n = -(-length // c)
    k, vt = (_to_chunks(x, c).reshape(batch, h, n, c * w, -1) for x in (k, vt))  # (B,H,n,c·w,d)
    q = _to_chunks(q, c)  # (B, H, n, c, d_k)
    pos = jnp.arange(c)
    gap = pos[:, None] - pos[None, :]  # i − j
    causal = gap >= 0

    def rows(x):  # (…, c, c, …) tables: each column j repeated for the w rows of position j
        return jnp.repeat(x, w, axis=1)

    if log_alpha is None:
        scores = jnp.einsum("bhnik,bhnjk->bhnij", q, k) * rows(causal)
    elif log_alpha.shape[-1] == 1:  # one decay per head: a (H, c, c) table after the product
        table = jnp.where(causal[:, :, None], _powers(log_alpha[:, 0], gap), 0)  # (c, c, H)
        scores = jnp.einsum("bhnik,bhnjk->bhnij", q, k) * jnp.moveaxis(rows(table), -1, 0)[:, None]
    else:  # one decay per key channel: a (H, c, c·w, d_k) table inside the sum
        table = jnp.where(causal[:, :, None, None], _powers(log_alpha, gap), 0)  # (c, c, H, d_k)
        scores = jnp.einsum("bhnik,ijhk,bhnjk->bhnij", q, rows(table), k)
    if log_beta is None:
        o = jnp.einsum("bhnij,bhnjv->bhniv", scores, vt)
    else:
        table = jnp.where(causal[:, :, None, None], _powers(log_beta, gap), 0)  # (c, c, H, d_v)
        o = jnp.einsum("bhnij,ijhv,bhnjv->bhniv", scores, rows(table), vt)
    # The state each chunk leaves (from zero), every chunk at once; then the carried states.
    to_end = jnp.repeat(c - 1 - pos, w)  # for each of the c·w rows
    if log_alpha is not None:
        k = k * jnp.moveaxis(_powers(log_alpha, to_end), 0, 1)[:, None]  # (H, 1, c·w, d_k)
    if log_beta is not None:
        vt = vt * jnp.moveaxis(_powers(log_beta, to_end), 0, 1)[:, None]
    local = jnp.einsum("bhnjk,bhnjv->bhnkv", k, vt)  # (B, H, n, d_k, d_v)
    dk, dv = local.shape[-2:]
    lam_c = jnp.ones((h, 1, dk, dv), dtype)
    if log_alpha is not None:
        lam_c = lam_c * jnp.exp(c * log_alpha)[:, None, :, None]
    if log_beta is not None:
        lam_c = lam_c * jnp.exp(c * log_beta)[:, None, None, :]
    before = _carried(lam_c, local)
    if log_alpha is not None:
        q = q * jnp.moveaxis(_powers(log_alpha, pos + 1), 0, 1)[:, None]  # (H, 1, c, d_k)
    inter = jnp.einsum("bhnik,bhnkv->bhniv", q, before)
    if log_beta is not None:
        inter = inter * jnp.moveaxis(_powers(log_beta, pos + 1), 0, 1)[:, None]
    return (o + inter).reshape(batch, h, n * c, -1)[:, :, :length]


def chunked(lam: Array, k: Array, vt: Array, q: Array, *, chunk: int) -> Array:
    """``o_t`` by :func:`ssm_gd.readout.chunked_readout` per head, on the transposed state
    ``S_tᵀ``: inside a chunk, products weighted by ``Λ^{t−i}`` per state entry (work
    ``chunk · d_k · d_v`` per update)."""

    def head(lam_t, k, vt, q):  # one head; k (B, T, w, d_k), vt (B, T, w, d_v)
        def make_b(kv):  # U_tᵀ = Σ_a ṽ_a k_aᵀ, a chunk at a time
            return jnp.einsum("bcak,bcav->bcvk", *kv)

        return chunked_readout(lam_t, make_b, (k, vt), q, chunk=chunk)

    return jax.vmap(head, in_axes=(0, 1, 1, 1), out_axes=1)(jnp.swapaxes(lam, 1, 2), k, vt, q)


def _time_major_chunks(x: Array, c: int) -> Array:
    """``(B, H, T, …) → (c, B, H, n, …)``: a position inside the chunk first, for a scan."""
    return jnp.moveaxis(_to_chunks(x, c), 3, 0)


def _from_time_major(o: Array, length: int) -> Array:
    """``(c, B, H, n, d) → (B, H, T, d)``, the padding dropped."""
    o = jnp.moveaxis(o, 0, 3)  # (B, H, n, c, d)
    return o.reshape(*o.shape[:2], -1, o.shape[-1])[:, :, :length]


def _carried(lam_c: Array, local: Array) -> Array:
    """The state before each chunk ``(B, H, n, d_k, d_v)``, from the state each chunk leaves when
    started from zero (``local``) and the decay over a chunk ``Λ^c``, by an associative scan."""
    states, _ = linear_scan.linear_recurrence(lam_c, local, axis=2)
    return jnp.concatenate([jnp.zeros_like(states[:, :, :1]), states[:, :, :-1]], axis=2)


def scan(lam: Array, k: Array, vt: Array, q: Array, *, chunk: int) -> Array:
    """``o_t`` by the recurrence a step at a time, ``chunk`` steps per checkpointed segment (the
    backward pass keeps one state per chunk and recomputes the chunk)."""
    batch, h, length = k.shape[:3]
    c = min(chunk, length)
    lam = lam.astype(k.dtype)
    k, vt, q = (jnp.moveaxis(_to_chunks(x, c), (2, 3), (0, 1)) for x in (k, vt, q))  # (n, c, …)

    def one(s, x):
        k_t, vt_t, q_t = x
        s = lam * s + jnp.einsum("bhak,bhav->bhkv", k_t, vt_t)
        return s, jnp.einsum("bhkv,bhk->bhv", s, q_t)

    @jax.checkpoint
    def segment(s, xs):
        return jax.lax.scan(one, s, xs)

    s0 = jnp.zeros((batch, *lam.shape), jnp.result_type(k, lam))
    _, o = jax.lax.scan(segment, s0, (k, vt, q))  # (n, c, B, H, d_v)
    o = jnp.moveaxis(o.reshape(-1, *o.shape[2:]), 0, 2)  # (B, H, n·c, d_v)
    return o[:, :, :length]


def chunk_scan(lam: Array, k: Array, vt: Array, q: Array, *, chunk: int) -> Array:
    """``o_t`` by the recurrence a step at a time inside every chunk at once: ``chunk`` sequential
    steps (not ``T``), each over all ``⌈T / chunk⌉`` chunks. Pass 1 runs each chunk from a zero
    state to its last update; an associative scan over chunks gives the state each chunk starts
    from (``S_{t0+c−1} = Λ^c ⊙ S_{t0−1} + local``); pass 2 reruns every chunk from that state and
    reads out. Any ``Λ`` (one decay per state entry); memory: every state, for the backward pass."""
    length = k.shape[2]
    c = min(chunk, length)
    lam = lam.astype(k.dtype)[:, None]  # (H, 1, d_k, d_v) over (B, H, n, d_k, d_v)
    k, vt, q = (_time_major_chunks(x, c) for x in (k, vt, q))  # (c, B, H, n, …)

    def update(s, x):
        return lam * s + jnp.einsum("bhnak,bhnav->bhnkv", x[0], x[1])

    def read(s, x):
        s = update(s, x)
        return s, jnp.einsum("bhnkv,bhnk->bhnv", s, x[2])

    zero = jnp.zeros((*k.shape[1:4], *lam.shape[-2:]), jnp.result_type(k, lam))
    local, _ = jax.lax.scan(lambda s, x: (update(s, x), None), zero, (k, vt, q))
    _, o = jax.lax.scan(read, _carried(lam**c, local), (k, vt, q))  # (c, B, H, n, d_v)
    return _from_time_major(o, length)


def scaled(lam: Array, k: Array, vt: Array, q: Array, *, chunk: int) -> Array:
    """``o_t`` by a scaled cumulative sum inside each chunk: ``S_{t0+j} = Λ^j ⊙ (Λ ⊙ S_{t0−1} +
    Σ_{i≤j} Λ^{−i} ⊙ U_i)``, no sequential step inside a chunk. ``Λ^{−i}`` grows as
    ``exp(i · |log Λ|)``: exact only while ``(chunk − 1) · |log Λ|`` stays well inside the float
    range (float32: below about 80), which a learned decay need not respect — a benchmark
    candidate, not a default. Memory: every state."""
    length = k.shape[2]
    c = min(chunk, length)
    log_lam = jnp.log(lam.astype(k.dtype))[:, None, None]  # (H, 1, 1, d_k, d_v)
    u = jnp.einsum("bhtak,bhtav->bhtkv", k, vt)
    u, q = _to_chunks(u, c), _to_chunks(q, c)  # (B, H, n, c, d_k, d_v), (B, H, n, c, d_k)
    pos = jnp.arange(c, dtype=log_lam.dtype)[:, None, None]
    local = jnp.exp(pos * log_lam) * jnp.cumsum(jnp.exp(-pos * log_lam) * u, axis=3)
    before = _carried(jnp.exp(c * log_lam[:, :, 0]), local[:, :, :, -1])
    s = local + jnp.exp((pos + 1) * log_lam) * before[:, :, :, None]
    o = jnp.einsum("bhnikv,bhnik->bhniv", s, q)
    return o.reshape(*o.shape[:2], -1, o.shape[-1])[:, :, :length]


def segment_sums(a: Array) -> Array:
    """``L_ij = Σ_{j<m≤i} a_m`` for ``i ≥ j`` and ``−∞`` above the diagonal: ``(…, c) → (…, c,
    c)``. Each entry is its own sum of the ``a`` between ``j`` and ``i`` (a masked cumulative sum
    over ``i``), not a difference of two long cumulative sums, so it keeps full precision however
    large the sums of the chunk grow."""
    c = a.shape[-1]
    rows = jnp.broadcast_to(a[..., :, None], (*a.shape, c))  # rows[m, j] = a_m
    m, j = jnp.arange(c)[:, None], jnp.arange(c)[None, :]
    sums = jnp.cumsum(jnp.where(m > j, rows, 0), axis=-2)  # sums[i, j] = Σ_{j<m≤i} a_m
    return jnp.where(m >= j, sums, -jnp.inf)


def selective(log_lam: Array, k: Array, vt: Array, q: Array, *, chunk: int) -> Array:
    """``o_t`` for a data-dependent decay, one per head and update, ``S_t = λ_t S_{t−1} + U_t``
    (``log_lam`` ``(B, H, T)``, every entry ≤ 0), by matrix products inside chunks (Mamba-2's
    chunk form, docs/design.md §13). For a chunk and ``i, j`` inside it, ``L_ij`` the decay from
    ``j`` to ``i`` in logs (:func:`segment_sums`) and ``A_i = Σ_{m≤i} log λ_m``:

    * intra-chunk: ``o_i = Σ_{j ≤ i} exp(L_ij) Σ_a (q̃_i · k_{j,a}) ṽ_{j,a}``;
    * inter-chunk: ``o_i += exp(A_i) S_{t0−1}ᵀ q̃_i``;
    * carried state: ``S_{t0+c−1} = exp(A_{c−1}) S_{t0−1} + Σ_{j,a} exp(L_{c−1,j}) k_{j,a}
      ṽ_{j,a}ᵀ``, every chunk's sum at once, then an associative scan over the chunks.

    Every exponent is ≤ 0: nothing overflows, for any decays."""
    batch, h, length, w = k.shape[:4]
    c = min(chunk, length)
    n = -(-length // c)
    k, vt = (_to_chunks(x, c).reshape(batch, h, n, c * w, -1) for x in (k, vt))  # (B,H,n,c·w,d)
    q = _to_chunks(q, c)  # (B, H, n, c, d_k)
    a = _to_chunks(log_lam.astype(q.dtype), c)  # (B, H, n, c): 0 past the end (no decay there)
    decay = jnp.exp(segment_sums(a))  # (B, H, n, c, c)
    scores = jnp.einsum("bhnik,bhnjk->bhnij", q, k) * jnp.repeat(decay, w, axis=-1)
    o = jnp.einsum("bhnij,bhnjv->bhniv", scores, vt)
    to_end = jnp.repeat(decay[..., -1, :], w, axis=-1)  # exp(L_{c−1, j}) for the c·w rows
    local = jnp.einsum("bhnjk,bhnj,bhnjv->bhnkv", k, to_end, vt)  # (B, H, n, d_k, d_v)
    total = jnp.cumsum(a, axis=-1)  # A_i: for the carried state's own decay, as exp(A_i) ≤ 1
    before = _carried(jnp.exp(total[..., -1])[..., None, None], local)
    inter = jnp.einsum("bhnik,bhnkv->bhniv", q * jnp.exp(total)[..., None], before)
    return (o + inter).reshape(batch, h, n * c, -1)[:, :, :length]


def _read_every_state(decay: Array, k: Array, vt: Array, q: Array) -> Array:
    """``o_t`` from every state ``S_t = decay_t ⊙ S_{t−1} + U_t`` ``(B, H, T, d_k, d_v)``, by an
    associative scan; ``decay`` broadcast against the states."""
    updates = jnp.einsum("bhtak,bhtav->bhtkv", k, vt)
    states, _ = linear_scan.linear_recurrence(decay, updates, axis=2)
    return jnp.einsum("bhtkv,bhtk->bhtv", states, q)


def every_state(lam: Array, k: Array, vt: Array, q: Array) -> Array:
    """``o_t`` from every state, ``Λ`` ``(H, d_k, d_v)`` the same at every update: the reference
    of the other training forms."""
    return _read_every_state(lam[:, None], k, vt, q)


def selective_states(log_lam: Array, k: Array, vt: Array, q: Array) -> Array:
    """:func:`selective`'s ``o_t`` from every state, one decay per head and update (``log_lam``
    ``(B, H, T)``): its reference."""
    lam = jnp.exp(log_lam.astype(jnp.result_type(k, vt)))
    return _read_every_state(lam[..., None, None], k, vt, q)


def step(lam, q_mix, d_mix, s, k, v, q, active) -> tuple[Array, Array]:
    """One position: the window ending there (``k`` ``(B, w, H, d_k)``, ``v``, ``q``), the state
    ``s`` ``(B, H, d_k, d_v)`` before it; ``(s, o)`` after it. Where ``active`` is false (not an
    update position of the stride) the state is kept and ``o = 0``."""
    update = jnp.einsum("bahk,hae,behv->bhkv", k, q_mix, v)
    s = jnp.where(active, lam * s + update, s)
    query = jnp.einsum("bahk,ha->bhk", q, d_mix)
    return s, jnp.where(active, jnp.einsum("bhkv,bhk->bhv", s, query), 0.0)


def unit(x: Array) -> Array:
    """``x / sqrt(‖x‖² + 1e-12)`` along the last axis: the keys' and queries' L2 normalisation
    (finite, with a finite gradient, at ``x = 0``)."""
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


def head_norm(o: Array, scale: Array) -> Array:
    """Each head's output ``(…, d_v)`` divided by its root mean square (``+ 1e-6``), times
    ``scale`` (broadcast: ``(H, d_v)`` for ``(B, H, d_v)``, ``(H, 1, d_v)`` for ``(B, H, T,
    d_v)``)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(o), axis=-1, keepdims=True) + 1e-6)
    return o / rms * scale
