"""In-context classification as a task for the trainer (docs/design.md §11).

:func:`classification_task` describes it to :func:`ssm_gd.trainer.fit`: batches of
:func:`ssm_gd.tasks.classification` drawn on the device, the cross-entropy of the query's logits
(the GD-SSM's ``predict_query``), and at every evaluation the accuracy and the metrics of
:func:`ssm_gd.metrics.evaluate_classification` against one cross-entropy GD step at its best ``η``
(``config.n_steps`` steps for a K-layer model), with the parameter match against the construction
(the squared-loss construction of ``K`` steps on one-hot tokens, whose probabilities for ``K = 1``
are cross-entropy GD's).

The references it reports beside the model, on the same evaluation set: cross-entropy GD of
``K`` steps at its best ``η``; GD on the squared loss of the one-hot targets (its logits at the
step size that minimises their cross-entropy); multinomial logistic regression fitted on each
context (a Newton solve per task: measured on the first :data:`LOGISTIC_TASKS` tasks of the set,
its ridge tuned there on :data:`LOGISTIC_REG_GRID`); and chance (``log K``, ``1/K``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import construction, gd, metrics, tasks, trainer
from ssm_gd.config import Config, array_dtype

__all__ = [
    "LOGISTIC_REG_GRID",
    "LOGISTIC_TASKS",
    "classification_task",
    "loss",
    "references",
    "sample",
    "summary",
]

#: The logistic-regression reference: its tasks (the first of the evaluation set) and its ridges.
LOGISTIC_TASKS = 1024
LOGISTIC_REG_GRID = np.logspace(-3, 0, 7)


def sample(config: Config, key, batch: int):
    """``batch`` classification tasks as ``config`` says: ``d_out`` classes, ``N(0, I)`` inputs,
    labels ``argmax W x`` (``temperature=0``) or drawn from ``softmax(W x / temperature)``."""
    return tasks.classification(
        key,
        batch=batch,
        n_context=config.n_context,
        d_in=config.d_in,
        n_classes=config.d_out,
        temperature=config.temperature or None,
        w_scale=config.w_scale,
        dtype=array_dtype(config),
    )


def loss(model, task) -> jax.Array:
    """The mean cross-entropy of the query's logits (``model.predict_query``)."""
    return gd.cross_entropy(model.predict_query(tasks.tokens(task, "interleaved")), task.y_query)


def _squared_loss_gd(task, steps: int) -> dict[str, float]:
    """K-step GD on the squared loss of the one-hot targets: its logits ``W_K x_q`` at the step
    size whose cross-entropy is lowest (the squared loss's grid, refined 4 times)."""
    args = (task.x, task.y, task.x_query)

    def losses(lrs):
        return jax.lax.map(
            lambda lr: gd.cross_entropy(gd.predict(*args, lr=lr, steps=steps), task.y_query), lrs
        )

    grid = jnp.asarray(gd.DEFAULT_LR_GRID, task.x.dtype)
    lr, value = gd.minimise_on_grid(losses, grid, refine=4, points=33)
    logits = gd.predict(*args, lr=lr, steps=steps)
    return {
        "sq_gd_lr": float(lr),
        "sq_gd_loss": float(value),
        "sq_gd_accuracy": float(gd.accuracy(logits, task.y_query)),
    }


def references(config: Config, eval_task) -> dict[str, Any]:
    """The references on ``eval_task`` (module docstring), as plain numbers."""
    args = (eval_task.x, eval_task.y, eval_task.x_query, eval_task.y_query)
    steps = config.n_steps
    gd_lr, gd_loss = gd.cross_entropy_best_lr(*args, steps=steps)
    gd_lr = float(gd_lr)
    logits = gd.cross_entropy_predict(*args[:3], lr=gd_lr, steps=steps)
    # Logistic regression is a Newton solve of K·d unknowns per task: fitted on the first
    # LOGISTIC_TASKS tasks of the set, with the ridge tuned there on LOGISTIC_REG_GRID.
    sub = jax.tree.map(lambda v: v[:LOGISTIC_TASKS], eval_task)
    reg, lr_loss = gd.logistic_best_reg(*sub[:4], grid=LOGISTIC_REG_GRID)
    lr_logits = gd.logistic_regression(*sub[:3], reg=float(reg))
    refs = {
        "gd_lr": gd_lr,
        "gd_loss": float(gd_loss),
        "gd_accuracy": float(gd.accuracy(logits, eval_task.y_query)),
        **_squared_loss_gd(eval_task, steps),
        "logistic_reg": float(reg),
        "logistic_loss": float(lr_loss),
        "logistic_accuracy": float(gd.accuracy(lr_logits, sub.y_query)),
        "logistic_tasks": int(sub.x.shape[0]),
        "chance_loss": float(np.log(config.d_out)),
        "chance_accuracy": 1.0 / config.d_out,
        "majority_accuracy": float(jnp.max(jnp.mean(eval_task.y_query, axis=0))),
    }
    if steps > 1:  # one step, for comparison with a K-layer model
        lr1, loss1 = gd.cross_entropy_best_lr(*args, steps=1)
        refs.update(gd1_lr=float(lr1), gd1_loss=float(loss1))
    if not all(np.isfinite(v) for v in refs.values()):
        raise ValueError(
            f"the classification references are not finite on the evaluation set ({refs}); "
            f"the task settings overflow dtype={config.dtype!r} (w_scale={config.w_scale})"
        )
    return refs


