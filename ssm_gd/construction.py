"""Closed-form GD-SSM parameters that implement K steps of gradient descent exactly.

With ``c = η / N``, ``e_a`` the a-th unit vector of the 3-token window ``[x_t; y_t; x_{t+1}]``:

==============  ======================  =========================================
parameter       value                   effect
==============  ======================  =========================================
``Q_y``         ``e_2 e_1ᵀ``            ``U^y_t = y_t x_tᵀ``  (constructed: ``P_y = e_2``, ``U^y_t = x_t y_t``)
``Q_x``         ``e_1 e_1ᵀ``            ``U^x_t = x_t x_tᵀ``
``Λ_y, Λ_x``    ``1``                   ``S^y_t = Σ_{i≤t} y_i x_iᵀ``, ``S^x_t = Σ_{i≤t} x_i x_iᵀ``
``D``           ``e_3``                 the query ``x_{t+1}``
``C_y, C_x``    ``c I``                 ``ŷ_t = W_K x_{t+1}`` on the prefix of ``t`` pairs
==============  ======================  =========================================

The model is *built* from these values through the modules' initializers; no parameter is
edited after construction.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd.layers import GDSSM, GDSSMInit
from ssm_gd.tasks import check_layout

__all__ = ["gd_ssm", "gd_ssm_values"]


def _constant(value):
    """An initializer that returns ``value`` (and checks that the requested shape matches)."""
    value = np.asarray(value)

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) != value.shape:
            raise ValueError(f"constructed value has shape {value.shape}, module asked {shape}")
        return jnp.asarray(value, dtype)

    return init


def _constant_fill(value: float):
    """An initializer that fills any requested shape with ``value``."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


def gd_ssm_values(*, d_in: int, d_out: int, n_context: int, lr: float, layout: str = "interleaved"):
    """The constructed parameter values as numpy arrays (float64), keyed by role.

    Keys: ``q_y`` (``(3, 3)``, or ``(3,)`` constructed), ``q_x`` ``(3, 3)``, ``d`` ``(3,)``,
    ``c_y`` ``(d_out, R)``, ``c_x`` ``(h, h)``, ``lam`` (the value of every ``Λ``).
    """
    check_layout(layout, d_in, d_out)
    if isinstance(n_context, bool) or not isinstance(n_context, int) or n_context <= 0:
        raise ValueError(f"n_context must be a positive integer; got {n_context!r}")
    if not np.isfinite(lr):
        raise ValueError(f"lr must be a finite number; got {lr!r}")
    c = float(lr) / n_context
    e = np.eye(3)
    h = max(d_in, d_out) if layout == "interleaved" else d_in
    rows = h if layout == "interleaved" else 1
    return {
        "q_y": np.outer(e[1], e[0]) if layout == "interleaved" else e[1],
        "q_x": np.outer(e[0], e[0]),
        "d": e[2],
        "c_y": c * np.eye(d_out, rows),
        "c_x": c * np.eye(h),
        "lam": 1.0,
    }


def gd_ssm(
    *,
    d_in: int,
    d_out: int,
    n_context: int,
    lr: float,
    steps: int = 1,
    layout: str = "interleaved",
    impl: str = "associative",
    dtype=jnp.float32,
) -> GDSSM:
    """A :class:`~ssm_gd.layers.GDSSM` whose predictions are exactly K-step GD with step size ``lr``.

    ``model(tokens(task, layout))`` has shape ``(B, N, d_out)`` and equals
    :func:`ssm_gd.gd.predict_prefixes` (its last window: :func:`ssm_gd.gd.predict`) up to float
    rounding, for contexts of ``n_context`` pairs (the ``1/N`` normaliser is built into ``C``).
    """
    v = gd_ssm_values(d_in=d_in, d_out=d_out, n_context=n_context, lr=lr, layout=layout)
    init = GDSSMInit(
        q_y=_constant(v["q_y"]),
        q_x=_constant(v["q_x"]),
        lam=_constant_fill(v["lam"]),
        c_y=_constant(v["c_y"]),
        c_x=_constant(v["c_x"]),
        d=_constant(v["d"]),
    )
    return GDSSM(
        d_in,
        d_out,
        n_steps=steps,
        layout=layout,
        init=init,
        impl=impl,
        param_dtype=dtype,
        rngs=nnx.Rngs(0),
    )
