"""Tests run in float64 where the mathematics is exact; float32 checks ask for it explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
