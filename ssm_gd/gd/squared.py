"""Gradient descent on the squared loss: explicit K-step GD, least squares, ridge, the best step size.

The implicit model is ``ŷ = W x`` with the in-context loss

    L(W) = 1/(2N) Σ_i ||W x_i − y_i||²,       ∇L(W) = (W S_x − S_y) / N,

where ``S_y = Σ_i y_i x_iᵀ`` ``(d_out, d_in)`` and ``S_x = Σ_i x_i x_iᵀ`` ``(d_in, d_in)`` are the two
*accumulators*. K steps of GD from ``W_0 = 0`` with step size ``η`` (docs/design.md §2):

    W_{k+1} = W_k − η ∇L(W_k) = W_k (I − (η/N) S_x) + (η/N) S_y,        ŷ = W_K x_q.

Conventions: we predict ``ŷ`` (the published code trains its model to output ``−ŷ``) and divide by
the number of context pairs ``N`` (the published code divides by its state size, equal to ``N`` at
its defaults). Neither changes a figure reported against GD at its best ``η``.

This module also holds what the other references share: the argument checks, GD with a link
function (:func:`_link_gd`, the identity here, the softmax for the cross-entropy) and the search
of a loss over a grid (:func:`minimise_on_grid`). All functions are pure and batched over a
leading task axis ``B``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from ssm_gd import validate

__all__ = [
    "DEFAULT_LR_GRID",
    "accumulators",
    "best_lr",
    "check_context",
    "grid_search_lr",
    "least_squares",
    "least_squares_prefixes",
    "loss",
    "lr_losses",
    "minimise_on_grid",
    "optimal_lr",
    "predict",
    "predict_prefixes",
    "ridge",
    "weights",
]

Array = jax.Array

DEFAULT_LR_GRID = np.arange(0.001, 25, 0.1)


def _check_steps(steps) -> int:
    return validate.positive_int("steps", steps)


def _shape(name: str, value) -> tuple:
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise validate.ArgumentTypeError(f"{name} must be an array; got {type(value).__name__}")
    return tuple(value.shape)


def check_context(x, y, x_query=None, y_query=None) -> None:
    """``x (B, N, d_in)``, ``y (B, N, d_out)``, ``x_query (B, d_in)``, ``y_query (B, d_out)``."""
    xs, ys = _shape("x", x), _shape("y", y)
    if len(xs) != 3 or len(ys) != 3 or xs[:2] != ys[:2]:
        raise ValueError(
            f"x must be (B, N, d_in) and y (B, N, d_out) with the same B, N; got {xs}, {ys}"
        )
    if 0 in xs or 0 in ys:
        raise ValueError(f"x and y must have no empty axis; got {xs}, {ys}")
    if x_query is not None and _shape("x_query", x_query) != (xs[0], xs[2]):
        raise ValueError(f"x_query must be (B, d_in) = {(xs[0], xs[2])}; got {x_query.shape}")
    if y_query is not None and _shape("y_query", y_query) != (ys[0], ys[2]):
        raise ValueError(f"y_query must be (B, d_out) = {(ys[0], ys[2])}; got {y_query.shape}")


def _check_lr(lr):
    """A positive finite step size (a traced one passes unchecked); scalar either way."""
    return validate.positive_number("lr", lr)


def loss(pred: Array, target: Array) -> Array:
    """Half the mean squared error over every axis: ``mean((ŷ − y)²) / 2``.

    For vector labels this is ``E||ŷ − y||² / (2 d_out)``; predicting 0 at the default task
    setting costs ``E||y||² / (2 d_out) = d_in / 24 ≈ 0.42``. ``pred`` and ``target`` must have
    one shape (a ``(B, 1)`` prediction against ``(B,)`` labels would broadcast to ``(B, B)``).
    """
    validate.same_shape("pred", pred, "target", target)
    return 0.5 * jnp.mean(jnp.square(pred - target))


def accumulators(x: Array, y: Array, *, prefix: bool = False) -> tuple[Array, Array]:
    """``S_y = Σ_i y_i x_iᵀ`` ``(B, d_out, d_in)`` and ``S_x = Σ_i x_i x_iᵀ`` ``(B, d_in, d_in)``.

    With ``prefix=True``, the sums over every prefix ``i ≤ t``: ``(B, N, d_out, d_in)`` and
    ``(B, N, d_in, d_in)``.
    """
    check_context(x, y)
    u_y = jnp.einsum("bno,bni->bnoi", y, x)
    u_x = jnp.einsum("bnj,bni->bnji", x, x)
    if prefix:
        return jnp.cumsum(u_y, axis=1), jnp.cumsum(u_x, axis=1)
    return u_y.sum(axis=1), u_x.sum(axis=1)


def weights(x: Array, y: Array, *, lr, steps: int = 1) -> Array:
    """The implicit model ``W_K`` ``(B, d_out, d_in)`` after ``steps`` explicit GD steps from 0.

    Each step evaluates the gradient ``(1/N) Σ_i (W x_i − y_i) x_iᵀ`` from the residuals.
    """
    check_context(x, y)
    _check_lr(lr)
    return _weights(x, y, lr, _check_steps(steps))


def _weights(x, y, lr, steps):
    return _link_gd(x, y, lr, steps, _identity)


def _identity(scores):
    return scores


def _softmax(scores):
    return jax.nn.softmax(scores, axis=-1)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _link_gd(x, y, lr, steps, link):
    """``steps`` GD steps from 0 on the loss whose gradient is ``(1/N) Σ_i (link(W x_i) − y_i) x_iᵀ``:
    the squared loss (``link`` the identity) or the cross-entropy (``link`` the softmax)."""
    n = x.shape[1]
    w = jnp.zeros(x.shape[:1] + (y.shape[-1], x.shape[-1]), jnp.result_type(x, y, lr))

    def step(_, w):
        error = link(jnp.einsum("boi,bni->bno", w, x)) - y
        return w - lr * jnp.einsum("bno,bni->boi", error, x) / n

    # Unrolled for the few steps the experiments use; a loop beyond (compile time stays flat).
    return jax.lax.fori_loop(0, steps, step, w, unroll=steps <= 8)


def predict(x: Array, y: Array, x_query: Array, *, lr, steps: int = 1) -> Array:
    """K-step GD prediction at the query, ``W_K x_q``: ``(B, d_out)``.

    Args:
      x: ``(B, N, d_in)``; y: ``(B, N, d_out)``; x_query: ``(B, d_in)``.
      lr: step size ``η`` (a scalar, traced or not).
      steps: the number of GD steps K.
    """
    check_context(x, y, x_query)
    _check_lr(lr)
    return jnp.einsum("boi,bi->bo", _weights(x, y, lr, _check_steps(steps)), x_query)


def predict_prefixes(x: Array, y: Array, x_query: Array, *, lr, steps: int = 1) -> Array:
    """K-step GD on every prefix: the prediction for the next input, ``(B, N, d_out)``.

    Entry ``t`` (0-based) runs GD on the first ``t + 1`` pairs and predicts at ``x_{t+2}``; the last
    entry (``t = N − 1``) is :func:`predict`'s query prediction. Every prefix uses the same
    normaliser ``N`` (the full context size), as a time-invariant recurrence does: on a prefix of
    ``t`` pairs this is GD on that prefix's own mean loss with step size ``η t / N``.
    """
    check_context(x, y, x_query)
    _check_lr(lr)
    return _predict_prefixes(x, y, x_query, lr, _check_steps(steps))


@functools.partial(jax.jit, static_argnums=4)
def _predict_prefixes(x, y, x_query, lr, steps):
    s_y, s_x = accumulators(x, y, prefix=True)
    queries = jnp.concatenate([x[:, 1:], x_query[:, None]], axis=1)
    c = lr / x.shape[1]
    w = jnp.zeros_like(s_y)
    for _ in range(steps):
        w = w - c * (jnp.einsum("bnoj,bnji->bnoi", w, s_x) - s_y)
    return jnp.einsum("bnoi,bni->bno", w, queries)


def ridge(x: Array, y: Array, x_query: Array, *, reg) -> Array:
    """Ridge regression at the query: ``ŷ = S_y (S_x + reg·I)^{-1} x_q``, ``(B, d_out)``."""
    check_context(x, y, x_query)
    if not np.all(np.isfinite(np.asarray(reg)) & (np.asarray(reg) > 0)):
        raise ValueError(
            f"reg must be a positive finite number (least_squares is reg = 0); got {reg!r}"
        )
    s_y, s_x = accumulators(x, y)
    eye = jnp.eye(x.shape[-1], dtype=s_x.dtype)
    v = jnp.linalg.solve(s_x + reg * eye, x_query[..., None])[..., 0]
    return jnp.einsum("boi,bi->bo", s_y, v)


def least_squares(x: Array, y: Array, x_query: Array) -> Array:
    """Minimum-norm least squares at the query, ``ŷ = (X⁺ Y)ᵀ x_q``, ``(B, d_out)``."""
    check_context(x, y, x_query)
    w = jnp.linalg.pinv(x) @ y  # (B, d_in, d_out)
    return jnp.einsum("bio,bi->bo", w, x_query)


def least_squares_prefixes(x: Array, y: Array, x_query: Array) -> Array:
    """:func:`least_squares` on every prefix, predicting the next input, ``(B, N, d_out)``.

    Entry ``t`` fits the first ``t + 1`` pairs and predicts at ``x_{t+2}`` (the last entry at the
    query), as in :func:`predict_prefixes`. One compiled call: a prefix is the full context with the
    later rows zeroed, which leaves ``X⁺ Y`` unchanged.
    """
    check_context(x, y, x_query)
    return _least_squares_prefixes(x, y, x_query)


@jax.jit
def _least_squares_prefixes(x, y, x_query):
    n = x.shape[1]
    queries = jnp.concatenate([x[:, 1:], x_query[:, None]], axis=1)
    keep = (jnp.arange(n)[None, :] <= jnp.arange(n)[:, None])[:, None, :, None]  # (prefix, 1, N, 1)

    def one(mask, q):
        w = jnp.linalg.pinv(x * mask) @ (y * mask)
        return jnp.einsum("bio,bi->bo", w, q)

    return jax.lax.map(lambda a: one(*a), (keep, jnp.moveaxis(queries, 1, 0))).swapaxes(0, 1)


def optimal_lr(x: Array, y: Array, x_query: Array, y_query: Array) -> Array:
    """The one-step ``η`` that minimises :func:`loss` on this batch, in closed form.

    One step gives ``ŷ = η g`` with ``g = S_y x_q / N``, so the loss is quadratic in ``η`` and
    ``η* = Σ_b ⟨g_b, y_b⟩ / Σ_b ||g_b||²``.
    """
    check_context(x, y, x_query, y_query)
    return _optimal_lr(x, y, x_query, y_query)


@jax.jit
def _optimal_lr(x, y, x_query, y_query):
    g = jnp.einsum("boi,bi->bo", _weights(x, y, 1.0, 1), x_query)
    return jnp.sum(g * y_query) / jnp.sum(g * g)


def lr_losses(x, y, x_query, y_query, lrs, *, steps: int = 1) -> Array:
    """:func:`loss` of K-step GD for each step size in ``lrs`` ``(M,)``; diverging ones give ``inf``."""
    return _lr_losses(x, y, x_query, y_query, lrs, steps, _identity, loss)


def _lr_losses(x, y, x_query, y_query, lrs, steps, link, objective):
    """``objective`` of the query prediction of ``steps`` steps of :func:`_link_gd` at each step
    size in ``lrs``, ``inf`` where it is not finite."""
    check_context(x, y, x_query, y_query)
    steps = _check_steps(steps)
    lrs = jnp.asarray(lrs)
    if lrs.ndim != 1 or lrs.shape[0] == 0:
        raise ValueError(f"lrs must be a non-empty 1-D array of step sizes; got shape {lrs.shape}")
    # lax.map over batches of step sizes: about 2²² numbers of weights and residuals at a time,
    # whatever the length of the grid and the size of the batch.
    b, n, d_in = x.shape
    per_lr = b * y.shape[-1] * max(d_in, n)
    losses = jax.lax.map(
        lambda lr: objective(
            jnp.einsum("boi,bi->bo", _link_gd(x, y, lr, steps, link), x_query), y_query
        ),
        lrs,
        batch_size=max(1, min(64, 2**22 // per_lr)),
    )
    return jnp.where(jnp.isfinite(losses), losses, jnp.inf)


def grid_search_lr(x, y, x_query, y_query, *, steps: int = 1, grid=DEFAULT_LR_GRID):
    """The best step size on a grid (default: the published code's): ``(lr, loss)``."""
    check_context(x, y, x_query, y_query)
    grid = jnp.asarray(grid, jnp.result_type(x, float))
    losses = lr_losses(x, y, x_query, y_query, grid, steps=steps)
    i = jnp.argmin(losses)
    return grid[i], losses[i]


def minimise_on_grid(losses: Callable, grid, refine: int, points: int) -> tuple[Array, Array]:
    """``(argmin, min)`` of ``losses`` (a 1-D array of values ↦ their losses): the best point of
    ``grid``, then ``refine`` times the best of ``points`` points between the best point's grid
    neighbours. Never worse than the grid's best; non-finite losses never win."""

    def finite(v):
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    values = finite(losses(grid))
    i = jnp.argmin(values)
    lo, hi = grid[jnp.maximum(i - 1, 0)], grid[jnp.minimum(i + 1, grid.shape[0] - 1)]
    best, best_loss = grid[i], values[i]
    for _ in range(refine):
        fine = jnp.linspace(lo, hi, points)
        fine_losses = finite(losses(fine))
        j = jnp.argmin(fine_losses)
        better = fine_losses[j] <= best_loss
        best = jnp.where(better, fine[j], best)
        best_loss = jnp.where(better, fine_losses[j], best_loss)
        lo, hi = fine[jnp.maximum(j - 1, 0)], fine[jnp.minimum(j + 1, points - 1)]
    return best, best_loss


def _check_search(x, y, x_query, y_query, steps, refine, points) -> tuple[int, int, int]:
    """The arguments of a step-size search: the context, and ``(steps, refine, points)``."""
    check_context(x, y, x_query, y_query)
    steps = _check_steps(steps)
    refine = validate.non_negative_int("refine", refine)
    points = validate.positive_int("points", points)
    if points < 3:
        raise ValueError(f"points must be an integer >= 3; got {points}")
    return steps, refine, points


def best_lr(
    x,
    y,
    x_query,
    y_query,
    *,
    steps: int = 1,
    grid=DEFAULT_LR_GRID,
    refine: int = 4,
    points: int = 65,
):
    """The step size that minimises K-step GD's loss on this batch: ``(lr, loss)``.

    ``steps == 1``: the closed form :func:`optimal_lr`. Otherwise: the best point of ``grid``,
    then ``refine`` rounds that each re-grid the bracket between the best point's neighbours with
    ``points`` points (each round shrinks the bracket by ``(points − 1) / 2``).
    """
    steps, refine, points = _check_search(x, y, x_query, y_query, steps, refine, points)
    if steps == 1:
        lr = _optimal_lr(x, y, x_query, y_query)
        pred = jnp.einsum("boi,bi->bo", _weights(x, y, lr, 1), x_query)
        return lr, loss(pred, y_query)
    grid = jnp.asarray(grid, jnp.result_type(x, float))
    return minimise_on_grid(
        lambda lrs: lr_losses(x, y, x_query, y_query, lrs, steps=steps), grid, refine, points
    )
