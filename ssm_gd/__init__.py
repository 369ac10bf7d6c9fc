"""GD-SSM: a state-space model that learns in context by gradient descent, in JAX.

The package is a set of submodules, each imported the first time it is used, so that
``import ssm_gd`` costs nothing and imports neither JAX nor matplotlib::

    import jax
    import ssm_gd

    key = jax.random.key(0)
    task = ssm_gd.tasks.linear_regression(key, batch=64, n_context=10, d_in=10)  # imports tasks
    model = ssm_gd.construction.gd_ssm(d_in=10, d_out=1, n_context=10, lr=1.0)

``from ssm_gd import gd, layers`` works as usual. The submodules, bottom-up (each imports only
those above it; the design notes, docs/design.md §9, say more):

* :mod:`~ssm_gd.validate` — argument checks with one message format;
* :mod:`~ssm_gd.scan` — diagonal linear recurrences, one entry point;
* :mod:`~ssm_gd.readout` — readouts that never build every state, and the rules that choose them;
* :mod:`~ssm_gd.tokens`, :mod:`~ssm_gd.tasks` — token layouts; pure, keyed task samplers;
* :mod:`~ssm_gd.gd` — the references: explicit GD, least squares, best step size, GD variants;
* :mod:`~ssm_gd.initializers`, :mod:`~ssm_gd.layers` — the GD-SSM layer (flax.nnx);
* :mod:`~ssm_gd.gril` — the layer as a sequence mixer for any token stream (GRIL);
* :mod:`~ssm_gd.models` — blocks and models around GRIL or a baseline mixer, generation;
* :mod:`~ssm_gd.construction` — the closed-form parameters that make it K-step GD;
* :mod:`~ssm_gd.neighbours` — linear self-attention, H3 and a plain SSM;
* :mod:`~ssm_gd.metrics` — losses, sensitivities, alignment, parameter match;
* :mod:`~ssm_gd.checkpoints`, :mod:`~ssm_gd.trainer`, :mod:`~ssm_gd.classify`,
  :mod:`~ssm_gd.train` — training: the loop, classification and regression as tasks;
* :mod:`~ssm_gd.plots` — figures (matplotlib, no backend chosen).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import typing

__all__ = [
    "__version__",
    "checkpoints",
    "classify",
    "construction",
    "gd",
    "gril",
    "initializers",
    "layers",
    "metrics",
    "models",
    "neighbours",
    "plots",
    "readout",
    "scan",
    "tasks",
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
        construction,
        gd,
        gril,
        initializers,
        layers,
        metrics,
        models,
        neighbours,
        plots,
        readout,
        scan,
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
