"""In-context regression training: the config, the model, the task and its GD references.

:func:`train` trains a GD-SSM (or a neighbour) from random initialisation on freshly sampled
regression tasks and compares it with GD. The loop itself is :func:`ssm_gd.trainer.fit`, which
knows nothing of regression; this module describes the task to it (:func:`regression_task`):

* **Tasks** sampled on the device inside the jitted step (:func:`sample`): isotropic (default),
  non-isotropic or drifting (:mod:`ssm_gd.tasks`).
* **Models**: the GD-SSM (default) or one of its neighbours (:mod:`ssm_gd.neighbours`: linear
  self-attention, H3, a plain SSM), :func:`make_model`.
* **Optimizer** (:func:`make_optimizer`, ``optax.multi_transform``): the recurrence's ``Λ`` with its
  own learning rate and no weight decay; everything else with AdamW. Warmup + cosine schedules,
  gradient clipping.
* **Evaluation** on a fixed set of ``eval_size`` tasks against K-step GD at its best step size on
  that set (:mod:`ssm_gd.metrics`), and the parameter match against the construction at that η.
  For one step with a neighbour model, another task or the matrix query map
  (:func:`wants_references`), also against the neighbours' GD variants on the same set:
  preconditioned GD with the optimal ``Γ`` for the task and sample-weighted GD with the best
  ``(η, λ)`` (:mod:`ssm_gd.gd`).
* **Outputs**: ``history.jsonl``, ``summary.json``, ``config.json``, checkpoints and exact resume
  (:mod:`ssm_gd.checkpoints`); a non-finite loss stops the run (:class:`TrainingDiverged`).
* **Command line**: :func:`config_from_args`, one flag per :class:`Config` field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import time
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssm_gd import (
    checkpoints,
    classify,
    construction,
    gd,
    metrics,
    neighbours,
    scan,
    tasks,
    tokens,
    trainer,
    validate,
)
from ssm_gd.checkpoints import NoCheckpoint, ResumeError, clear_outputs
from ssm_gd.initializers import identity_init
from ssm_gd.layers import GDSSM, IMPLS, PARAMETRIZATIONS, QUERY_MAPS, GDSSMInit
from ssm_gd.trainer import TrainingDiverged

__all__ = [
    "CHOICES",
    "DTYPES",
    "HELP",
    "INITS",
    "LOSS_ON",
    "MODELS",
    "RESUMABLE_CHANGES",
    "TARGETS",
    "TASKS",
    "Config",
    "NoCheckpoint",
    "ResumeError",
    "Result",
    "TrainingDiverged",
    "clear_outputs",
    "config_from_args",
    "evaluator",
    "input_covariance",
    "make_model",
    "make_optimizer",
    "reference_preconditioner",
    "regression_task",
    "sample",
    "train",
    "wants_references",
]

INITS = ("identity", "published")
LOSS_ON = ("query", "all")
DTYPES = ("float32", "float64")
MODELS = ("gdssm",) + neighbours.MODELS
TASKS = ("isotropic", "anisotropic", "drift", "classification")

# The warmup when ``warmup_steps`` is left unset: ``min(WARMUP_STEPS, steps // 4)``.
WARMUP_STEPS = 50

# Config fields that may differ between a run and its resume. Empty: every field of Config changes
# the trajectory (``train_steps`` the cosine schedule, ``eval_every`` where evaluations and checkpoints
# fall, ``seed`` the data, ...), so a resume must use the very config the run started with. A
# future field that does not (say a logging option) goes here. Arguments of :func:`train` outside
# Config (``progress``) may always differ.
RESUMABLE_CHANGES: frozenset[str] = frozenset()

# The closed sets of values of the string fields (the command line's ``choices``).
CHOICES = {
    "layout": tasks.ALL_LAYOUTS,
    "task": TASKS,
    "model": MODELS,
    "init": INITS,
    "query_map": QUERY_MAPS,
    "parametrization": PARAMETRIZATIONS,
    "impl": IMPLS,
    "dtype": DTYPES,
    "loss_on": LOSS_ON,
}

# One line per Config field: the command line's help (``--n-context``, ...).
HELP = {
    "n_context": "in-context examples per task (N)",
    "d_in": "input dimension",
    "d_out": "output dimension (1: scalar labels)",
    "layout": "token layout (pairs: the neighbour models' [x_i, y_i] tokens)",
    "x_range": "inputs drawn from U(-x_range/2, x_range/2)",
    "w_scale": "std of the task's linear map",
    "noise_std": "std of the label noise",
    "task": "task distribution",
    "condition": "anisotropic task: condition number of the inputs' covariance",
    "rotation": "anisotropic task: seed of the covariance's rotation (0: axis-aligned)",
    "switch_at": "drift task: switch maps after this many pairs (0: a smooth drift)",
    "temperature": "classification task: labels drawn from softmax(W x / temperature) (0: argmax)",
    "model": "the model trained",
    "n_steps": "GD steps the GD-SSM implements (K)",
    "minibatch": "GD-SSM: pairs per window (windows of 2m + 1 tokens, stride 2m; 1: the paper's)",
    "init": "GD-SSM initialisation",
    "query_map": "GD-SSM query map (matrix: a learned preconditioner)",
    "parametrization": "parametrization of the recurrence Λ",
    "impl": "scan implementation",
    "dtype": "parameter and data dtype (float64 turns on jax_enable_x64)",
    "train_steps": "training steps (--steps: the same, an alias kept for one release)",
    "batch_size": "fresh tasks per training step",
    "lr": "peak learning rate (AdamW)",
    "recurrence_lr": "peak learning rate of the recurrence Λ (Adam)",
    "weight_decay": "AdamW weight decay (not on Λ)",
    "warmup_steps": f"linear warmup steps (default: min({WARMUP_STEPS}, train_steps // 4))",
    "final_lr_fraction": "the cosine decay ends at lr × this",
    "clip_norm": "clip the global gradient norm to this",
    "loss_on": "training loss on the query alone, or on every position",
    "eval_every": "evaluate every this many steps",
    "eval_size": "fixed evaluation tasks",
    "sens_size": "evaluation tasks used for the sensitivities",
    "seed": "random seed",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run. The defaults are the paper's setting: N = d = 10, vector labels, interleaved
    tokens, inputs U(−0.5, 0.5), one GD step.

    Task: ``n_context`` (N), ``d_in``, ``d_out`` (1 = scalar labels), ``layout``, ``x_range``
    (inputs ``U(−x_range/2, x_range/2)``), ``w_scale``, ``noise_std``, and ``task``:
    ``"isotropic"`` (:func:`ssm_gd.tasks.linear_regression`, the default), ``"anisotropic"``
    (:func:`ssm_gd.tasks.gaussian_regression`: ``x ~ N(0, Σ)`` with a geometric spectrum of
    condition number ``condition``, mean eigenvalue ``x_range²/12`` as the uniform inputs' variance,
    rotated by the fixed orthogonal matrix of seed ``rotation``, 0 = axis-aligned) or ``"drift"``
    (:func:`ssm_gd.tasks.drifting_regression`: the map rotates from an old to a new one along the
    context, or switches abruptly after ``switch_at`` pairs when ``switch_at > 0``) or
    ``"classification"`` (:func:`ssm_gd.tasks.classification`: ``d_out`` classes, inputs
    ``N(0, I)``, one-hot labels of ``argmax W x``, or drawn at ``temperature > 0``; trained with the
    cross-entropy, :mod:`ssm_gd.classify`).
    Model: ``model`` (``"gdssm"``, the default, or one of :data:`ssm_gd.neighbours.MODELS`, which
    read ``layout="pairs"`` and do one step), ``n_steps`` (K), ``minibatch`` (GD-SSM, interleaved
    tokens: ``m`` pairs per window, ``n_context`` a multiple of ``m``), ``init`` (GD-SSM: ``"identity"``:
    ``C = I``, ``Λ = 1``, ``Q ~ N(0, 0.1²)``, ``D ~ N(0, 1)``; ``"published"``: the same but
    ``C ~ N(0, 1/H)``, the published code's style), ``query_map`` (GD-SSM: ``"vector"``, or
    ``"matrix"`` for a learned preconditioner), ``parametrization`` of ``Λ`` (GD-SSM and H3), scan
    ``impl`` (the neighbours run ``"chunked"`` and ``"auto"`` as ``"associative"``), ``dtype``.
    Optimisation: ``train_steps`` of ``batch_size`` fresh tasks; AdamW with peak ``lr``, linear warmup
    over ``warmup_steps`` then cosine decay to ``lr · final_lr_fraction``; ``warmup_steps=None``
    (the default) means ``min(50, train_steps // 4)`` (:attr:`resolved_warmup_steps`): 50, as it always
    was, for every run of at least 200 steps, and a quarter of a shorter run; ``recurrence_lr`` (same
    schedule shape, no weight decay) for ``Λ``; ``weight_decay`` for the rest; ``clip_norm`` on the
    global gradient norm; ``loss_on`` ``"query"`` (the last window: GD's objective) or ``"all"``
    (every window; a different objective that prefers ``Λ < 1``).
    Evaluation: every ``eval_every`` steps on ``eval_size`` fixed tasks (sensitivities on the first
    ``sens_size``); ``seed``.
    """

    n_context: int = 10
    d_in: int = 10
    d_out: int = 10
    layout: str = "interleaved"
    x_range: float = 1.0
    w_scale: float = 1.0
    noise_std: float = 0.0
    task: str = "isotropic"
    condition: float = 20.0
    rotation: int = 1
    switch_at: int = 0
    temperature: float = 0.0
    model: str = "gdssm"
    n_steps: int = 1
    minibatch: int = 1
    init: str = "identity"
    query_map: str = "vector"
    parametrization: str = "direct"
    impl: str = "associative"
    dtype: str = "float32"
    train_steps: int = 3000
    batch_size: int = 512
    lr: float = 0.02
    recurrence_lr: float = 0.001
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # None: min(50, train_steps // 4)
    final_lr_fraction: float = 0.01
    clip_norm: float = 1.0
    loss_on: str = "query"
    eval_every: int = 500
    eval_size: int = 32_768
    sens_size: int = 2048
    seed: int = 0

    def __post_init__(self):
        # Every number is checked (and stored as a plain int or float, so the config is JSON).
        checks = {
            validate.positive_int: ("n_context", "d_in", "d_out", "n_steps", "minibatch",
                                    "train_steps", "batch_size", "eval_every", "eval_size",
                                    "sens_size"),
            validate.non_negative_int: ("seed", "rotation", "switch_at"),
            validate.positive_number: ("lr", "recurrence_lr", "x_range", "w_scale", "clip_norm"),
            validate.non_negative_number: ("noise_std", "weight_decay", "temperature"),
        }  # fmt: skip
        for check, names in checks.items():
            for name in names:
                object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.warmup_steps is not None:  # None: min(50, train_steps // 4)
            value = validate.non_negative_int("warmup_steps", self.warmup_steps)
            object.__setattr__(self, "warmup_steps", value)
        value = validate.number_in("final_lr_fraction", self.final_lr_fraction, 0.0, 1.0)
        object.__setattr__(self, "final_lr_fraction", value)
        value = validate.finite_number("condition", self.condition)
        if value < 1:
            raise ValueError(f"condition must be a finite number >= 1; got {self.condition!r}")
        object.__setattr__(self, "condition", value)
        if self.switch_at > self.n_context:
            raise ValueError(
                f"switch_at must be in [0, n_context={self.n_context}] (0: a smooth drift); "
                f"got {self.switch_at}"
            )
        for name, allowed in CHOICES.items():
            validate.one_of(name, getattr(self, name), allowed)
        if self.model == "gdssm":
            if self.layout == "pairs":
                raise ValueError(
                    "layout='pairs' is read by the neighbour models (model in "
                    f"{neighbours.MODELS}); the GD-SSM reads one of {tasks.LAYOUTS}"
                )
            tasks.check_layout(self.layout, self.d_in, self.d_out)
        else:
            tasks.check_layout(self.layout, self.d_in, self.d_out, allowed=tasks.ALL_LAYOUTS)
            if self.layout != "pairs":
                raise ValueError(
                    f"model={self.model!r} reads layout='pairs' tokens ([x_i, y_i] per token); "
                    f"got layout={self.layout!r}"
                )
            if self.n_steps != 1:
                raise ValueError(
                    f"model={self.model!r} is one layer (one GD step): n_steps must be 1; "
                    f"got {self.n_steps}"
                )
            if self.query_map != "vector":
                raise ValueError(
                    f"query_map is a GD-SSM option; model={self.model!r} needs query_map='vector'"
                )
        _check_minibatch_and_classes(self)
        if self.resolved_warmup_steps >= self.train_steps:
            raise ValueError(
                f"warmup_steps must be smaller than train_steps; "
                f"got {self.warmup_steps} >= {self.train_steps}"
            )

    @property
    def resolved_warmup_steps(self) -> int:
        """The warmup the run uses: ``warmup_steps``, or ``min(50, train_steps // 4)`` when unset."""
        if self.warmup_steps is None:
            return min(WARMUP_STEPS, self.train_steps // 4)
        return self.warmup_steps


def _check_minibatch_and_classes(config: Config) -> None:
    """The fields that only some models and tasks read: ``minibatch`` (the GD-SSM on interleaved
    tokens, dividing ``n_context``) and the classification task's (the GD-SSM, ``d_out ≥ 2``
    classes, the query loss)."""
    if config.minibatch > 1:
        if config.model != "gdssm" or config.layout != "interleaved":
            raise ValueError(
                "minibatch > 1 is a GD-SSM option on interleaved tokens; got "
                f"model={config.model!r}, layout={config.layout!r}"
            )
        if config.n_context % config.minibatch:
            raise ValueError(
                f"n_context must be a multiple of minibatch={config.minibatch}; got "
                f"n_context={config.n_context}"
            )
    if config.task == "classification":
        if config.d_out < 2:
            raise ValueError(f"task='classification' needs d_out >= 2 classes; got {config.d_out}")
        if config.model != "gdssm" or config.layout != "interleaved":
            raise ValueError(
                "task='classification' trains the GD-SSM on interleaved tokens; got "
                f"model={config.model!r}, layout={config.layout!r}"
            )
        if config.loss_on != "query" or config.noise_std != 0:
            raise ValueError(
                "task='classification' trains on the query's cross-entropy (loss_on='query') "
                f"with noiseless inputs (noise_std=0); got loss_on={config.loss_on!r}, "
                f"noise_std={config.noise_std}"
            )
    elif config.temperature != 0:
        raise ValueError(f"temperature is read by task='classification'; got task={config.task!r}")


def config_from_args(argv=None, *, defaults: Config = Config(), parser=None):
    """Parse ``--field value`` flags (one per :class:`Config` field) into a ``Config``.

    Returns ``(config, namespace)``; extra arguments added to ``parser`` land in the namespace.
    A bad value exits as argparse does (status 2, one ``error:`` line naming the flag, e.g.
    ``--train-steps must be a positive integer; got -1``), not with a traceback. ``--dtype float64``
    turns on ``jax_enable_x64`` before anything is built.
    """
    parser = parser or argparse.ArgumentParser(
        description="Train a GD-SSM (or a neighbour model) on in-context linear regression."
    )
    group = parser.add_argument_group("the training run (ssm_gd.train.Config)")
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        kind = hints[field.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # int | None
        default = getattr(defaults, field.name)
        shown = "" if default is None else " (default: %(default)s)"
        group.add_argument(
            _flag(field.name),
            *ALIASES.get(field.name, ()),
            type=kind,
            default=default,
            choices=CHOICES.get(field.name),
            help=HELP[field.name] + shown,
        )
    args = parser.parse_args(argv)
    try:
        config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    except (ValueError, TypeError) as error:
        parser.error(_with_flags(str(error)))
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return config, args


# Flags that an earlier release spelled otherwise: kept, as aliases, for one release.
ALIASES = {"train_steps": ("--steps",)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _with_flags(message: str) -> str:
    """A Config error as the command line says it: the fields it names become their flags
    (``n_context must be ...`` → ``--n-context must be ...``). A plain-word field (``task``,
    ``model``) is translated where it is a name: at the start, before ``=``, after ``than``."""
    names = sorted((f.name for f in dataclasses.fields(Config)), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(names) + r")(?!\w)")

    def replace(match):
        name, start = match.group(1), match.start()
        if (
            "_" in name
            or start == 0
            or message.startswith("=", match.end())
            or message[:start].endswith("than ")
        ):
            return _flag(name)
        return name

    return pattern.sub(replace, message)


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


def _dtype(config: Config):
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64' needs jax_enable_x64 (jax.config.update(...) first)")
    return jnp.dtype(config.dtype)


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
            param_dtype=_dtype(config),
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
        param_dtype=_dtype(config),
        rngs=rngs,
    )


def input_covariance(config: Config):
    """``Σ`` of the ``"anisotropic"`` task's inputs (float64 numpy ``(d_in, d_in)``)."""
    return tasks.input_covariance(
        config.d_in,
        condition=config.condition,
        x_var=config.x_range**2 / 12,
        rotation=config.rotation,
    )


def _classifies(config: Config) -> bool:
    return config.task == "classification"


def sample(config: Config, key, batch: int):
    """``batch`` tasks drawn as ``config`` says (its ``task``): linear regression, or
    classification (:func:`ssm_gd.classify.sample`)."""
    if _classifies(config):
        return classify.sample(config, key, batch)
    common = dict(
        batch=batch,
        n_context=config.n_context,
        d_in=config.d_in,
        d_out=config.d_out,
        w_scale=config.w_scale,
        noise_std=config.noise_std,
        dtype=_dtype(config),
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


def _labels(params) -> Any:
    """Optimizer group per parameter: ``"recurrence"`` for ``Λ`` (``lam_param``), else ``"other"``."""

    def label(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        return "recurrence" if "lam_param" in keys else "other"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: Config, params) -> optax.GradientTransformation:
    """Clip the global gradient norm, then AdamW (rest) / Adam (``Λ``), warmup + cosine."""

    def schedule(peak):
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=config.resolved_warmup_steps,
            decay_steps=config.train_steps,
            end_value=peak * config.final_lr_fraction,
        )

    groups = {
        "other": optax.adamw(schedule(config.lr), weight_decay=config.weight_decay),
        "recurrence": optax.adam(schedule(config.recurrence_lr)),
    }
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.multi_transform(groups, _labels(params)),
    )


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
        dtype=_dtype(config),
    )


# ---------------------------------------------------------------------------------- the loop


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


def train(
    config: Config,
    out: str | pathlib.Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Result:
    """Train a GD-SSM (or a neighbour) as ``config`` says; write ``history.jsonl``,
    ``summary.json`` and checkpoints under ``out`` (nothing is written when ``out`` is ``None``).

    The loop is :func:`ssm_gd.trainer.fit`; this function describes the task to it
    (:func:`regression_task`) and writes the summary.

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
    describe = classify.classification_task if _classifies(config) else regression_task
    task, refs = describe(config, key_eval, progress=progress)
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
        **(classify.summary if _classifies(config) else _summary)(fitted.history[-1], refs),
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
    if out is not None:
        (pathlib.Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return Result(
        model=fitted.model,
        constructed=refs["constructed"],
        summary=summary,
        history=fitted.history,
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


def _summary(final: dict[str, Any], refs) -> dict[str, Any]:
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
