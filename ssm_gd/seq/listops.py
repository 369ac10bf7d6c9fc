"""ListOps, the Long Range Arena task: generator, tokenizer and evaluator (numpy only).

ListOps (Nangia & Bowman 2018, in the long form of Long Range Arena, Tay et al. 2021) asks for
the value of a nested prefix expression such as ``[MAX 2 9 [MIN 4 7 ] 0 ]`` (= 9). The operators
are ``MIN``, ``MAX``, ``MED`` (median) and ``SM`` (sum modulo 10), the values are the digits
0–9, and the answer is one of the ten digits: a 10-way classification of the whole sequence.

LRA's settings, the defaults of :func:`dataset`: ``max_depth = 10``, ``max_args = 10``, and only
expressions of 500 to 2000 tokens are kept (rejection sampling); sequences are padded to 2000.
Published LRA test accuracies at those settings: Transformer 36.4%, S4 59.6%, S5 62.2%.

Tokens (:data:`VOCAB`): ``<pad>`` (id 0), the digits, the four operators with their opening
bracket (``[MIN`` is one token) and the closing bracket ``]``. A sequence's length is its number
of tokens; LRA's released files also wrap nodes in parentheses, which its input pipeline strips,
so they are never emitted here.

The tree (:func:`sample_expression`), as in LRA: the root, at depth 1, is an operator; an operator
has 2 to ``max_args`` arguments (uniform), its operator uniform over the four; each argument is
another operator with probability :data:`NEST_P` = 1/4 and otherwise a digit (uniform), except
that a node at depth ``max_depth`` is always a digit. So a tree has at most ``max_depth`` levels
and at most ``max_depth - 1`` brackets nested inside one another. (LRA also lets the root be a
digit; such one-token trees never pass a length filter, so with ``min_length >= 2`` the trees
are drawn as LRA's are.) Two differences from LRA's data files: the length bounds here are
inclusive (LRA keeps lengths strictly between its bounds) and duplicates are not removed (LRA
draws one pool of distinct expressions and splits it).

``MED`` of an even number of arguments is, as in LRA, the integer part of numpy's median:
``[MED 2 5 ]`` = ``int(3.5)`` = 3 (the mean of the two middle values, rounded down).

Train and test splits must come from different random streams, or the test set measures recall
of the training set: :func:`splits` draws them from two seeds derived from one
(:func:`split_seeds`). Duplicate expressions across the splits remain possible at tiny settings.

Speed (pure Python, measured on a loaded 2-core machine): ``dataset(2000, seed=0, max_depth=4,
max_args=5, min_length=20, max_length=100)`` takes 0.6–0.9 s; ``dataset(100, seed=0)`` at LRA's
settings 0.55–0.65 s (34% of the drawn trees have 500 to 2000 tokens, 62% fewer, 5% more), so
about 6 ms an expression. Labels are not balanced: at LRA's settings 0 and 9 are the most frequent
(17% each in ``dataset(2000, seed=0)``), the other digits 7–10% each.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "NEST_P",
    "OPERATORS",
    "PAD",
    "VOCAB",
    "ListOps",
    "dataset",
    "decode",
    "encode",
    "evaluate",
    "max_tokens",
    "sample_expression",
    "split_seeds",
    "splits",
]

PAD = "<pad>"
DIGITS = tuple(str(v) for v in range(10))
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
VOCAB: tuple[str, ...] = (PAD, *DIGITS, *OPERATORS, CLOSE)
NEST_P = 0.25  # probability that an argument (above the depth limit) is a nested operator

_ID = {token: i for i, token in enumerate(VOCAB)}
_DIGIT_VALUE = {token: v for v, token in enumerate(DIGITS)}
_MAX_DRAWS_PER_ROW = 1000


class ListOps(NamedTuple):
    """A ListOps data set of ``n`` expressions.

    ``tokens``: int32 ``(n, max_length)``, ids into :data:`VOCAB`, right-padded with 0;
    ``lengths``: int32 ``(n,)``, tokens before the padding; ``labels``: int32 ``(n,)``, 0–9.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray


# ---------------------------------------------------------------------------------------------
# Tokenizer


