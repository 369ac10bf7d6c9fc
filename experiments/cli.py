"""The experiments' shared harness: command lines, output folders, runs and sweeps.

The paper's experiments use :func:`writable_folder`, :func:`grid_runs` and :func:`base_config`.
The sequence experiments (``mqar``, ``listops``, ``lm``) share one command line
(:func:`experiment_parser`: a flag per settings field, ``--out``, ``--quick``, ``--sweep``,
``--mixers``, ``--resume``, ``--no-progress`` and the protocol's ``--lrs``, ``--seeds``,
``--sweep-fraction``, :mod:`experiments.protocol`), one rule for output folders (:func:`output_folder`:
a ``--quick`` run never writes over full-size results), one check of the settings
(:func:`check_settings`) and one loop over runs (:func:`run_all`: a sweep reads back the runs an
earlier call finished with the same settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

from experiments import protocol
from ssm_gd import config as run_config
from ssm_gd import distributed, flags, validate
from ssm_gd.checkpoints import ResumeError

__all__ = [
    "COMPILE_CACHE",
    "QUICK_ROOT",
    "compile_cache",
    "base_config",
    "check_settings",
    "experiment_parser",
    "finished_run",
    "given_settings",
    "grid_runs",
    "one_run",
    "out_flag",
    "output_folder",
    "SMALL_MARK",
    "report_parser",
    "results_folder",
    "run_all",
    "run_folder",
    "settings_flags",
    "sweep_runs",
    "writable_folder",
    "write_summary",
]

#: Where ``--quick`` runs write by default: apart from the committed full-size results.
QUICK_ROOT = pathlib.Path("results") / "quick"


#: Where :func:`compile_cache` keeps compiled programs unless JAX is given a folder already.
COMPILE_CACHE = pathlib.Path.home() / ".cache" / "ssm-gd" / "jax"


def compile_cache() -> None:
    """JAX's persistent compilation cache for a long sweep: a program compiled once (the same
    model, seed and steps at another rate — :func:`ssm_gd.optim.adamw` keeps the rate out of the
    program — or any program of a repeated call) is read back instead of compiled again. Uses
    ``JAX_COMPILATION_CACHE_DIR`` if set, else :data:`COMPILE_CACHE`."""
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def writable_folder(parser: argparse.ArgumentParser, path, flag: str = "--out") -> pathlib.Path:
    """``path`` as a folder this process can write to, made if missing; checked before any work.

    A folder that cannot be made or written to ends the program as argparse does (exit status 2,
    one ``error:`` line naming ``flag``), not with a traceback after the training.
    """
    if distributed.launched() and not distributed.joined():
        parser.error(
            "this program runs in one process; python -m experiments.launch runs "
            "experiments.linear and experiments.lm (one run, not --sweep) over several"
        )
    folder = pathlib.Path(path)
    reason = None
    if not distributed.launched() or distributed.is_writer():  # process 0 makes and writes it
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            reason = error.strerror or str(error)
    if distributed.launched() and distributed.agree(int(reason is not None)):  # all stop together
        reason = reason or "process 0 could not write to it"
    if reason is not None:
        parser.error(f"{flag} {str(path)!r} is not a writable folder: {reason}")
    return folder


def out_flag(parser, default: str) -> None:
    """``--out``: the output folder, ``default`` (``results/<name>``) unless given; with
    ``--quick`` ``results/quick/<name>`` (:func:`run_folder` resolves it)."""
    parser.add_argument("--out", default=None,
                        help=f"output folder (default {default}; with --quick under {QUICK_ROOT})")  # fmt: skip
    parser.set_defaults(default_out=default)


def run_folder(parser, args) -> pathlib.Path:
    """A paper experiment's ``--out``, checked (:func:`writable_folder`) and stored in
    ``args.out``: the folder given, or by default ``args.default_out`` (``results/<name>``) — with
    ``--quick`` ``results/quick/<name>``, so that a quick run never writes over the committed
    full-size results."""
    if args.out is None:
        default = pathlib.Path(args.default_out)
        args.out = str(QUICK_ROOT / default.name if getattr(args, "quick", False) else default)
    return writable_folder(parser, args.out)


#: The first line of a small-size call's report (``--quick``, ``--smoke``): a full-size call
#: never writes over it, nor a small one over a report without it.
SMALL_MARK = "_A small-size run (`--quick` or `--smoke`): its numbers are not the results._"


def report_parser(description: str, names, *, what: str, smoke: str, accelerator: bool = False):
    """The command line of a call that runs several experiments and writes a report:
    ``--results``, the sizes (``--quick``, ``--smoke``, optionally ``--accelerator``) and
    ``--only``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", default=None,
                        help=f"folder for every {what}'s output and the report (default results; "
                             "with --quick or --smoke results/quick)")  # fmt: skip
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"every {what} at a small size")
    size.add_argument("--smoke", action="store_true", help=f"the test suite's size: {smoke}")
    if accelerator:
        size.add_argument("--accelerator", action="store_true",
                          help="the published sizes (GPU/TPU)")  # fmt: skip
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help=f"a subset of {list(names)}")  # fmt: skip
    return parser


