"""Command-line flags from a frozen dataclass (core): the one generator every command line uses.

:func:`add_flags` adds ``--field-name`` per field of a dataclass (the paper's
:class:`ssm_gd.config.Config`, an experiment's settings); :func:`with_flags` rewrites an error
message about fields into one about flags, so that ``parser.error`` names what the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping

__all__ = ["add_flags", "flag", "given", "with_flags"]


def flag(name: str) -> str:
    """``n_context`` → ``--n-context``."""
    return "--" + name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    defaults=None,
    helps: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable] | None = None,
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    unset: bool = False,
) -> None:
    """One flag per field of the dataclass ``cls``, typed by its annotation (``int | None`` as
    ``int``), with ``choices`` and ``helps`` per field and ``aliases`` (extra spellings).

    The flag's default is the field's value in ``defaults`` (an instance; ``cls()`` if omitted),
    shown in its help; with ``unset=True`` every flag defaults to ``None`` instead, so that
    :func:`given` tells which were typed.
    """
    defaults = cls() if defaults is None else defaults
    helps, choices, aliases = helps or {}, choices or {}, aliases or {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        default = getattr(defaults, field.name)
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(
            flag(field.name),
            *aliases.get(field.name, ()),
            type=kind,
            default=None if unset else default,
            choices=choices.get(field.name),
            help=(helps.get(field.name, "") + shown).strip().replace("%", "%%"),
        )


def given(args: argparse.Namespace, cls: type) -> dict:
    """The fields of ``cls`` whose flags were typed (flags added with ``unset=True``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if v is not None}


def with_flags(message: str, names: Iterable[str]) -> str:
    """An error about fields as the command line says it: each of ``names`` that the message
    uses as a name becomes its flag (``n_context must be ...`` → ``--n-context must be ...``).
    A plain-word field (``task``, ``model``) is translated where it is a name: at the start,
    before ``=``, after ``than``; a name with ``_`` everywhere."""
    names = sorted(names, key=len, reverse=True)
    if not names:
        return message
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, names)) + r")(?!\w)")

    def replace(match):
        name, start = match.group(1), match.start()
        if (
            "_" in name
            or start == 0
            or message.startswith("=", match.end())
            or message[:start].endswith("than ")
        ):
            return flag(name)
        return name

    return pattern.sub(replace, message)
