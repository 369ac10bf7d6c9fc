"""Sequence models around each mixer: shapes, causality, parameter counts, and generation whose
logits equal the parallel form's on the same tokens (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd.seq import mixers, models
from ssm_gd.seq.generate import generate

F64 = jnp.float64
VOCAB, D, LAYERS, B = 11, 8, 2, 2


def _model(mixer, head="next_token", **kwargs):
    return models.Model(VOCAB, D, LAYERS, mixer=mixer, n_heads=2, head=head,
                        param_dtype=F64, rngs=nnx.Rngs(0), **kwargs)  # fmt: skip


def _tokens(length=9, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, length), 0, VOCAB)


# Every mixer and GRIL variant; the ablation's GRILs are GRIL with options, each tested in every
# form on the mixer (tests/test_gril.py): here the full one stands for them.
MODELS = mixers.MIXERS + mixers.VARIANTS


def test_the_ablation_adds_each_ingredient_then_removes_each_from_the_full_gril():
    names = list(mixers.ABLATION)
    assert names == ["gril+ms", "gril+ms+data", "gril+ms+data+gate", "gril_gated",
                     "gril_gated-ms", "gril_gated-data", "gril_gated-gate"]  # fmt: skip
    # each row's options differ: no variant is trained twice under two names
    options = [tuple(sorted(o.items())) for o in mixers.ABLATION.values()]
    assert (
        len(set(options)) == len(options)
        and dict(mixers.PAPER_GRIL) not in mixers.ABLATION.values()
    )
    full = mixers.ABLATION["gril_gated"]
    assert full == dict(window=3, decay="data", decay_init="multiscale", gate=True, norm=True,
                        qk_norm=True)  # fmt: skip
    assert mixers.ABLATION["gril_gated-data"]["decay"] == "entry"
    assert mixers.ABLATION["gril_gated-ms"]["decay_init"] == "uniform"
    assert set(mixers.ABLATION) < set(mixers.CHOICES)


@pytest.mark.parametrize("mixer", MODELS)
def test_next_token_model_is_causal(mixer):
    model, tokens = _model(mixer), _tokens()
    logits = model(tokens)
    assert logits.shape == (B, 9, VOCAB)
    changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % VOCAB)
    other = model(changed)
    np.testing.assert_allclose(other[:, :6], logits[:, :6], rtol=0, atol=1e-12)  # the past only
    assert np.abs(other[:, 6:] - logits[:, 6:]).max() > 1e-6


@pytest.mark.parametrize("mixer", MODELS)
def test_generation_logits_equal_the_parallel_form(mixer):
    model, prompt = _model(mixer), _tokens(4)
    out, logits = generate(model, prompt, 5, jax.random.key(1), temperature=1.0)
    assert out.shape == (B, 9) and logits.shape == (B, 5, VOCAB)
    np.testing.assert_array_equal(out[:, :4], prompt)
    # Teacher forcing on the generated tokens: position t's logits drew token t + 1.
    parallel = model(out)[:, 3:8]
    # recurrentgemma runs the RG-LRU's scan and keeps its state in float32 whatever the
    # parameters' dtype: Griffin's two forms agree to float32 precision (eps 1.2e-7, logits O(1)).
    atol = 1e-5 if mixer == "griffin" else 1e-11
    np.testing.assert_allclose(logits, parallel, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [jnp.float32, F64])
def test_attention_key_value_cache_equals_the_parallel_form(dtype):
    """Every position's logits from the step form (a cache of 12 positions, 9 read) equal the
    causal forward pass's: to float64 rounding, and in float32 to its rounding (eps 1.2e-7,
    logits O(1), sums of ~10 terms). Float32 products are asked for in full float32: at JAX's
    default precision a GPU multiplies float32 in TF32 (10-bit mantissa), and on an H200 the two
    forms then differed by 2.6e-3 (results/bench/nvidia_h200-x1)."""
    model = models.Model(VOCAB, D, LAYERS, mixer="attention", n_heads=2, param_dtype=dtype,
                         rngs=nnx.Rngs(0))  # fmt: skip
    tokens, state, steps = _tokens(), model.init_state(B, 12), []
    with jax.default_matmul_precision("highest"):
        for t in range(tokens.shape[1]):
            state, logits = model.step(state, tokens[:, t])
            steps.append(logits)
        parallel = model(tokens)
    atol = 1e-12 if dtype == F64 else 1e-5
    np.testing.assert_allclose(jnp.stack(steps, 1), parallel, rtol=0, atol=atol)
    assert int(state[0]["t"]) == tokens.shape[1]


def test_attention_is_float64_throughout():
    """``mixers.attend`` against softmax attention written out in numpy, in float64: to float64
    rounding (values O(1), rows of at most 9 terms). ``jax.nn.dot_product_attention`` misses this
    by ~1e-7 (its softmax is always float32)."""
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (np.asarray(jax.random.normal(key, (2, 9, 2, 8), F64)) for key in keys)
    causal = np.tril(np.ones((9, 9), bool))
    expected = np.zeros_like(q)
    for b, h, i in np.ndindex(2, 2, 9):
        scores = np.array([q[b, i, h] @ k[b, j, h] / np.sqrt(8) for j in range(i + 1)])
        weights = np.exp(scores - scores.max())
        expected[b, i, h] = (weights / weights.sum()) @ v[b, : i + 1, h]
    got = mixers.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal)
    assert got.dtype == F64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_attention_step_past_the_cache_is_nan_not_a_wrong_answer():
    model = _model("attention")
    state = model.init_state(B, 3)
    for t in range(3):
        state, logits = model.step(state, _tokens()[:, t])
        assert np.isfinite(logits).all()
    state, logits = model.step(state, _tokens()[:, 3])  # no room for position 3
    assert np.isnan(logits).all()


def test_rotary_at_an_offset_is_the_same_position_of_the_whole():
    x = jax.random.normal(jax.random.key(0), (1, 7, 2, 6), F64)
    whole = mixers.rotary(x)
    for t in (0, 3, 6):
        got = mixers.rotary(x[:, t : t + 1], offset=jnp.int32(t))
        np.testing.assert_allclose(got, whole[:, t : t + 1], rtol=0, atol=1e-15)


def test_greedy_generation_takes_the_most_likely_token():
    model = _model("gril")
    out, logits = generate(model, _tokens(3), 4, jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(out[:, 3:], jnp.argmax(logits, -1))


@pytest.mark.parametrize("mixer", mixers.MIXERS)
def test_classifier_pools_the_unpadded_positions(mixer):
    model, tokens = _model(mixer, head="classify", n_classes=4), _tokens()
    lengths = jnp.array([5, 9])
    logits = model(tokens, lengths)
    assert logits.shape == (B, 4)
    np.testing.assert_allclose(model(tokens), model(tokens, jnp.array([9, 9])), rtol=0, atol=1e-12)
    np.testing.assert_allclose(logits[0], model(tokens[:1, :5])[0], rtol=0, atol=1e-12)
    padded = tokens.at[0, 5:].set(0)  # what follows the length does not count
    np.testing.assert_allclose(model(padded, lengths), logits, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lengths is for head='classify'"):
        _model(mixer)(tokens, lengths)


def test_parameter_counts():
    counts = {m: models.parameter_count(_model(m)) for m in mixers.MIXERS}
    shared = (
        VOCAB * D + LAYERS * (2 * D + 3 * 2 * D * D) + D + D * VOCAB
    )  # embed, norms, MLPs, head
    h, dh = 2, D // 2
    per_mixer = {
        "attention": 4 * D * D,
        "gril": 3 * D * D + h * 9 + h * 3 + h * dh * dh + D * D,  # W_q, W_k, W_v, Q, D, Λ, W_o
        "linear_attention": 3 * D * D + h * 1 + h * 1 + D * D,
        "ssm": D * D + D * D + D + D,  # B, C, d, Λ (state = d_model)
        # W_x, W_y, W_out with biases; 4-tap convolution and bias; the RG-LRU's two block-diagonal
        # gates (h blocks of dh × dh, biases) and its decay parameter.
        "griffin": 3 * (D * D + D) + 4 * D + D + 2 * (h * dh * dh + D) + D,
    }
    for m in mixers.MIXERS:
        assert counts[m] == shared + LAYERS * per_mixer[m], m


def test_match_d_model_picks_the_closest_size():
    target = models.parameter_count(_model("attention"))  # d_model 8, two heads

    def miss(d):  # the counts grow with d_model, so the closest beats both neighbours
        model = nnx.eval_shape(lambda: models.Model(VOCAB, d, LAYERS, mixer="ssm", n_heads=2,
                                                    rngs=nnx.Rngs(0)))  # fmt: skip
        return abs(models.parameter_count(model) - target)

    assert models.match_d_model("attention", target, vocab=VOCAB, n_layers=LAYERS, n_heads=2) == D
    d = models.match_d_model("ssm", target, vocab=VOCAB, n_layers=LAYERS, n_heads=2)
    assert miss(d) <= min(miss(d - 2), miss(d + 2))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mixer must be one of"):
        _model("mamba")
    with pytest.raises(ValueError, match="head must be one of"):
        _model("gril", head="pool")
    with pytest.raises(
        ValueError, match=r"key-value cache of a fixed length: init_state\(batch, len"
    ):
        _model("attention").init_state(2)
    with pytest.raises(ValueError, match="length is for the mixers with a cache"):
        _model("gril").init_state(2, 8)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        _model("attention").init_state(2, 0)
    with pytest.raises(ValueError, match=r"prompt must be integer token ids \(B, L\)"):
        generate(_model("gril"), jnp.zeros((2, 3)), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="n_tokens must be a positive integer"):
        generate(_model("gril"), _tokens(3), 0, jax.random.key(0))


def test_rotary_scores_depend_on_the_offset_alone():
    dh, length = 6, 7
    q = jnp.broadcast_to(jax.random.normal(jax.random.key(0), (dh,), F64), (1, length, 1, dh))
    k = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (dh,), F64), (1, length, 1, dh))
    scores = jnp.einsum("te,se->ts", mixers.rotary(q)[0, :, 0], mixers.rotary(k)[0, :, 0])
    for offset in range(-3, 4):  # q_t · k_s is a function of t − s (rotations compose)
        diagonal = jnp.diagonal(scores, offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(mixers.rotary(q)[0, 0], q[0, 0], rtol=0, atol=0)  # t = 0: no turn
    assert float(jnp.ptp(jnp.diagonal(scores, 0) - scores[0])) > 1e-3  # and it does turn
