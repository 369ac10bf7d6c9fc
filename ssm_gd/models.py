"""Sequence models around a mixer: pre-norm residual blocks, an embedding, a head, generation.

``Model(vocab, d_model, n_layers, mixer=..., head=...)``: token embedding, ``n_layers`` blocks
``x + mixer(norm(x))``, ``x + mlp(norm(x))`` (a gated MLP), a final norm and a head — next-token
logits ``(B, L, V)`` (``head="next_token"``) or a classifier on the mean over positions
``(B, C)`` (``head="classify"``). The mixers, one block shape for all (:data:`MIXERS`):

* ``"gril"`` — :class:`ssm_gd.gril.GRILMixer` (window 3, one decay per state entry);
* ``"linear_attention"`` — the same mixer with ``window=1, decay="none"``: causal linear attention
  (docs/design.md §13);
* ``"attention"`` — causal softmax attention (:func:`jax.nn.dot_product_attention`);
* ``"ssm"`` — a diagonal SSM, ``s_t = Λ ⊙ s_t−1 + B u_t``, ``y_t = C s_t + d ⊙ u_t`` (S5/LRU style,
  real ``Λ ∈ (0, 1)``).

:func:`generate` samples from a next-token model with the recurrent forms (``step``: constant
time and memory per token) and, for attention, by recomputing the causal forward pass over a
fixed-length buffer (one compiled program).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_gd import validate
from ssm_gd.gril import GRILMixer
from ssm_gd.initializers import uniform_init
from ssm_gd.layers import DiagonalRecurrence

__all__ = ["HEADS", "MIXERS", "Attention", "Block", "DiagonalSSM", "Model", "generate",
           "make_mixer", "parameter_count"]  # fmt: skip

Array = jax.Array
MIXERS = ("gril", "linear_attention", "attention", "ssm")
HEADS = ("next_token", "classify")
RECURRENT = ("gril", "linear_attention", "ssm")


def _normal(rngs, scale, shape, dtype):
    return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))


class Attention(nnx.Module):
    """Causal multi-head softmax attention ``(B, L, D) → (B, L, D)``."""

    def __init__(self, d_model: int, *, n_heads: int, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        dh = d_model // n_heads
        self.w_qkv = _normal(rngs, d_model**-0.5, (d_model, 3, n_heads, dh), param_dtype)
        self.w_o = _normal(rngs, d_model**-0.5, (n_heads, dh, d_model), param_dtype)

    def __call__(self, u: Array) -> Array:
        q, k, v = jnp.einsum("bld,dthe->tblhe", u, self.w_qkv[...])
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # (B, L, H, dh)
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


def make_mixer(name: str, d_model: int, *, n_heads: int, param_dtype=jnp.float32, rngs):
    """One mixer of :data:`MIXERS` at ``d_model`` (heads of ``d_model / n_heads`` channels)."""
    validate.one_of("mixer", name, MIXERS)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
    dh, common = d_model // n_heads, dict(param_dtype=param_dtype, rngs=rngs)
    if name == "attention":
        return Attention(d_model, n_heads=n_heads, **common)
    if name == "ssm":
        return DiagonalSSM(d_model, state=d_model, **common)
    window, decay = (3, "entry") if name == "gril" else (1, "none")
    return GRILMixer(d_model, n_heads=n_heads, d_key=dh, d_value=dh, window=window, decay=decay,
                     **common)  # fmt: skip


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
        self.mixer_name, self.head_kind = validate.one_of("mixer", mixer, MIXERS), head
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

    def __call__(self, tokens: Array) -> Array:
        """Integer tokens ``(B, L)`` → logits ``(B, L, V)`` (next token) or ``(B, C)`` (classify)."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.head_kind == "classify":
            x = jnp.mean(x, axis=1)
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
        state, logits = model.init_state(batch), None
        for t in range(p):  # the prompt, a token at a time
            state, logits = model.step(state, prompt[:, t])

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
