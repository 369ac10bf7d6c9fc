"""In-context regression as a task of the trainer, with its GD references (docs/design.md §2, §7).

:func:`regression_task` describes the task to :func:`ssm_gd.trainer.fit`: tasks sampled on the
device inside the jitted step (:func:`sample`: isotropic, non-isotropic or drifting), the training
loss (:func:`training_loss`), and an evaluation on a fixed set against K-step GD at its best step
size on that set (:mod:`ssm_gd.metrics`) and the parameter match against the construction at
that η. For one step with a neighbour model, another task or the matrix query map
(:func:`wants_references`), also against the neighbours' GD variants on the same set:
preconditioned GD with the optimal ``Γ`` and sample-weighted GD with the best ``(η, λ)``.
:func:`summary` turns the last evaluation into the run's summary numbers.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import construction, gd, metrics, tasks, trainer
from ssm_gd.config import Config, array_dtype
from ssm_gd.layers import GDSSM

__all__ = [
    "evaluator",
    "input_covariance",
    "reference_preconditioner",
    "regression_task",
    "sample",
    "summary",
    "training_loss",
    "wants_references",
]


def input_covariance(config: Config):
    """``Σ`` of the ``"anisotropic"`` task's inputs (float64 numpy ``(d_in, d_in)``)."""
    return tasks.input_covariance(
        config.d_in,
        condition=config.condition,
        x_var=config.x_range**2 / 12,
        rotation=config.rotation,
    )


def sample(config: Config, key, batch: int):
    """``batch`` regression tasks drawn as ``config`` says (its ``task``): isotropic,
    non-isotropic (``"anisotropic"``) or drifting."""
    common = dict(
        batch=batch,
        n_context=config.n_context,
        d_in=config.d_in,
        d_out=config.d_out,
        w_scale=config.w_scale,
        noise_std=config.noise_std,
        dtype=array_dtype(config),
    )
    if config.task == "anisotropic":
        return tasks.gaussian_regression(
            key,
            condition=config.condition,
            x_var=config.x_range**2 / 12,
            rotation=config.rotation,
            **common,
        )
    if config.task == "drift":
        return tasks.drifting_regression(
            key, x_range=config.x_range, switch_at=config.switch_at or None, **common
        )
    return tasks.linear_regression(key, x_range=config.x_range, **common)


def training_loss(model, task, config: Config):
    """The training loss of ``model`` on a batch of tasks (``config.loss_on``)."""
    toks = tasks.tokens(task, config.layout)
    if config.loss_on == "query":  # the last window alone, without the other windows' states
        return gd.loss(model.predict_query(toks), task.y_query)
    pred = model(toks)  # (B, N, d_out)
    # Window t predicts y_{t+1}; the last window predicts y_q.
    target = jnp.concatenate([task.y[:, 1:], task.y_query[:, None]], axis=1)
    return gd.loss(pred, target)


# ------------------------------------------------------------------- the GD variants as references


def wants_references(config: Config) -> bool:
    """Whether :func:`train` evaluates against the one-step GD variants too: for one step, and a
    neighbour model, a non-isotropic or drifting task, or the GD-SSM's matrix query map. The
    default GD-SSM runs (plain GD's setting, where every variant is plain GD) skip them."""
    special = config.model != "gdssm" or config.task != "isotropic" or config.query_map != "vector"
    return config.n_steps == 1 and special


def reference_preconditioner(config: Config, gd_lr: float) -> np.ndarray:
    """The preconditioner ``Γ`` ``(d_in, d_in)`` of the "optimal preconditioned GD" reference.

    ``"anisotropic"``: :func:`ssm_gd.gd.optimal_preconditioner` of the task's ``Σ`` (the population
    optimum for Gaussian inputs, not fitted to any sample). ``"isotropic"`` and ``"drift"``: their
    inputs and maps are invariant under signed permutations of the coordinates, so the best ``Γ``
    commutes with them all and is a multiple of ``I``: ``Γ = η* I`` with plain GD's best ``η*``.
    """
    if config.task == "anisotropic":
        return gd.optimal_preconditioner(
            input_covariance(config),
            config.n_context,
            w_scale=config.w_scale,
            noise_std=config.noise_std,
        )
    return gd_lr * np.eye(config.d_in)


