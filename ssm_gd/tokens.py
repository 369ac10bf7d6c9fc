"""Token layouts: how a regression task becomes the sequence a model reads.

Three layouts, each a function of the task alone (:func:`tokens`):

* ``"interleaved"``: ``[x_1, y_1, x_2, y_2, …, x_N, y_N, x_q]``, ``L = 2N + 1``, width
  ``H = max(d_in, d_out)``; every token is zero-padded to ``H``.
* ``"constructed"`` (scalar labels): ``[u_0, u_1, …, u_N]`` with ``u_i = [x_i·y_i, x_{i+1}]``
  (``x_{N+1} = x_q``) and a leading ``u_0 = [0, x_1]``; ``L = N + 1``, ``H = 2·d_in``. The label
  is already multiplied into the token. ``u_0`` carries ``x_1``, which the products alone lose and
  which multi-step GD needs (through ``Σ x_i x_iᵀ``).
* ``"pairs"``: ``[x_1, y_1], …, [x_N, y_N], [x_q, 0]`` (input and label side by side in one
  token), ``L = N + 1``, ``H = d_in + d_out``; the models of :mod:`ssm_gd.neighbours` read it.

A width alone cannot tell ``d_in`` from ``d_out`` (``d_in = 3, d_out = 1`` and ``d_in = d_out = 3``
both give interleaved tokens of width 3), so the sequence travels as :class:`Tokens`: the array
with the layout and the sizes it was made for. Every model checks them against its own and
refuses a bare array.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssm_gd import validate

__all__ = [
    "ALL_LAYOUTS",
    "LAYOUTS",
    "Tokens",
    "check_layout",
    "check_task",
    "context_size",
    "read_tokens",
    "row_width",
    "token_width",
    "tokens",
]

Array = jax.Array

#: The GD-SSM's layouts (:class:`ssm_gd.layers.GDSSM` reads these), :func:`check_layout`'s default.
LAYOUTS = ("interleaved", "constructed")
#: Every layout :func:`tokens` writes: the GD-SSM's, and ``"pairs"`` for the neighbour models.
ALL_LAYOUTS = LAYOUTS + ("pairs",)


def check_layout(layout: str, d_in: int, d_out: int, *, allowed: tuple = LAYOUTS) -> None:
    """Raise ``ValueError`` unless ``layout`` is one of ``allowed`` and fits the sizes.

    ``allowed`` defaults to the GD-SSM's :data:`LAYOUTS`; :data:`ALL_LAYOUTS` adds ``"pairs"``.
    """
    validate.one_of("layout", layout, allowed)
    validate.positive_int("d_in", d_in)
    validate.positive_int("d_out", d_out)
    if layout == "constructed" and d_out != 1:
        raise ValueError(
            f"layout='constructed' needs scalar labels (d_out=1), since its tokens hold x_i·y_i; "
            f"got d_out={d_out}. Use layout='interleaved' for vector labels."
        )


def token_width(layout: str, d_in: int, d_out: int) -> int:
    """Token width ``H``: ``max(d_in, d_out)`` interleaved, ``2·d_in`` constructed, ``d_in + d_out``
    pairs (any of :data:`ALL_LAYOUTS`)."""
    check_layout(layout, d_in, d_out, allowed=ALL_LAYOUTS)
    d_in, d_out = int(d_in), int(d_out)
    if layout == "pairs":
        return d_in + d_out
    return max(d_in, d_out) if layout == "interleaved" else 2 * d_in


def row_width(layout: str, d_in: int, d_out: int) -> int:
    """Width ``h`` of a GD-SSM window row: ``max(d_in, d_out)`` interleaved (a token), ``d_in``
    constructed (half a token: each token ``[x_i·y_i, x_{i+1}]`` is read as two rows)."""
    check_layout(layout, d_in, d_out)
    return max(int(d_in), int(d_out)) if layout == "interleaved" else int(d_in)


def context_size(layout: str, length: int) -> int:
    """The number of context pairs ``N`` in a sequence of ``length`` tokens of ``layout``.

    Raises ``ValueError`` for a length the layout cannot have (interleaved: ``2N + 1``, ``N >= 1``;
    constructed and pairs: ``N + 1``, ``N >= 1``).
    """
    validate.one_of("layout", layout, ALL_LAYOUTS)
    if layout == "interleaved":
        if length < 3 or length % 2 == 0:
            raise ValueError(
                f"interleaved tokens need L = 2N + 1 >= 3 (pairs then the query); got L={length}"
            )
        return (length - 1) // 2
    if length < 2:
        raise ValueError(
            f"{layout} tokens need L = N + 1 >= 2 (context then the query); got L={length}"
        )
    return length - 1


@jax.tree_util.register_pytree_node_class
class Tokens:
    """A token sequence ``array`` ``(B, L, H)`` with the ``layout`` and sizes it was made for.

    A pytree whose one leaf is ``array`` (the layout and sizes are static), so it passes through
    ``jax.jit``, ``vmap`` and sharding like an array. Build it with :func:`tokens` from a task, or
    wrap an array laid out by hand: ``Tokens(array, layout="interleaved", d_in=3, d_out=1)``
    (the shape is checked against the layout and sizes).

    ``n_context`` is the number of context pairs ``N`` the sequence holds.
    """

    __slots__ = ("array", "d_in", "d_out", "layout")

    def __init__(self, array, *, layout: str, d_in: int, d_out: int):
        width = token_width(layout, d_in, d_out)
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):
            raise validate.ArgumentTypeError(
                f"array must be an array (B, L, H); got {type(array).__name__}"
            )
        if len(array.shape) != 3:
            raise ValueError(f"array must be (B, L, H); got shape {tuple(array.shape)}")
        if array.shape[-1] != width:
            raise ValueError(
                f"array has width {array.shape[-1]}, but layout={layout!r} with d_in={d_in}, "
                f"d_out={d_out} needs H={width}"
            )
        context_size(layout, array.shape[1])
        self.array, self.layout, self.d_in, self.d_out = array, layout, int(d_in), int(d_out)

    # -- pytree: the array is the leaf, the layout and sizes are static
    def tree_flatten(self):
        return (self.array,), (self.layout, self.d_in, self.d_out)

    @classmethod
    def tree_unflatten(cls, aux, children):
        out = object.__new__(cls)
        out.array, (out.layout, out.d_in, out.d_out) = children[0], aux
        return out

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def dtype(self):
        return self.array.dtype

    def __array__(self, dtype=None, copy=None):
        """``numpy.asarray(tokens)``: the values, to inspect them (models need the Tokens)."""
        return np.asarray(self.array, dtype=dtype)

    @property
    def n_context(self) -> int:
        return context_size(self.layout, self.array.shape[1])

    def __repr__(self) -> str:
        return (
            f"Tokens(shape={self.shape}, dtype={self.dtype}, layout={self.layout!r}, "
            f"d_in={self.d_in}, d_out={self.d_out})"
        )

    def read(self, *, layout: str, d_in: int, d_out: int, reader: str = "model") -> Array:
        """The array, after checking that it was made for ``layout``, ``d_in`` and ``d_out``."""
        mine, theirs = (self.layout, self.d_in, self.d_out), (layout, d_in, d_out)
        if mine != theirs:
            raise ValueError(
                f"tokens were made for layout={self.layout!r}, d_in={self.d_in}, "
                f"d_out={self.d_out}, but the {reader} reads layout={layout!r}, d_in={d_in}, "
                f"d_out={d_out}"
            )
        return self.array


def read_tokens(
    value, *, layout: str, d_in: int, d_out: int, n_context=None, reader: str = "model"
) -> Tokens:
    """``value`` as :class:`Tokens` made for these sizes (and ``n_context`` pairs, unless
    ``None``); a bare array is refused.

    A bare ``(B, L, H)`` array cannot say which ``d_in`` and ``d_out`` it was laid out for;
    wrap it in :class:`Tokens` to say so.
    """
    if not isinstance(value, Tokens):
        raise validate.ArgumentTypeError(
            f"tokens must be ssm_gd.tokens.Tokens (from ssm_gd.tasks.tokens(task, layout), or "
            f"Tokens(array, layout={layout!r}, d_in={d_in}, d_out={d_out})); got "
            f"{type(value).__name__}: a bare array of width H cannot tell d_in from d_out"
        )
    value.read(layout=layout, d_in=d_in, d_out=d_out, reader=reader)
    if n_context is not None and value.n_context != n_context:
        raise ValueError(
            f"the {reader} was built for n_context={n_context} pairs, but the tokens hold "
            f"N={value.n_context}; build it with n_context={value.n_context}"
        )
    return value


def check_task(task) -> None:
    """A batched regression task: ``x (B, N, d_in)``, ``y (B, N, d_out)``, ``x_query (B, d_in)``
    (and ``y_query (B, d_out)`` where it has one), as :mod:`ssm_gd.tasks` samples."""
    names = ("x", "y", "x_query")
    if not all(hasattr(task, n) for n in names):
        raise validate.ArgumentTypeError(
            "task must be a task with fields x, y, x_query (e.g. ssm_gd.tasks.LinearTask); got "
            f"{type(task).__name__}"
        )
    shapes = [getattr(getattr(task, n), "shape", None) for n in names]
    if any(s is None for s in shapes) or [len(s) for s in shapes] != [3, 3, 2]:
        raise ValueError(
            "task must be batched: x (B, N, d_in), y (B, N, d_out), x_query (B, d_in); got "
            f"{shapes[0]}, {shapes[1]}, {shapes[2]}"
        )
    (b, n, d_in), y_shape, xq_shape = shapes
    if tuple(y_shape[:2]) != (b, n) or tuple(xq_shape) != (b, d_in):
        raise ValueError(
            f"task shapes disagree: x {tuple(shapes[0])}, y {tuple(y_shape)}, "
            f"x_query {tuple(xq_shape)}"
        )
    if 0 in (b, n, d_in, y_shape[2]):
        raise ValueError(f"task must have no empty axis; got x {tuple(shapes[0])}, y {y_shape}")
    y_query = getattr(task, "y_query", None)
    if y_query is not None and tuple(y_query.shape) != (b, y_shape[2]):
        raise ValueError(
            f"task.y_query must be (B, d_out) = {(b, y_shape[2])}; got {tuple(y_query.shape)}"
        )


def tokens(task, layout: str = "interleaved") -> Tokens:
    """Lay a task out as a token sequence :class:`Tokens` ``(B, L, H)`` (see the module docstring
    for the layouts)."""
    check_task(task)
    d_in, d_out = task.x.shape[-1], task.y.shape[-1]
    width = token_width(layout, d_in, d_out)
    array = _tokens(task.x, task.y, task.x_query, layout, width)
    return Tokens(array, layout=layout, d_in=d_in, d_out=d_out)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _tokens(x, y, xq, layout, width):
    b, n, _ = x.shape
    if layout == "pairs":
        query = jnp.concatenate([xq, jnp.zeros(xq.shape[:1] + y.shape[2:], y.dtype)], axis=-1)
        return jnp.concatenate([jnp.concatenate([x, y], axis=-1), query[:, None]], axis=1)
    if layout == "interleaved":
        pad = lambda v: jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, width - v.shape[-1])])  # noqa: E731
        pairs = jnp.stack([pad(x), pad(y)], axis=2).reshape(b, 2 * n, width)
        return jnp.concatenate([pairs, pad(xq)[:, None]], axis=1)
    nxt = jnp.concatenate([x[:, 1:], xq[:, None]], axis=1)
    body = jnp.concatenate([x * y, nxt], axis=-1)
    first = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :1]], axis=-1)
    return jnp.concatenate([first, body], axis=1)
