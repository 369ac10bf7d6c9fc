"""Shared test settings (and the order in which the longest tests start).

* float64 where the mathematics is exact; float32 checks ask for it explicitly.
* The suite compiles hundreds of small programs: LLVM's backend optimisation is most of that
  time and changes no float result (XLA:CPU does not reassociate without fast-math), so tests
  compile at ``--xla_backend_optimization_level=0``. Set before JAX starts its backend.
"""

import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


# The longest tests first: pytest-xdist hands tests to the workers in collection order, so a
# several-minute test collected last would run alone at the end while the other worker idles.
LONGEST_FIRST = ("test_reproduce.py::test_quick_reproduce_writes_every_experiment_and_the_report",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.endswith(LONGEST_FIRST))


@pytest.fixture(autouse=True)
def _no_persistent_compile_cache(monkeypatch):
    """The sweeps turn on JAX's persistent compilation cache in the user's home
    (``experiments.cli.compile_cache``); a test writes only into its own temporary folders."""
    from experiments import cli

    monkeypatch.setattr(cli, "compile_cache", lambda: None)
