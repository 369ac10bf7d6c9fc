"""Gradient descent on the cross-entropy, and multinomial logistic regression (classification).

For ``K`` classes and one-hot labels ``y_i`` (:func:`ssm_gd.tasks.classification`), the implicit
model ``W`` ``(K, d_in)`` gives logits ``W x`` under the mean context cross-entropy, and
cross-entropy GD from ``W_0 = 0`` is (docs/design.md §11)

    W_{k+1} = W_k − (η/N) Σ_i (softmax(W_k x_i) − y_i) x_iᵀ,        logits = W_K x_q,

(:func:`cross_entropy_weights`, :func:`cross_entropy_predict`); the softmax is uniform at ``W_0``,
so ``W_1 = (η/N) Σ_i (y_i − 1/K) x_iᵀ``, one squared-loss step on the centred labels
(:func:`ssm_gd.tasks.centred`). Its references: :func:`cross_entropy` and :func:`accuracy` (the
metrics), :func:`cross_entropy_lr_losses` and :func:`cross_entropy_best_lr` (the best ``η``; for one
step the loss is convex in ``η``, solved by safeguarded Newton), and multinomial logistic
regression fitted on each context by Newton's method (:func:`logistic_regression`,
:func:`logistic_regression_fit`) at its best ridge penalty (:func:`logistic_best_reg`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from ssm_gd import validate
from ssm_gd.gd.squared import (
    DEFAULT_LR_GRID,
    _check_lr,
    _check_search,
    _check_steps,
    _link_gd,
    _lr_losses,
    _softmax,
    check_context,
    minimise_on_grid,
)

__all__ = [
    "DEFAULT_REG_GRID",
    "accuracy",
    "cross_entropy",
    "cross_entropy_best_lr",
    "cross_entropy_lr_losses",
    "cross_entropy_predict",
    "cross_entropy_weights",
    "logistic_best_reg",
    "logistic_regression",
    "logistic_regression_fit",
]

Array = jax.Array

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
    check_context(x, y)
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
    check_context(x, y, x_query)
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
    steps, refine, points = _check_search(x, y, x_query, y_query, steps, refine, points)
    _check_probabilities("y_query", y_query)
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
    check_context(x, y)
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
    check_context(x, y, x_query)
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
    check_context(x, y, x_query, y_query)
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