def _references(config: Config, task, gd_lr: float) -> dict[str, Any]:
    """The one-step GD variants on ``task``: optimal preconditioned GD (``pgd``, with
    :func:`reference_preconditioner`; ``pgd_fitted``: the best ``Γ`` fitted on ``task`` itself, a
    lower bound) and the best sample-weighted GD (``wgd``: :func:`ssm_gd.gd.best_weighted`)."""
    args = (task.x, task.y, task.x_query, task.y_query)
    gamma = reference_preconditioner(config, gd_lr)
    pgd = gd.loss(gd.preconditioned_predict(*args[:3], gamma=gamma), task.y_query)
    fitted = None
    if config.eval_size * config.d_out >= 4 * config.d_in**2:  # enough labels to fit Γ
        fitted = float(gd.best_preconditioner(*args)[1])
    w_lr, w_decay, wgd = gd.best_weighted(*args, minibatch=config.minibatch)
    return {
        "pgd_gamma": gamma,
        "pgd_loss": float(pgd),
        "pgd_fitted_loss": fitted,
        "wgd_lr": float(w_lr),
        "wgd_decay": float(w_decay),
        "wgd_loss": float(wgd),
    }


def _reference_sensitivities(task, refs, size: int, minibatch: int) -> dict[str, Any]:
    """The implicit models ``W`` ``(size, d_out, d_in)`` of the variants on the first tasks."""
    x, y = task.x[:size], task.y[:size]
    gamma = refs["wgd_lr"] * np.eye(x.shape[-1])
    return {
        "pgd": gd.preconditioned_weights(x, y, gamma=refs["pgd_gamma"]),
        "wgd": gd.preconditioned_weights(
            x, y, gamma=gamma, decay=refs["wgd_decay"], minibatch=minibatch
        ),
    }


def _reference_summary(final: dict[str, Any], refs) -> dict[str, Any]:
    if refs is None:
        return {}
    out = {k: v for k, v in refs.items() if k != "pgd_gamma"}
    for name in ("pgd", "wgd"):
        for key in ("loss_ratio", "model_cos", "model_diff"):
            out[f"{key}_{name}"] = final[f"{key}_{name}"]
    return out


def _construction(config: Config, gd_lr: float, refs) -> GDSSM | None:
    """The GD-SSM construction the parameter match compares with: K-step GD at ``gd_lr``; with the
    matrix query map and one step, optimal preconditioned GD (``W = (1/N) S_y Γ``). ``None`` for
    the neighbour models."""
    if config.model != "gdssm":
        return None
    preconditioner, lr = None, gd_lr
    if config.query_map == "matrix":
        if refs is None:  # K > 1: plain GD, in the matrix form
            preconditioner = np.eye(config.d_in)
        else:
            preconditioner, lr = refs["pgd_gamma"], 1.0
    return construction.gd_ssm(
        d_in=config.d_in,
        d_out=config.d_out,
        n_context=config.n_context,
        lr=lr,
        steps=config.n_steps,
        layout=config.layout,
        impl=config.impl,
        preconditioner=preconditioner,
        minibatch=config.minibatch,
        dtype=array_dtype(config),
    )


def _check_references(config: Config, gd_lr: float, gd_best: float) -> None:
    """GD's best step size and loss on the evaluation set must be finite and the step positive:
    if not, the tasks themselves overflow (or vanish in) the dtype, whatever the model does."""
    if math.isfinite(gd_lr) and gd_lr > 0 and math.isfinite(gd_best):
        return
    raise ValueError(
        f"the evaluation tasks are out of range for dtype={config.dtype!r}: GD's best step size "
        f"on them is {gd_lr} (loss {gd_best}), so the task settings overflow or vanish in that "
        f"precision (x_range={config.x_range}, w_scale={config.w_scale}, "
        f"noise_std={config.noise_std}, d_in={config.d_in}, n_context={config.n_context}); "
        "use values nearer 1, or dtype='float64'"
    )