def encode(text: str | Sequence[str]) -> np.ndarray:
    """Token ids (int32) of a whitespace-separated string (or a list of token strings)."""
    tokens = text.split() if isinstance(text, str) else list(text)
    try:
        return np.array([_ID[t] for t in tokens], dtype=np.int32)
    except KeyError as err:
        raise ValueError(
            f"unknown ListOps token {err.args[0]!r}; the vocabulary is {' '.join(VOCAB)}"
        ) from None


def decode(ids) -> str:
    """The space-separated tokens of a 1-D sequence of ids, ``<pad>`` (id 0) dropped."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D sequence of integers; got shape {ids.shape}")
    bad = (ids < 0) | (ids >= len(VOCAB))
    if bad.any():
        raise ValueError(f"ids must lie in [0, {len(VOCAB)}); got {int(ids[bad][0])}")
    return " ".join(VOCAB[i] for i in ids.tolist() if i != 0)


# ---------------------------------------------------------------------------------------------
# Evaluator


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    # [MED: int(np.median(args)); for non-negative integers the mean of the two middle values
    # of an even count, truncated, is (a + b) // 2.
    s = sorted(args)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def evaluate(text_or_tokens: str | Sequence[str]) -> int:
    """The value (0–9) of one ListOps expression, a string or a list of token strings.

    The expression is one digit or one bracketed operator with at least one argument. ``MED`` of
    an even count is ``int(np.median(args))``, as in LRA. Raises ``ValueError`` on an unknown or
    stray token, an unbalanced bracket, an operator with no arguments, or tokens after the end.
    """
    tokens = text_or_tokens.split() if isinstance(text_or_tokens, str) else list(text_or_tokens)
    if not tokens:
        raise ValueError("empty ListOps expression")
    stack: list[tuple[str, int, list[int]]] = []  # (operator, its position, its arguments)
    result: int | None = None
    for pos, token in enumerate(tokens):
        if result is not None:
            raise ValueError(
                f"trailing tokens after the end of the expression: {token!r} at position {pos}"
            )
        if token in _DIGIT_VALUE:
            if stack:
                stack[-1][2].append(_DIGIT_VALUE[token])
            elif len(tokens) == 1:
                result = _DIGIT_VALUE[token]
            else:
                raise ValueError(f"stray value {token!r} at position {pos}, outside any operator")
        elif token in OPERATORS:
            stack.append((token, pos, []))
        elif token == CLOSE:
            if not stack:
                raise ValueError(f"unbalanced brackets: ']' at position {pos} closes nothing")
            op, op_pos, args = stack.pop()
            if not args:
                raise ValueError(f"operator {op} at position {op_pos} has no arguments")
            value = _apply(op, args)
            if stack:
                stack[-1][2].append(value)
            else:
                result = value
        else:
            raise ValueError(
                f"unknown ListOps token {token!r} at position {pos}; expected a digit, "
                f"{', '.join(OPERATORS)} or ']'"
            )
    if stack:
        op, op_pos, _ = stack[-1]
        raise ValueError(f"unbalanced brackets: {op} at position {op_pos} is never closed")
    assert result is not None
    return result


# ---------------------------------------------------------------------------------------------
# Generator


def _fail(name: str, what: str, value) -> None:
    raise ValueError(f"{name} must be {what}; got {value!r}")


def _int_at_least(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        _fail(name, "a positive integer" if low == 1 else f"an integer >= {low}", value)
    return int(value)


def _check_tree(max_depth, max_args) -> tuple[int, int]:
    max_depth = _int_at_least("max_depth", max_depth, 2)  # the root operator and its arguments
    max_args = _int_at_least("max_args", max_args, 2)
    return max_depth, max_args


def max_tokens(max_depth: int, max_args: int) -> int:
    """The longest expression :func:`sample_expression` can draw (every node full, all deep)."""
    max_depth, max_args = _check_tree(max_depth, max_args)
    length = 1  # a digit at depth max_depth
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def _grow(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, out: list[str]):
    # One operator node at `depth` (the root is at 1); appends its tokens to `out`.
    n_args = int(rng.integers(2, max_args + 1))
    out.append(OPERATORS[int(rng.integers(len(OPERATORS)))])
    values = rng.integers(0, 10, size=n_args).tolist()
    if depth + 1 < max_depth:  # the arguments, at depth + 1, may be operators
        nested = (rng.random(n_args) < NEST_P).tolist()
        for is_op, v in zip(nested, values, strict=True):
            if is_op:
                _grow(rng, depth + 1, max_depth, max_args, out)
            else:
                out.append(DIGITS[v])
    else:
        out.extend(DIGITS[v] for v in values)
    out.append(CLOSE)


def sample_expression(rng: np.random.Generator, *, max_depth: int, max_args: int) -> list[str]:
    """A random ListOps expression, as a list of tokens; the root is always an operator.

    Each operator takes 2 to ``max_args`` arguments (uniform) and is uniform over
    :data:`OPERATORS`; an argument is itself an operator with probability :data:`NEST_P` (1/4),
    else a uniform digit, and always a digit at depth ``max_depth`` (the root is at depth 1).
    At most ``max_depth`` levels, so at most ``max_depth - 1`` nested brackets.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    max_depth, max_args = _check_tree(max_depth, max_args)
    out: list[str] = []
    _grow(rng, 1, max_depth, max_args, out)
    return out


