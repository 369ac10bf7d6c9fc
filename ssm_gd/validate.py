"""Argument checks shared by the whole library: one message format, raised before any tracing.

Every public function checks its arguments through these helpers, so that a bad value fails at
the call with a message that names the argument and says what is accepted::

    n_context must be a positive integer; got -1
    lr must be a positive finite number; got nan
    pred and target must have the same shape; got (4, 1) and (4,)

Numbers: Python and numpy integers and floats are accepted (``np.int64(3)`` is an integer);
``bool`` and strings are not. A traced value (inside ``jax.jit``) cannot be inspected: the value
checks skip it, and its shape is still checked where a shape is asked for.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import numpy as np

__all__ = [
    "ArgumentTypeError",
    "finite_number",
    "is_traced",
    "non_negative_int",
    "non_negative_number",
    "number_in",
    "one_of",
    "positive_int",
    "positive_number",
    "same_shape",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string for a size, a bool for a number).

    A ``TypeError``, and a ``ValueError`` too, so that ``except ValueError`` catches every bad
    argument the library rejects.
    """


def is_traced(value) -> bool:
    """Whether ``value`` is a JAX tracer (its value is unknown until run)."""
    return isinstance(value, jax.core.Tracer)


def _integer(name: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    return int(value)


def positive_int(name: str, value) -> int:
    """``value`` as a Python ``int`` ``>= 1``."""
    out = _integer(name, value, "a positive integer")
    if out < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return out


def non_negative_int(name: str, value) -> int:
    """``value`` as a Python ``int`` ``>= 0``."""
    out = _integer(name, value, "a non-negative integer")
    if out < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
    return out


def _scalar(name: str, value, what: str):
    """A real scalar (Python/numpy number, 0-d array), or a tracer; TypeError otherwise."""
    if is_traced(value):
        if value.ndim != 0:
            raise ValueError(f"{name} must be {what} (a scalar); got shape {value.shape}")
        return value
    if isinstance(value, bool | str | bytes) or value is None:
        raise ArgumentTypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    if isinstance(value, numbers.Real):
        return float(value)
    arr = np.asarray(value) if isinstance(value, np.ndarray | np.generic | jax.Array) else None
    if arr is None or arr.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    if arr.ndim != 0:
        raise ValueError(f"{name} must be {what} (a scalar); got shape {arr.shape}")
    return float(arr)


def finite_number(name: str, value):
    """A finite real scalar (returned as ``float``; a tracer is returned unchecked)."""
    out = _scalar(name, value, "a finite number")
    if not is_traced(out) and not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return out


def positive_number(name: str, value):
    """A finite real scalar ``> 0``."""
    out = _scalar(name, value, "a positive finite number")
    if not is_traced(out) and not (math.isfinite(out) and out > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return out


def non_negative_number(name: str, value):
    """A finite real scalar ``>= 0``."""
    out = _scalar(name, value, "a non-negative finite number")
    if not is_traced(out) and not (math.isfinite(out) and out >= 0):
        raise ValueError(f"{name} must be a non-negative finite number; got {value!r}")
    return out


def number_in(name: str, value, low: float, high: float, *, open_low: bool = False):
    """A finite real scalar in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    bracket = "(" if open_low else "["
    what = f"a number in {bracket}{low}, {high}]"
    out = _scalar(name, value, what)
    if is_traced(out):
        return out
    above = out > low if open_low else out >= low
    if not (math.isfinite(out) and above and out <= high):
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return out


def one_of(name: str, value, allowed: Sequence):
    """``value`` if it is one of ``allowed``."""
    if not isinstance(value, str | int | type(None)) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}; got {value!r}")
    return value


def same_shape(name_a: str, a, name_b: str, b) -> None:
    """Both arrays have one shape (no broadcasting between a prediction and its target)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; got {np.shape(a)} and {np.shape(b)}"
        )
