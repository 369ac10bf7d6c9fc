"""Reference predictors: explicit gradient descent, least squares, ridge, and the best step size.

The implicit model is ``ŷ = W x`` with the in-context loss

    L(W) = 1/(2N) Σ_i ||W x_i − y_i||²,       ∇L(W) = (W S_x − S_y) / N,

where ``S_y = Σ_i y_i x_iᵀ`` ``(d_out, d_in)`` and ``S_x = Σ_i x_i x_iᵀ`` ``(d_in, d_in)`` are the two
*accumulators*. K steps of GD from ``W_0 = 0`` with step size ``η``:

    W_{k+1} = W_k − η ∇L(W_k) = W_k (I − (η/N) S_x) + (η/N) S_y,        ŷ = W_K x_q.

Conventions: we predict ``ŷ`` (the published code trains its model to output ``−ŷ``) and divide by
the number of context pairs ``N`` (the published code divides by its state size, equal to ``N`` at
its defaults). Neither changes a figure reported against GD at its best ``η``.

The neighbours' variants of one step (Li, Rawat, Oymak 2024: what one-layer linear attention and
H3 implement), with a preconditioner ``Γ`` ``(d_in, d_in)`` and sample weights ``ω_i = λ^{N−i}``:

    W = (1/N) Σ_i λ^{N−i} y_i x_iᵀ Γ,       ŷ = W x_q,

:func:`preconditioned_predict` (``λ = 1`` unless given) and :func:`weighted_predict` (``Γ = η I``);
``Γ = η I``, ``λ = 1`` is one plain GD step. :func:`optimal_preconditioner` is the best ``Γ`` for
Gaussian inputs ``x ~ N(0, Σ)`` in closed form, :func:`best_preconditioner` the best on a batch
(least squares: the loss is quadratic in ``Γ``), :func:`best_weighted` the best ``(η, λ)``.

Classification (:func:`ssm_gd.tasks.classification`, ``K`` classes, one-hot labels ``y_i``): the
implicit model ``W`` ``(K, d_in)`` gives logits ``W x`` under the mean context cross-entropy, and
cross-entropy GD from ``W_0 = 0`` is

    W_{k+1} = W_k − (η/N) Σ_i (softmax(W_k x_i) − y_i) x_iᵀ,        logits = W_K x_q,

(:func:`cross_entropy_weights`, :func:`cross_entropy_predict`); the softmax is uniform at ``W_0``,
so ``W_1 = (η/N) Σ_i (y_i − 1/K) x_iᵀ``, one squared-loss step on the centred labels
(:func:`ssm_gd.tasks.centred`). Its references: :func:`cross_entropy` and :func:`accuracy` (the
metrics), :func:`cross_entropy_lr_losses` and :func:`cross_entropy_best_lr` (the best ``η``; for one
step the loss is convex in ``η``, solved by safeguarded Newton), and multinomial logistic
regression fitted on each context by Newton's method (:func:`logistic_regression`,
:func:`logistic_regression_fit`) at its best ridge penalty (:func:`logistic_best_reg`).

All functions are pure and batched over a leading task axis ``B``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from ssm_gd import scan, validate

__all__ = [
    "DEFAULT_LR_GRID",
    "DEFAULT_DECAY_GRID",
    "DEFAULT_REG_GRID",
    "accumulators",
    "accuracy",
    "best_lr",
    "minimise_on_grid",
    "best_preconditioner",
    "best_weighted",
    "cross_entropy",
    "cross_entropy_best_lr",
    "cross_entropy_lr_losses",
    "cross_entropy_predict",
    "cross_entropy_weights",
    "grid_search_lr",
    "least_squares",
    "least_squares_prefixes",
    "logistic_best_reg",
    "logistic_regression",
    "logistic_regression_fit",
    "loss",
    "lr_losses",
    "optimal_lr",
    "optimal_preconditioner",
    "preconditioned_predict",
    "preconditioned_weights",
    "predict",
    "predict_prefixes",
    "ridge",
    "sample_weights",
    "weighted_predict",
    "weights",
]

Array = jax.Array

#: The published code's step-size grid: ``arange(0.001, 25, 0.1)``.
DEFAULT_LR_GRID = np.arange(0.001, 25, 0.1)


def _check_steps(steps) -> int:
    return validate.positive_int("steps", steps)


def _shape(name: str, value) -> tuple:
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise validate.ArgumentTypeError(f"{name} must be an array; got {type(value).__name__}")
    return tuple(value.shape)


def _check_context(x, y, x_query=None, y_query=None) -> None:
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
    _check_context(x, y)
    u_y = jnp.einsum("bno,bni->bnoi", y, x)
    u_x = jnp.einsum("bnj,bni->bnji", x, x)
    if prefix:
        return jnp.cumsum(u_y, axis=1), jnp.cumsum(u_x, axis=1)
    return u_y.sum(axis=1), u_x.sum(axis=1)


def weights(x: Array, y: Array, *, lr, steps: int = 1) -> Array:
    """The implicit model ``W_K`` ``(B, d_out, d_in)`` after ``steps`` explicit GD steps from 0.

    Each step evaluates the gradient ``(1/N) Σ_i (W x_i − y_i) x_iᵀ`` from the residuals.
    """
    _check_context(x, y)
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
    _check_context(x, y, x_query)
    _check_lr(lr)
    return jnp.einsum("boi,bi->bo", _weights(x, y, lr, _check_steps(steps)), x_query)


def predict_prefixes(x: Array, y: Array, x_query: Array, *, lr, steps: int = 1) -> Array:
    """K-step GD on every prefix: the prediction for the next input, ``(B, N, d_out)``.

    Entry ``t`` (0-based) runs GD on the first ``t + 1`` pairs and predicts at ``x_{t+2}``; the last
    entry (``t = N − 1``) is :func:`predict`'s query prediction. Every prefix uses the same
    normaliser ``N`` (the full context size), as a time-invariant recurrence does: on a prefix of
    ``t`` pairs this is GD on that prefix's own mean loss with step size ``η t / N``.
    """
    _check_context(x, y, x_query)
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
    _check_context(x, y, x_query)
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
    _check_context(x, y, x_query)
    w = jnp.linalg.pinv(x) @ y  # (B, d_in, d_out)
    return jnp.einsum("bio,bi->bo", w, x_query)


def least_squares_prefixes(x: Array, y: Array, x_query: Array) -> Array:
    """:func:`least_squares` on every prefix, predicting the next input, ``(B, N, d_out)``.

    Entry ``t`` fits the first ``t + 1`` pairs and predicts at ``x_{t+2}`` (the last entry at the
    query), as in :func:`predict_prefixes`. One compiled call: a prefix is the full context with the
    later rows zeroed, which leaves ``X⁺ Y`` unchanged.
    """
    _check_context(x, y, x_query)
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
    _check_context(x, y, x_query, y_query)
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
    _check_context(x, y, x_query, y_query)
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
    _check_context(x, y, x_query, y_query)
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
    _check_context(x, y, x_query, y_query)
    steps = _check_steps(steps)
    refine = validate.non_negative_int("refine", refine)
    points = validate.positive_int("points", points)
    if points < 3:
        raise ValueError(f"points must be an integer >= 3; got {points}")
    if steps == 1:
        lr = _optimal_lr(x, y, x_query, y_query)
        pred = jnp.einsum("boi,bi->bo", _weights(x, y, lr, 1), x_query)
        return lr, loss(pred, y_query)
    grid = jnp.asarray(grid, jnp.result_type(x, float))
    return minimise_on_grid(
        lambda lrs: lr_losses(x, y, x_query, y_query, lrs, steps=steps), grid, refine, points
    )


# --------------------------------------------------- preconditioned and sample-weighted GD

#: The decays :func:`best_weighted` tries first (then refines around the best).
DEFAULT_DECAY_GRID = np.linspace(0.0, 1.0, 101)


def _check_gamma(gamma, d_in: int) -> None:
    if np.shape(gamma) != (d_in, d_in):
        raise ValueError(
            f"gamma must be a (d_in, d_in) = {(d_in, d_in)} matrix; got shape {np.shape(gamma)}"
        )


def _check_decay(decay) -> None:
    validate.finite_number("decay", decay)


def sample_weights(n_context: int, decay, dtype=None, *, minibatch: int = 1) -> Array:
    """``ω_i = λ^{N−i}`` for ``i = 1…N``: ``(N,)``, the last pair weighted 1 (``0⁰ = 1``).

    With ``minibatch=m`` (``N`` a multiple of ``m``) the weight falls once per window of ``m``
    pairs, ``ω_i = λ^{N/m − ⌈i/m⌉}`` (docs/design.md §12). Integer powers
    (:func:`ssm_gd.scan.decay_powers`), so any real ``λ`` and a traced one work.
    """
    n_context = validate.positive_int("n_context", n_context)
    windows = n_context // _check_minibatch(n_context, minibatch)
    _check_decay(decay)
    dtype = jnp.result_type(decay, float) if dtype is None else dtype
    return jnp.repeat(scan.decay_powers(jnp.asarray(decay, dtype), windows), n_context // windows)


def _check_minibatch(n_context: int, minibatch) -> int:
    minibatch = validate.positive_int("minibatch", minibatch)
    if n_context % minibatch:
        raise ValueError(f"n_context={n_context} is not a multiple of minibatch={minibatch}")
    return minibatch


def preconditioned_weights(x: Array, y: Array, *, gamma, decay=1.0, minibatch: int = 1) -> Array:
    """``W = (1/N) Σ_i λ^{N−i} y_i x_iᵀ Γ`` ``(B, d_out, d_in)``: one preconditioned step from 0.

    With ``λ = 1`` this is ``(1/N) S_y Γ``, which is one GD step when ``Γ = η I``. With
    ``minibatch=m`` the weights are per window, ``λ^{N/m − ⌈i/m⌉}`` (:func:`sample_weights`).
    Args: ``x (B, N, d_in)``, ``y (B, N, d_out)``, ``gamma (d_in, d_in)``, a scalar ``decay``.
    """
    _check_context(x, y)
    _check_gamma(gamma, x.shape[-1])
    _check_decay(decay)
    return _preconditioned_weights(x, y, gamma, decay, _check_minibatch(x.shape[1], minibatch))


@functools.partial(jax.jit, static_argnums=4)
def _preconditioned_weights(x, y, gamma, decay, minibatch):
    n = x.shape[1]
    omega = sample_weights(n, decay, jnp.result_type(x, y, decay), minibatch=minibatch)
    s_y = jnp.einsum("n,bno,bni->boi", omega, y, x)
    return s_y @ jnp.asarray(gamma, s_y.dtype) / n


def preconditioned_predict(
    x: Array, y: Array, x_query: Array, *, gamma, decay=1.0, minibatch: int = 1
) -> Array:
    """One preconditioned (and, with ``decay < 1``, sample-weighted) GD step at the query:
    ``ŷ = (1/N) Σ_i λ^{N−i} y_i x_iᵀ Γ x_q`` ``(B, d_out)`` (:func:`preconditioned_weights`)."""
    _check_context(x, y, x_query)
    w = preconditioned_weights(x, y, gamma=gamma, decay=decay, minibatch=minibatch)
    return jnp.einsum("boi,bi->bo", w, x_query)


def weighted_predict(x: Array, y: Array, x_query: Array, *, lr, decay) -> Array:
    """One sample-weighted GD step at the query, ``(B, d_out)``:
    ``ŷ = (η/N) Σ_i λ^{N−i} y_i x_iᵀ x_q``.

    The gradient step on the weighted loss ``1/(2N) Σ_i λ^{N−i} ‖W x_i − y_i‖²`` from ``W_0 = 0``;
    ``λ = 1`` is :func:`predict` with one step.
    """
    _check_context(x, y, x_query)
    _check_lr(lr)
    eye = jnp.eye(x.shape[-1], dtype=jnp.result_type(x, lr))
    return preconditioned_predict(x, y, x_query, gamma=lr * eye, decay=decay)


def optimal_preconditioner(sigma, n_context: int, *, w_scale: float = 1.0, noise_std: float = 0.0):
    """The ``Γ`` that minimises the expected loss of one preconditioned step, for Gaussian tasks.

    Tasks: ``x_i, x_q ~ N(0, Σ)``, ``W* ~ N(0, w²)`` entrywise, ``y = W* x + σ ε``. With
    ``Σ̂ = (1/N) Σ_i x_i x_iᵀ``, the step predicts ``ŷ = W* Σ̂ Γ x_q + (1/N) Σ_i σ ε_i x_iᵀ Γ x_q``,
    and the Gaussian moment ``E[Σ̂ B Σ̂] = ((N+1)/N) Σ B Σ + (tr(BΣ)/N) Σ`` gives, per output,

        E(ŷ − y_q)² / w² = ((N+1)/N) tr(ΓΣΓᵀΣ²) + ((tr Σ + σ²/w²)/N) tr(ΓΣΓᵀΣ) − 2 tr(Σ²Γ) + tr Σ
                           (+ σ²/w²),

    a convex quadratic in ``Γ`` whose stationary point (multiply the gradient by ``Σ^{-1}`` on
    both sides) is

        Γ* = ((N+1)/N · Σ + (tr Σ + σ²/w²)/N · I)^{-1}.

    For ``Σ = s I`` this is ``η* I`` with ``η* = N / (s (N + 1 + d))`` (noise-free): plain GD's
    best step size. Returns a float64 numpy array ``(d, d)``.

    Args:
      sigma: the input covariance ``Σ`` ``(d, d)``, symmetric positive definite
        (:func:`ssm_gd.tasks.input_covariance`).
      n_context: ``N``.
      w_scale, noise_std: ``w`` and ``σ`` above (only their ratio matters).
    """
    sigma = np.asarray(sigma, np.float64)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1] or sigma.shape[0] == 0:
        raise ValueError(f"sigma must be a square (d, d) matrix; got shape {sigma.shape}")
    if not np.all(np.isfinite(sigma)) or not np.allclose(sigma, sigma.T, rtol=1e-10, atol=0):
        raise ValueError("sigma must be a finite symmetric matrix")
    if np.linalg.eigvalsh(sigma).min() <= 0:
        raise ValueError("sigma must be positive definite")
    n_context = validate.positive_int("n_context", n_context)
    w_scale = validate.positive_number("w_scale", w_scale)
    noise_std = validate.non_negative_number("noise_std", noise_std)
    n, d = n_context, sigma.shape[0]
    shift = (np.trace(sigma) + (noise_std / w_scale) ** 2) / n
    return np.linalg.inv((n + 1) / n * sigma + shift * np.eye(d))


def best_preconditioner(x, y, x_query, y_query, *, decay=1.0):
    """The ``Γ`` ``(d_in, d_in)`` that minimises :func:`loss` of :func:`preconditioned_predict` on
    this batch, and that loss: ``(Γ, loss)``.

    ``ŷ_b = Σ_{jk} Γ_jk f_b[:, j, k]`` with features ``f_b[o, j, k] = (1/N) s_b[o, j] x_q,b[k]``
    (``s_b = Σ_i λ^{N−i} y_i x_iᵀ``) is linear in ``Γ``: least squares through the ``d_in² × d_in²``
    normal equations ``Σ_b f_bᵀ f_b vec Γ = Σ_b f_bᵀ y_b``. Needs ``B · d_out ≥ d_in²`` tasks
    (and many more for a Γ near the population optimum, :func:`optimal_preconditioner`).
    """
    _check_context(x, y, x_query, y_query)
    _check_decay(decay)
    b, n, d = x.shape
    if b * y.shape[-1] < d * d:
        raise ValueError(
            f"best_preconditioner fits d_in² = {d * d} numbers: it needs B·d_out >= {d * d} "
            f"tasks' labels; got B={b}, d_out={y.shape[-1]}"
        )
    gamma = _best_preconditioner(x, y, x_query, y_query, decay)
    return gamma, loss(preconditioned_predict(x, y, x_query, gamma=gamma, decay=decay), y_query)


@jax.jit
def _best_preconditioner(x, y, x_query, y_query, decay):
    b, n, d = x.shape
    omega = sample_weights(n, decay, jnp.result_type(x, y, decay))
    s = jnp.einsum("n,bno,bni->boi", omega, y, x) / n  # (B, o, d)
    f = jnp.einsum("boj,bk->bojk", s, x_query).reshape(-1, d * d)  # (B·o, d²) features
    gram, rhs = f.T @ f, f.T @ y_query.reshape(-1)
    return jnp.linalg.solve(gram, rhs).reshape(d, d)


def best_weighted(
    x,
    y,
    x_query,
    y_query,
    *,
    gamma=None,
    decays=DEFAULT_DECAY_GRID,
    refine: int = 4,
    points: int = 65,
    minibatch: int = 1,
):
    """The best sample-weighted step on this batch: ``(lr, decay, loss)``.

    For a fixed ``λ`` the prediction ``ŷ = η g(λ)``, ``g(λ) = Σ_i λ^{N−i} c_i`` with
    ``c_i = (1/N) y_i x_iᵀ Γ x_q`` (``Γ = I`` when ``gamma`` is ``None``), is linear in ``η``: the
    best ``η(λ) = ⟨g, y_q⟩ / ‖g‖²`` and the loss ``(‖y_q‖² − ⟨g, y_q⟩² / ‖g‖²) / (2 B d_out)``
    are closed forms in the Gram matrix ``G_ij = Σ_b ⟨c_bi, c_bj⟩`` and ``h_i = Σ_b ⟨c_bi, y_b⟩``
    (``N × N``, computed once). The best ``λ`` on ``decays`` (default ``0, 0.01, …, 1``: ``λ = 1``
    is plain GD, so the result never does worse) is refined ``refine`` times on ``points``
    points between its grid neighbours. The returned loss is evaluated directly at ``(η, λ)``.
    With ``gamma`` the step is ``η·Γ``-preconditioned and sample-weighted (H3's construction).
    With ``minibatch=m`` the weights fall per window of ``m`` pairs, ``λ^{N/m − ⌈i/m⌉}``: the same
    search on the windows' summed ``c``.
    """
    _check_context(x, y, x_query, y_query)
    minibatch = _check_minibatch(x.shape[1], minibatch)
    d = x.shape[-1]
    if gamma is None:
        gamma = jnp.eye(d, dtype=jnp.result_type(x, float))
    _check_gamma(gamma, d)
    decays = jnp.asarray(decays, jnp.result_type(x, float))
    if decays.ndim != 1 or decays.shape[0] < 2:
        raise ValueError(
            f"decays must be a 1-D grid of at least 2 values; got shape {decays.shape}"
        )
    refine = validate.non_negative_int("refine", refine)
    if validate.positive_int("points", points) < 3:
        raise ValueError(f"points must be an integer >= 3; got {points!r}")
    gram, h, yy = _weighted_moments(x, y, x_query, y_query, gamma, minibatch)
    lr, decay = _weighted_search(decays, gram, h, yy, y_query.size, int(refine), int(points))
    pred = preconditioned_predict(x, y, x_query, gamma=lr * gamma, decay=decay, minibatch=minibatch)
    return lr, decay, loss(pred, y_query)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _weighted_search(decays, gram, h, yy, count, refine, points):
    """The grid search of :func:`best_weighted` on the moments, in one compiled program."""
    n = gram.shape[0]

    def losses(grid):
        w = jax.vmap(lambda lam: sample_weights(n, lam, grid.dtype))(grid)  # (M, N)
        a = jnp.einsum("mi,ij,mj->m", w, gram, w)
        c = w @ h
        return c / a, 0.5 * (yy - c * c / a) / count

    lrs, values = losses(decays)
    i = jnp.argmin(values)
    best, best_value, best_lr = decays[i], values[i], lrs[i]
    lo, hi = decays[jnp.maximum(i - 1, 0)], decays[jnp.minimum(i + 1, decays.shape[0] - 1)]
    for _ in range(refine):
        fine = jnp.linspace(lo, hi, points)
        fine_lrs, fine_values = losses(fine)
        j = jnp.argmin(fine_values)
        better = fine_values[j] <= best_value
        best = jnp.where(better, fine[j], best)
        best_lr = jnp.where(better, fine_lrs[j], best_lr)
        best_value = jnp.where(better, fine_values[j], best_value)
        lo, hi = fine[jnp.maximum(j - 1, 0)], fine[jnp.minimum(j + 1, points - 1)]
    return best_lr, best


@functools.partial(jax.jit, static_argnums=5)
def _weighted_moments(x, y, x_query, y_query, gamma, minibatch):
    b, n, o = y.shape
    scores = jnp.einsum("bni,ij,bj->bn", x, jnp.asarray(gamma, x.dtype), x_query)
    c = y * scores[..., None] / n  # (B, N, o)
    c = c.reshape(b, n // minibatch, minibatch, o).sum(axis=2)  # one term per window
    gram = jnp.einsum("bio,bjo->ij", c, c)
    return gram, jnp.einsum("bio,bo->i", c, y_query), jnp.sum(y_query * y_query)


# ------------------------------------------------------------- Cross-entropy (classification)

#: The ridge penalties :func:`logistic_best_reg` tries: ``10^-4 … 10`` (11 points, log-spaced).
DEFAULT_REG_GRID = np.logspace(-4, 1, 11)


def _check_probabilities(name: str, value) -> None:
    """Labels that are class probabilities (one-hot or any distribution): no negative entry.

    The cross-entropy is convex in the logits only for such labels (``y_k ≥ 0``); a traced array
    passes unchecked.
    """
    if not validate.is_traced(value) and np.any(np.asarray(value) < 0):
        raise ValueError(
            f"{name} must hold class probabilities (one-hot or a distribution, no negative entry); "
            f"got a minimum of {float(np.min(np.asarray(value))):.3g} (centred labels?)"
        )


def _check_grid(name: str, grid, x, *, positive: bool = False):
    """A non-empty 1-D grid of finite numbers (positive ones if asked), in ``x``'s float type."""
    values = np.asarray(grid)
    if values.ndim != 1 or values.shape[0] == 0 or values.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must be a non-empty 1-D array of numbers; got shape {values.shape} "
            f"({values.dtype})"
        )
    bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
    if np.any(bad):
        what = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must hold {what} numbers; got {float(values[bad][0])!r}")
    return jnp.asarray(values, jnp.result_type(x, float))


