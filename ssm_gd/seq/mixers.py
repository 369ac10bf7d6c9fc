"""The sequence mixers, one signature ``(B, L, D) → (B, L, D)`` each, and the name → factory table.

Each mixer has a parallel form (``__call__``, for training) and, where it is recurrent, a step form
(``init_state(batch)``, ``step(state, u_t) → (state, y_t)``) for generation. :data:`FACTORIES`
maps each name of :data:`CHOICES` to the function that builds it (``(d_model, n_heads,
param_dtype, rngs) → module``); :func:`make_mixer` checks the sizes and looks it up:

* ``"gril"`` — :class:`ssm_gd.seq.gril.GRILMixer` (window 3, one decay per state entry); the
  variants (:data:`VARIANTS`, not in the sweeps unless asked for): ``"gril_norm"`` divides each
  head's output by its root mean square, ``"gril_scalar"`` and ``"gril_structured"`` take the
  decays that factorise (one per head; ``α βᵀ``), whose training form is matrix products;
  ``"gril_gated"`` takes every ingredient of :data:`INGREDIENTS` (a decay per head and token,
  multiscale decays, an output gate after each head's normalisation, unit keys and queries), and
  :data:`ABLATION` names GRIL with them added one at a time and the full one with each removed
  (but the last added, whose removal is the row before the full one);
* ``"linear_attention"`` — the same mixer with ``window=1, decay="none"``: causal linear attention
  (docs/design.md §13);
* ``"attention"`` — causal softmax attention (:func:`attend`, in the inputs' precision) with rotary
  position embeddings on the queries and keys (without them it cannot tell a key's neighbour); its
  step form keeps a key-value cache of a fixed length (``init_state(batch, length)``);
* ``"ssm"`` — :class:`ssm_gd.recurrence.DiagonalSSM`, ``s_t = Λ ⊙ s_t−1 + B u_t``,
  ``y_t = C s_t + d ⊙ u_t`` (S5/LRU style, real ``Λ ∈ (0, 1)``);
* ``"griffin"`` — Griffin's recurrent block (a GeLU gate branch times an RG-LRU after a short
  causal convolution), ``recurrentgemma``'s own JAX code through flax's Linen-to-NNX bridge.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from recurrentgemma.jax import modules as griffin_modules

from ssm_gd import validate
from ssm_gd.recurrence import DiagonalSSM
from ssm_gd.seq.gril import GRILMixer

__all__ = ["ABLATION", "CACHED", "CHOICES", "FACTORIES", "INGREDIENTS", "MIXERS", "RECURRENT", "VARIANTS",
           "Attention", "DiagonalSSM", "Griffin", "make_mixer", "rotary"]  # fmt: skip

Array = jax.Array
MIXERS = ("gril", "linear_attention", "attention", "ssm", "griffin")
# Variants a model may take that the sweeps leave out: "gril_norm" is GRIL with each head's output
# divided by its root mean square (GRILMixer(norm=True)), as gated linear attention and RetNet do.
VARIANTS = ("gril_norm", "gril_scalar", "gril_structured", "gril_gated")
#: What made gated linear attention, RetNet and Mamba-2 competitive, as GRILMixer options (each
#: ingredient's name → its options); GRIL itself is one decay per state entry, drawn uniformly.
PAPER_GRIL = dict(window=3, decay="entry", decay_init="uniform")
INGREDIENTS = {
    "ms": dict(decay_init="multiscale"),  # each head its time scale
    "data": dict(decay="data"),  # a decay per head and token
    "gate": dict(gate=True, norm=True),  # each head's output normalised, then gated
    "qk": dict(qk_norm=True),  # unit keys and queries
}


def _with(names) -> dict:
    options = dict(PAPER_GRIL)
    for name in names:
        options |= INGREDIENTS[name]
    return options


#: The ablation's GRILs: the ingredients added one at a time ("gril+ms", "gril+ms+data", …, the
#: last of which is "gril_gated") and each removed from the full one ("gril_gated-ms", …) but the
#: last added: the full one without it is the row before it ("gril+ms+data+gate" is
#: "gril_gated-qk"), trained once.
ABLATION = {
    **{"gril+" + "+".join(list(INGREDIENTS)[:n]): _with(list(INGREDIENTS)[:n])
       for n in range(1, len(INGREDIENTS))},
    "gril_gated": _with(INGREDIENTS),
    **{f"gril_gated-{name}": _with(i for i in INGREDIENTS if i != name)
       for name in list(INGREDIENTS)[:-1]},
}  # fmt: skip
CHOICES = MIXERS + VARIANTS + tuple(n for n in ABLATION if n not in VARIANTS)
RECURRENT = ("gril", "linear_attention", "ssm", "griffin", *VARIANTS, *ABLATION)
# Mixers whose step form keeps a cache that grows with the positions read: init_state needs a length.
CACHED = ("attention",)


def _normal(rngs, scale, shape, dtype):
    return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))


def rotary(x: Array, base: float = 10_000.0, offset=0) -> Array:
    """Rotary position embedding of ``x (B, L, H, dh)``, ``dh`` even: channel pairs ``(i, i +
    dh/2)`` turn by the angle ``t · base^(−2i/dh)`` at position ``t = offset, offset + 1, …``
    (``offset`` an integer, traced or not: the step form's position)."""
    half = x.shape[-1] // 2
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # positions exact past 256 in bfloat16 too
    freqs = base ** (-jnp.arange(half, dtype=dtype) / half)
    positions = jnp.asarray(offset, dtype) + jnp.arange(x.shape[1], dtype=dtype)
    angles = positions[:, None] * freqs  # (L, dh/2)
    cos, sin = (f(angles)[:, None].astype(x.dtype) for f in (jnp.cos, jnp.sin))  # (L, 1, dh/2)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Softmax attention ``(B, Lq, H, dh) × (B, Lk, H, dh) → (B, Lq, H, dh)`` where ``mask``
    (broadcast to ``(B, H, Lq, Lk)``) is true. Scores and softmax in the inputs' dtype, at least
    float32 (bfloat16 inputs: float32 scores, as usual): float64 attention is float64 throughout.
    ``jax.nn.dot_product_attention`` always takes its softmax in float32, so its float64 output is
    float32-accurate (1e-7 off) and two forms of one model agree only as far as their float32
    roundings happen to coincide — on a GPU they did not."""
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("bqhe,bkhe->bhqk", q, k, preferred_element_type=dtype)
    scores = scores * jnp.asarray(q.shape[-1] ** -0.5, dtype)
    probs = jax.nn.softmax(scores, axis=-1, where=mask).astype(v.dtype)
    return jnp.einsum("bhqk,bkhe->bqhe", probs, v)


class Attention(nnx.Module):
    """Causal multi-head softmax attention ``(B, L, D) → (B, L, D)``, rotary positions.

    The step form (:meth:`init_state`, :meth:`step`) keeps the rotated keys and the values of
    every position read so far in a cache of ``length`` positions fixed at :meth:`init_state`:
    one compiled step whatever the position, time and memory per token ``O(length)``."""

    def __init__(self, d_model: int, *, n_heads: int, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        dh = d_model // n_heads
        if dh % 2:
            raise ValueError(f"d_model / n_heads = {dh} must be even (rotary position pairs)")
        self.w_qkv = _normal(rngs, d_model**-0.5, (d_model, 3, n_heads, dh), param_dtype)
        self.w_o = _normal(rngs, d_model**-0.5, (n_heads, dh, d_model), param_dtype)

    def __call__(self, u: Array) -> Array:
        q, k, v = jnp.einsum("bld,dthe->tblhe", u, self.w_qkv[...])
        causal = jnp.tril(jnp.ones((u.shape[1], u.shape[1]), bool))
        o = attend(rotary(q), rotary(k), v, causal)  # (B, L, H, dh)
        return jnp.einsum("blhe,hed->bld", o, self.w_o[...])

    def init_state(self, batch: int, length: int) -> dict[str, Array]:
        """An empty cache for ``length`` positions: keys and values ``(B, length, H, dh)`` (zeros)
        and the position ``t = 0``."""
        batch = validate.positive_int("batch", batch)
        length = validate.positive_int("length", length)
        _, _, h, dh = self.w_qkv.shape
        cache = jnp.zeros((batch, length, h, dh), self.w_qkv.dtype)
        return {"k": cache, "v": cache, "t": jnp.zeros((), jnp.int32)}

    def step(self, state: dict[str, Array], u_t: Array) -> tuple[dict[str, Array], Array]:
        """One token ``u_t`` ``(B, D)`` at position ``t`` → ``(state, y_t (B, D))``: its key and
        value written at ``t``, its query (rotated to ``t``) attending to positions ``0 … t``.
        Past the cache's length there is no room: ``y_t`` is NaN (never a silent wrong answer;
        :func:`~ssm_gd.seq.generate.generate` then raises)."""
        u_t = jnp.asarray(u_t)
        if u_t.ndim != 2 or u_t.shape[-1] != self.w_qkv.shape[0]:
            raise ValueError(f"u_t must be (B, d_model={self.w_qkv.shape[0]}); got {u_t.shape}")
        t, length = state["t"], state["k"].shape[1]
        q, k, v = jnp.einsum("bd,dthe->tbhe", u_t, self.w_qkv[...])[:, :, None]  # (B, 1, H, dh)
        q, k = rotary(q, offset=t), rotary(k, offset=t)
        keys, values = (jax.lax.dynamic_update_slice_in_dim(state[name], x, t, axis=1)
                        for name, x in (("k", k), ("v", v)))  # fmt: skip
        seen = (jnp.arange(length) <= t)[None, None, None, :]  # (1, 1, 1, length): positions ≤ t
        o = attend(q, keys, values, seen)[:, 0]  # (B, H, dh)
        y = jnp.einsum("bhe,hed->bd", o, self.w_o[...])
        y = jnp.where(t < length, y, jnp.nan)
        return {"k": keys, "v": values, "t": t + 1}, y


class Griffin(nnx.Module):
    """Griffin's recurrent block ``(B, L, D) → (B, L, D)``: ``W_out (gelu(W_y u) ⊙ RG-LRU(conv(W_x
    u)))``, the RG-LRU's ``n_heads`` block-diagonal gates and a causal convolution of ``conv_width``
    taps — ``recurrentgemma.jax.modules.RecurrentBlock``, wrapped with ``nnx.bridge.ToNNX``."""

    def __init__(self, d_model: int, *, n_heads: int, conv_width: int = 4,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        if d_model % 2:  # the RG-LRU splits its width in two halves
            raise ValueError(f"d_model={d_model} must be even for mixer='griffin'")
        self.d_model, self.conv_width, self.dtype = d_model, conv_width, param_dtype
        block = griffin_modules.RecurrentBlock(
            width=d_model, num_heads=n_heads, lru_width=d_model, conv1d_temporal_width=conv_width,
            param_dtype=param_dtype,
        )  # fmt: skip
        self.block = nnx.bridge.ToNNX(block, rngs=rngs)
        x = jnp.zeros((1, conv_width, d_model), param_dtype)
        nnx.bridge.lazy_init(
            self.block, x, jnp.zeros((1, conv_width), jnp.int32), return_cache=False
        )
        self.block.to_nnx__rngs = None  # initialised; the block draws no randomness when applied

    def __call__(self, u: Array) -> Array:
        positions = jnp.broadcast_to(jnp.arange(u.shape[1]), u.shape[:2])
        return self.block(u, positions, return_cache=False)[0]

    def init_state(self, batch: int):
        """``(the block's cache: RG-LRU state and the convolution's last inputs, position)``.
        recurrentgemma keeps the RG-LRU state, and accumulates its scan, in float32 whatever the
        parameters' dtype: the two forms agree to float32 precision even in float64."""
        cache = griffin_modules.RecurrentBlock.init_cache(
            batch, self.d_model, self.dtype, conv1d_temporal_width=self.conv_width
        )
        return cache, jnp.zeros((batch, 1), jnp.int32)

    def step(self, state, u_t: Array):
        cache, position = state
        y, cache = self.block(u_t[:, None], position, cache=cache)
        return (cache, position + 1), y[:, 0]


