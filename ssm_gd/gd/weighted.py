"""Preconditioned and sample-weighted GD: what one layer of linear attention and H3 implement.

The neighbours' variants of one step (Li, Rawat, Oymak 2024; docs/design.md §6), with a
preconditioner ``Γ`` ``(d_in, d_in)`` and sample weights ``ω_i = λ^{N−i}``:

    W = (1/N) Σ_i λ^{N−i} y_i x_iᵀ Γ,       ŷ = W x_q,

:func:`preconditioned_predict` (``λ = 1`` unless given) and :func:`weighted_predict` (``Γ = η I``);
``Γ = η I``, ``λ = 1`` is one plain GD step. :func:`optimal_preconditioner` is the best ``Γ`` for
Gaussian inputs ``x ~ N(0, Σ)`` in closed form, :func:`best_preconditioner` the best on a batch
(least squares: the loss is quadratic in ``Γ``), :func:`best_weighted` the best ``(η, λ)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from ssm_gd import scan, validate
from ssm_gd.gd.squared import _check_lr, check_context, loss

__all__ = [
    "DEFAULT_DECAY_GRID",
    "best_preconditioner",
    "best_weighted",
    "optimal_preconditioner",
    "preconditioned_predict",
    "preconditioned_weights",
    "sample_weights",
    "weighted_predict",
]

Array = jax.Array

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
    check_context(x, y)
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
    check_context(x, y, x_query)
    w = preconditioned_weights(x, y, gamma=gamma, decay=decay, minibatch=minibatch)
    return jnp.einsum("boi,bi->bo", w, x_query)


def weighted_predict(x: Array, y: Array, x_query: Array, *, lr, decay) -> Array:
    """One sample-weighted GD step at the query, ``(B, d_out)``:
    ``ŷ = (η/N) Σ_i λ^{N−i} y_i x_iᵀ x_q``.

    The gradient step on the weighted loss ``1/(2N) Σ_i λ^{N−i} ‖W x_i − y_i‖²`` from ``W_0 = 0``;
    ``λ = 1`` is :func:`predict` with one step.
    """
    check_context(x, y, x_query)
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
    check_context(x, y, x_query, y_query)
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
    check_context(x, y, x_query, y_query)
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
