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

Two neighbours of plain GD come from the same table (docs/design.md §6), for any K:

* ``preconditioner=Γ``: ``D_3 = Γ`` (the matrix query map) and ``C_x = c Γ`` give preconditioned GD,
  ``W_{k+1} = W_k − η ∇L(W_k) Γ``;
* ``decay=λ``: ``Λ_y = Λ_x = λ`` gives sample-weighted GD, on the prefix of ``t`` pairs the loss
  ``1/(2N) Σ_{i≤t} λ^{t−i} ||W x_i − y_i||²`` (the recent pairs count most).

With ``minibatch=m`` the window holds ``m`` pairs and the next input,
``[x_{(t−1)m+1}; y_{(t−1)m+1}; …; x_{tm}; y_{tm}; x_{tm+1}]`` (``2m + 1`` rows, stride ``2m``):
``Q_y = Σ_j e_{2j} e_{2j−1}ᵀ`` and ``Q_x = Σ_j e_{2j−1} e_{2j−1}ᵀ`` (``j = 1…m``) add a whole
minibatch's gradient per window, ``D = e_{2m+1}``; window ``t`` predicts ``x_{tm+1}`` by K steps on the
first ``tm`` pairs, and a decay ``λ`` weighs pair ``i`` by ``λ`` per window after its own.

The model is *built* from these values through the modules' initializers; no parameter is
edited after construction.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import validate
from ssm_gd.initializers import constant_init, fill_init
from ssm_gd.layers import GDSSM, GDSSMInit
from ssm_gd.tokens import check_layout, row_width

__all__ = ["gd_ssm", "gd_ssm_values", "init_from_values"]


def gd_ssm_values(
    *,
    d_in: int,
    d_out: int,
    n_context: int,
    lr: float,
    layout: str = "interleaved",
    preconditioner=None,
    decay: float | None = None,
    minibatch: int = 1,
):
    """The constructed parameter values as numpy arrays (float64), keyed by role.

    Keys: ``q_y`` (``(w, w)``, or ``(w,)`` constructed), ``q_x`` ``(w, w)``, ``d`` (``(w,)``, or
    ``(w, h, h)`` with a ``preconditioner``), ``c_y`` ``(d_out, R)``, ``c_x`` ``(h, h)``, ``lam``
    (the value of every ``Λ``: ``decay``, or 1); ``w = 2·minibatch + 1``.
    """
    check_layout(layout, d_in, d_out)
    d_in, d_out = int(d_in), int(d_out)
    n_context = validate.positive_int("n_context", n_context)
    lr = validate.positive_number("lr", lr)
    if decay is not None:
        decay = validate.finite_number("decay", decay)
    m = validate.positive_int("minibatch", minibatch)
    if m > 1 and layout != "interleaved":
        raise ValueError(f"minibatch > 1 reads interleaved tokens; got layout={layout!r}")
    if n_context % m:
        raise ValueError(f"n_context={n_context} is not a multiple of minibatch={m}")
    c = lr / n_context
    e = np.eye(2 * m + 1)
    xs, ys = e[0 : 2 * m : 2], e[1 : 2 * m : 2]  # the window's x rows and y rows, pair by pair
    h = row_width(layout, d_in, d_out)
    state_rows = h if layout == "interleaved" else 1
    gamma = np.eye(h)
    if preconditioner is not None:
        p = np.asarray(preconditioner, np.float64)
        if p.shape != (d_in, d_in) or not np.all(np.isfinite(p)):
            raise ValueError(
                f"preconditioner must be a finite (d_in, d_in) = ({d_in}, {d_in}) matrix; "
                f"got shape {p.shape}"
            )
        gamma = np.zeros((h, h))
        gamma[:d_in, :d_in] = p
    return {
        "q_y": ys.T @ xs if layout == "interleaved" else e[1],
        "q_x": xs.T @ xs,
        "d": e[2 * m] if preconditioner is None else e[2 * m][:, None, None] * gamma,
        "c_y": c * np.eye(d_out, state_rows),
        "c_x": c * gamma,
        "lam": 1.0 if decay is None else float(decay),
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
    preconditioner=None,
    decay: float | None = None,
    minibatch: int = 1,
    dtype=jnp.float32,
) -> GDSSM:
    """A :class:`~ssm_gd.layers.GDSSM` whose predictions are exactly K-step GD with step size ``lr``.

    ``model(tokens(task, layout))`` has shape ``(B, N, d_out)`` and equals
    :func:`ssm_gd.gd.predict_prefixes` (its last window: :func:`ssm_gd.gd.predict`) up to float
    rounding, for contexts of ``n_context`` pairs (the ``1/N`` normaliser is built into ``C``, so
    the model refuses tokens of another context size).

    With ``preconditioner`` ``Γ`` ``(d_in, d_in)`` (a model with ``query_map="matrix"``) each step
    is ``W ← W − η ∇L(W) Γ``; with ``decay`` ``λ`` the loss on the prefix of ``t`` pairs weighs
    pair ``i`` by ``λ^{t−i}``. One step of both: ``W_1 = (η/N) Σ_i λ^{N−i} y_i x_iᵀ Γ``.

    With ``minibatch=m`` (interleaved tokens, ``N`` a multiple of ``m``) the model has ``N/m``
    windows; window ``t`` equals entry ``tm`` of :func:`ssm_gd.gd.predict_prefixes`, and a decay
    weighs pair ``i`` by ``λ^{N/m − ⌈i/m⌉}`` at the query.
    """
    v = gd_ssm_values(
        d_in=d_in, d_out=d_out, n_context=n_context, lr=lr, layout=layout,
        preconditioner=preconditioner, decay=decay, minibatch=minibatch,
    )  # fmt: skip
    return GDSSM(
        d_in,
        d_out,
        n_steps=steps,
        layout=layout,
        init=init_from_values(v),
        impl=impl,
        query_map="vector" if preconditioner is None else "matrix",
        n_context=n_context,
        minibatch=minibatch,
        param_dtype=dtype,
        rngs=nnx.Rngs(0),
    )


def init_from_values(values: dict) -> GDSSMInit:
    """The initializers that build a :class:`~ssm_gd.layers.GDSSM` with these parameter values
    (the dict of :func:`gd_ssm_values`, possibly edited): each parameter starts as its value."""
    return GDSSMInit(
        q_y=constant_init(values["q_y"]),
        q_x=constant_init(values["q_x"]),
        lam=fill_init(values["lam"]),
        c_y=constant_init(values["c_y"]),
        c_x=constant_init(values["c_x"]),
        d=constant_init(values["d"]),
    )
