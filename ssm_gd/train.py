"""Training the paper's models: :func:`train` runs a :class:`~ssm_gd.config.Config`.

:func:`train` trains a GD-SSM (or a neighbour) from random initialisation and compares it with GD.
It picks the task kind once — in-context regression (:mod:`ssm_gd.regression`) or classification
(:mod:`ssm_gd.classify`), each a module with the same three functions (``sample``, ``task``,
``summary``) — and hands the task to :func:`ssm_gd.trainer.fit`, which knows nothing of either:

* **Model** (:func:`make_model`): the GD-SSM (default) or one of its neighbours
  (:mod:`ssm_gd.neighbours`: linear self-attention, H3, a plain SSM).
* **Optimizer** (:func:`make_optimizer`, :func:`ssm_gd.optim.adamw`): the recurrence's ``Λ`` with
  its own learning rate and no weight decay; everything else with AdamW. Warmup + cosine
  schedules, gradient clipping.
* **Outputs**: ``history.jsonl``, ``summary.json``, ``config.json``, checkpoints and exact resume
  (:mod:`ssm_gd.checkpoints`); a non-finite loss stops the run (:class:`TrainingDiverged`).

The names that lived here before the split (``Config``, ``config_from_args``, ``regression_task``,
``evaluator``, ...) are re-exported for one release.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import optax
from flax import nnx

from ssm_gd import (
    checkpoints,
    classify,
    distributed,
    neighbours,
    optim,
    regression,
    scan,
    tokens,
    trainer,
)
from ssm_gd.checkpoints import NoCheckpoint, ResumeError, clear_outputs
from ssm_gd.config import (
    ALIASES,
    CHOICES,
    DTYPES,
    HELP,
    INITS,
    LOSS_ON,
    MODELS,
    RESUMABLE_CHANGES,
    TASKS,
    WARMUP_STEPS,
    Config,
    array_dtype,
    config_from_args,
    with_flags,
)
from ssm_gd.initializers import identity_init
from ssm_gd.layers import GDSSM, GDSSMInit
from ssm_gd.regression import (
    evaluator,
    input_covariance,
    reference_preconditioner,
    regression_task,
    training_loss,
    wants_references,
)
from ssm_gd.trainer import TrainingDiverged

# Its own names; those of ssm_gd.config, ssm_gd.regression and ssm_gd.checkpoints imported above
# stay reachable from here for one release.
__all__ = ["TARGETS", "Result", "TrainingDiverged", "make_model", "make_optimizer", "sample",
           "task_kind", "train"]  # fmt: skip

# The names this module held before the split, reachable from here for one release.
_MOVED = (ALIASES, CHOICES, DTYPES, HELP, INITS, LOSS_ON, MODELS, RESUMABLE_CHANGES, TASKS,
          WARMUP_STEPS, Config, config_from_args, NoCheckpoint, ResumeError, clear_outputs,
          evaluator, input_covariance, reference_preconditioner, regression_task, training_loss,
          wants_references)  # fmt: skip
_with_flags = with_flags
_dtype = array_dtype


def task_kind(config: Config):
    """The module that describes ``config``'s task: :mod:`ssm_gd.classify` or
    :mod:`ssm_gd.regression` (each with ``sample``, ``task`` and ``summary``)."""
    return classify if config.task == "classification" else regression


def sample(config: Config, key, batch: int):
    """``batch`` tasks drawn as ``config`` says (its ``task``)."""
    return task_kind(config).sample(config, key, batch)


@dataclasses.dataclass
class Result:
    """What :func:`train` returns: the trained and constructed models and the numbers.

    ``constructed`` is the GD-SSM construction the parameter match compares with (``None`` for
    the neighbour models, whose parameters are not matched).
    """

    model: nnx.Module
    constructed: GDSSM | None
    summary: dict[str, Any]
    history: list[dict[str, Any]]


# ------------------------------------------------------------------------------- building blocks


def make_model(config: Config, key: int | None = None) -> nnx.Module:
    """A randomly initialised model for ``config``: a :class:`GDSSM` (``init`` chooses the
    initialisation) or a neighbour (:func:`ssm_gd.neighbours.make`)."""
    rngs = nnx.Rngs(config.seed if key is None else key)
    if config.model != "gdssm":
        return neighbours.make(
            config.model,
            config.d_in,
            config.d_out,
            parametrization=config.parametrization,
            impl=config.impl if config.impl in scan.IMPLEMENTATIONS else "associative",
            param_dtype=array_dtype(config),
            rngs=rngs,
        )
    h = tokens.row_width(config.layout, config.d_in, config.d_out)
    init = GDSSMInit()
    if config.init == "published":
        init = dataclasses.replace(
            init, c_y=nnx.initializers.normal(h**-0.5), c_x=nnx.initializers.normal(h**-0.5)
        )
    else:
        small = nnx.initializers.normal(0.01)
        init = dataclasses.replace(init, q_y=small, q_x=small, c_y=identity_init, c_x=identity_init)
    return GDSSM(
        config.d_in,
        config.d_out,
        n_steps=config.n_steps,
        layout=config.layout,
        init=init,
        parametrization=config.parametrization,
        impl=config.impl,
        query_map=config.query_map,
        minibatch=config.minibatch,
        param_dtype=array_dtype(config),
        rngs=rngs,
    )


def _label(path) -> str:
    """Optimizer group of a parameter: ``"recurrence"`` for ``Λ`` (``lam_param``), else the
    default group."""
    keys = [str(getattr(k, "key", k)) for k in path]
    return "recurrence" if "lam_param" in keys else "default"


def make_optimizer(config: Config, params=None) -> optax.GradientTransformation:
    """Clip the global gradient norm, then AdamW (the rest, ``weight_decay``) and AdamW without
    weight decay (``Λ``, at ``recurrence_lr``), warmup + cosine (:func:`ssm_gd.optim.adamw`).
    ``params`` is unused (the groups are found by path); kept for one release."""
    return optim.adamw(
        config.lr,
        config.train_steps,
        warmup=config.resolved_warmup_steps,
        final_fraction=config.final_lr_fraction,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        groups={"recurrence": (config.recurrence_lr, 0.0)},
        label=_label,
    )


def train(
    config: Config,
    out: str | pathlib.Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Result:
    """Train a GD-SSM (or a neighbour) as ``config`` says; write ``history.jsonl``,
    ``summary.json`` and checkpoints under ``out`` (nothing is written when ``out`` is ``None``).

    The loop is :func:`ssm_gd.trainer.fit`; :func:`task_kind` describes the task to it, and
    this function writes the summary.

    Raises:
      ValueError: a config that does not fit the devices (``batch_size`` and ``eval_size`` must be
        divisible by ``jax.device_count()``), before anything is compiled.
      TrainingDiverged: a non-finite training loss; the message names the step, and the last good
        checkpoint (the previous evaluation) is kept under ``out``.
      ResumeError: ``resume=True`` cannot continue the run in ``out`` exactly: another config
        (every differing field listed; :data:`RESUMABLE_CHANGES` may differ), no intact checkpoint
        (:class:`NoCheckpoint`, also a ``FileNotFoundError``, where there is none at all), or a
        ``history.jsonl`` that does not lead to the checkpoint. Nothing in ``out`` is changed.
        A broken newest checkpoint is skipped with a warning and the newest intact one is used.

    A fresh run (``resume=False``) first removes an earlier run's outputs from ``out``
    (:func:`clear_outputs`) and writes ``config.json``.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a ssm_gd.train.Config; got {type(config).__name__}")
    trainer.check_divisible(batch_size=config.batch_size, eval_size=config.eval_size)
    if resume and out is None:
        raise ValueError("resume=True needs an output folder (out) to resume from")
    stored = dataclasses.asdict(config)
    if resume:  # before any work: a checkpoint to resume from, and the run's own config
        checkpoints.check_resumable(out, stored, RESUMABLE_CHANGES)
    start_time = time.perf_counter()
    key_train, key_eval = jax.random.split(jax.random.key(config.seed + 1))
    model = make_model(config)
    kind = task_kind(config)
    task, refs = kind.task(config, key_eval, progress=progress)
    fitted = trainer.fit(
        model,
        make_optimizer(config, nnx.state(model, nnx.Param)),
        task,
        train_steps=config.train_steps,
        batch_size=config.batch_size,
        eval_every=config.eval_every,
        key=key_train,
        out=out,
        config=stored,
        resume=resume,
        may_differ=RESUMABLE_CHANGES,
        progress=progress,
    )
    summary = {
        **kind.summary(fitted.history[-1], refs),
        "train_steps": config.train_steps,
        "batch_size": config.batch_size,
        "seed": config.seed,
        # Training steps alone (the progress bar's "train"): evaluation excluded, and compilation
        # too where there is more than one segment (the first compiles). wall_seconds has it all.
        "wall_seconds": time.perf_counter() - start_time,
        "train_steps_per_second": fitted.train_steps_per_second,
        "time_to_target": _time_to_target(fitted.history),
        "devices": [str(d) for d in jax.devices()],
        "config": stored,
    }
    if fitted.steps_trained == 0 and resume:  # a finished run, resumed: its own timings
        summary["wall_seconds"] = fitted.wall_seconds
    if out is not None and distributed.is_writer():
        (pathlib.Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return Result(
        model=fitted.model,
        constructed=refs["constructed"],
        summary=summary,
        history=fitted.history,
    )


TARGETS = {"loss_ratio": 1.01, "model_cos": 0.999, "param_match_error": 0.05}


def _time_to_target(history):
    """The first evaluation (step, seconds) at which each of :data:`TARGETS` is met."""
    found = {}
    for name, bound in TARGETS.items():
        for row in history:
            if row.get(name) is None:  # no parameter match for the neighbour models
                continue
            met = row[name] >= bound if name == "model_cos" else row[name] <= bound
            if met:
                found[name] = {"step": row["step"], "seconds": row["elapsed"]}
                break
    return found