def dataset(
    n: int,
    *,
    seed: int,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
) -> ListOps:
    """``n`` expressions of ``min_length`` to ``max_length`` tokens, with their values.

    Expressions are drawn with ``np.random.default_rng(seed)`` (:func:`sample_expression`) and
    kept when their token count lies in ``[min_length, max_length]``; the same arguments give the
    same data. Raises ``ValueError`` when no expression of those lengths exists, and when
    ``1000 · n`` draws do not fill the set (lengths that are possible but too rare).
    At LRA's defaults, ``dataset(100, seed=0)`` takes about 0.6 s (about 6 ms an expression).
    """
    n = _int_at_least("n", n, 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        _fail("seed", "a non-negative integer", seed)
    max_depth, max_args = _check_tree(max_depth, max_args)
    min_length = _int_at_least("min_length", min_length, 1)
    max_length = _int_at_least("max_length", max_length, 1)
    if min_length > max_length:
        raise ValueError(
            f"min_length must be <= max_length; got min_length={min_length}, "
            f"max_length={max_length}"
        )
    longest = max_tokens(max_depth, max_args)
    if min_length > longest or max_length < 4:
        raise ValueError(
            f"no expression has min_length={min_length} to max_length={max_length} tokens: with "
            f"max_depth={max_depth} and max_args={max_args} expressions have 4 to {longest} tokens"
        )

    rng = np.random.default_rng(int(seed))
    tokens = np.zeros((n, max_length), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    labels = np.zeros(n, dtype=np.int32)
    budget = _MAX_DRAWS_PER_ROW * n
    row = draws = 0
    while row < n:
        if draws == budget:
            raise ValueError(
                f"{draws} draws gave only {row} of n={n} expressions of min_length={min_length} "
                f"to max_length={max_length} tokens (max_depth={max_depth}, max_args={max_args}): "
                "those lengths are too rare at this depth and argument count"
            )
        draws += 1
        expr = sample_expression(rng, max_depth=max_depth, max_args=max_args)
        if min_length <= len(expr) <= max_length:
            tokens[row, : len(expr)] = [_ID[t] for t in expr]
            lengths[row] = len(expr)
            labels[row] = evaluate(expr)
            row += 1
    return ListOps(tokens, lengths, labels)


def split_seeds(seed: int) -> tuple[int, int]:
    """The train and test seeds :func:`splits` derives from ``seed`` (distinct, 64-bit)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        _fail("seed", "a non-negative integer", seed)
    train, test = (
        int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(int(seed)).spawn(2)
    )
    if train == test:  # two 64-bit hashes of distinct spawn keys; never seen in practice
        raise RuntimeError(f"seed={seed} derives equal train and test seeds")
    return train, test


def splits(n_train: int, n_test: int, *, seed: int, **kwargs) -> tuple[ListOps, ListOps]:
    """A train and a test set from two distinct streams derived from ``seed``.

    ``dataset(n_train, seed=split_seeds(seed)[0], **kwargs)`` and
    ``dataset(n_test, seed=split_seeds(seed)[1], **kwargs)``; ``kwargs`` are :func:`dataset`'s.
    """
    n_train = _int_at_least("n_train", n_train, 1)
    n_test = _int_at_least("n_test", n_test, 1)
    train_seed, test_seed = split_seeds(seed)
    return dataset(n_train, seed=train_seed, **kwargs), dataset(n_test, seed=test_seed, **kwargs)
