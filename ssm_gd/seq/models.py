"""Sequence models around a mixer: pre-norm residual blocks, an embedding, a head.

``Model(vocab, d_model, n_layers, mixer=..., head=...)``: token embedding, ``n_layers`` blocks
``x + mixer(norm(x))``, ``x + mlp(norm(x))`` (a gated MLP), a final norm and a head — next-token
logits ``(B, L, V)`` (``head="next_token"``) or a classifier on the mean over positions
``(B, C)`` (``head="classify"``; given ``lengths``, the mean over each sequence's first ``length``
positions, so right padding changes nothing: every mixer is causal). The mixers, one block shape
for all, are :data:`ssm_gd.seq.mixers.CHOICES`; generation is :mod:`ssm_gd.seq.generate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_gd import validate
from ssm_gd.seq.mixers import CHOICES, RECURRENT, make_mixer

__all__ = ["HEADS", "Block", "Model", "match_d_model", "parameter_count"]

Array = jax.Array
HEADS = ("next_token", "classify")


def _normal(rngs, scale, shape, dtype):
    return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))


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
