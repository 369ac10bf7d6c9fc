"""The protocol of every general-task comparison (``mqar``, ``listops``, ``lm``): tuned rates, seeds,
one look at the test split.

For each mixer (at each point of a task's grid), :func:`tune`

1. trains one run per learning rate of :attr:`Protocol.lrs` at a shorter budget
   (:attr:`Protocol.sweep_fraction` of the steps, the first seed), each judged on the task's
   **validation** split;
2. takes the rate with the best validation metric (a run that diverged ranks last);
3. trains one run per seed of :attr:`Protocol.seeds` at the full budget with that rate, each
   evaluated on the **test** split once, after its last step (its curve is on validation). With
   ``sweep_fraction`` 1 the sweep's run at the chosen rate *is* the first seed's run: it is resumed
   at its last checkpoint (nothing trained) to read the test split, not trained twice.

Every run has its own folder, ``<folder>/lr-<lr>`` and ``<folder>/seed-<seed>``; a run whose
``summary.json`` holds the same settings and role is read back, not trained again, so a call
interrupted at any point resumes with the run it stopped in (trained again from its start, so
that its training rate is timed in one go). A diverged run writes its summary too (``diverged``: the message), so it is
not retried. :func:`cell` and :func:`sweep_cell` give a mixer's table entries: the mean over
seeds ± half their range, and the validation metric of every rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable

from ssm_gd import validate
from ssm_gd.trainer import TrainingDiverged

__all__ = [
    "Protocol",
    "add_flags",
    "cell",
    "from_args",
    "lr_figure",
    "lr_folder",
    "spread",
    "sweep_cell",
    "tune",
]

#: ``(settings, folder, test, resume) → summary``: one training run of a task. ``test``: evaluate
#: the test split once at the end (the summary's ``test_<metric>``); ``resume``: continue the run
#: in ``folder`` from its checkpoint (the protocol passes ``False``: a stopped run is retrained).
Train = Callable[[object, pathlib.Path, bool, bool], dict]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a task tunes and repeats each mixer's runs.

    Attributes:
      metric: the summary key of the validation metric (``"accuracy"``, ``"bpc"``); the test
        runs also hold ``"test_" + metric``.
      higher_is_better: whether a larger metric is better (accuracy) or a smaller one (bpc).
      lrs: the peak learning rates swept (at least one; the defaults span 1.5 decades).
      seeds: the seeds of the full-budget runs at the chosen rate (the sweep uses the first).
      sweep_fraction: the sweep's share of the full budget's steps, in ``(0, 1]``.
      tiebreak: a summary key, lower better (a validation loss), that orders the rates whose
        ``metric`` is equal (accuracies at a plateau often are); ties left after it go to the
        first rate of ``lrs``.
    """

    metric: str
    higher_is_better: bool
    tiebreak: str | None = None
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    seeds: tuple[int, ...] = (0, 1)
    sweep_fraction: float = 0.25

    def __post_init__(self):
        if not self.lrs:
            raise ValueError("lrs must hold at least one learning rate")
        for lr in self.lrs:
            validate.positive_number("lrs", lr)
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct; got {list(self.lrs)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be one or more distinct integers; got {list(self.seeds)}")
        for seed in self.seeds:
            validate.non_negative_int("seeds", seed)
        fraction = validate.positive_number("sweep_fraction", self.sweep_fraction)
        if fraction > 1:
            raise ValueError(f"sweep_fraction must be in (0, 1]; got {fraction}")

    def sweep_steps(self, steps: int, eval_every: int) -> tuple[int, int]:
        """``(steps, eval_every)`` of a sweep run: ``ceil(fraction · steps)``, evaluated as often
        as the full run (at most once per step count)."""
        short = max(1, math.ceil(round(self.sweep_fraction * steps, 9)))  # 0.07 × 100 is 7
        return short, min(eval_every, short)

    def rank(self, summary: dict) -> tuple[float, float]:
        """A key that sorts better runs first (by :attr:`metric`, then :attr:`tiebreak`); a
        diverged run (no metric) or NaN last."""

        def finite(value):
            return value is not None and math.isfinite(value)

        value = summary.get(self.metric)
        if not finite(value):
            return math.inf, math.inf
        tie = summary.get(self.tiebreak) if self.tiebreak else None
        return (-value if self.higher_is_better else value), (tie if finite(tie) else math.inf)


def lr_folder(lr: float) -> str:
    """The sweep run's folder name for ``lr``: its shortest exact decimal (``lr-0.003``), so two
    rates never share a folder."""
    return f"lr-{float(lr)!r}"


def _read(folder: pathlib.Path, settings: dict, role: str) -> dict | None:
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    same = summary.get("settings") == settings and summary.get("role") == role
    return summary if same else None


def _run(train: Train, settings, folder: pathlib.Path, role: str, *, test: bool,
         trained_in: pathlib.Path | None = None) -> dict:  # fmt: skip
    """One run, read back when an earlier call finished it; otherwise trained from its start (a
    run stopped part-way is trained again whole: its rate and seconds are then timed in one go).
    ``trained_in``: the finished run in that folder is this one (MQAR's full-budget sweep): it is
    resumed at its last step, which trains nothing and reads the test split; the summary, naming
    it, goes to ``folder``."""
    wanted = dataclasses.asdict(settings)
    done = _read(folder, wanted, role)
    if done is not None:
        return {**done, "read_back": True}
    if trained_in is not None:
        summary = {**train(settings, trained_in, test, True), "trained_in": trained_in.name}
    else:
        try:
            summary = train(settings, folder, test, False)
        except TrainingDiverged as error:
            summary = {"mixer": settings.mixer, "settings": wanted, "diverged": str(error)}
    summary = {**summary, "role": role}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return {**summary, "read_back": False}


def tune(settings, folder, train: Train, protocol: Protocol,
         say: Callable[[str], None] = print) -> dict:  # fmt: skip
    """The protocol for one mixer: ``settings`` (a dataclass with ``mixer``, ``lr``, ``seed``,
    ``train_steps``, ``eval_every``) at the full budget; runs under ``folder``. Returns
    ``{"mixer", "lr" (chosen), "settings" (the full budget's, as given), "sweep" (the runs by
    rate), "runs" (the seed runs)}``; when every
    rate diverged, ``lr`` is ``None`` and ``runs`` empty (the tables say so)."""
    folder = pathlib.Path(folder)
    short, every = protocol.sweep_steps(settings.train_steps, settings.eval_every)
    sweep = []
    for lr in protocol.lrs:
        one = dataclasses.replace(settings, lr=lr, seed=protocol.seeds[0], train_steps=short,
                                  eval_every=every)  # fmt: skip
        r = _run(train, one, folder / lr_folder(lr), "sweep", test=False)
        sweep.append(r)
        value = r.get(protocol.metric)
        say(f"  {settings.mixer} lr {lr:g} ({short} steps): validation {protocol.metric} "
            + ("diverged" if value is None else f"{value:.4f}")
            + (" (read back)" if r["read_back"] else ""))  # fmt: skip
    ranked = min(zip(protocol.lrs, sweep, strict=True), key=lambda pair: protocol.rank(pair[1]))
    if protocol.rank(ranked[1])[0] == math.inf:
        say(f"  {settings.mixer}: every rate diverged or gave no {protocol.metric}; no seed runs")
        return {
            "mixer": settings.mixer,
            "lr": None,
            "settings": dataclasses.asdict(settings),
            "sweep": sweep,
            "runs": [],
        }
    best = ranked[0]
    runs = []
    for seed in protocol.seeds:
        one = dataclasses.replace(settings, lr=best, seed=seed)
        # the sweep ran this very run (full budget, first seed): not trained a second time
        same = short == settings.train_steps and seed == protocol.seeds[0]
        r = _run(train, one, folder / f"seed-{seed}", "test", test=True,
                 trained_in=folder / lr_folder(best) if same else None)  # fmt: skip
        runs.append(r)
        value = r.get("test_" + protocol.metric)
        say(f"  {settings.mixer} lr {best:g} seed {seed}: test {protocol.metric} "
            + ("diverged" if value is None else f"{value:.4f}")
            + (" (read back)" if r["read_back"] else ""))  # fmt: skip
    return {
        "mixer": settings.mixer,
        "lr": best,
        "settings": dataclasses.asdict(settings),
        "sweep": sweep,
        "runs": runs,
    }


def spread(values) -> tuple[float, float]:
    """``(mean, half the range)`` of ``values``; NaN when any is missing (a diverged run)."""
    if not values or any(v is None for v in values):
        return math.nan, math.nan
    return sum(values) / len(values), (max(values) - min(values)) / 2


def cell(result: dict, metric: str, fmt: Callable[[float], str]) -> str:
    """A mixer's test entry: ``mean ± half-range`` over its seed runs (``fmt`` formats a number),
    or which seeds diverged."""
    if result["lr"] is None:
        return "every lr diverged"
    values = [r.get("test_" + metric) for r in result["runs"]]
    failed = [r["settings"]["seed"] for r in result["runs"] if r.get("diverged")]
    if failed:
        return f"diverged (seed {', '.join(map(str, failed))})"
    mean, half = spread(values)
    return f"{fmt(mean)} ± {fmt(half)}"


def sweep_cell(result: dict, metric: str, fmt: Callable[[float], str]) -> str:
    """The validation metric of each swept rate, the chosen one in bold (``3e-3: **0.91**``),
    marked when the best rate is the smallest or the largest swept (a wider range might do
    better)."""
    parts, lrs = [], [r["settings"]["lr"] for r in result["sweep"]]
    for r in result["sweep"]:
        lr, value = r["settings"]["lr"], r.get(metric)
        text = "div." if value is None else fmt(value)
        parts.append(f"{lr:g}: " + (f"**{text}**" if lr == result["lr"] else text))
    edge = len(lrs) > 1 and result["lr"] in (min(lrs), max(lrs))
    return ", ".join(parts) + (" (best at an end of the range)" if edge else "")


def add_flags(parser) -> None:
    """``--lrs``, ``--seeds`` and ``--sweep-fraction``: the protocol of a ``--sweep``."""
    defaults = Protocol("metric", True)
    parser.add_argument("--lrs", type=float, nargs="+", default=None, metavar="LR",
                        help="a sweep's learning rates, tried on validation at the shorter budget "
                             f"(default {' '.join(f'{lr:g}' for lr in defaults.lrs)})")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="a sweep's seeds at the full budget with the chosen rate (default "
                             f"{' '.join(map(str, defaults.seeds))})")  # fmt: skip
    parser.add_argument("--sweep-fraction", type=float, default=None,
                        help="the rate sweep's share of the full budget's steps (default "
                             f"{defaults.sweep_fraction:g}; mqar: 1, and its chosen rate's run is "
                             "the first seed's)")  # fmt: skip