def _gril(**options) -> Callable:
    def build(d_model, *, n_heads, param_dtype, rngs):
        dh = d_model // n_heads
        return GRILMixer(d_model, n_heads=n_heads, d_key=dh, d_value=dh, param_dtype=param_dtype,
                         rngs=rngs, **options)  # fmt: skip

    return build


#: name → ``(d_model, *, n_heads, param_dtype, rngs) → mixer``.
FACTORIES: dict[str, Callable[..., nnx.Module]] = {
    "gril": _gril(window=3, decay="entry"),
    "linear_attention": _gril(window=1, decay="none"),
    "attention": Attention,
    "ssm": lambda d_model, *, n_heads, **common: DiagonalSSM(d_model, state=d_model, **common),
    "griffin": Griffin,
    "gril_norm": _gril(window=3, decay="entry", norm=True),
    "gril_scalar": _gril(window=3, decay="scalar"),
    "gril_structured": _gril(window=3, decay="structured"),
    **{name: _gril(**options) for name, options in ABLATION.items()},
}


def make_mixer(name: str, d_model: int, *, n_heads: int, param_dtype=jnp.float32, rngs):
    """One mixer of :data:`CHOICES` at ``d_model`` (heads of ``d_model / n_heads`` channels)."""
    validate.one_of("mixer", name, CHOICES)
    d_model = validate.positive_int("d_model", d_model)
    n_heads = validate.positive_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
    return FACTORIES[name](d_model, n_heads=n_heads, param_dtype=param_dtype, rngs=rngs)
