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
import numpy as np
from flax import nnx

from ssm_gd import validate
from ssm_gd.seq.mixers import CACHED, CHOICES, RECURRENT, make_mixer

__all__ = ["HEADS", "Block", "Model", "check_lengths", "check_tokens", "match_d_model",
           "parameter_count"]  # fmt: skip

Array = jax.Array
HEADS = ("next_token", "classify")


def _normal(rngs, scale, shape, dtype):
    return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))


def check_tokens(name: str, tokens, vocab: int, *, ndim: int) -> Array:
    """``tokens`` as an integer array of ``ndim`` axes whose ids lie in ``[0, vocab)``.

    Out-of-range ids would be read silently otherwise (an id ``≥ vocab`` embeds as NaN, a negative
    one wraps around to the end of the table): the values are checked, on the host, whenever they
    are concrete (constants of a traced program too); a tracer has its dtype and shape checked.
    """
    traced = validate.is_traced(tokens)
    array = tokens if traced else np.asarray(tokens)
    if array.ndim != ndim or not jnp.issubdtype(array.dtype, jnp.integer):
        shape = "(B, L)" if ndim == 2 else "(B,)"
        raise ValueError(
            f"{name} must be integer token ids {shape}; got {array.dtype} {array.shape}"
        )
    if not traced and array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocab:
            raise ValueError(
                f"{name} must hold token ids in [0, vocab={vocab}); got ids in [{low}, {high}]"
            )
    return jnp.asarray(tokens)


def check_lengths(lengths, batch: int, length: int) -> Array:
    """``lengths`` ``(B,)`` of whole numbers in ``[1, L]`` (values checked when concrete)."""
    traced = validate.is_traced(lengths)
    shape = lengths.shape if traced else np.shape(lengths)
    if shape != (batch,):
        raise ValueError(f"lengths must have shape (B,) = ({batch},); got {shape}")
    if traced:
        return lengths
    values = np.asarray(lengths, np.float64)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ValueError(f"lengths must be whole numbers in [1, L={length}]; got {values.tolist()}")
    if values.min() < 1 or values.max() > length:
        raise ValueError(
            f"lengths must be in [1, L={length}] (each row's unpadded positions); got values in "
            f"[{values.min():g}, {values.max():g}]"
        )
    return jnp.asarray(values, jnp.int32)


class Block(nnx.Module):
    """``x + mixer(norm(x))``, then ``x + W_down(gelu(W_gate x̂) ⊙ W_up x̂)``, ``x̂ = norm(x)``."""

    def __init__(self, d_model: int, mixer: nnx.Module, *, mlp_ratio: int = 2,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        hidden = validate.positive_int("mlp_ratio", mlp_ratio) * d_model
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
        validate.positive_int("n_heads", n_heads)
        validate.positive_int("mlp_ratio", mlp_ratio)
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
        tokens = check_tokens("tokens", tokens, self.embed.num_embeddings, ndim=2)
        if lengths is not None:
            lengths = check_lengths(lengths, *tokens.shape)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.head_kind == "classify":
            if lengths is None:
                x = jnp.mean(x, axis=1)
            else:
                mask = jnp.arange(x.shape[1]) < lengths[:, None]  # (B, L)
                count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(x.dtype)
                x = jnp.einsum("bl,bld->bd", mask.astype(x.dtype), x) / count
        return x @ self.w_head[...]

    def init_state(self, batch: int, length: int | None = None):
        """The step form's state before the first token, one entry per block. ``length``: the
        positions a key-value cache holds (attention, :data:`~ssm_gd.seq.mixers.CACHED`: the
        prompt and every generated token); the recurrent mixers' state does not grow and takes
        none."""
        if self.mixer_name in CACHED:
            if length is None:
                raise ValueError(
                    f"mixer={self.mixer_name!r} keeps a key-value cache of a fixed length: "
                    "init_state(batch, length=…) with length ≥ the positions to be read"
                )
            return [block.mixer.init_state(batch, length) for block in self.blocks]
        if length is not None:
            raise ValueError(
                f"length is for the mixers with a cache {CACHED}; mixer={self.mixer_name!r} keeps "
                "a state of constant size: init_state(batch)"
            )
        if self.mixer_name not in RECURRENT:  # every mixer of CHOICES is one or the other
            raise ValueError(f"mixer={self.mixer_name!r} has no step form")
        return [block.mixer.init_state(batch) for block in self.blocks]

    def step(self, state, token: Array):
        """One token ``(B,)`` → ``(state, next-token logits (B, V))`` in the step form (the
        recurrent state, or attention's key-value cache); ``state`` from :meth:`init_state` (one
        entry per block, batch ``B``) or an earlier step."""
        token = check_tokens("token", token, self.embed.num_embeddings, ndim=1)
        self._check_state(state, token.shape[0])
        x = self.embed(token)
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            s, x = block.step(s, x)
            new.append(s)
        return new, self.norm(x) @ self.w_head[...]

    def _check_state(self, state, batch: int) -> None:
        """``state`` is this model's :meth:`init_state` ``(batch)`` (or a step's): a list with one
        entry per block, each of the same tree and shapes (read from tracers too)."""
        if not isinstance(state, list | tuple) or len(state) != len(self.blocks):
            raise ValueError(
                f"state must be the list of {len(self.blocks)} block states that init_state(batch) "
                f"returns; got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, list | tuple) else "")
            )
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(state) if getattr(leaf, "ndim", 0)}
        if sizes != {batch}:
            raise ValueError(
                f"state must be for a batch of {batch} (the token's); its arrays have leading "
                f"sizes {sorted(sizes)}: use init_state({batch})"
            )
        length = None
        if self.mixer_name in CACHED:  # the cache's length is the state's own
            length = np.shape(state[0].get("k", ())) if isinstance(state[0], dict) else ()
            if len(length) != 4:
                raise ValueError(
                    f"state[0] must be block 0's key-value cache from this model's "
                    f"init_state({batch}, length) (mixer={self.mixer_name!r})"
                )
            length = length[1]
        expected = jax.eval_shape(lambda: self.init_state(batch, length))  # shapes only
        for i, (got, want) in enumerate(zip(state, expected, strict=True)):
            got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
            want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(want)
            if got_tree != want_tree:
                raise ValueError(
                    f"state[{i}] must be block {i}'s state from this model's init_state({batch}) "
                    f"(mixer={self.mixer_name!r}): expected {want_tree}; got {got_tree}"
                )
            for (path, leaf), (_, ref) in zip(got_leaves, want_leaves, strict=True):
                if np.shape(leaf) != ref.shape:
                    raise ValueError(
                        f"state[{i}]{jax.tree_util.keystr(path)} must have shape {ref.shape} (this "
                        f"model's init_state({batch})); got {np.shape(leaf)}"
                    )


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
