"""The training loop for any task: what is trained is described by a :class:`Task`.

:func:`fit` runs the loop and knows nothing of regression:

* **Fresh batches every step**, sampled on the device inside the jitted step from
  ``fold_in(key, step)`` (``task.sample``): no host data pipeline, a run is a pure function of its
  settings, and a resumed run draws the very batches an uninterrupted one would.
* **Segments of steps in one compiled call**: ``eval_every`` steps run inside one ``lax.scan``.
* **Data parallel** over every device (``jax.sharding``, batch axis); parameters replicated.
* **Evaluation** every ``eval_every`` steps (``task.evaluate``): one history row, with the step,
  the mean training loss of the segment's last 50 steps and the seconds since the start.
* **Output folder** (:mod:`ssm_gd.checkpoints`): ``config.json``, ``history.jsonl``, checkpoints
  at every evaluation, exact resume (or a refusal that says why).
* **Several processes** (:mod:`ssm_gd.distributed`): the mesh spans every process's devices and
  each runs the same program; process 0 alone writes the run's files, every process takes part
  in a checkpoint's save and restore.
* **Non-finite loss** stops the run (:class:`TrainingDiverged`, naming the step); the state stops
  updating at that step inside the segment and the last good checkpoint is kept.
* **Progress**: a bar with the task's postfix and the training rate (steps per second of the
  training alone, compilation and evaluation left out), and one line per phase.

In-context regression is one such task (:mod:`ssm_gd.train`); the non-linear experiment is another.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssm_gd import checkpoints, distributed, validate

__all__ = [
    "Fit",
    "Task",
    "TrainingDiverged",
    "batch_sharding",
    "check_divisible",
    "fit",
    "say",
    "training_program",
]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What the trainer needs to know of a task.

    Attributes:
      sample: ``(key, batch) → batch`` of ``batch`` fresh examples, a pytree with the batch on the
        leading axis of every leaf; traced inside the jitted step (``batch`` is a Python int).
      loss: ``(model, batch) → scalar`` training loss; traced inside the jitted step.
      evaluate: ``model → {name: number}``, the metrics of one history row (run on the host,
        between segments; jit inside as needed).
      postfix: ``row → {name: text}`` for the progress bar (default: none).
    """

    sample: Callable[[jax.Array, int], Any]
    loss: Callable[[nnx.Module, Any], jax.Array]
    evaluate: Callable[[nnx.Module], dict[str, Any]]
    postfix: Callable[[dict[str, Any]], dict[str, str]] = lambda row: {}


@dataclasses.dataclass
class Fit:
    """What :func:`fit` returns: the trained model, its history, and the training's timings.

    ``train_steps_per_second``: the median segment's steps per second, the first segment left out
    (it compiles) where there are others; ``wall_seconds``: the whole call; ``steps_trained``: the
    steps this call trained (0 for a finished run resumed, whose timings are then its own, from
    its ``summary.json``).
    """

    model: nnx.Module
    history: list[dict[str, Any]]
    train_steps_per_second: float
    wall_seconds: float
    steps_trained: int


def _mesh():
    return jax.make_mesh(
        (jax.device_count(),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,)
    )


def batch_sharding() -> NamedSharding:
    """Split the leading (batch) axis over every device JAX sees."""
    return NamedSharding(_mesh(), P("batch"))


def check_divisible(**sizes: int) -> None:
    """Raise ``ValueError`` unless every batch size divides by the device count (named)."""
    n_dev = jax.device_count()
    for name, value in sizes.items():
        if value % n_dev:
            raise ValueError(
                f"{name} must be divisible by the number of devices ({n_dev}); got {value}"
            )


def say(enabled: bool, message: str) -> None:
    """One line on stderr about what the run is doing (only when ``enabled``)."""
    if not enabled:
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        print(message, file=sys.stderr, flush=True)
    else:
        tqdm.write(message, file=sys.stderr)