def check_mode(parser, args, given: dict) -> None:
    """Refuse the flags a call would ignore: the protocol's without ``--sweep`` (one run), and
    ``--lr``, ``--seed``, ``--resume`` with it (the protocol sets the rates and seeds, and
    continues a stopped sweep by itself)."""
    if not args.sweep:
        for name in ("lrs", "seeds", "sweep_fraction"):
            if getattr(args, name) is not None:
                flag = "--" + name.replace("_", "-")
                parser.error(f"{flag} is for a --sweep (the protocol); one run takes --lr/--seed")
        return
    for name, flag in (("lr", "--lr"), ("seed", "--seed")):
        if name in given:
            parser.error(f"{flag} is for one run: a --sweep chooses the rate among --lrs and "
                         "runs --seeds")  # fmt: skip
    if getattr(args, "resume", False):
        parser.error("--resume is for one run: a --sweep reads its finished runs back and "
                     "retrains the one it stopped in, by itself")  # fmt: skip


def from_args(parser, args, metric: str, higher_is_better: bool, **defaults) -> Protocol:
    """The :class:`Protocol` of the flags (:func:`add_flags`) over ``defaults`` (an experiment's
    own, e.g. a quick size's); a bad value ends the program with an ``error:`` line naming the
    flag, before any work."""
    given = {name: getattr(args, name) for name in ("lrs", "seeds", "sweep_fraction")
             if getattr(args, name) is not None}  # fmt: skip
    fields = {**defaults, **given}
    for name in ("lrs", "seeds"):
        if name in fields:
            fields[name] = tuple(fields[name])
    try:
        return Protocol(metric, higher_is_better, **fields)
    except (ValueError, TypeError) as error:
        message = str(error)
        for name in ("sweep_fraction", "lrs", "seeds"):
            message = message.replace(name, "--" + name.replace("_", "-"), 1)
        parser.error(message)


