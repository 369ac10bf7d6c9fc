"""GD-SSM: a state-space model that learns in context by gradient descent, in JAX.

The package is a set of submodules, each imported the first time it is used, so that
``import ssm_gd`` costs nothing and imports neither JAX nor matplotlib::

    import jax
    import ssm_gd

    key = jax.random.key(0)
    task = ssm_gd.tasks.linear_regression(key, batch=64, n_context=10, d_in=10)  # imports tasks
    model = ssm_gd.construction.gd_ssm(d_in=10, d_out=1, n_context=10, lr=1.0)

``from ssm_gd import gd, layers`` works as usual. Two worlds on one core (docs/design.md opens
with the tree; tests/test_layout.py holds the rules):

* the core, which imports neither world: :mod:`~ssm_gd.validate`, :mod:`~ssm_gd.initializers`,
  :mod:`~ssm_gd.sampling`, :mod:`~ssm_gd.scan`, :mod:`~ssm_gd.readout`,
  :mod:`~ssm_gd.recurrence` (the diagonal recurrence and SSM), :mod:`~ssm_gd.optim`,
  :mod:`~ssm_gd.flags`, :mod:`~ssm_gd.checkpoints`, :mod:`~ssm_gd.trainer`, :mod:`~ssm_gd.plots`;
* the paper: :mod:`~ssm_gd.tokens`, :mod:`~ssm_gd.tasks`, :mod:`~ssm_gd.gd` (the references),
  :mod:`~ssm_gd.layers` (the GD-SSM), :mod:`~ssm_gd.construction`, :mod:`~ssm_gd.neighbours`,
  :mod:`~ssm_gd.metrics`, :mod:`~ssm_gd.config`, :mod:`~ssm_gd.regression`,
  :mod:`~ssm_gd.classify`, :mod:`~ssm_gd.train`;
* :mod:`ssm_gd.seq`: GRIL as a sequence mixer beside its baselines, on general sequence tasks
  (it imports only the core).

The old paths ``ssm_gd.gril``, ``ssm_gd.models``, ``ssm_gd.listops`` and ``ssm_gd.text`` alias
their new places in :mod:`ssm_gd.seq` for one release.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import typing

__all__ = [
    "__version__",
    "checkpoints",
    "classify",
    "config",
    "construction",
    "flags",
    "gd",
    "gril",
    "initializers",
    "layers",
    "listops",
    "metrics",
    "models",
    "neighbours",
    "optim",
    "plots",
    "readout",
    "recurrence",
    "regression",
    "sampling",
    "scan",
    "seq",
    "tasks",
    "text",
    "tokens",
    "train",
    "trainer",
    "validate",
]

try:
    __version__ = importlib.metadata.version("ssm-gd")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"

_SUBMODULES = frozenset(__all__) - {"__version__"}

if typing.TYPE_CHECKING:  # the names as static analysers and editors should see them
    from ssm_gd import (  # noqa: F401
        checkpoints,
        classify,
        config,
        construction,
        flags,
        gd,
        initializers,
        layers,
        metrics,
        neighbours,
        optim,
        plots,
        readout,
        recurrence,
        regression,
        sampling,
        scan,
        seq,
        tasks,
        tokens,
        train,
        trainer,
        validate,
    )


def __getattr__(name: str):
    """``ssm_gd.<submodule>``: import it on first use (PEP 562); later uses find it bound."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
