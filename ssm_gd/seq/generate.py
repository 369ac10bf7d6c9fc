"""Generation from a next-token :class:`ssm_gd.seq.models.Model`: prefill and sampling.

:func:`generate` samples with every mixer's step form (one compiled program): the recurrent
mixers' constant state (constant time and memory per token), attention's key-value cache of the
prompt's and the new tokens' length (time and memory per token grow with that length).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import validate
from ssm_gd.seq.mixers import CACHED
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


def prefill(model: Model, prompt: Array, length: int | None = None):
    """The step form's state after reading ``prompt`` ``(B, P)`` (integer ids in ``[0, vocab)``) a
    token at a time (a ``lax.scan`` of :meth:`Model.step`: one compiled step whatever ``P``).
    ``length``: for attention, the positions its key-value cache holds (default ``P``: room for
    the prompt alone); the recurrent mixers take none."""
    prompt = _check_prompt(model, prompt)
    if model.mixer_name in CACHED and length is None:
        length = prompt.shape[1]
    return _prefill(model, prompt, length)


def _prefill(model: Model, prompt: Array, length: int | None):
    def body(state, token):
        return model.step(state, token)[0], None

    state = model.init_state(prompt.shape[0], length)
    return jax.lax.scan(body, state, jnp.moveaxis(prompt, 1, 0))[0]


def _sample(logits, key, temperature):
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, logits / temperature, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 3, 5))
def _generate(graphdef, params, prompt, n_tokens, key, temperature):
    model = nnx.merge(graphdef, params)
    p = prompt.shape[1]
    keys = jax.random.split(key, n_tokens)
    # Every mixer in its step form; attention's cache holds the prompt and every new token.
    length = p + n_tokens if model.mixer_name in CACHED else None
    state = _prefill(model, prompt[:, :-1], length)
    state, logits = model.step(state, prompt[:, -1])

    def body(carry, k):
        state, logits = carry
        token = _sample(logits, k, temperature).astype(prompt.dtype)
        state, next_logits = model.step(state, token)
        return (state, next_logits), (token, logits)

    _, (tokens, logits) = jax.lax.scan(body, (state, logits), keys)
    out = jnp.concatenate([prompt, jnp.moveaxis(tokens, 0, 1)], axis=1)
    return out, jnp.moveaxis(logits, 0, 1)