def fit(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    task: Task,
    *,
    train_steps: int,
    batch_size: int,
    eval_every: int,
    key: jax.Array,
    out: str | pathlib.Path | None = None,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    may_differ: frozenset[str] = frozenset(),
    progress: bool = True,
) -> Fit:
    """Train ``model``'s ``nnx.Param``s with ``optimizer`` on ``task`` for ``train_steps`` steps.

    ``out`` (optional) is the run folder: a fresh run clears the outputs of an earlier one there
    and stores ``config`` (a JSON-able dict); ``resume=True`` restores the newest intact
    checkpoint and continues exactly, or raises :class:`ssm_gd.checkpoints.ResumeError` if the
    folder has no checkpoint, another ``config`` (fields in ``may_differ`` excepted) or a history
    that does not lead to the checkpoint. ``key`` seeds the training batches.

    Raises:
      TrainingDiverged: a non-finite training loss; the message names the step, and the last
        good checkpoint (the previous evaluation) is kept under ``out``.
    """
    train_steps = validate.positive_int("train_steps", train_steps)
    eval_every = validate.positive_int("eval_every", eval_every)
    check_divisible(batch_size=validate.positive_int("batch_size", batch_size))
    out = _check_out(out, resume, config, may_differ)
    start = time.perf_counter()
    replicated = NamedSharding(_mesh(), P())
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)
    segment = _segment_program(graphdef, optimizer, task, batch_size, key)

    run = _Run(out, graphdef, task, start)
    step, params, opt_state = run.open(resume, config, train_steps, eval_every, params, opt_state)
    if not run.history:
        say(progress, "compiling the evaluation, evaluating the initial model")
        run.record(0, params, opt_state, None)
    if step < train_steps:
        say(progress, f"compiling the training step ({min(eval_every, train_steps - step)} steps per "
                      "call), then training")  # fmt: skip
    first = step
    bar = _progress(train_steps, step, progress)
    rates = []  # training steps per second, per segment: no evaluation (the first compiles)
    try:
        while step < train_steps:
            length = min(eval_every, train_steps - step)
            t0 = time.perf_counter()
            new_params, new_opt_state, losses, bad = segment(
                params, opt_state, jnp.arange(step, step + length)
            )
            if int(bad) >= 0:
                raise _diverged(int(bad), float(losses[int(bad) - step]), step, out)
            params, opt_state = new_params, new_opt_state
            train_loss = float(jnp.mean(losses[-min(length, 50) :]))
            rates.append(length / (time.perf_counter() - t0))
            step += length
            row = run.record(step, params, opt_state, train_loss)
            bar.update(length)
            bar.set_postfix({**task.postfix(row), "train": _rate_label(rates)})
    finally:
        bar.close()
        run.close()
    timings = {"train_steps_per_second": _rate(rates), "wall_seconds": time.perf_counter() - start}
    if step == first and run.stored_summary:  # a finished run, resumed: the timings of its training
        stored = run.stored_summary  # the experiments name the rate ``steps_per_second``
        rate = stored.get("train_steps_per_second", stored.get("steps_per_second"))
        if rate is not None:
            timings["train_steps_per_second"] = rate
        if stored.get("wall_seconds") is not None:
            timings["wall_seconds"] = stored["wall_seconds"]
    return Fit(model=nnx.merge(graphdef, params), history=run.history,
               steps_trained=step - first, **timings)  # fmt: skip


def _diverged(bad: int, loss: float, step: int, out) -> TrainingDiverged:
    where = f" under {out / 'checkpoints'}" if out is not None else ""
    return TrainingDiverged(
        f"non-finite training loss at step {bad} (loss={loss}); stopped, last good checkpoint: "
        f"step {step}{where}"
    )


def _check_out(out, resume, config, may_differ):
    """``out`` as a path (or ``None``); on resume, refuse what cannot be resumed, before work."""
    if resume and out is None:
        raise ValueError("resume=True needs an output folder (out) to resume from")
    out = None if out is None else pathlib.Path(out)
    if resume:
        checkpoints.check_resumable(out, config or {}, may_differ)
    return out