@jax.jit
def _cross_entropy(logits, y):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # y_k log p_k with 0 · log 0 = 0 (a class of logit −inf that the label never names).
    return -jnp.mean(jnp.sum(jnp.where(y != 0, y * log_p, 0), axis=-1))


def cross_entropy(logits: Array, y: Array) -> Array:
    """The mean cross-entropy ``mean(−Σ_k y_k log softmax(logits)_k)``, a scalar.

    The classes are the last axis, the mean runs over every other axis (``(B, K)`` query logits,
    or ``(B, N, K)`` context logits). ``y`` is one-hot or any class distribution, of the shape of
    ``logits`` (no broadcasting). Guessing uniformly costs ``log K``.
    """
    validate.same_shape("logits", logits, "y", y)
    if len(np.shape(logits)) == 0 or 0 in np.shape(logits):
        raise ValueError(f"logits must have a non-empty class axis; got shape {np.shape(logits)}")
    return _cross_entropy(logits, y)


def accuracy(logits: Array, y: Array) -> Array:
    """The fraction of rows whose largest logit is the label's class: ``mean(argmax ŷ == argmax y)``.

    Shapes as in :func:`cross_entropy` (classes on the last axis).
    """
    validate.same_shape("logits", logits, "y", y)
    if len(np.shape(logits)) == 0 or 0 in np.shape(logits):
        raise ValueError(f"logits must have a non-empty class axis; got shape {np.shape(logits)}")
    hits = jnp.argmax(logits, axis=-1) == jnp.argmax(y, axis=-1)
    return jnp.mean(hits, dtype=jnp.result_type(logits, float))


