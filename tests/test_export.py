"""The training programs export for every platform the design card targets (``jax.export`` with
``platforms=("cpu", "cuda", "tpu")`` lowers the program once per platform, on this CPU machine):
nothing CPU-only — a host callback, a CPU-only custom call — slips into the step that trains a
sequence model around each mixer, or the GD-SSM. The GD-SSM's exported CPU program is run too
and checked against the program it came from (compiling each mixer's twice would cost the suite
minutes for the same check)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssm_gd import train, trainer
from ssm_gd.seq import mixers, models

PLATFORMS = ("cpu", "cuda", "tpu")


def _export_and_check(model, task, batch_size=2, run=False):
    program, params, opt_state = trainer.training_program(
        model, optax.adamw(1e-3), task, batch_size=batch_size, key=jax.random.key(0)
    )
    steps = jnp.arange(2)
    # jax.export refuses (raises on) a program with a host callback, or a custom call that one of
    # the platforms lacks: that it returns is the check.
    exported = jax.export.export(program, platforms=PLATFORMS)(params, opt_state, steps)
    # The outputs: the new parameters and optimiser state, the losses, the first bad step.
    assert len(exported.out_avals) == len(jax.tree.leaves((params, opt_state))) + 2
    if not run:
        return
    new = exported.call(params, opt_state, steps)  # the CPU lowering, run here
    ref = program(params, opt_state, steps)
    np.testing.assert_allclose(new[2], ref[2], rtol=1e-6)  # the two steps' losses
    assert int(new[3]) == -1  # finite


def test_sequence_model_training_steps_export():
    vocab, length = 16, 12

    def loss(model, tokens):
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    task = trainer.Task(
        sample=lambda key, batch: jax.random.randint(key, (batch, length), 0, vocab),
        loss=loss,
        evaluate=lambda model: {},
    )
    # Every mixer, GRIL's factorised decays (matrix products) and the paper's GRIL in the form
    # impl="auto" picks on a GPU or TPU (chunk_scan; on this CPU auto traces the scan).
    for mixer in (*mixers.MIXERS, "gril_scalar", "gril_structured", "gril:chunk_scan"):
        name, _, impl = mixer.partition(":")
        model = models.Model(vocab, 8, 1, mixer=name, n_heads=2, rngs=nnx.Rngs(0))
        if impl:
            model.blocks[0].mixer.impl = impl
        _export_and_check(model, task)  # one process: the models share their compiled pieces


def test_gdssm_training_step_exports():
    config = train.Config(d_in=3, d_out=1, n_context=5, batch_size=2, eval_size=2)
    model = train.make_model(config)
    task = trainer.Task(
        sample=lambda key, batch: train.sample(config, key, batch),
        loss=lambda model, batch: train.training_loss(model, batch, config),
        evaluate=lambda model: {},
    )
    _export_and_check(model, task, run=True)
