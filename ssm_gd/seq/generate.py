"""Generation from a next-token :class:`ssm_gd.seq.models.Model`: prefill and sampling.

:func:`generate` samples with the recurrent forms (``step``: constant time and memory per token)
and, for attention, by recomputing the causal forward pass over a fixed-length buffer (one
compiled program).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import validate
from ssm_gd.seq.mixers import RECURRENT
from ssm_gd.seq.models import Model, check_tokens

__all__ = ["generate", "prefill"]

Array = jax.Array


def generate(model: Model, prompt: Array, n_tokens: int, key, temperature: float = 1.0):
    """Sample ``n_tokens`` after ``prompt`` ``(B, P)``: ``(tokens (B, P + n), logits (B, n, V))``,
    the logits each sampled token was drawn from (``temperature`` 0: the most likely token).

    Raises ``ValueError`` for a prompt that is not integer ids ``(B, P)`` in ``[0, vocab)``, and
    ``FloatingPointError`` when a step's logits are not finite (NaN or inf, e.g. from diverged
    parameters): no token drawn from them is returned.
    """
    if not isinstance(model, Model) or model.head_kind != "next_token":
        raise ValueError("generate needs a Model with head='next_token'")
    n_tokens = validate.positive_int("n_tokens", n_tokens)
    temperature = validate.non_negative_number("temperature", temperature)
    prompt = _check_prompt(model, prompt)
    graphdef, params = nnx.split(model)
    tokens, logits = _generate(graphdef, params, prompt, n_tokens, key, temperature)
    if not validate.is_traced(logits):
        finite = np.asarray(jnp.all(jnp.isfinite(logits), axis=(0, 2)))
        if not finite.all():
            first = int(np.argmin(finite))
            raise FloatingPointError(
                f"generate: the logits of generated token {first} (of {n_tokens}) are not finite "
                "(NaN or inf; are the parameters finite?), so nothing was sampled from them"
            )
    return tokens, logits


def _check_prompt(model: Model, prompt) -> Array:
    prompt = check_tokens("prompt", prompt, model.embed.num_embeddings, ndim=2)
    if prompt.shape[1] < 1:
        raise ValueError(f"prompt must hold at least one token (B, P), P >= 1; got {prompt.shape}")
    return prompt


def prefill(model: Model, prompt: Array):
    """The recurrent state after reading ``prompt`` ``(B, P)`` (integer ids in ``[0, vocab)``) a
    token at a time (a ``lax.scan`` of :meth:`Model.step`: one compiled step whatever ``P``)."""
    return _prefill(model, _check_prompt(model, prompt))


def _prefill(model: Model, prompt: Array):
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
        state = _prefill(model, prompt[:, :-1])
        state, logits = model.step(state, prompt[:, -1])

        def body(carry, k):
            state, logits = carry
            token = _sample(logits, k, temperature).astype(prompt.dtype)
            state, next_logits = model.step(state, token)
            return (state, next_logits), (token, logits)

        _, (tokens, logits) = jax.lax.scan(body, (state, logits), keys)
    else:  # attention: the causal forward pass over a fixed buffer, one position a step
        buffer = jnp.zeros((batch, p + n_tokens), prompt.dtype).at[:, :p].set(prompt)

        def body(buffer, inputs):
            t, k = inputs
            logits = jax.lax.dynamic_index_in_dim(model(buffer), t - 1, axis=1, keepdims=False)
            token = _sample(logits, k, temperature).astype(prompt.dtype)
            return buffer.at[:, t].set(token), (token, logits)

        _, (tokens, logits) = jax.lax.scan(body, buffer, (p + jnp.arange(n_tokens), keys))
    out = jnp.concatenate([prompt, jnp.moveaxis(tokens, 0, 1)], axis=1)
    return out, jnp.moveaxis(logits, 0, 1)
