"""Shared test settings.

* float64 where the mathematics is exact; float32 checks ask for it explicitly.
* The suite compiles hundreds of small programs: LLVM's backend optimisation is most of that
  time and changes no float result (XLA:CPU does not reassociate without fast-math), so tests
  compile at ``--xla_backend_optimization_level=0``. Set before JAX starts its backend.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