def results_folder(parser, given, *, small: bool, report: str) -> pathlib.Path:
    """``--results`` checked before any run: a folder (made if missing), and never one whose
    ``report`` is of another size (:data:`SMALL_MARK`): a quick or smoke call does not write over
    the full-size results, nor a full-size call over small ones."""
    results = pathlib.Path(given or (QUICK_ROOT if small else "results"))
    if results.exists() and not results.is_dir():
        parser.error(f"--results {str(results)!r} is not a folder")
    path = results / report
    if path.exists() and (SMALL_MARK in path.read_text()) != small:
        found = "a full-size" if small else "a small-size"
        parser.error(
            f"--results {str(results)!r} holds {found} {report}; this call writes elsewhere "
            f"(the default for it: {str(QUICK_ROOT) if small else 'results'})"
        )
    writable_folder(parser, results, "--results")
    return results


def settings_flags(parser, settings_class, *, helps=None, choices=None) -> None:
    """A flag per field of the dataclass ``settings_class`` (``--seq-len`` for ``seq_len``;
    ``train_steps`` also as ``--steps``), each defaulting to ``None`` so that
    :func:`given_settings` tells what was given (:func:`ssm_gd.flags.add_flags`)."""
    flags.add_flags(parser, settings_class, helps=helps, choices=choices,
                    aliases={"train_steps": ("--steps",)}, unset=True)  # fmt: skip


def given_settings(args, settings_class) -> dict:
    """The fields of ``settings_class`` given on the command line (:func:`settings_flags`)."""
    return flags.given(args, settings_class)


def experiment_parser(description: str, settings_class, *, helps=None, choices=None):
    """The command line of a sequence experiment: a flag per field of ``settings_class`` and
    ``--out``, ``--quick``, ``--sweep``, ``--mixers`` (the sweep's mixers), ``--resume`` and
    ``--no-progress``."""
    parser = argparse.ArgumentParser(description=description)
    settings_flags(parser, settings_class, helps=helps, choices=choices)
    parser.add_argument("--out", default=None,
                        help="output folder (default results/<name>; with --quick "
                             "results/quick/<name>)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke size (seconds to minutes)")
    parser.add_argument("--sweep", action="store_true", help="every mixer (--mixer is not used)")
    parser.add_argument("--mixers", nargs="+", default=None, metavar="MIXER",
                        choices=(choices or {}).get("mixer"),
                        help="the mixers of a sweep (default: every mixer)")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run(s) in --out from their checkpoints")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    protocol.add_flags(parser)
    return parser


