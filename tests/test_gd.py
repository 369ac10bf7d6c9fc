"""The GD references against plain numpy loops written here, and the step-size searches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_gd import gd, tasks


def _task(seed=0, batch=6, n=8, d_in=5, d_out=3, **kw):
    return tasks.linear_regression(
        jax.random.key(seed), batch=batch, n_context=n, d_in=d_in, d_out=d_out, **kw
    )


def numpy_gd(x, y, xq, lr, steps, n_norm=None):
    """K steps of GD on 1/(2 n_norm) Σ ||W x_i − y_i||², one task at a time, in plain numpy."""
    x, y, xq = (np.asarray(v, np.float64) for v in (x, y, xq))
    n_norm = x.shape[1] if n_norm is None else n_norm
    out = []
    for xb, yb, qb in zip(x, y, xq, strict=True):
        w = np.zeros((yb.shape[1], xb.shape[1]))
        for _ in range(steps):
            grad = np.zeros_like(w)
            for xi, yi in zip(xb, yb, strict=True):
                grad += np.outer(w @ xi - yi, xi)
            w = w - lr * grad / n_norm
        out.append(w @ qb)
    return np.stack(out)


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize(("d_in", "d_out"), [(5, 1), (5, 3), (2, 4)])
def test_predict_matches_numpy_loop(steps, d_in, d_out):
    t = _task(d_in=d_in, d_out=d_out)
    got = gd.predict(t.x, t.y, t.x_query, lr=0.7, steps=steps)
    np.testing.assert_allclose(
        got, numpy_gd(t.x, t.y, t.x_query, 0.7, steps), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("steps", [1, 3])
def test_predict_prefixes_is_gd_on_each_prefix(steps):
    t = _task(n=7)
    got = gd.predict_prefixes(t.x, t.y, t.x_query, lr=0.9, steps=steps)
    assert got.shape == (6, 7, 3)
    queries = np.concatenate([t.x[:, 1:], t.x_query[:, None]], axis=1)
    for p in range(1, 8):  # p pairs, normaliser N = 7 on every prefix
        ref = numpy_gd(t.x[:, :p], t.y[:, :p], queries[:, p - 1], 0.9, steps, n_norm=7)
        np.testing.assert_allclose(got[:, p - 1], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        got[:, -1], gd.predict(t.x, t.y, t.x_query, lr=0.9, steps=steps), rtol=1e-12
    )


def test_accumulators():
    t = _task()
    s_y, s_x = gd.accumulators(t.x, t.y)
    np.testing.assert_allclose(s_y, np.einsum("bno,bni->boi", t.y, t.x), rtol=1e-13)
    np.testing.assert_allclose(s_x, np.einsum("bnj,bni->bji", t.x, t.x), rtol=1e-13)
    p_y, p_x = gd.accumulators(t.x, t.y, prefix=True)
    np.testing.assert_allclose(p_y[:, -1], s_y, rtol=1e-13)
    np.testing.assert_allclose(p_x[:, 2], np.einsum("bnj,bni->bji", t.x[:, :3], t.x[:, :3]))


def test_many_small_steps_converge_to_least_squares():
    # N > d, no noise: GD on the convex loss converges to the unique minimiser W*.
    t = _task(n=40, d_in=3, d_out=2)
    got = gd.predict(t.x, t.y, t.x_query, lr=6.0, steps=2000)
    np.testing.assert_allclose(got, gd.least_squares(t.x, t.y, t.x_query), atol=1e-8)


def test_least_squares_and_ridge():
    t = _task(n=12, d_in=4, d_out=2)
    # Noise-free, N ≥ d: least squares recovers the task exactly.
    np.testing.assert_allclose(gd.least_squares(t.x, t.y, t.x_query), t.y_query, atol=1e-12)
    # Ridge against a direct numpy solve of (XᵀX + λI) w = Xᵀy.
    lam = 0.3
    ref = [
        q @ np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ y)
        for x, y, q in zip(np.asarray(t.x), np.asarray(t.y), np.asarray(t.x_query), strict=True)
    ]
    np.testing.assert_allclose(gd.ridge(t.x, t.y, t.x_query, reg=lam), np.stack(ref), rtol=1e-11)
    # Under-determined (N < d): least squares is the minimum-norm interpolant.
    u = _task(n=2, d_in=6, d_out=1)
    w = np.linalg.pinv(np.asarray(u.x)) @ np.asarray(u.y)
    np.testing.assert_allclose(
        gd.least_squares(u.x, u.y, u.x_query), np.einsum("bio,bi->bo", w, u.x_query), atol=1e-12
    )
    with pytest.raises(ValueError, match="reg"):
        gd.ridge(t.x, t.y, t.x_query, reg=0.0)


def test_least_squares_prefixes_is_least_squares_on_each_prefix():
    # N = 7 > d = 4: prefixes below, at and above the input dimension (under- and over-determined).
    t = _task(n=7, d_in=4, d_out=2, noise_std=0.1)
    got = gd.least_squares_prefixes(t.x, t.y, t.x_query)
    x, y = np.asarray(t.x), np.asarray(t.y)
    nxt = np.concatenate([x[:, 1:], np.asarray(t.x_query)[:, None]], axis=1)
    for i in range(7):
        w = np.linalg.pinv(x[:, : i + 1]) @ y[:, : i + 1]
        np.testing.assert_allclose(got[:, i], np.einsum("bio,bi->bo", w, nxt[:, i]), atol=1e-11)


def test_optimal_lr_is_argmin_of_fine_grid():
    t = _task(batch=512, n=10, d_in=10, d_out=1)
    eta = float(gd.optimal_lr(t.x, t.y, t.x_query, t.y_query))
    grid = np.linspace(0.5 * eta, 1.5 * eta, 20001)
    losses = gd.lr_losses(t.x, t.y, t.x_query, t.y_query, grid, steps=1)
    spacing = grid[1] - grid[0]
    assert abs(grid[int(np.argmin(losses))] - eta) <= spacing
    at_eta = gd.loss(gd.predict(t.x, t.y, t.x_query, lr=eta), t.y_query)
    assert at_eta <= float(np.min(losses)) + 1e-15


@pytest.mark.parametrize("steps", [2, 3])
def test_best_lr_matches_dense_grid(steps):
    t = _task(batch=512, n=10, d_in=10, d_out=1, seed=steps)
    lr, best = gd.best_lr(t.x, t.y, t.x_query, t.y_query, steps=steps)
    # A global grid finds the basin, a fine grid around its best point the minimiser.
    coarse = np.linspace(0.001, 25, 2500)
    losses = np.asarray(gd.lr_losses(t.x, t.y, t.x_query, t.y_query, coarse, steps=steps))
    centre = coarse[np.argmin(losses)]
    fine = np.linspace(centre - 0.02, centre + 0.02, 4001)  # spacing 1e-5
    losses = np.asarray(gd.lr_losses(t.x, t.y, t.x_query, t.y_query, fine, steps=steps))
    assert abs(float(lr) - fine[np.argmin(losses)]) <= 2e-5
    assert float(best) <= losses.min() + 1e-12
    np.testing.assert_allclose(
        best, gd.loss(gd.predict(t.x, t.y, t.x_query, lr=lr, steps=steps), t.y_query), rtol=1e-12
    )
    # The published grid alone is coarser: refining never does worse.
    _, grid_loss = gd.grid_search_lr(t.x, t.y, t.x_query, t.y_query, steps=steps)
    assert float(best) <= float(grid_loss)


def test_best_lr_one_step_is_closed_form():
    t = _task(batch=256, n=10, d_in=10, d_out=1)
    lr, _ = gd.best_lr(t.x, t.y, t.x_query, t.y_query, steps=1)
    np.testing.assert_allclose(lr, gd.optimal_lr(t.x, t.y, t.x_query, t.y_query), rtol=1e-15)


def test_diverging_step_sizes_are_inf_not_nan():
    t = _task(n=10, d_in=10, d_out=1)
    losses = gd.lr_losses(t.x, t.y, t.x_query, t.y_query, jnp.array([1.0, 1e30]), steps=40)
    assert np.isfinite(losses[0]) and losses[1] == np.inf


def test_loss_of_zero_predictor_at_default_setting():
    # E||y||²/(2 d_out) with y = W x, W ~ N(0,1), x ~ U(-1/2, 1/2)^10: d_in · (1/12) / 2 = 10/24.
    t = tasks.linear_regression(jax.random.key(9), batch=50_000, n_context=1, d_in=10, d_out=10)
    value = float(gd.loss(jnp.zeros_like(t.y_query), t.y_query))
    # y_j² has mean 10/12 and std ≈ 1.2 per entry; 5e5 entries: standard error ≈ 0.0017/2.
    assert abs(value - 10 / 24) < 5 * 0.0009


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: gd.predict(t.x, t.y, t.x_query, lr=1.0, steps=0), "steps"),
        (lambda t: gd.predict(t.x, t.y, t.x_query, lr=1.0, steps=1.5), "steps"),
        (lambda t: gd.predict(t.x[0], t.y, t.x_query, lr=1.0), r"\(B, N, d_in\)"),
        (lambda t: gd.predict(t.x, t.y[:, :-1], t.x_query, lr=1.0), "same B, N"),
        (lambda t: gd.predict(t.x, t.y, t.x_query[:, :-1], lr=1.0), "x_query"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(_task())


# ------------------------------------------------------- preconditioned and sample-weighted GD


def numpy_weighted(x, y, xq, gamma, decay):
    """``(1/N) Σ_i λ^{N−i} y_i x_iᵀ Γ x_q`` one task at a time, in plain numpy."""
    x, y, xq = (np.asarray(v, np.float64) for v in (x, y, xq))
    n = x.shape[1]
    out = []
    for xb, yb, qb in zip(x, y, xq, strict=True):
        w = sum(decay ** (n - 1 - i) * np.outer(yb[i], xb[i]) for i in range(n))
        out.append(w @ gamma @ qb / n)
    return np.stack(out)


@pytest.mark.parametrize("decay", [1.0, 0.8, 0.0, -0.6])
@pytest.mark.parametrize(("d_in", "d_out"), [(5, 1), (2, 4)])
def test_preconditioned_and_weighted_predict_match_numpy(decay, d_in, d_out):
    t = _task(d_in=d_in, d_out=d_out)
    g = np.random.default_rng(1).standard_normal((d_in, d_in))
    got = gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=g, decay=decay)
    # N = 8 terms of d-term dots: rounding ~(N + 2d) ε of the terms, far below 1e-13.
    np.testing.assert_allclose(
        got, numpy_weighted(t.x, t.y, t.x_query, g, decay), rtol=1e-12, atol=1e-14
    )
    got = gd.weighted_predict(t.x, t.y, t.x_query, lr=0.9, decay=decay)
    ref = numpy_weighted(t.x, t.y, t.x_query, 0.9 * np.eye(d_in), decay)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    w = gd.preconditioned_weights(t.x, t.y, gamma=g, decay=decay)
    np.testing.assert_allclose(
        np.einsum("boi,bi->bo", w, t.x_query), numpy_weighted(t.x, t.y, t.x_query, g, decay),
        rtol=1e-12, atol=1e-14,
    )  # fmt: skip


def test_one_unweighted_step_with_gamma_eta_identity_is_plain_gd():
    t = _task()
    plain = gd.predict(t.x, t.y, t.x_query, lr=1.7)
    np.testing.assert_allclose(
        gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=1.7 * np.eye(5)), plain, rtol=1e-14
    )
    np.testing.assert_allclose(
        gd.weighted_predict(t.x, t.y, t.x_query, lr=1.7, decay=1.0), plain, rtol=1e-14
    )


def test_sample_weights():
    np.testing.assert_allclose(gd.sample_weights(4, 0.5), [0.125, 0.25, 0.5, 1.0], rtol=0)
    np.testing.assert_array_equal(gd.sample_weights(3, 0.0), [0.0, 0.0, 1.0])  # 0⁰ = 1
    np.testing.assert_array_equal(gd.sample_weights(3, -2.0), [4.0, -2.0, 1.0])
    np.testing.assert_array_equal(gd.sample_weights(1, 0.3), [1.0])


def _expected_loss(gamma, sigma, n):
    """E(ŷ − y_q)² per output of one preconditioned step, Gaussian x, W ~ N(0, 1), no noise:
    ((N+1)/N) tr(ΓΣΓᵀΣ²) + (tr Σ/N) tr(ΓΣΓᵀΣ) − 2 tr(Σ²Γ) + tr Σ (gd.optimal_preconditioner)."""
    b = gamma @ sigma @ gamma.T
    return (
        (n + 1) / n * jnp.trace(b @ sigma @ sigma)
        + jnp.trace(sigma) / n * jnp.trace(b @ sigma)
        - 2 * jnp.trace(sigma @ sigma @ gamma)
        + jnp.trace(sigma)
    )


def test_optimal_preconditioner_for_isotropic_inputs_is_the_best_step_size():
    # Σ = s I: Γ* = η* I with η* = N / (s (N + 1 + d)).
    g = gd.optimal_preconditioner(0.25 * np.eye(6), 9)
    np.testing.assert_allclose(g, 9 / (0.25 * 16) * np.eye(6), rtol=1e-14)
    # Label noise σ² with maps of scale w adds σ²/w² to tr Σ.
    g = gd.optimal_preconditioner(0.25 * np.eye(6), 9, w_scale=2.0, noise_std=1.0)
    np.testing.assert_allclose(g, np.eye(6) / (10 / 9 * 0.25 + (1.5 + 0.25) / 9), rtol=1e-14)


def test_optimal_preconditioner_minimises_the_expected_loss():
    sigma = tasks.input_covariance(4, condition=10.0, x_var=0.5, rotation=2)
    g = gd.optimal_preconditioner(sigma, 6)
    # The expected loss is a convex quadratic in Γ: its gradient vanishes at Γ* (float64; the
    # entries are O(1), so 1e-12 is rounding), and any step away increases it.
    grad = jax.grad(lambda m: _expected_loss(m, jnp.asarray(sigma), 6))(jnp.asarray(g))
    np.testing.assert_allclose(grad, 0, atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert _expected_loss(g + 0.05 * rng.standard_normal((4, 4)), sigma, 6) > _expected_loss(
            g, sigma, 6
        )


def test_optimal_preconditioner_against_the_least_squares_fit_on_many_tasks():
    n, d = 6, 4
    sigma = tasks.input_covariance(d, condition=10.0, x_var=0.5, rotation=2)
    g = gd.optimal_preconditioner(sigma, n)
    t = tasks.gaussian_regression(
        jax.random.key(3), batch=100_000, n_context=n, d_in=d, condition=10.0, x_var=0.5,
        rotation=2,
    )  # fmt: skip
    fitted, fitted_loss = gd.best_preconditioner(t.x, t.y, t.x_query, t.y_query)
    err = (np.asarray(gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=g)) - t.y_query) ** 2
    # The sample loss of Γ* is the closed form's expectation within 5 standard errors.
    assert abs(err.mean() - _expected_loss(g, sigma, n)) < 5 * err.std() / np.sqrt(err.size)
    # In-sample the fit can only do better, and only by the fit's optimism: 16 parameters on
    # 1e5 residuals, p/B ≈ 1.6e-4 of the loss in expectation; 2e-3 is > 10 times that.
    assert float(fitted_loss) <= 0.5 * err.mean() * (1 + 1e-12)
    assert 0.5 * err.mean() - float(fitted_loss) < 2e-3 * 0.5 * err.mean()
    # In expectation Γ* is never beaten: the fit's excess expected loss is positive and small.
    excess = _expected_loss(np.asarray(fitted), sigma, n) - _expected_loss(g, sigma, n)
    assert 0 <= excess < 2e-3 * _expected_loss(g, sigma, n)
    assert np.linalg.norm(np.asarray(fitted) - g) < 0.05 * np.linalg.norm(g)


def test_best_preconditioner_recovers_a_planted_gamma():
    # Labels made by a known preconditioned step are fitted exactly (a consistent linear system).
    t = _task(batch=64, n=6, d_in=3, d_out=2)
    planted = np.random.default_rng(2).standard_normal((3, 3))
    y_q = gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=planted, decay=0.7)
    fitted, value = gd.best_preconditioner(t.x, t.y, t.x_query, y_q, decay=0.7)
    np.testing.assert_allclose(fitted, planted, rtol=0, atol=1e-9)
    assert float(value) < 1e-20


def test_best_weighted_matches_a_dense_grid():
    t = tasks.drifting_regression(jax.random.key(4), batch=2048, n_context=10, d_in=5)
    lr, decay, value = gd.best_weighted(t.x, t.y, t.x_query, t.y_query)
    grid = np.linspace(0.0, 1.0, 2001)  # spacing 5e-4

    def at(lam):  # the best η for each λ: a one-dimensional least squares
        g = np.asarray(gd.weighted_predict(t.x, t.y, t.x_query, lr=1.0, decay=lam))
        eta = np.sum(g * t.y_query) / np.sum(g * g)
        return eta, 0.5 * np.mean((eta * g - t.y_query) ** 2)

    losses = np.array([at(lam)[1] for lam in grid[::20]])  # coarse, then fine around the best
    centre = grid[::20][np.argmin(losses)]
    fine = np.linspace(max(centre - 0.01, 0), min(centre + 0.01, 1), 401)  # spacing 5e-5
    losses = np.array([at(lam)[1] for lam in fine])
    assert abs(float(decay) - fine[np.argmin(losses)]) <= 1e-4
    assert float(value) <= losses.min() + 1e-15
    np.testing.assert_allclose(lr, at(float(decay))[0], rtol=1e-10)
    # Drifting tasks favour recent pairs (λ < 1), and the best weights beat plain GD.
    _, plain = gd.best_lr(t.x, t.y, t.x_query, t.y_query)
    assert float(decay) < 0.95 and float(value) < float(plain)
    # A grid of λ = 1 alone is plain GD at its best η.
    lr1, decay1, value1 = gd.best_weighted(t.x, t.y, t.x_query, t.y_query, decays=[1.0, 1.0])
    np.testing.assert_allclose(lr1, gd.optimal_lr(t.x, t.y, t.x_query, t.y_query), rtol=1e-12)
    np.testing.assert_allclose(value1, plain, rtol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: gd.preconditioned_predict(t.x, t.y, t.x_query, gamma=np.eye(4)), "gamma must"),
        (lambda t: gd.preconditioned_weights(t.x, t.y, gamma=np.eye(5), decay=[0.5]), "decay must"),
        (
            lambda t: gd.preconditioned_weights(t.x, t.y, gamma=np.eye(5), decay=float("nan")),
            "decay must be a finite",
        ),
        (lambda t: gd.weighted_predict(t.x, t.y, t.x_query, lr=[1.0], decay=0.5), "lr must"),
        (lambda t: gd.best_preconditioner(t.x, t.y, t.x_query, t.y_query), "needs B·d_out >= 25"),
        (lambda t: gd.best_weighted(t.x, t.y, t.x_query, t.y_query, decays=[0.5]), "decays must"),
        (lambda t: gd.sample_weights(0, 0.5), "n_context must be a positive integer"),
        (lambda t: gd.optimal_preconditioner(np.ones((2, 3)), 4), "sigma must be a square"),
        (lambda t: gd.optimal_preconditioner(np.diag([1.0, -1.0]), 4), "positive definite"),
        (lambda t: gd.optimal_preconditioner([[1.0, 0.5], [0.0, 1.0]], 4), "symmetric"),
        (lambda t: gd.optimal_preconditioner(np.eye(2), 0), "n_context must be a positive"),
        (lambda t: gd.optimal_preconditioner(np.eye(2), 3, w_scale=0.0), "w_scale must be"),
    ],
)
def test_bad_input_to_the_variants(call, match):
    with pytest.raises(ValueError, match=match):
        call(_task())
