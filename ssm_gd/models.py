"""Sequence models around a mixer: pre-norm residual blocks, an embedding, a head, generation.

``Model(vocab, d_model, n_layers, mixer=..., head=...)``: token embedding, ``n_layers`` blocks
``x + mixer(norm(x))``, ``x + mlp(norm(x))`` (a gated MLP), a final norm and a head — next-token
logits ``(B, L, V)`` (``head="next_token"``) or a classifier on the mean over positions
``(B, C)`` (``head="classify"``; given ``lengths``, the mean over each sequence's first ``length``
positions, so right padding changes nothing: every mixer is causal). The mixers, one block shape for all (:data:`MIXERS`):

* ``"gril"`` — :class:`ssm_gd.gril.GRILMixer` (window 3, one decay per state entry); the variant
  ``"gril_norm"`` (:data:`VARIANTS`, not in the sweeps) divides each head's output by its root
  mean square;
* ``"linear_attention"`` — the same mixer with ``window=1, decay="none"``: causal linear attention
  (docs/design.md §13);
* ``"attention"`` — causal softmax attention (:func:`jax.nn.dot_product_attention`) with rotary
  position embeddings on the queries and keys (without them it cannot tell a key's neighbour);
* ``"ssm"`` — a diagonal SSM, ``s_t = Λ ⊙ s_t−1 + B u_t``, ``y_t = C s_t + d ⊙ u_t`` (S5/LRU style,
  real ``Λ ∈ (0, 1)``);
* ``"griffin"`` — Griffin's recurrent block (a GeLU gate branch times an RG-LRU after a short
  causal convolution), ``recurrentgemma``'s own JAX code through flax's Linen-to-NNX bridge.

:func:`generate` samples from a next-token model with the recurrent forms (``step``: constant
time and memory per token) and, for attention, by recomputing the causal forward pass over a
fixed-length buffer (one compiled program).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from recurrentgemma.jax import modules as griffin_modules

from ssm_gd import validate
from ssm_gd.gril import GRILMixer
from ssm_gd.initializers import uniform_init
from ssm_gd.layers import DiagonalRecurrence

__all__ = ["CHOICES", "HEADS", "MIXERS", "VARIANTS", "Attention", "Block", "DiagonalSSM", "Griffin", "Model", "generate",
           "make_mixer", "match_d_model", "parameter_count", "prefill"]  # fmt: skip

Array = jax.Array
MIXERS = ("gril", "linear_attention", "attention", "ssm", "griffin")
# Variants a model may take that the sweeps leave out: "gril_norm" is GRIL with each head's output
# divided by its root mean square (GRILMixer(norm=True)), as gated linear attention and RetNet do.
VARIANTS = ("gril_norm",)
CHOICES = MIXERS + VARIANTS
HEADS = ("next_token", "classify")
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


class DiagonalSSM(nnx.Module):
    """``s_t = Λ ⊙ s_{t−1} + B u_t``, ``y_t = C s_t + d ⊙ u_t``: ``(B, L, D) → (B, L, D)``, a real
    diagonal ``Λ ∈ (0, 1)`` of ``state`` channels (initialised ``U(0.9, 0.999)``)."""

    def __init__(self, d_model: int, *, state: int, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.b = _normal(rngs, d_model**-0.5, (d_model, state), param_dtype)
        self.c = _normal(rngs, state**-0.5, (state, d_model), param_dtype)
        self.d = nnx.Param(jnp.ones((d_model,), param_dtype))
        self.recurrence = DiagonalRecurrence(
            (state,), lam_init=uniform_init(0.9, 0.999), parametrization="bounded",
            param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip

    def __call__(self, u: Array) -> Array:
        s = self.recurrence(jnp.einsum("bld,dn->bln", u, self.b[...]))
        return jnp.einsum("bln,nd->bld", s, self.c[...]) + self.d[...] * u

    def init_state(self, batch: int) -> Array:
        return jnp.zeros((batch, self.b.shape[1]), self.b.dtype)

    def step(self, state: Array, u_t: Array) -> tuple[Array, Array]:
        s = self.recurrence.lam * state + u_t @ self.b[...]
        return s, s @ self.c[...] + self.d[...] * u_t


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


def make_mixer(name: str, d_model: int, *, n_heads: int, param_dtype=jnp.float32, rngs):
    """One mixer of :data:`CHOICES` at ``d_model`` (heads of ``d_model / n_heads`` channels)."""
    validate.one_of("mixer", name, CHOICES)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
    dh, common = d_model // n_heads, dict(param_dtype=param_dtype, rngs=rngs)
    if name == "attention":
        return Attention(d_model, n_heads=n_heads, **common)
    if name == "ssm":
        return DiagonalSSM(d_model, state=d_model, **common)
    if name == "griffin":
        return Griffin(d_model, n_heads=n_heads, **common)
    window, decay = (1, "none") if name == "linear_attention" else (3, "entry")
    return GRILMixer(d_model, n_heads=n_heads, d_key=dh, d_value=dh, window=window, decay=decay,
                     norm=name == "gril_norm", **common)  # fmt: skip


class Block(nnx.Module):
    """``x + mixer(norm(x))``, then ``x + W_down(gelu(W_gate x̂) ⊙ W_up x̂)``, ``x̂ = norm(x)``."""

    def __init__(self, d_model: int, mixer: nnx.Module, *, mlp_ratio: int = 2,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        hidden = mlp_ratio * d_model
        self.norm1 = nnx.RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = nnx.RMSNorm(d_model, param_dtype=param_dtype, rngs=rngs)
        self.mixer = mixer
        self.w_gate = _normal(rngs, d_model**-0.5, (d_model, hidden), param_dtype)
        self.w_up = _normal(rngs, d_model**-0.5, (d_model, hidden), param_dtype)
        self.w_down = _normal(rngs, hidden**-0.5, (hidden, d_model), param_dtype)

    def _mlp(self, x):
        z = self.norm2(x)
        return x + (jax.nn.gelu(z @ self.w_gate[...]) * (z @ self.w_up[...])) @ self.w_down[...]

    def __call__(self, x: Array) -> Array:
        return self._mlp(x + self.mixer(self.norm1(x)))

    def step(self, state, x_t: Array):
        state, y = self.mixer.step(state, self.norm1(x_t))
        return state, self._mlp(x_t + y)


class Model(nnx.Module):
    """Embedding, ``n_layers`` :class:`Block` s around one kind of mixer, final norm, head."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, *, mixer: str = "gril",
                 n_heads: int = 4, head: str = "next_token", n_classes: int | None = None,
                 mlp_ratio: int = 2, param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        vocab = validate.positive_int("vocab", vocab)
        d_model = validate.positive_int("d_model", d_model)
        validate.positive_int("n_layers", n_layers)
        self.mixer_name, self.head_kind = validate.one_of("mixer", mixer, CHOICES), head
        validate.one_of("head", head, HEADS)
        if head == "classify":
            n_classes = validate.positive_int("n_classes", n_classes)
        common = dict(param_dtype=param_dtype, rngs=rngs)
        self.embed = nnx.Embed(vocab, d_model, **common)
        self.blocks = nnx.List([
            Block(d_model, make_mixer(mixer, d_model, n_heads=n_heads, **common),
                  mlp_ratio=mlp_ratio, **common)
            for _ in range(n_layers)
        ])  # fmt: skip
        self.norm = nnx.RMSNorm(d_model, **common)
        out = vocab if head == "next_token" else n_classes
        self.w_head = _normal(rngs, d_model**-0.5, (d_model, out), param_dtype)

    def __call__(self, tokens: Array, lengths: Array | None = None) -> Array:
        """Integer tokens ``(B, L)`` → logits ``(B, L, V)`` (next token) or ``(B, C)`` (classify:
        the mean over all positions, or over the first ``lengths`` ``(B,)`` of each row)."""
        if lengths is not None and self.head_kind != "classify":
            raise ValueError("lengths is for head='classify' (the pooled positions)")
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.head_kind == "classify":
            if lengths is None:
                x = jnp.mean(x, axis=1)
            else:
                mask = jnp.arange(x.shape[1]) < jnp.asarray(lengths)[:, None]  # (B, L)
                count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(x.dtype)
                x = jnp.einsum("bl,bld->bd", mask.astype(x.dtype), x) / count
        return x @ self.w_head[...]

    def init_state(self, batch: int):
        if self.mixer_name not in RECURRENT:
            raise ValueError(f"mixer={self.mixer_name!r} has no recurrent form; one of {RECURRENT}")
        return [block.mixer.init_state(batch) for block in self.blocks]

    def step(self, state, token: Array):
        """One token ``(B,)`` → ``(state, next-token logits (B, V))`` in the recurrent form."""
        x = self.embed(token)
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            s, x = block.step(s, x)
            new.append(s)
        return new, self.norm(x) @ self.w_head[...]


