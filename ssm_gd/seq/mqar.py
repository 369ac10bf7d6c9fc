"""Multi-query associative recall (MQAR; docs/design.md §14): the sampler and its loss.

:func:`mqar` draws a batch of :class:`RecallTask` (tokens and the answers expected at the query
positions); :func:`recall_loss` is the cross-entropy and accuracy over the answer positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssm_gd import validate
from ssm_gd.sampling import keyed_sampler

__all__ = ["RecallTask", "mqar", "recall_loss"]

Array = jax.Array


class RecallTask(NamedTuple):
    """A batch of token sequences with answers at some positions.

    Attributes:
      tokens: integer inputs ``(B, L)``.
      targets: the answer expected at each position ``(B, L)`` (``-1`` where nothing is asked).
    """

    tokens: Array
    targets: Array


def mqar(key: Array, *, batch: int, seq_len: int, n_kv: int, vocab: int) -> RecallTask:
    """Multi-query associative recall (docs/design.md §14): ``n_kv`` key-value pairs, then each key
    asked once at a random later position; the model must name the key's value there.

    Keys are drawn without replacement from ``1 … V/2 − 1``, values with replacement from
    ``V/2 … V − 1``. The sequence is ``k_1 v_1 … k_n v_n`` followed by ``seq_len − 2n`` positions
    holding the ``n`` keys (in a random order, at random distinct positions) and, elsewhere,
    fillers drawn uniformly from the vocabulary less this sequence's keys (Zoology's random
    non-query tokens; a filler never repeats a key, so each key occurs exactly twice: in its pair
    and where it is asked). ``targets`` holds the value at each query position (the next-token
    prediction made there) and ``-1`` elsewhere. Needs ``vocab ≥ 4``, ``n_kv ≤ vocab/2 − 1``
    (distinct keys) and ``seq_len ≥ 3 n_kv`` (room for the queries).

    With a constant filler instead (one token everywhere between the queries) a 2-layer softmax
    attention model stays at the plateau of naming one of the values in context (accuracy
    ``1/n_kv``) for thousands of steps at ``(L, n) = (64, 4)``; with random fillers it solves the
    task within a few hundred (docs/design.md §14).
    """
    batch = validate.positive_int("batch", batch)
    seq_len = validate.positive_int("seq_len", seq_len)
    n_kv = validate.positive_int("n_kv", n_kv)
    vocab = validate.positive_int("vocab", vocab)
    half = vocab // 2
    if vocab < 4 or n_kv > half - 1:
        raise ValueError(
            f"vocab must be >= 4 and hold n_kv distinct keys below vocab // 2 (n_kv <= "
            f"{max(half - 1, 0)}); got vocab={vocab}, n_kv={n_kv}"
        )
    if seq_len < 3 * n_kv:
        raise ValueError(
            f"seq_len must be at least 3 * n_kv = {3 * n_kv} (the pairs and one query per key); "
            f"got {seq_len}"
        )
    return _mqar(key, batch, seq_len, n_kv, vocab)


@keyed_sampler
def _mqar(key, batch, seq_len, n_kv, vocab):
    half, rest = vocab // 2, seq_len - 2 * n_kv

    def one(key):
        k_keys, k_values, k_order, k_where, k_fill = jax.random.split(key, 5)
        keys = (1 + jax.random.choice(k_keys, half - 1, (n_kv,), replace=False)).astype(jnp.int32)
        values = jax.random.randint(k_values, (n_kv,), half, vocab, jnp.int32)
        pairs = jnp.stack([keys, values], axis=1).reshape(-1)
        order = jax.random.permutation(k_order, n_kv)
        where = jax.random.choice(k_where, rest, (n_kv,), replace=False)
        # Uniform over the vocab − n_kv tokens that are not keys, in integers: draw an index u
        # among them and step over each key at or below it (sorted keys minus their rank).
        u = jax.random.randint(k_fill, (rest,), 0, vocab - n_kv, jnp.int32)
        fillers = u + jnp.searchsorted(jnp.sort(keys) - jnp.arange(n_kv), u, side="right")
        queries = fillers.astype(jnp.int32).at[where].set(keys[order])
        answers = jnp.full((rest,), -1, jnp.int32).at[where].set(values[order])
        tokens = jnp.concatenate([pairs, queries])
        targets = jnp.concatenate([jnp.full((2 * n_kv,), -1, jnp.int32), answers])
        return tokens, targets

    return RecallTask(*jax.vmap(one)(jax.random.split(key, batch)))


def recall_loss(logits: Array, targets: Array) -> tuple[Array, Array]:
    """``(cross-entropy, accuracy)`` of logits ``(B, L, V)`` over the positions with a target
    (``targets ≥ 0``, ``(B, L)``)."""
    mask = targets >= 0
    safe = jnp.where(mask, targets, 0)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), safe[..., None], axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(mask), 1)
    hits = (jnp.argmax(logits, -1) == targets) & mask
    return -jnp.sum(jnp.where(mask, logp, 0.0)) / count, jnp.sum(hits) / count