def cross_entropy_weights(x: Array, y: Array, *, lr, steps: int = 1) -> Array:
    """The implicit classifier ``W_K`` ``(B, K, d_in)`` after ``steps`` cross-entropy GD steps from 0.

    ``W_{k+1} = W_k − (η/N) Σ_i (softmax(W_k x_i) − y_i) x_iᵀ``, the gradient of the mean context
    cross-entropy ``(1/N) Σ_i CE(W x_i, y_i)``. One step is ``W_1 = (η/N) Σ_i (y_i − 1/K) x_iᵀ``.
    Args: ``x (B, N, d_in)``, labels ``y (B, N, K)`` (one-hot), a scalar step size ``lr``.
    """
    _check_context(x, y)
    _check_lr(lr)
    return _ce_weights(x, y, lr, _check_steps(steps))


def _ce_weights(x, y, lr, steps):
    return _link_gd(x, y, lr, steps, _softmax)


def cross_entropy_predict(x: Array, y: Array, x_query: Array, *, lr, steps: int = 1) -> Array:
    """K-step cross-entropy GD's logits at the query, ``W_K x_q``: ``(B, K)``.

    :func:`cross_entropy_weights` applied to ``x_query (B, d_in)``. One step's logits differ from
    squared-loss GD's (:func:`predict` on the same one-hot ``y``) by ``(η/(N K)) Σ_i x_iᵀ x_q`` in
    every class, so both give the same softmax.
    """
    _check_context(x, y, x_query)
    _check_lr(lr)
    return jnp.einsum("bki,bi->bk", _ce_weights(x, y, lr, _check_steps(steps)), x_query)