def parameter_count(model: nnx.Module) -> int:
    """The number of trained numbers (every ``nnx.Param``)."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def match_d_model(
    mixer: str, params: int, *, vocab: int, n_layers: int, n_heads: int = 4, **model_kwargs
) -> int:
    """The ``d_model`` (a multiple of ``n_heads``; for attention and Griffin, of ``2 n_heads``:
    rotary positions turn channel pairs, the RG-LRU needs an even width) whose :class:`Model` around ``mixer`` has the
    parameter count closest to ``params`` — to compare mixers at one size. Counts come from
    ``nnx.eval_shape``: nothing is allocated."""
    validate.one_of("mixer", mixer, CHOICES)
    params = validate.positive_int("params", params)

    def count(d):
        return parameter_count(
            nnx.eval_shape(
                lambda: Model(
                    vocab,
                    d,
                    n_layers,
                    mixer=mixer,
                    n_heads=n_heads,
                    rngs=nnx.Rngs(0),
                    **model_kwargs,
                )
            )
        )

    unit = 2 * n_heads if mixer in ("attention", "griffin") else n_heads
    lo, hi = 1, 2  # in units; the count grows with d_model
    while count(hi * unit) < params:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid * unit) < params else (lo, mid)
    return min((lo * unit, hi * unit), key=lambda d: abs(count(d) - params))


def generate(model: Model, prompt: Array, n_tokens: int, key, temperature: float = 1.0):
    """Sample ``n_tokens`` after ``prompt`` ``(B, P)``: ``(tokens (B, P + n), logits (B, n, V))``,
    the logits each sampled token was drawn from (``temperature`` 0: the most likely token)."""
    if not isinstance(model, Model) or model.head_kind != "next_token":
        raise ValueError("generate needs a Model with head='next_token'")
    n_tokens = validate.positive_int("n_tokens", n_tokens)
    temperature = validate.non_negative_number("temperature", temperature)
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be integer tokens (B, P), P >= 1; got {prompt.shape}")
    graphdef, params = nnx.split(model)
    return _generate(graphdef, params, prompt, n_tokens, key, temperature)


def prefill(model: Model, prompt: Array):
    """The recurrent state after reading ``prompt`` ``(B, P)`` a token at a time (a ``lax.scan``
    of :meth:`Model.step`: one compiled step whatever ``P``)."""

    def body(state, token):
        return model.step(state, token)[0], None

    return jax.lax.scan(body, model.init_state(prompt.shape[0]), jnp.moveaxis(prompt, 1, 0))[0]


def _sample(logits, key, temperature):
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, logits / temperature, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 3, 5))
def _generate(graphdef, params, prompt, n_tokens, key, temperature):
    model = nnx.merge(graphdef, params)
    batch, p = prompt.shape
    keys = jax.random.split(key, n_tokens)
    if model.mixer_name in RECURRENT:
        state = prefill(model, prompt[:, :-1])
        state, logits = model.step(state, prompt[:, -1])

        def body(carry, k):
            state, logits = carry
            token = _sample(logits, k, temperature)
            state, next_logits = model.step(state, token)
            return (state, next_logits), (token, logits)

        _, (tokens, logits) = jax.lax.scan(body, (state, logits), keys)
    else:  # attention: the causal forward pass over a fixed buffer, one position a step
        buffer = jnp.zeros((batch, p + n_tokens), prompt.dtype).at[:, :p].set(prompt)

        def body(buffer, inputs):
            t, k = inputs
            logits = jax.lax.dynamic_index_in_dim(model(buffer), t - 1, axis=1, keepdims=False)
            token = _sample(logits, k, temperature)
            return buffer.at[:, t].set(token), (token, logits)

        _, (tokens, logits) = jax.lax.scan(body, buffer, (p + jnp.arange(n_tokens), keys))
    out = jnp.concatenate([prompt, jnp.moveaxis(tokens, 0, 1)], axis=1)
    return out, jnp.moveaxis(logits, 0, 1)
