"""The sequence mixers, one signature ``(B, L, D) → (B, L, D)`` each, and the name → factory table.

Each mixer has a parallel form (``__call__``, for training) and, where it is recurrent, a step form
(``init_state(batch)``, ``step(state, u_t) → (state, y_t)``) for generation. :data:`FACTORIES`
maps each name of :data:`CHOICES` to the function that builds it (``(d_model, n_heads,
param_dtype, rngs) → module``); :func:`make_mixer` checks the sizes and looks it up:

* ``"gril"`` — :class:`ssm_gd.seq.gril.GRILMixer` (window 3, one decay per state entry); the
  variant ``"gril_norm"`` (:data:`VARIANTS`, not in the sweeps) divides each head's output by its
  root mean square;
* ``"linear_attention"`` — the same mixer with ``window=1, decay="none"``: causal linear attention
  (docs/design.md §13);
* ``"attention"`` — causal softmax attention (:func:`jax.nn.dot_product_attention`) with rotary
  position embeddings on the queries and keys (without them it cannot tell a key's neighbour);
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

__all__ = ["CHOICES", "FACTORIES", "MIXERS", "RECURRENT", "VARIANTS", "Attention", "DiagonalSSM",
           "Griffin", "make_mixer", "rotary"]  # fmt: skip

Array = jax.Array
MIXERS = ("gril", "linear_attention", "attention", "ssm", "griffin")
# Variants a model may take that the sweeps leave out: "gril_norm" is GRIL with each head's output
# divided by its root mean square (GRILMixer(norm=True)), as gated linear attention and RetNet do.
VARIANTS = ("gril_norm",)
CHOICES = MIXERS + VARIANTS
RECURRENT = ("gril", "linear_attention", "ssm", "griffin", "gril_norm")


def _normal(rngs, scale, shape, dtype):
    return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))


def rotary(x: Array, base: float = 10_000.0) -> Array:
    """Rotary position embedding of ``x (B, L, H, dh)``, ``dh`` even: channel pairs ``(i, i +
    dh/2)`` turn by the angle ``t · base^(−2i/dh)`` at position ``t``."""
    half = x.shape[-1] // 2
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # positions exact past 256 in bfloat16 too
    freqs = base ** (-jnp.arange(half, dtype=dtype) / half)
    angles = jnp.arange(x.shape[1], dtype=dtype)[:, None] * freqs  # (L, dh/2)
    cos, sin = (f(angles)[:, None].astype(x.dtype) for f in (jnp.cos, jnp.sin))  # (L, 1, dh/2)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class Attention(nnx.Module):
    """Causal multi-head softmax attention ``(B, L, D) → (B, L, D)``, rotary positions."""

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
        o = jax.nn.dot_product_attention(rotary(q), rotary(k), v, is_causal=True)  # (B, L, H, dh)
        return jnp.einsum("blhe,hed->bld", o, self.w_o[...])


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
}


def make_mixer(name: str, d_model: int, *, n_heads: int, param_dtype=jnp.float32, rngs):
    """One mixer of :data:`CHOICES` at ``d_model`` (heads of ``d_model / n_heads`` channels)."""
    validate.one_of("mixer", name, CHOICES)
    d_model = validate.positive_int("d_model", d_model)
    n_heads = validate.positive_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
    return FACTORIES[name](d_model, n_heads=n_heads, param_dtype=param_dtype, rngs=rngs)
