"""GRIL and its baselines as sequence mixers, for general sequence tasks.

This package imports only the core of :mod:`ssm_gd` (validation, initialisers, scans, readouts,
the diagonal recurrence, the trainer), never the paper's modules. Its submodules, each imported on
first use:

* :mod:`~ssm_gd.seq.gril` — the GRIL mixer (the GD-SSM's three parts on any token stream);
* :mod:`~ssm_gd.seq.mixers` — every mixer and the name → factory table;
* :mod:`~ssm_gd.seq.models` — blocks, heads, the model, parameter matching;
* :mod:`~ssm_gd.seq.generate` — prefill and sampling with the recurrent forms;
* :mod:`~ssm_gd.seq.mqar`, :mod:`~ssm_gd.seq.listops`, :mod:`~ssm_gd.seq.text` — the tasks:
  associative recall, ListOps, character-level language modelling.
"""

from __future__ import annotations

import importlib
import typing

__all__ = ["generate", "gril", "listops", "mixers", "models", "mqar", "text"]

if typing.TYPE_CHECKING:
    from ssm_gd.seq import generate, gril, listops, mixers, models, mqar, text  # noqa: F401


def __getattr__(name: str):
    """``ssm_gd.seq.<submodule>``: import it on first use (PEP 562)."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
