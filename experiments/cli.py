"""Command-line helpers shared by the experiments."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib

__all__ = [
    "base_config",
    "finished_run",
    "given_settings",
    "grid_runs",
    "settings_flags",
    "writable_folder",
]


def writable_folder(parser: argparse.ArgumentParser, path, flag: str = "--out") -> pathlib.Path:
    """``path`` as a folder this process can write to, made if missing; checked before any work.

    A folder that cannot be made or written to ends the program as argparse does (exit status 2,
    one ``error:`` line naming ``flag``), not with a traceback after the training.
    """
    folder = pathlib.Path(path)
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        parser.error(f"{flag} {str(path)!r} is not a writable folder: {reason}")
    return folder


def settings_flags(parser, settings_class, *, types=None, helps=None, choices=None) -> None:
    """A flag per field of the dataclass ``settings_class`` (``--seq-len`` for ``seq_len``;
    ``train_steps`` also as ``--steps``), each defaulting to ``None`` so that
    :func:`given_settings` tells what was given. ``types``: the types of the fields whose default
    is ``None``; ``helps`` and ``choices``: per field."""
    defaults = settings_class()
    types, helps, choices = types or {}, helps or {}, choices or {}
    for field in dataclasses.fields(settings_class):
        flag = "--" + field.name.replace("_", "-")
        names = (flag, "--steps") if field.name == "train_steps" else (flag,)
        default = getattr(defaults, field.name)
        parser.add_argument(*names, type=types.get(field.name, type(default)), default=None,
                            choices=choices.get(field.name),
                            help=f"{helps.get(field.name, '')} (default {default})".lstrip())  # fmt: skip


def given_settings(args, settings_class) -> dict:
    """The fields of ``settings_class`` given on the command line (:func:`settings_flags`)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)}
    return {k: v for k, v in given.items() if v is not None}


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
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run (a minute or two)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return parser, args, writable_folder(parser, args.out)  # before any work


def base_config(parser, args, base: dict, quick: dict, variants=({},)):
    """The :class:`ssm_gd.train.Config` every run starts from: ``base``, with ``quick`` on top for
    ``--quick``, ``--train-steps`` and ``--seed``; it and each of ``variants`` (the fields a run
    changes) are checked now, so a bad flag ends the program before the first run."""
    from ssm_gd import train  # the experiments' own import; this module stays light

    fields = {**base, **(quick if args.quick else {}), "seed": args.seed}
    if args.train_steps is not None:
        fields["train_steps"] = args.train_steps
        fields["eval_every"] = min(fields["eval_every"], args.train_steps)
    try:
        config = train.Config(**fields)
        for variant in variants:
            dataclasses.replace(config, **variant)
    except (ValueError, TypeError) as error:
        parser.error(train._with_flags(str(error)))
    return config