def cross_entropy_lr_losses(x, y, x_query, y_query, lrs, *, steps: int = 1) -> Array:
    """:func:`cross_entropy` of K-step cross-entropy GD's query logits for each step size in
    ``lrs`` ``(M,)``; a non-finite loss is reported as ``inf``."""
    return _lr_losses(x, y, x_query, y_query, lrs, steps, _softmax, _cross_entropy)


def cross_entropy_best_lr(
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
    """The step size that minimises K-step cross-entropy GD's query loss on this batch:
    ``(lr, loss)`` (0-d arrays), ``loss`` the mean :func:`cross_entropy` of
    :func:`cross_entropy_predict` at ``lr``.

    ``steps == 1``: the logits are ``η a_b`` with ``a_b = W_1(η=1) x_q`` fixed, so the loss
    ``f(η) = mean_b [s_b logsumexp(η a_b) − η ⟨y_b, a_b⟩]`` (``s_b = Σ_k y_b,k``) is convex in
    ``η``: ``f'' = mean_b s_b Var_{softmax(η a_b)}(a_b) ≥ 0``. Starting from the best point of
    ``grid``, a bracket of ``f'`` between its neighbours (widened by doubling when the minimiser
    lies beyond the grid) is shrunk by safeguarded Newton steps on ``f'`` (a bisection whenever a
    Newton step leaves the bracket) until the step is below float rounding: the minimiser over all
    real ``η``, to float tolerance. (If every query's label is already the largest entry of its
    ``a_b``, ``f`` decreases toward 0 forever: the search stops where ``f'`` rounds to 0, or at
    the end of a bracket grown 64 doublings, with ``f`` at its infimum to rounding.) ``refine``
    and ``points`` are unused.

    ``steps > 1``: as :func:`best_lr`, the best point of ``grid``, then ``refine`` rounds that
    each re-grid the bracket between the best point's neighbours with ``points`` points.

    Labels are one-hot or class distributions (no negative entry).
    """
    _check_context(x, y, x_query, y_query)
    _check_probabilities("y_query", y_query)
    steps = _check_steps(steps)
    refine = validate.non_negative_int("refine", refine)
    points = validate.positive_int("points", points)
    if points < 3:
        raise ValueError(f"points must be an integer >= 3; got {points}")
    grid = _check_grid("grid", grid, x)
    if steps == 1:
        one = jnp.asarray(1.0, grid.dtype)  # an array, as the η below: one compiled program
        a = jnp.einsum("bki,bi->bk", _ce_weights(x, y, one, 1), x_query)
        lr = _ce_one_step_lr(a, y_query, grid)
        logits = jnp.einsum("bki,bi->bk", _ce_weights(x, y, lr, 1), x_query)
        return lr, _cross_entropy(logits, y_query)
    return minimise_on_grid(
        lambda lrs: cross_entropy_lr_losses(x, y, x_query, y_query, lrs, steps=steps),
        grid,
        refine,
        points,
    )


@jax.jit
def _ce_one_step_lr(a, y_query, grid):
    """The ``η`` minimising ``f(η) = mean_b [s_b logsumexp(η a_b) − η ⟨y_b, a_b⟩]`` (convex)."""
    a = a.astype(grid.dtype)
    y_query = y_query.astype(grid.dtype)
    s = jnp.sum(y_query, axis=-1)
    c = jnp.sum(y_query * a, axis=-1)
    eps = jnp.finfo(grid.dtype).eps

    def value(eta):
        return jnp.mean(s * jax.nn.logsumexp(eta * a, axis=-1) - eta * c)

    def slope(eta):
        """``f'(η)`` and ``f''(η)``: the softmax mean of ``a`` against the label's, its variance."""
        p = jax.nn.softmax(eta * a, axis=-1)
        m = jnp.sum(p * a, axis=-1)
        var = jnp.sum(p * jnp.square(a - m[:, None]), axis=-1)
        return jnp.mean(s * m - c), jnp.mean(s * var)

    losses = jax.vmap(value)(grid)
    i = jnp.argmin(jnp.where(jnp.isfinite(losses), losses, jnp.inf))
    last = grid.shape[0] - 1
    lo, hi = grid[jnp.maximum(i - 1, 0)], grid[jnp.minimum(i + 1, last)]
    width = jnp.maximum(hi - lo, 1e-3 * jnp.maximum(jnp.max(jnp.abs(grid)), 1.0))

    # f' is non-decreasing: move the bracket down while f'(lo) > 0, up while f'(hi) < 0.
    lo, hi, width, _ = jax.lax.while_loop(
        lambda st: (slope(st[0])[0] > 0) & (st[3] < 64),
        lambda st: (st[0] - st[2], st[0], 2 * st[2], st[3] + 1),
        (lo, hi, width, 0),
    )
    lo, hi, width, _ = jax.lax.while_loop(
        lambda st: (slope(st[1])[0] < 0) & (st[3] < 64),
        lambda st: (st[1], st[1] + st[2], 2 * st[2], st[3] + 1),
        (lo, hi, width, 0),
    )
    start = jnp.where((grid[i] >= lo) & (grid[i] <= hi), grid[i], 0.5 * (lo + hi))

    def newton(st):
        lo, hi, eta, n, _ = st
        g, h = slope(eta)
        lo = jnp.where(g <= 0, eta, lo)
        hi = jnp.where(g >= 0, eta, hi)
        step = eta - g / h
        inside = jnp.isfinite(step) & (step > lo) & (step < hi)
        new = jnp.where(inside, step, 0.5 * (lo + hi))
        tol = 4 * eps * jnp.maximum(jnp.abs(eta), jnp.abs(new))
        done = (g == 0) | (jnp.abs(new - eta) <= tol) | (hi - lo <= tol)
        return lo, hi, new, n + 1, done

    _, _, eta, _, _ = jax.lax.while_loop(
        lambda st: ~st[4] & (st[3] < 200), newton, (lo, hi, start, 0, jnp.bool_(False))
    )
    return eta


# ------------------------------------------------------------ multinomial logistic regression


def _logistic_args(x, y, reg, tol, max_iter):
    """The checked ``reg``, ``tol`` (``None``: ``max(1e-10, 100 ε)`` of the float type) and
    ``max_iter`` of the logistic fit."""
    _check_probabilities("y", y)
    reg = validate.finite_number("reg", reg)
    if not validate.is_traced(reg) and not reg > 0:
        raise ValueError(
            "reg must be a positive finite number (noiseless labels are linearly separable: "
            f"without a penalty the fit has no minimiser); got {reg!r}"
        )
    if tol is None:
        tol = max(1e-10, 100 * float(jnp.finfo(jnp.result_type(x, y, float)).eps))
    tol = validate.positive_number("tol", tol)
    max_iter = validate.positive_int("max_iter", max_iter)
    return reg, tol, max_iter


def _run_logistic_fit(x, y, reg, tol, max_iter):
    """:func:`_logistic_fit` with the scalars as arrays of fixed types: one compiled program
    for every ``reg`` and ``tol``, Python or numpy numbers alike."""
    dtype = jnp.result_type(x, y, float)
    return _logistic_fit(
        x, y, jnp.asarray(reg, dtype), jnp.asarray(tol, dtype), jnp.asarray(max_iter, jnp.int32)
    )


def logistic_regression_fit(x: Array, y: Array, *, reg, tol=None, max_iter: int = 50):
    """Multinomial logistic regression on each task's context, by Newton's method:
    ``(W, grad_norm, iterations)``.

    ``W`` ``(B, K, d_in)`` minimises ``f(W) = (1/N) Σ_i CE(W x_i, y_i) + (reg/2) ‖W‖²_F``, strictly
    convex for ``reg > 0`` (needed: noiseless labels are separable, and the softmax does not see a
    vector added to every class's row). From ``W = 0``, each iteration solves the ``(K·d_in)²``
    (symmetric positive definite, by Cholesky) Newton system ``∇²f Δ = −∇f`` per task (the Hessian is
    ``(1/N) Σ_i (diag p_i − p_i p_iᵀ) ⊗ x_i x_iᵀ + reg·I``) and takes the longest step
    ``t ∈ {1, 1/2, 1/4, …}`` that decreases ``f`` enough (Armijo, up to float rounding of ``f``:
    near the minimum the full step, so Newton's quadratic convergence).
    A task stops once its relative gradient norm ``‖∇f(W)‖_F / s``, ``s = (1/N) Σ_i ‖x_i‖`` (the
    size of the data term's gradient), is ``<= tol``; the loop stops when every task has, or after
    ``max_iter`` iterations.

    Returns ``W``, that relative gradient norm ``(B,)`` at ``W``, and each task's number of Newton
    iterations ``(B,)``: a task whose ``grad_norm > tol`` did not converge (see
    :func:`logistic_regression`, which refuses to return such an answer).

    Args:
      x: ``(B, N, d_in)``; y: ``(B, N, K)`` one-hot labels (or class distributions).
      reg: the ridge penalty, a positive finite number.
      tol: the relative gradient tolerance; ``None`` is ``max(1e-10, 100 ε)`` with ``ε`` the
        machine epsilon of the inputs' float type (``1e-10`` in float64, ``1.2e-5`` in float32,
        where ``1e-10`` is out of reach of rounding).
      max_iter: the most Newton iterations.
    """
    _check_context(x, y)
    reg, tol, max_iter = _logistic_args(x, y, reg, tol, max_iter)
    return _run_logistic_fit(x, y, reg, tol, max_iter)


@jax.jit
def _logistic_fit(x, y, reg, tol, max_iter):
    b, n, d = x.shape
    k = y.shape[-1]
    dtype = jnp.result_type(x, y, float)
    x, y = x.astype(dtype), y.astype(dtype)
    reg = jnp.asarray(reg, dtype)
    s = jnp.sum(y, axis=-1)  # (B, N): 1 for one-hot labels
    scale = jnp.mean(jnp.linalg.norm(x, axis=-1), axis=-1)
    scale = jnp.where(scale > 0, scale, 1.0)
    eps = jnp.finfo(dtype).eps
    ts = 0.5 ** jnp.arange(40, dtype=dtype)  # the step lengths the line search tries

    def objective(w):  # (..., B, K, d) -> (..., B), and the size of its terms (rounding)
        z = jnp.einsum("...bki,bni->...bnk", w, x)
        lse, fit = s * jax.nn.logsumexp(z, axis=-1), jnp.sum(y * z, axis=-1)
        penalty = 0.5 * reg * jnp.sum(jnp.square(w), axis=(-2, -1))
        size = jnp.mean(jnp.abs(lse) + jnp.abs(fit), axis=-1) + penalty
        return jnp.mean(lse - fit, axis=-1) + penalty, size

    def probabilities(w):
        return jax.nn.softmax(jnp.einsum("bki,bni->bnk", w, x), axis=-1)

    def gradient(w):
        p = probabilities(w)
        return jnp.einsum("bnk,bni->bki", s[..., None] * p - y, x) / n + reg * w

    def hessian(w):
        p = probabilities(w)
        cov = jnp.einsum("bnk,kl->bnkl", p, jnp.eye(k, dtype=dtype)) - jnp.einsum(
            "bnk,bnl->bnkl", p, p
        )
        h = jnp.einsum("bn,bnkl,bni,bnj->bkilj", s, cov, x, x) / n
        return h.reshape(b, k * d, k * d) + reg * jnp.eye(k * d, dtype=dtype)

    def relative_norm(g):
        return jnp.sqrt(jnp.sum(jnp.square(g), axis=(-2, -1))) / scale

    def body(state):
        w, g, it, iters = state
        active = relative_norm(g) > tol
        chol = jnp.linalg.cholesky(hessian(w))  # symmetric positive definite (reg > 0)
        delta = -jax.scipy.linalg.cho_solve((chol, True), g.reshape(b, k * d, 1)).reshape(b, k, d)
        f0, size = objective(w)
        decrease = jnp.sum(g * delta, axis=(-2, -1))  # < 0: a descent direction
        trial, _ = objective(w[None] + ts[:, None, None, None] * delta[None])  # (T, B)
        # Armijo, up to the rounding of f (its terms cancel: that of their size): near the
        # minimum the decrease of a full step is below rounding, and the full step is taken.
        enough = trial <= f0 + 1e-4 * ts[:, None] * decrease + 64 * eps * size
        t = jnp.where(active & jnp.any(enough, axis=0), ts[jnp.argmax(enough, axis=0)], 0.0)
        w = jnp.where((t > 0)[:, None, None], w + t[:, None, None] * delta, w)  # NaN-safe
        return w, gradient(w), it + 1, iters + active.astype(iters.dtype)

    def cond(state):
        _, g, it, _ = state
        return (it < max_iter) & jnp.any(relative_norm(g) > tol)

    w0 = jnp.zeros((b, k, d), dtype)
    state = (w0, gradient(w0), jnp.asarray(0, jnp.int32), jnp.zeros((b,), jnp.int32))
    w, g, _, iters = jax.lax.while_loop(cond, body, state)
    return w, relative_norm(g), iters


def logistic_regression(
    x: Array, y: Array, x_query: Array, *, reg, tol=None, max_iter: int = 50
) -> Array:
    """The query logits ``W x_q`` ``(B, K)`` of :func:`logistic_regression_fit` on each context.

    Never a silently unconverged answer: if some task's relative gradient norm is still above
    ``tol`` after ``max_iter`` Newton iterations, this raises ``RuntimeError`` (concrete inputs)
    or returns NaN logits for those tasks (inside a caller's ``jax.jit``, where it cannot raise).
    """
    _check_context(x, y, x_query)
    reg, tol, max_iter = _logistic_args(x, y, reg, tol, max_iter)
    w, grad_norm, _ = _run_logistic_fit(x, y, reg, tol, max_iter)
    converged = grad_norm <= tol
    if not validate.is_traced(converged) and not bool(jnp.all(converged)):
        worst = float(jnp.max(grad_norm))
        raise RuntimeError(
            f"logistic_regression did not converge: {int(jnp.sum(~converged))} of "
            f"{converged.shape[0]} tasks still have a relative gradient norm above tol={tol:g} "
            f"(largest {worst:.3g}) after max_iter={max_iter} Newton iterations; raise max_iter "
            f"or reg"
        )
    logits = jnp.einsum("bki,bi->bk", w, x_query)
    return jnp.where(converged[:, None], logits, jnp.nan)


def logistic_best_reg(
    x, y, x_query, y_query, *, grid=DEFAULT_REG_GRID, tol=None, max_iter: int = 50
):
    """The penalty of ``grid`` whose :func:`logistic_regression` has the lowest mean query
    :func:`cross_entropy` on this batch: ``(reg, loss)`` (0-d arrays), a tuned reference.

    One fit per grid point (one compiled program for them all); each must converge (see
    :func:`logistic_regression`). Ties go to the first grid point.
    """
    _check_context(x, y, x_query, y_query)
    _check_probabilities("y_query", y_query)
    grid = _check_grid("grid", grid, x, positive=True)
    _, tol, max_iter = _logistic_args(x, y, 1.0, tol, max_iter)
    losses = [
        _cross_entropy(
            logistic_regression(x, y, x_query, reg=r, tol=tol, max_iter=max_iter), y_query
        )
        for r in np.asarray(grid).tolist()
    ]
    i = int(np.argmin(np.asarray(losses)))
    return grid[i], losses[i]