class _Run:
    """The run folder of one :func:`fit` call (or none): history rows and checkpoints."""

    def __init__(self, out, graphdef, task: Task, start: float):
        self.out, self.graphdef, self.task, self.start = out, graphdef, task, start
        self.history: list[dict[str, Any]] = []
        self.manager = None
        self.stored_summary = None

    def open(self, resume, config, train_steps, eval_every, params, opt_state):
        """``(step, params, opt_state)`` to start from: restored on resume, else as given."""
        if self.out is None:
            return 0, params, opt_state
        if not resume:
            if distributed.is_writer():
                self.out.mkdir(parents=True, exist_ok=True)
                checkpoints.clear_outputs(self.out)
                checkpoints.write_config(self.out, config or {})
            distributed.sync("ssm_gd.trainer: a fresh run's folder")
            self.manager = checkpoints.open_manager(self.out / "checkpoints")
            return 0, params, opt_state
        # Everything is checked before anything in out changes: the newest intact checkpoint and
        # a history that leads to it. Then the history is cut at that step.
        folder = self.out / "checkpoints"
        self.manager = checkpoints.open_manager(folder)
        try:
            step, params, opt_state = checkpoints.restore_latest(
                self.manager, folder, params, opt_state
            )
            self.history = checkpoints.read_history(
                self.out / "history.jsonl", up_to=step, eval_every=eval_every, write=False
            )
        except BaseException:
            self.close()
            raise
        summary = self.out / "summary.json"
        if step >= train_steps and summary.exists():  # finished: the timings of its training
            try:
                self.stored_summary = json.loads(summary.read_text())
            except json.JSONDecodeError:
                self.stored_summary = None
        distributed.sync("ssm_gd.trainer: the run folder read")  # every process read it
        if distributed.is_writer():  # the history cut at the checkpoint's step
            checkpoints.write_history(self.out / "history.jsonl", self.history)
            if step < train_steps:  # training continues: the old summary no longer describes it
                summary.unlink(missing_ok=True)
        return step, params, opt_state

    def record(self, step, params, opt_state, train_loss):
        """Evaluate, append a history row (and write it, with a checkpoint); return the row."""
        metrics = self.task.evaluate(nnx.merge(self.graphdef, params))
        row = {"step": step, "train_loss": train_loss, **metrics}
        row["elapsed"] = time.perf_counter() - self.start
        self.history.append(row)
        if self.out is not None:
            if distributed.is_writer():
                with open(self.out / "history.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            checkpoints.save(self.manager, step, params, opt_state)
        return row

    def close(self):
        if self.manager is not None:
            self.manager.close()
            self.manager = None


def training_program(model: nnx.Module, optimizer, task: Task, *, batch_size: int, key):
    """The program :func:`fit` runs, ``(segment, params, opt_state)``: ``segment`` is the jitted
    ``(params, opt_state, steps) → (params, opt_state, losses, bad_step)`` that trains on the
    batches of ``steps`` (an integer array), to lower, export or inspect. (``fit`` also
    replicates the parameters over the devices' mesh before it calls it.)"""
    check_divisible(batch_size=validate.positive_int("batch_size", batch_size))
    graphdef, params = nnx.split(model, nnx.Param)
    return (
        _segment_program(graphdef, optimizer, task, batch_size, key),
        params,
        optimizer.init(params),
    )


def _segment_program(graphdef, optimizer, task: Task, batch_size: int, key):
    """A jitted ``(params, opt_state, steps) → (params, opt_state, losses, bad_step)``."""
    sharding = batch_sharding()

    def loss_of(params, batch):
        return task.loss(nnx.merge(graphdef, params), batch)

    def one_step(carry, step):
        params, opt_state, bad = carry
        batch = task.sample(jax.random.fold_in(key, step), batch_size)
        batch = jax.lax.with_sharding_constraint(batch, sharding)
        loss, grads = jax.value_and_grad(loss_of)(params, batch)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & (bad < 0)
        # After the first non-finite loss the state freezes: the caller gets the last good one.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        bad = jnp.where((bad < 0) & ~jnp.isfinite(loss), step, bad)
        return (keep(new_params, params), keep(new_opt_state, opt_state), bad), loss

    @jax.jit
    def segment(params, opt_state, steps):
        init = (params, opt_state, jnp.asarray(-1, steps.dtype))
        (params, opt_state, bad), losses = jax.lax.scan(one_step, init, steps)
        return params, opt_state, losses, bad

    return segment


def _rate(rates: list[float]) -> float:
    """Training steps per second: the median segment, leaving out the first (it compiles)."""
    return float(np.median(rates[1:] or rates or [0.0]))


def _rate_label(rates: list[float]) -> str:
    """The progress bar's ``train``: :func:`_rate`, marked while it includes compiling."""
    text = f"{_rate(rates):.1f} steps/s"
    return text + " (with compiling)" if len(rates) == 1 else text


def _progress(total, initial, enabled):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; keep working without it
        enabled = False
    if not enabled:

        class _Silent:
            def update(self, n):
                pass

            def set_postfix(self, *args, **kw):
                pass

            def close(self):
                pass

        return _Silent()
    # No rate of its own: it would count evaluation and compilation; the postfix's "train" is the
    # rate of the training steps alone, the summary's train_steps_per_second.
    fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, bar_format=fmt)