def classification_task(config: Config, key_eval, *, progress: bool = False):
    """In-context classification as a :class:`ssm_gd.trainer.Task`, and its references.

    Samples the evaluation set (``eval_size`` tasks from ``key_eval``, sharded over the devices),
    computes :func:`references` and the construction the parameter match compares with, and
    returns ``(task, refs)`` as :func:`ssm_gd.regression.regression_task` does.
    """
    trainer.say(progress, f"sampling the evaluation set ({config.eval_size} tasks), the references")
    eval_task = jax.device_put(sample(config, key_eval, config.eval_size), trainer.batch_sharding())
    refs = references(config, eval_task)
    trainer.say(
        progress,
        f"cross-entropy GD at its best step size: η = {refs['gd_lr']:.4g}, loss "
        f"{refs['gd_loss']:.4g}, accuracy {refs['gd_accuracy']:.3f} (logistic regression "
        f"{refs['logistic_accuracy']:.3f}, chance {refs['chance_accuracy']:.3f})",
    )
    refs["constructed"] = construction.gd_ssm(
        d_in=config.d_in,
        d_out=config.d_out,
        n_context=config.n_context,
        lr=refs["gd_lr"],
        steps=config.n_steps,
        impl=config.impl,
        minibatch=config.minibatch,
        dtype=array_dtype(config),
    )
    sens_size = min(config.sens_size, config.eval_size)

    @jax.jit
    def evaluate_on(params, graphdef, task):
        return metrics.evaluate_classification(
            nnx.merge(graphdef, params),
            task,
            gd_lr=refs["gd_lr"],
            steps=config.n_steps,
            sens_size=sens_size,
            max_batch=2048,
        )

    def evaluate(model):
        graphdef, params = nnx.split(model, nnx.Param)
        values = {k: float(v) for k, v in evaluate_on(params, graphdef, eval_task).items()}
        match = metrics.param_match_error(model, refs["constructed"], classes=True)
        return {
            "val_loss": values["loss"],
            "accuracy": values["accuracy"],
            "gd_loss": values["gd_loss"],
            "gd_accuracy": values["gd_accuracy"],
            "loss_ratio": values["loss"] / values["gd_loss"],
            "preds_diff": values["preds_diff"],
            "model_diff": values["model_diff"],
            "model_cos": values["model_cos"],
            "param_match_error": match["total"],
            "param_match": match,
        }

    def postfix(row):
        return {k: f"{row[v]:.4f}" for k, v in (("loss", "val_loss"), ("acc", "accuracy"),
                                                ("gd", "gd_loss"), ("cos", "model_cos"))}  # fmt: skip

    task = trainer.Task(
        sample=lambda key, batch: sample(config, key, batch),
        loss=loss,
        evaluate=evaluate,
        postfix=postfix,
    )
    return task, refs


def summary(final: dict[str, Any], refs: dict[str, Any]) -> dict[str, Any]:
    """The summary's numbers: the last evaluation and the references."""
    keys = ("val_loss", "accuracy", "gd_loss", "gd_accuracy", "loss_ratio", "preds_diff",
            "model_diff", "model_cos", "param_match_error", "param_match")  # fmt: skip
    return {**{k: final[k] for k in keys}, **{k: v for k, v in refs.items() if k != "constructed"}}


#: The task-kind interface :func:`ssm_gd.train.task_kind` relies on: ``sample``, ``task``, ``summary``.
task = classification_task