def regression_task(config: Config, key_eval, *, progress: bool = False):
    """In-context regression as a :class:`ssm_gd.trainer.Task`, and its references.

    Samples the evaluation set (``eval_size`` tasks from ``key_eval``, sharded over the devices),
    finds GD's best step size on it (exact, and on the published grid), least squares, the
    neighbours' GD variants where :func:`wants_references`, and the construction the parameter
    match compares with. Each evaluation compares the model with them (:func:`metrics.evaluate`).
    Returns ``(task, refs)``; ``refs`` holds the references' numbers and the construction.
    """
    trainer.say(progress, f"sampling the evaluation set ({config.eval_size} tasks), GD's best η")
    eval_task = jax.device_put(sample(config, key_eval, config.eval_size), trainer.batch_sharding())
    gd_lr, gd_best = metrics.gd_loss(eval_task, steps=config.n_steps)
    gd_lr, gd_best = float(gd_lr), float(gd_best)
    _check_references(config, gd_lr, gd_best)
    args = (eval_task.x, eval_task.y, eval_task.x_query, eval_task.y_query)
    # The published code's grid (arange(0.001, 25, 0.1)), reported beside the exact optimum.
    grid_lr, grid_loss = gd.grid_search_lr(*args, steps=config.n_steps)
    # The neighbours' GD variants on the same set (preconditioned, sample-weighted), where they
    # differ from plain GD or the model is built for them (wants_references).
    others = _references(config, eval_task, gd_lr) if wants_references(config) else None
    constructed = _construction(config, gd_lr, others)
    lsq_loss = float(gd.loss(gd.least_squares(*args[:3]), eval_task.y_query))
    sens_size = min(config.sens_size, config.eval_size)
    ref_sens = (
        {}
        if others is None
        else _reference_sensitivities(eval_task, others, sens_size, config.minibatch)
    )
    trainer.say(progress, f"GD at its best step size: η = {gd_lr:.4g}, loss {gd_best:.4g} "
                          f"(least squares: {lsq_loss:.4g})")  # fmt: skip
    refs = {
        "gd_lr": gd_lr,
        "gd_loss_at_best_lr": gd_best,
        "gd_lr_grid": float(grid_lr),
        "gd_loss_grid": float(grid_loss),
        "lsq_loss": lsq_loss,
        "others": others,
        "constructed": constructed,
    }

    evaluate = evaluator(config, gd_lr, sens_size=sens_size, other_refs=ref_sens)

    def postfix(row):
        return {k: f"{row[v]:.4f}" for k, v in (("loss", "val_loss"), ("gd", "gd_loss"),
                                                ("cos", "model_cos"))}  # fmt: skip

    def loss(model, task):
        return training_loss(model, task, config)

    task = trainer.Task(
        sample=lambda key, batch: sample(config, key, batch),
        loss=loss,
        evaluate=lambda model: _row(evaluate(model, eval_task), model, refs),
        postfix=postfix,
    )
    return task, refs


def evaluator(config: Config, gd_lr: float, *, sens_size: int, other_refs=None):
    """``(model, task) → {metric: float}``: :func:`ssm_gd.metrics.evaluate` of a model on a batch
    of tasks against ``config.n_steps``-step GD at ``gd_lr`` (and the implicit models
    ``other_refs``, ``{name: W}``, on the first ``sens_size`` tasks). Compiled once per shape:
    the model's parameters and the tasks are arguments, not constants of the program."""
    other_refs = {} if other_refs is None else other_refs

    @jax.jit
    def evaluate_on(params, graphdef, task, other_refs):
        return metrics.evaluate(
            nnx.merge(graphdef, params),
            task,
            layout=config.layout,
            gd_lr=gd_lr,
            steps=config.n_steps,
            sens_size=sens_size,
            max_batch=2048,
            other_refs=other_refs,
        )

    def evaluate(model, task):
        graphdef, params = nnx.split(model, nnx.Param)
        return {k: float(v) for k, v in evaluate_on(params, graphdef, task, other_refs).items()}

    return evaluate


def _row(values: dict[str, float], model, refs) -> dict[str, Any]:
    """One history row of the regression metrics (``values`` from :func:`metrics.evaluate`)."""
    constructed, others = refs["constructed"], refs["others"]
    match = None if constructed is None else metrics.param_match_error(model, constructed)
    row = {
        "val_loss": values["loss"],
        "gd_loss": values["gd_loss"],
        "loss_ratio": values["loss"] / values["gd_loss"],
        "preds_diff": values["preds_diff"],
        "model_diff": values["model_diff"],
        "model_cos": values["model_cos"],
        "param_match_error": None if match is None else match["total"],
        "param_match": match,
    }
    if others is not None:  # the neighbours' GD variants (constant on the set) and alignments
        for name in ("pgd", "wgd"):
            row[f"{name}_loss"] = others[f"{name}_loss"]
            row[f"loss_ratio_{name}"] = values["loss"] / others[f"{name}_loss"]
            row[f"model_cos_{name}"] = values[f"model_cos_{name}"]
            row[f"model_diff_{name}"] = values[f"model_diff_{name}"]
    return row


def summary(final: dict[str, Any], refs) -> dict[str, Any]:
    """The summary's numbers: the last evaluation against the references."""
    keys = ("loss_ratio", "model_cos", "model_diff", "preds_diff", "param_match_error")
    return {
        "val_loss": final["val_loss"],
        "gd_loss": final["gd_loss"],
        **{k: refs[k] for k in ("gd_lr", "gd_loss_at_best_lr", "gd_lr_grid", "gd_loss_grid")},
        "lsq_loss": refs["lsq_loss"],
        **{k: final[k] for k in keys},
        "param_match": final["param_match"],
        **_reference_summary(final, refs["others"]),
    }


#: What "trained ≈ GD" asks of a run (docs/design.md §7): loss within 1 % of GD's at its best η,
#: mean cosine of the implicit models at least 0.999, parameters within 0.05 of the construction.
#: The summary's ``time_to_target`` is the first evaluation that meets each.


#: The task-kind interface :func:`ssm_gd.train.task_kind` relies on: ``sample``, ``task``, ``summary``.
task = regression_task
