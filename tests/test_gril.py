"""GRIL as a sequence mixer (docs/design.md §13), in float64.

The chunked, recurrent and every-state forms agree in values and gradients for every decay, window
and stride; ``window=1, decay="none"`` is causal linear attention written out by hand, and on
pairs tokens von Oswald et al.'s one-step construction; with ``window=3, stride=2``, identity projections and the GD-SSM construction's parameters it is the
GD-SSM, and so one GD step on every prefix.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import construction, gd, tasks
from ssm_gd.seq.gril import CHUNKS, DECAYS, GRILMixer, auto_impl, default_chunk

F64 = jnp.float64
B, L, D = 2, 11, 6  # an odd length; chunk=4 leaves a partial last chunk
TOL = 1e-12  # float64 rounding of sums of ~L·w² products of O(1) numbers


def _mixer(window=3, stride=1, decay="entry", chunk=4, seed=0, impl="auto", **sizes):
    sizes = dict(n_heads=2, d_key=3, d_value=4) | sizes
    return GRILMixer(D, window=window, stride=stride, decay=decay, chunk=chunk, impl=impl,
                     param_dtype=F64, rngs=nnx.Rngs(seed), **sizes)  # fmt: skip


def _inputs(seed=1, length=L):
    return jax.random.normal(jax.random.key(seed), (B, length, D), F64)


def _recurrent(mixer, u):
    """The recurrent form over the whole sequence: one :meth:`GRILMixer.step` per token."""
    state = mixer.init_state(u.shape[0])
    outputs = []
    for t in range(u.shape[1]):
        state, y = mixer.step(state, u[:, t])
        outputs.append(y)
    return jnp.stack(outputs, axis=1)


# At stride 1 each window with two decays and each decay with two windows; each decay at stride 2;
# strides 3 and 2 at windows 5 and 2. What is checked here is the streams, the stride and the form
# each decay picks; every form of every decay, lengths and chunks are tests/test_gril_forms.py's.
CASES = [(w, 1, decay) for w, decay in zip((1, 2, 3, 2, 5), DECAYS, strict=True)]
CASES += [(w, 1, decay) for w, decay in zip((5, 3, 2, 5, 1), DECAYS, strict=True)]
CASES += [(3, 2, decay) for decay in DECAYS] + [(5, 3, "entry"), (2, 2, "none")]


@pytest.mark.parametrize(("window", "stride", "decay"), CASES)
def test_three_forms_agree(window, stride, decay):
    """The training form (``impl="auto"``: the matrix products for a factorised decay) and the
    recurrent form equal the reference; every training form of every decay equals it on the bare
    streams too (tests/test_gril_forms.py): here the window's streams, the stride and the
    projections around them are what is checked."""
    mixer, u = _mixer(window, stride, decay), _inputs()
    chunked, reference = mixer(u), mixer.scan_states(u)
    assert chunked.shape == (B, L, D)
    np.testing.assert_allclose(chunked, reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(_recurrent(mixer, u), reference, rtol=0, atol=TOL)
    inactive = np.setdiff1d(np.arange(L), np.arange((window - 1) % stride, L, stride))
    np.testing.assert_array_equal(chunked[:, inactive], 0.0)  # no update, no output
    assert np.abs(reference).max() > 0.1  # the check compares real outputs


@pytest.mark.parametrize("decay", DECAYS)
def test_three_forms_agree_in_gradients(decay):
    mixer, u = _mixer(3, 1, decay), _inputs()
    cotangent = jax.random.normal(jax.random.key(2), (B, L, D), F64)
    graphdef, params = nnx.split(mixer, nnx.Param)

    def grads(form):
        def loss(params, u):
            return jnp.sum(form(nnx.merge(graphdef, params), u) * cotangent)

        return jax.grad(loss, argnums=(0, 1))(params, u)

    reference = grads(GRILMixer.scan_states)
    for form in (GRILMixer.__call__, _recurrent):
        got = grads(form)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)


def test_output_norm_in_every_form():
    mixer, u = _mixer(3, 2, "scalar", norm=True), _inputs()
    mixer.o_scale[...] = jnp.linspace(0.5, 2.0, 8, dtype=F64).reshape(2, 4)
    reference = mixer.scan_states(u)
    np.testing.assert_allclose(mixer(u), reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(_recurrent(mixer, u), reference, rtol=0, atol=TOL)
    # Each head's output has root mean square 1 before o_scale: with o_scale = 1 and an
    # orthonormal read of one head, the output's rows are unit RMS vectors.
    plain = _mixer(3, 1, "entry", norm=False, n_heads=1, d_value=D, d_key=3)
    normed = _mixer(3, 1, "entry", norm=True, n_heads=1, d_value=D, d_key=3)
    eye = jnp.eye(D, dtype=F64)[None]
    plain.w_o[...], normed.w_o[...] = eye, eye
    o, y = plain(u), normed(u)
    rms = np.sqrt(np.mean(np.square(o), axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, o / rms, rtol=0, atol=TOL)


def test_window_one_without_decay_is_causal_linear_attention():
    mixer, u = _mixer(1, 1, "none", n_heads=1), _inputs()
    mixer.q_mix[...] = jnp.ones((1, 1, 1), F64)
    mixer.d_mix[...] = jnp.ones((1, 1), F64)
    x = np.asarray(u)
    wq, wk, wv = (np.asarray(p[...])[:, 0] for p in (mixer.w_q, mixer.w_k, mixer.w_v))
    wo = np.asarray(mixer.w_o[...])[0]
    q, k, v = x @ wq, x @ wk, x @ wv  # (B, L, d)
    scores = np.einsum("btk,bsk->bts", q, k) * np.tril(np.ones((L, L)))  # causal, no softmax
    expected = np.einsum("bts,bsv->btv", scores, v) @ wo
    np.testing.assert_allclose(mixer(u), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize(("d_in", "d_out"), [(3, 1), (3, 2), (2, 3)])
def test_window_three_stride_two_on_interleaved_tokens_is_the_gd_ssm(d_in, d_out):
    n, lr = 7, 1.3
    task = tasks.linear_regression(
        jax.random.key(5), batch=B, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
    )
    toks = tasks.tokens(task)
    h = toks.shape[-1]
    values = construction.gd_ssm_values(d_in=d_in, d_out=d_out, n_context=n, lr=lr)
    mixer = GRILMixer(h, n_heads=1, d_key=h, d_value=h, window=3, stride=2, decay="none",
                      param_dtype=F64, rngs=nnx.Rngs(0))  # fmt: skip
    eye = jnp.eye(h, dtype=F64)[:, None]  # identity projections (h, 1, h)
    mixer.w_q[...], mixer.w_k[...], mixer.w_v[...] = eye, eye, eye
    # o_t = S_tᵀ q̃ with S = Σ Q_ab k_a v_bᵀ reads Σ Q_ab x_b (x_a · q̃): the GD-SSM's Q transposed.
    mixer.q_mix[...] = jnp.asarray(values["q_y"].T, F64)[None]
    mixer.d_mix[...] = jnp.asarray(values["d"], F64)[None]
    w_o = np.zeros((1, h, h))
    w_o[0, :, :d_out] = values["c_y"].T
    mixer.w_o[...] = jnp.asarray(w_o)
    out = mixer(toks.array)[:, 2::2, :d_out]  # the windows [x_t, y_t, x_{t+1}], t = 1…N
    gdssm = construction.gd_ssm(d_in=d_in, d_out=d_out, n_context=n, lr=lr, dtype=F64)
    np.testing.assert_allclose(out, gdssm(toks), rtol=0, atol=TOL)
    ref = gd.predict_prefixes(task.x, task.y, task.x_query, lr=lr)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


OPTIONS = {"gate": True, "norm": True, "qk_norm": True, "decay_init": "multiscale"}


def _three_forms(mixer, u, grads=True):
    """The training, recurrent and reference forms' outputs, and (``grads``) their gradients with
    respect to the parameters and the input, for a random cotangent."""
    cotangent = jax.random.normal(jax.random.key(2), (B, L, D), F64)
    graphdef, params = nnx.split(mixer, nnx.Param)
    out = []
    for form in (GRILMixer.__call__, _recurrent, GRILMixer.scan_states):

        def loss(params, u, form=form):
            return jnp.sum(form(nnx.merge(graphdef, params), u) * cotangent)

        value = form(mixer, u)
        out.append((value, jax.grad(loss, argnums=(0, 1))(params, u)) if grads else (value,))
    return out


@pytest.mark.parametrize("decay", DECAYS)
def test_every_option_at_once_in_every_form(decay):
    """The output gate, each head's normalisation, unit keys and queries and multiscale decays
    together, at stride 2: the three forms' values and gradients agree for every decay kind."""
    mixer, u = _mixer(3, 2, decay, **OPTIONS), _inputs()
    chunked, recurrent, reference = _three_forms(mixer, u)
    for got in (chunked, recurrent):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)
    assert np.abs(reference[0]).max() > 0.1


