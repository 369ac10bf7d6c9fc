"""The task-agnostic training loop (ssm_gd.trainer) on a task that is not in-context regression."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssm_gd import trainer

W_TRUE = jnp.array([[1.5, -2.0, 0.5]])


def sample(key, batch):
    """A plain supervised task: y = W x for one fixed W, x ~ N(0, I)."""
    x = jax.random.normal(key, (batch, 3))
    return {"x": x, "y": x @ W_TRUE.T}


def mse(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


def make_task(loss=mse):
    evaluate = nnx.jit(lambda m: jnp.max(jnp.abs(m.kernel[...].T - W_TRUE)))
    return trainer.Task(
        sample=sample, loss=loss, evaluate=lambda m: {"weight_error": float(evaluate(m))}
    )


def run(out=None, train_steps=60, resume=False, loss=mse, config=None):
    model = nnx.Linear(3, 1, use_bias=False, rngs=nnx.Rngs(0))
    return trainer.fit(
        model,
        optax.sgd(0.1),
        make_task(loss),
        train_steps=train_steps,
        batch_size=32,
        eval_every=20,
        key=jax.random.key(1),
        out=out,
        config=config or {"train_steps": train_steps},
        resume=resume,
        progress=False,
    )


def test_fit_trains_any_task_and_compiles_the_step_once():
    # The training step is traced (compiled) once for the whole run: three equal chunks.
    fitted = run(loss=chex.assert_max_traces(mse, n=1))
    assert [row["step"] for row in fitted.history] == [0, 20, 40, 60]
    assert fitted.history[0]["train_loss"] is None
    errors = [row["weight_error"] for row in fitted.history]
    assert errors[-1] < 1e-3 < errors[0]  # SGD on a noiseless least-squares problem converges
    assert fitted.steps_trained == 60


def test_a_resumed_fit_compiles_once_and_equals_the_uninterrupted_one(tmp_path):
    whole = run(tmp_path / "whole")
    part = tmp_path / "part"
    run(part, train_steps=60)
    # Interrupted after step 40: the newest checkpoint is removed, the history cut to match.
    import shutil

    shutil.rmtree(part / "checkpoints" / "60")
    lines = (part / "history.jsonl").read_text().splitlines()[:3]
    (part / "history.jsonl").write_text("\n".join(lines) + "\n")
    resumed = run(part, resume=True, loss=chex.assert_max_traces(mse, n=1))
    assert resumed.steps_trained == 20
    chex.assert_trees_all_close(
        nnx.state(resumed.model, nnx.Param), nnx.state(whole.model, nnx.Param), rtol=0, atol=0
    )
    assert [r["weight_error"] for r in resumed.history] == [
        r["weight_error"] for r in whole.history
    ]


def test_a_non_finite_loss_stops_with_the_step_named(tmp_path):
    def exploding(model, batch):
        return mse(model, batch) * jnp.where(batch["x"][0, 0] > 1.0, jnp.inf, 1.0)

    with pytest.raises(trainer.TrainingDiverged, match=r"non-finite training loss at step \d+"):
        run(tmp_path, loss=exploding)
    assert (tmp_path / "checkpoints" / "0").is_dir()  # the last good checkpoint is kept


def test_fit_names_its_bad_arguments():
    for name, kwargs in (("train_steps", {"train_steps": 0}), ("batch_size", {"batch_size": -1})):
        model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        args = {"train_steps": 10, "batch_size": 8, "eval_every": 5} | kwargs
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
            trainer.fit(model, optax.sgd(0.1), make_task(), key=jax.random.key(0), **args)
    with pytest.raises(ValueError, match="resume=True needs an output folder"):
        trainer.fit(
            nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), make_task(), train_steps=4,
            batch_size=8, eval_every=2, key=jax.random.key(0), resume=True,
        )  # fmt: skip
    np.testing.assert_equal(trainer.batch_sharding().spec, jax.sharding.PartitionSpec("batch"))