def output_folder(parser, args, name: str) -> pathlib.Path:
    """The run's folder, checked before any work: ``--out``, or ``results/<name>``
    (``results/quick/<name>`` with ``--quick``). A ``--quick`` run never writes over full-size
    results: a folder whose ``summary.json`` is not a quick run's is refused, with the reason."""
    default = (QUICK_ROOT if args.quick else pathlib.Path("results")) / name
    out = pathlib.Path(args.out) if args.out is not None else default
    if args.quick:
        try:
            summary = json.loads((out / "summary.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
            summary = None
        if summary is not None and summary.get("quick") is not True:
            parser.error(
                f"--out {str(out)!r} holds full-size results (its summary.json is not a --quick "
                f"run's): a --quick run writes elsewhere (default {str(default)!r})"
            )
    return writable_folder(parser, out)


def check_settings(parser, settings, *, spellings=None) -> None:
    """Every number of ``settings`` (a dataclass) checked before any work, as an ``error:`` line
    that names the flag: integers positive (``seed``, ``data_seed``: non-negative), floats finite and positive
    (``temperature``: non-negative); ``None`` (unset) passes. ``spellings``: a field's flag where
    it is not ``--field-name``."""
    spellings = spellings or {}
    for name, value in dataclasses.asdict(settings).items():
        if value is None or isinstance(value, str | bool):
            continue
        if isinstance(value, int):
            check = validate.non_negative_int if name.endswith("seed") else validate.positive_int
        else:
            check = (
                validate.non_negative_number if name == "temperature" else validate.positive_number
            )
        try:
            check(name, value)
        except (ValueError, TypeError) as error:
            flag = spellings.get(name, flags.flag(name))
            parser.error(str(error).replace(name, flag, 1))


def sweep_runs(settings, out: pathlib.Path, mixers, *, folder=lambda s: s.mixer):
    """``(settings, folder)`` of each mixer of a sweep: ``settings`` with ``mixer`` replaced, in
    ``out / folder(settings)``."""
    runs = [dataclasses.replace(settings, mixer=m) for m in mixers]
    return [(s, out / folder(s)) for s in runs]


def run_all(runs, train_one, *, sweep: bool, say) -> list[dict]:
    """Each ``(settings, folder)`` of ``runs`` trained by ``train_one(settings, folder)``, or, in a
    sweep, read back from ``folder/summary.json`` when an earlier call finished it with the same
    settings (:func:`finished_run`); ``say(settings, result)`` prints a line per run."""
    results = []
    for one, folder in runs:
        r = finished_run(folder, one) if sweep else None
        if r is None:
            try:
                r = train_one(one, folder)
            except ResumeError as error:  # one line, exit status 1: not a traceback
                sys.exit(f"error: --resume: {error}")
            if sweep:
                write_summary(folder, r)
        results.append(r)
        say(one, r)
    return results


def write_summary(folder: pathlib.Path, summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def finished_run(folder: pathlib.Path, settings) -> dict | None:
    """The ``summary.json`` in ``folder`` of a finished run with these ``settings`` (a dataclass),
    or ``None``: how a stopped sweep continues without training a finished run again."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return summary if summary.get("settings") == dataclasses.asdict(settings) else None


def grid_runs(description: str, out: str, argv=None):
    """The flags of an experiment that trains a grid of runs: ``--out``, ``--quick``,
    ``--train-steps``, ``--seed``. Returns ``(parser, args, out folder)``, the folder checked."""
    parser = argparse.ArgumentParser(description=description)
    out_flag(parser, out)
    parser.add_argument("--quick", action="store_true", help="a small run (a minute or two)")
    parser.add_argument("--smoke", action="store_true",
                        help="the test suite's size: --quick with the smallest grid that runs "
                             "every code path")  # fmt: skip
    parser.add_argument("--train-steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.quick = args.quick or args.smoke
    return parser, args, run_folder(parser, args)  # before any work


def base_config(parser, args, base: dict, quick: dict, variants=({},)):
    """The :class:`ssm_gd.config.Config` every run starts from: ``base``, with ``quick`` on top for
    ``--quick``, ``--train-steps`` and ``--seed``; it and each of ``variants`` (the fields a run
    changes) are checked now, so a bad flag ends the program before the first run."""
    fields = {**base, **(quick if args.quick else {}), "seed": args.seed}
    if args.train_steps is not None:
        fields["train_steps"] = args.train_steps
        fields["eval_every"] = min(fields["eval_every"], args.train_steps)
    try:
        config = run_config.Config(**fields)
        for variant in variants:
            dataclasses.replace(config, **variant)
    except (ValueError, TypeError) as error:
        parser.error(run_config.with_flags(str(error)))
    return config


def one_run(args, out: pathlib.Path, start: float, train, describe, figure: str,
            draw=None) -> dict:  # fmt: skip
    """A sequence experiment called without ``--sweep``: ``train()`` (one run's summary; a
    ``--resume`` that cannot resume ends the program with one ``error:`` line, exit status 1),
    ``describe(summary)`` printed, the figure ``out/figure`` drawn by ``draw([summary], path)``
    (``None``: the run drew it), and the summary written with its wall seconds."""
    try:
        summary = train()
    except ResumeError as error:  # one line, exit status 1: not a traceback
        sys.exit(f"error: --resume: {error}")
    if not distributed.is_writer():  # one of several processes: process 0 speaks and writes
        return summary
    print(describe(summary), flush=True)
    wall = time.perf_counter() - start
    summary = {**summary, "wall_seconds": wall, "figures": [figure]}
    if draw is not None:
        draw([summary], out / figure)
    write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json and the figures in {wall:.0f} s")
    return summary