@pytest.mark.parametrize("decay", ["entry", "data"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_alone_in_every_form(option, decay):
    mixer, u = _mixer(3, 1, decay, **{option: OPTIONS[option]}), _inputs()
    (chunked,), (recurrent,), (reference,) = _three_forms(mixer, u, grads=False)
    np.testing.assert_allclose(chunked, reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(recurrent, reference, rtol=0, atol=TOL)


def test_the_gate_multiplies_by_the_swish_of_the_token():
    """One head read out through the identity: the gated output is the plain one times
    ``swish(W_g u_t)``, channel by channel."""
    plain = _mixer(3, 1, "entry", n_heads=1, d_value=D)
    gated = _mixer(3, 1, "entry", gate=True, n_heads=1, d_value=D)
    eye = jnp.eye(D, dtype=F64)[None]
    plain.w_o[...], gated.w_o[...] = eye, eye
    u = _inputs()
    want = plain(u) * jax.nn.silu(jnp.einsum("btd,dhv->bthv", u, gated.w_g[...])[:, :, 0])
    np.testing.assert_allclose(gated(u), want, rtol=0, atol=TOL)


def test_unit_keys_and_queries():
    """``qk_norm=True``: the window's keys are the projections divided by their length, each
    position's on its own, and the windowed query mixes unit queries; the values are left as they
    are. A zero key (the window before the start) has a finite gradient."""
    from ssm_gd.seq import gril_forms as forms

    mixer, u = _mixer(window=2, qk_norm=True), _inputs()
    weights = [x[...] for x in (mixer.w_k, mixer.w_v, mixer.w_q, mixer.q_mix, mixer.d_mix)]
    keys, mixed, query = forms.streams(u, *weights, window=2, stride=1, qk_norm=True)
    k = jnp.einsum("bld,dhx->bhlx", u, mixer.w_k[...])
    q = jnp.einsum("bld,dhx->bhlx", u, mixer.w_q[...])
    unit_k = k / np.sqrt(np.sum(np.square(k), axis=-1, keepdims=True) + 1e-12)
    unit_q = q / np.sqrt(np.sum(np.square(q), axis=-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(keys[:, :, :, -1], unit_k, rtol=1e-14)  # the current position's
    np.testing.assert_allclose(keys[:, :, 1:, 0], unit_k[:, :, :-1], rtol=1e-14)  # the one before
    d = mixer.d_mix[...]
    want_q = d[None, :, 1, None, None] * unit_q
    want_q = want_q.at[:, :, 1:].add(d[None, :, 0, None, None] * unit_q[:, :, :-1])
    np.testing.assert_allclose(query, want_q, rtol=1e-13, atol=1e-15)
    plain = forms.streams(u, *weights, window=2, stride=1)
    np.testing.assert_allclose(mixed, plain[1], rtol=0, atol=0)  # values untouched
    grad = jax.grad(lambda x: jnp.sum(forms.unit(x) * jnp.arange(3.0)))(jnp.zeros(3, F64))
    assert bool(jnp.isfinite(grad).all())


@pytest.mark.parametrize("decay", ["entry", "structured", "scalar", "data"])
def test_multiscale_decays_give_each_head_its_time_scale(decay):
    """``decay_init="multiscale"``: head ``h``'s decays (a zero token's, for ``"data"``) are
    ``1 − 2^−e_h``, ``e_h`` from 5 to 12 across the heads."""
    mixer = _mixer(decay=decay, decay_init="multiscale", n_heads=4)
    gamma = 1 - 2.0 ** -np.linspace(5, 12, 4)
    if decay == "data":
        got = np.exp(mixer.data_log_decay(jnp.zeros((1, D), F64)))[0]
        np.testing.assert_allclose(got, gamma, rtol=1e-12)
    elif decay == "structured":
        np.testing.assert_allclose(np.exp(mixer.log_decays()[0]), np.repeat(gamma[:, None], 3, 1),
                                   rtol=1e-12)  # fmt: skip
    else:
        np.testing.assert_allclose(mixer.lam, np.broadcast_to(gamma[:, None, None], (4, 3, 4)),
                                   rtol=1e-12)  # fmt: skip
    uniform = _mixer(decay=decay, decay_init="uniform", n_heads=4)
    spread = np.exp(uniform.data_log_decay(jnp.zeros((1, D), F64))) if decay == "data" else None
    lam = spread if decay == "data" else np.asarray(uniform.lam if decay != "structured"
                                                    else np.exp(uniform.log_decays()[0]))  # fmt: skip
    assert ((lam >= 0.9 - 1e-9) & (lam <= 0.999 + 1e-9)).all()


def test_a_data_dependent_decay_follows_the_token():
    """``λ_t = exp(−softplus(w · u_t + b))``: the mixer's decay of a token, and a decay with no
    time-invariant ``Λ``."""
    mixer = _mixer(decay="data")
    u = _inputs()[:, 0]
    want = np.exp(
        -np.logaddexp(0, u @ np.asarray(mixer.w_dt[...]) + np.asarray(mixer.dt_bias[...]))
    )
    np.testing.assert_allclose(np.exp(mixer.data_log_decay(u)), want, rtol=1e-13)
    with pytest.raises(ValueError, match="decay per token"):
        _ = mixer.lam


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(decay="gated"), "decay must be one of"),
        (dict(impl="fast"), "impl must be one of"),
        (dict(norm="yes"), "norm must be True or False"),
        (dict(gate=1), "gate must be True or False"),
        (dict(qk_norm="no"), "qk_norm must be True or False"),
        (dict(decay_init="log"), "decay_init must be one of"),
        (dict(decay="data", impl="scan"), 'does not run decay="data"'),
        (dict(window=0), "window must be a positive integer"),
        (dict(stride=-1), "stride must be a positive integer"),
        (dict(n_heads=0), "n_heads must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _mixer(**kwargs)


def test_bad_inputs_are_named():
    mixer = _mixer()
    with pytest.raises(ValueError, match=r"u must be \(B, L, d_model=6\)"):
        mixer(jnp.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"u_t must be \(B, d_model=6\)"):
        mixer.step(mixer.init_state(2), jnp.zeros((2, 5, 6)))


def test_window_one_on_pairs_tokens_is_one_gd_step():
    """von Oswald et al.'s construction: keys and queries read x, values read y, Λ = 1; the query
    token ``[x_q, 0]`` adds nothing to the state and reads ``(η/N) Σ_i y_i x_iᵀ x_q``."""
    n, d_in, d_out, lr = 9, 3, 2, 0.7
    task = tasks.linear_regression(
        jax.random.key(6), batch=B, n_context=n, d_in=d_in, d_out=d_out, dtype=F64
    )
    toks = tasks.tokens(task, "pairs").array  # (B, N + 1, d_in + d_out)
    h = d_in + d_out
    mixer = GRILMixer(h, n_heads=1, d_key=d_in, d_value=d_out, window=1, decay="none",
                      param_dtype=F64, rngs=nnx.Rngs(0))  # fmt: skip
    read_x = np.eye(h)[:, :d_in][:, None]  # (h, 1, d_in): the x part
    read_y = np.eye(h)[:, d_in:][:, None]  # (h, 1, d_out): the y part
    mixer.w_q[...], mixer.w_k[...], mixer.w_v[...] = (
        jnp.asarray(a) for a in (read_x, read_x, read_y)
    )
    mixer.q_mix[...], mixer.d_mix[...] = jnp.ones((1, 1, 1), F64), jnp.ones((1, 1), F64)
    w_o = np.zeros((1, d_out, h))
    w_o[0, :, d_in:] = lr / n * np.eye(d_out)  # the prediction lands in the y slot
    mixer.w_o[...] = jnp.asarray(w_o)
    prediction = mixer(toks)[:, -1, d_in:]
    expected = gd.predict(task.x, task.y, task.x_query, lr=lr)
    np.testing.assert_allclose(prediction, expected, rtol=0, atol=TOL)


def test_auto_picks_the_products_for_a_factorised_decay_and_the_measured_form_for_entries():
    for decay in ("structured", "scalar", "none"):
        assert all(auto_impl(decay, backend) == "chunked" for backend in ("cpu", "gpu", "tpu"))
    assert auto_impl("entry", "cpu") == "scan"
    assert auto_impl("entry", "gpu") == auto_impl("entry", "tpu") == "chunk_scan"
    assert _mixer(decay="entry", chunk=None).chunk == CHUNKS["entry"] == 16
    assert _mixer(decay="structured", chunk=None).chunk == CHUNKS["structured"] == 4
    # one decay per head or none: the power of two at or below d_key (twice with one stream)
    assert [default_chunk("scalar", 3, dk) for dk in (3, 18, 32, 100)] == [8, 16, 32, 64]
    assert [default_chunk("none", 1, dk) for dk in (3, 18, 32)] == [8, 32, 64]
    assert _mixer(decay="scalar", chunk=None, d_key=18).chunk == 16


def test_scalar_decay_spans_time_scales_across_heads():
    """One decay per head, ``γ_h = 1 − 2^{−e_h}`` with ``e_h`` from 5 to 12: time scales
    ``1 / (1 − γ)`` of 32 to 4096 positions."""
    mixer = _mixer(decay="scalar", n_heads=4)
    log_alpha, log_beta = mixer.log_decays()
    assert log_alpha.shape == (4, 1) and log_beta is None
    np.testing.assert_allclose(1 / (1 - np.exp(log_alpha[:, 0])), 2.0 ** np.linspace(5, 12, 4),
                               rtol=1e-9)  # fmt: skip
    np.testing.assert_allclose(mixer.lam, np.broadcast_to(np.exp(log_alpha)[:, :, None], (4, 3, 4)))
    with pytest.raises(ValueError, match="does not factorise"):
        _mixer(decay="entry").log_decays()
