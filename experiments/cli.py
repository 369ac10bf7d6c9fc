"""Command-line helpers shared by the experiments."""

from __future__ import annotations

import argparse
import os
import pathlib

__all__ = ["writable_folder"]


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
