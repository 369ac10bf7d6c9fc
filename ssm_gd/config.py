"""A training run of the paper's models (:class:`Config`) and its command line.

:class:`Config` holds every setting of a run of :func:`ssm_gd.train.train`: the task, the model,
the optimisation and the evaluation; it checks every field when made, so a bad value is an error
that names the field before anything is built. :func:`config_from_args` turns it into one flag per
field (:mod:`ssm_gd.flags`), and :func:`with_flags` says a Config error as the command line does.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

from ssm_gd import flags, neighbours, tasks, validate
from ssm_gd.layers import IMPLS, PARAMETRIZATIONS, QUERY_MAPS

__all__ = [
    "ALIASES",
    "CHOICES",
    "DTYPES",
    "HELP",
    "INITS",
    "LOSS_ON",
    "MODELS",
    "RESUMABLE_CHANGES",
    "TASKS",
    "WARMUP_STEPS",
    "Config",
    "array_dtype",
    "config_from_args",
    "with_flags",
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
    group = parser.add_argument_group("the training run (ssm_gd.config.Config)")
    flags.add_flags(group, Config, defaults=defaults, helps=HELP, choices=CHOICES, aliases=ALIASES)
    args = parser.parse_args(argv)
    try:
        config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    except (ValueError, TypeError) as error:
        parser.error(with_flags(str(error)))
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return config, args


# Flags that an earlier release spelled otherwise: kept, as aliases, for one release.
ALIASES = {"train_steps": ("--steps",)}


def with_flags(message: str) -> str:
    """A Config error as the command line says it: the fields it names become their flags
    (``n_context must be ...`` → ``--n-context must be ...``; :func:`ssm_gd.flags.with_flags`)."""
    return flags.with_flags(message, [f.name for f in dataclasses.fields(Config)])


def array_dtype(config: Config):
    """The dtype of the run's parameters and data (float64 needs ``jax_enable_x64`` on)."""
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype='float64' needs jax_enable_x64 (jax.config.update(...) first)")
    return jnp.dtype(config.dtype)