def lr_figure(panels: dict, metric: str, path, *, ylabel: str, title: str) -> None:
    """The rate sweep at a glance: the validation ``metric`` against the learning rate (log axis),
    a line per mixer, a panel per ``panels`` entry (``{panel title: [tune results]}``); the chosen
    rate ringed, a diverged run marked on the axis."""
    from matplotlib.figure import Figure  # the figures only: importing the protocol stays light

    from ssm_gd import plots

    fig = Figure(figsize=(4.2 * len(panels) + 0.8, 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (name, results) in zip(axes, panels.items(), strict=True):
        for i, result in enumerate(results):
            lrs = [r["settings"]["lr"] for r in result["sweep"]]
            values = [r.get(metric) for r in result["sweep"]]
            finite = [(lr, v) for lr, v in zip(lrs, values, strict=True)
                      if v is not None and math.isfinite(v)]  # fmt: skip
            colour = f"C{i}"
            if finite:
                ax.plot(*zip(*finite, strict=True), "o-", ms=3, color=colour,
                        label=result["mixer"])  # fmt: skip
                chosen = [v for lr, v in finite if lr == result["lr"]]
                ax.plot([result["lr"]] * len(chosen), chosen, "o", ms=9, mfc="none", color=colour)
            failed = [lr for lr, v in zip(lrs, values, strict=True)
                      if v is None or not math.isfinite(v)]  # fmt: skip
            if failed:
                ax.plot(failed, [0] * len(failed), "x", color=colour, transform=ax.get_xaxis_transform(),
                        clip_on=False)  # fmt: skip
        ax.set_xscale("log")
        ax.set(xlabel="peak learning rate", title=name)
        ax.title.set_fontsize(9)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    plots.save(fig, path)
