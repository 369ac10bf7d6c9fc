"""What a new user of the sequence models trips on: every bad input is a clear error that names
the argument, before anything is compiled, and generation never returns tokens drawn from
non-finite logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd.seq import models
from ssm_gd.seq.generate import generate, prefill

VOCAB = 11


@pytest.fixture(scope="module")
def lm():
    return models.Model(VOCAB, 8, 1, mixer="linear_attention", n_heads=2, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def classifier():
    return models.Model(VOCAB, 8, 1, mixer="ssm", n_heads=2, head="classify", n_classes=3,
                        rngs=nnx.Rngs(0))  # fmt: skip


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 5, -1])
def test_token_ids_outside_the_vocabulary_are_refused(lm, bad):
    tokens = np.zeros((2, 4), np.int32)
    tokens[1, 2] = bad
    message = rf"tokens must hold token ids in \[0, vocab=11\); got ids in \[{min(bad, 0)}, {max(bad, 0)}\]"
    with pytest.raises(ValueError, match=message):
        lm(tokens)
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, vocab=11\)"):
        generate(lm, tokens, 2, jax.random.key(0))
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, vocab=11\)"):
        prefill(lm, tokens)
    with pytest.raises(ValueError, match=r"token must hold token ids in \[0, vocab=11\)"):
        lm.step(lm.init_state(2), jnp.asarray(tokens[:, 2]))


def test_in_range_ids_and_plain_lists_are_read(lm):
    logits = lm([[0, 1, 2, VOCAB - 1]])  # a list of ids is an array of ids
    np.testing.assert_array_equal(logits, lm(jnp.asarray([[0, 1, 2, VOCAB - 1]])))
    assert logits.shape == (1, 4, VOCAB) and np.all(np.isfinite(logits))


def test_traced_tokens_are_not_value_checked(lm):
    # Under jit the values are unknown: the model still compiles and runs (the checks are eager).
    graphdef, state = nnx.split(lm)
    run = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    assert run(state, jnp.ones((2, 3), jnp.int32)).shape == (2, 3, VOCAB)


@pytest.mark.parametrize("tokens,message", [
    (np.zeros((2, 4), np.float32), r"tokens must be integer token ids \(B, L\); got float32 \(2, 4\)"),
    (np.zeros((4,), np.int32), r"tokens must be integer token ids \(B, L\); got int32 \(4,\)"),
])  # fmt: skip
def test_tokens_of_the_wrong_kind_are_refused(lm, tokens, message):
    with pytest.raises(ValueError, match=message):
        lm(tokens)


def test_generate_refuses_non_finite_logits():
    model = models.Model(VOCAB, 8, 1, mixer="gril", n_heads=2, rngs=nnx.Rngs(0))
    model.w_head[...] = model.w_head[...].at[0, 0].set(jnp.nan)  # a diverged parameter
    with pytest.raises(FloatingPointError, match="logits of generated token 0 .* are not finite"):
        generate(model, jnp.ones((2, 3), jnp.int32), 4, jax.random.key(0))


@pytest.mark.parametrize("lengths,message", [
    ([0, 3], r"lengths must be in \[1, L=4\]"),
    ([5, 3], r"lengths must be in \[1, L=4\]"),
    ([-1, 3], r"lengths must be in \[1, L=4\]"),
    ([1.5, 3], r"lengths must be whole numbers in \[1, L=4\]"),
    ([np.nan, 3], r"lengths must be whole numbers in \[1, L=4\]"),
    ([3], r"lengths must have shape \(B,\) = \(2,\); got \(1,\)"),
])  # fmt: skip
def test_classifier_lengths_outside_one_to_l_are_refused(classifier, lengths, message):
    with pytest.raises(ValueError, match=message):
        classifier(np.ones((2, 4), np.int32), lengths=np.asarray(lengths))


def test_classifier_whole_float_lengths_pool_as_integers(classifier):
    tokens = np.ones((2, 4), np.int32)
    np.testing.assert_array_equal(classifier(tokens, lengths=np.asarray([2.0, 4.0])),
                                  classifier(tokens, lengths=np.asarray([2, 4])))  # fmt: skip


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_heads=0), "n_heads must be a positive integer; got 0"),
    (dict(mlp_ratio=0), "mlp_ratio must be a positive integer; got 0"),
    (dict(mlp_ratio=-2), "mlp_ratio must be a positive integer; got -2"),
    (dict(n_heads=3), "d_model=8 must be a multiple of n_heads=3"),
])  # fmt: skip
def test_model_sizes_are_checked_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.Model(VOCAB, 8, 1, mixer="gril", rngs=nnx.Rngs(0), **{"n_heads": 2, **kwargs})


def test_step_and_prefill_check_shapes(lm):
    state = lm.init_state(2)
    with pytest.raises(
        ValueError, match=r"token must be integer token ids \(B,\); got int32 \(2, 1\)"
    ):
        lm.step(state, jnp.ones((2, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"state must be for a batch of 3 \(the token's\)"):
        lm.step(state, jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="state must be the list of 1 block states"):
        lm.step(state[0], jnp.ones((2,), jnp.int32))
    with pytest.raises(ValueError, match=r"prompt must hold at least one token \(B, P\), P >= 1"):
        prefill(lm, jnp.ones((2, 0), jnp.int32))
    with pytest.raises(ValueError, match=r"prompt must be integer token ids \(B, L\)"):
        prefill(lm, jnp.ones((2,), jnp.int32))


def test_step_refuses_a_state_from_another_model(lm):
    token = jnp.ones((2,), jnp.int32)
    wider = models.Model(VOCAB, 12, 1, mixer="linear_attention", n_heads=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"state\[0\]\['k'\] must have shape \(2, 0, 2, 4\)"):
        lm.step(wider.init_state(2), token)  # heads of 6 channels, not 4
    ssm = models.Model(VOCAB, 8, 1, mixer="ssm", n_heads=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"state\[0\] must be block 0's state from this model"):
        lm.step(ssm.init_state(2), token)
    state, _ = lm.step(lm.init_state(2), token)  # a step's state is a state of the model
    assert len(lm.step(tuple(state), token)[0]) == 1


def test_lists_are_arrays_in_prefill_and_the_mixer(lm):
    prompt = [[1, 2, 3], [4, 5, 6]]
    for got, want in zip(jax.tree.leaves(prefill(lm, prompt)),
                         jax.tree.leaves(prefill(lm, jnp.asarray(prompt))), strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)
    mixer = lm.blocks[0].mixer
    u = np.linspace(-1.0, 1.0, 2 * 3 * 8).reshape(2, 3, 8)  # float64, as the list's numbers
    np.testing.assert_array_equal(mixer(u.tolist()), mixer(jnp.asarray(u)))


def test_vmapped_model_on_traced_tokens(lm):
    # vmap over a leading axis: inside, the tokens are traced (B, L): shapes checked, values not.
    tokens = jax.random.randint(jax.random.key(3), (3, 2, 5), 0, VOCAB)
    graphdef, state = nnx.split(lm)
    batched = jax.vmap(lambda t: nnx.merge(graphdef, state)(t))(tokens)
    for i in range(3):  # same program per slice: float32 rounding of the same sums (eps 1.2e-7)
        np.testing.assert_allclose(batched[i], lm(tokens[i]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mixer", ["gril", "attention"])
def test_generate_names_the_first_step_with_non_finite_logits(mixer):
    # A NaN embedding for one token id that greedy decoding emits at generated position k: the
    # logits read after it (those of generated token k + 1) are the first non-finite ones.
    model = models.Model(VOCAB, 8, 1, mixer=mixer, n_heads=2, rngs=nnx.Rngs(0))
    prompt, n = jnp.zeros((1, 3), jnp.int32), 6
    out, _ = generate(model, prompt, n, jax.random.key(0), temperature=0.0)
    assert out.dtype == prompt.dtype  # sampled ids are cast to the prompt's integer type
    generated = np.asarray(out[0, 3:])
    k = next(i for i in range(n - 1) if generated[i] != 0)  # an id the prompt does not hold
    model.embed.embedding[...] = model.embed.embedding[...].at[generated[k]].set(jnp.nan)
    with pytest.raises(FloatingPointError, match=f"logits of generated token {k + 1} \\(of 6\\)"):
        generate(model, prompt, n, jax.random.key(0), temperature=0.0)
