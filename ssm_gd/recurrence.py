"""The diagonal linear recurrence both worlds use, and the diagonal SSM built on it (core).

:class:`DiagonalRecurrence` holds ``Λ`` and solves ``S_t = Λ ⊙ S_{t−1} + U_t`` with
:func:`ssm_gd.scan.linear_recurrence`: the GD-SSM's gradient accumulator (:mod:`ssm_gd.layers`),
H3's shift-and-decay (:mod:`ssm_gd.neighbours`). :class:`DiagonalSSM` is the S5/LRU-style layer
``s_t = Λ ⊙ s_{t−1} + B u_t``, ``y_t = C s_t + d ⊙ u_t``: the paper's plain-SSM control
(:class:`ssm_gd.neighbours.PlainSSM`) and the sequence models' ``"ssm"`` mixer
(:mod:`ssm_gd.seq.mixers`). This module imports neither the paper's modules nor ``ssm_gd.seq``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_gd import scan, validate
from ssm_gd.initializers import Initializer, ones_init, uniform_init

__all__ = ["LAMBDA_INITS", "PARAMETRIZATIONS", "DiagonalRecurrence", "DiagonalSSM"]

Array = jax.Array


LAMBDA_INITS = {"ones": ones_init}
PARAMETRIZATIONS = ("direct", "bounded")


class DiagonalRecurrence(nnx.Module):
    """``S_t = Λ ⊙ S_{t−1} + U_t`` over axis 1 of ``U`` ``(B, T, *state)``, one ``Λ`` per state entry.

    Args:
      state_shape: the shape of ``Λ`` and of one state (e.g. ``(H, H)``).
      lam_init: ``"ones"``, or an initializer ``(key, shape, dtype) → Λ`` such as
        :func:`ssm_gd.initializers.fill_init` / :func:`ssm_gd.initializers.uniform_init`.
      parametrization: ``"direct"`` (the parameter is ``Λ``) or ``"bounded"``
        (``Λ = exp(−exp(ν))`` ∈ (0, 1), so ``|Λ| ≤ 1`` whatever the optimiser does; ``Λ = 1`` is
        reached to float precision as ``ν → −∞`` and initialised as ``ν = −40``).
      impl: the :func:`ssm_gd.scan.linear_recurrence` implementation.

    Attributes: ``lam_param`` (``nnx.Param``), the parameter behind ``Λ``: ``Λ`` itself
    (``"direct"``) or ``ν`` (``"bounded"``); :attr:`lam`, the decay ``Λ``.
    """

    def __init__(
        self,
        state_shape: tuple[int, ...],
        *,
        lam_init: str | Initializer = "ones",
        parametrization: str = "direct",
        impl: str = "associative",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {PARAMETRIZATIONS}; got {parametrization!r}"
            )
        if impl not in scan.IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {sorted(scan.IMPLEMENTATIONS)}; got {impl!r}")
        if isinstance(lam_init, str):
            if lam_init not in LAMBDA_INITS:
                raise ValueError(
                    f"lam_init must be one of {sorted(LAMBDA_INITS)} or an initializer; "
                    f"got {lam_init!r}"
                )
            lam_init = LAMBDA_INITS[lam_init]
        self.parametrization = parametrization
        self.impl = impl
        lam = lam_init(rngs.params(), tuple(state_shape), param_dtype)
        if parametrization == "bounded":
            if not isinstance(lam, jax.core.Tracer) and not bool(jnp.all((lam > 0) & (lam <= 1))):
                raise ValueError(
                    "parametrization='bounded' keeps Λ in (0, 1]; lam_init gave values in "
                    f"[{float(jnp.min(lam))}, {float(jnp.max(lam))}]"
                )
            # ν = log(−log Λ); Λ = 1 maps to a finite ν whose Λ rounds to 1 (exp(−e^{−40}) ≈ 1 − 4e−18).
            lam = jnp.log(jnp.maximum(-jnp.log(jnp.clip(lam, 1e-30, 1.0)), jnp.exp(-40.0)))
        self.lam_param = nnx.Param(lam)

    @property
    def lam(self) -> Array:
        raw = self.lam_param[...]
        return raw if self.parametrization == "direct" else jnp.exp(-jnp.exp(raw))

    def __call__(self, u: Array) -> Array:
        h, _ = scan.linear_recurrence(self.lam, u, impl=self.impl, axis=1)
        return h


class DiagonalSSM(nnx.Module):
    """``s_t = Λ ⊙ s_{t−1} + B u_t``, ``y_t = C s_t + d ⊙ u_t``: ``(B, L, D) → (B, L, D)``.

    A real diagonal ``Λ ∈ (0, 1)`` of ``state`` channels (``parametrization="bounded"``),
    initialised ``U(lam_low, lam_high)``; ``B ~ N(0, 1/D)`` ``(D, state)``, ``C ~ N(0, 1/state)``
    ``(state, D)``, the skip ``d = 1``. Three views of one operator: :meth:`states` (every ``s_t``,
    by :func:`ssm_gd.scan.linear_recurrence` with ``impl``), :meth:`__call__` (the outputs) and
    :meth:`step` (one token, constant memory).
    """

    def __init__(self, d_model: int, *, state: int, lam_low: float = 0.9, lam_high: float = 0.999,
                 impl: str = "associative", param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        d_model = validate.positive_int("d_model", d_model)
        state = validate.positive_int("state", state)
        normal = nnx.initializers.normal
        self.b = nnx.Param(normal(d_model**-0.5)(rngs.params(), (d_model, state), param_dtype))
        self.c = nnx.Param(normal(state**-0.5)(rngs.params(), (state, d_model), param_dtype))
        self.d = nnx.Param(jnp.ones((d_model,), param_dtype))
        self.recurrence = DiagonalRecurrence(
            (state,), lam_init=uniform_init(lam_low, lam_high), parametrization="bounded",
            impl=impl, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip

    def inputs(self, u: Array) -> Array:
        """``B u_t`` ``(..., state)`` for ``u`` ``(..., D)``."""
        return u @ self.b[...]

    def states(self, u: Array) -> Array:
        """Every state ``s_t`` ``(B, L, state)`` for ``u`` ``(B, L, D)`` (``s_0 = 0``)."""
        return self.recurrence(self.inputs(u))

    def readout(self, s: Array, u: Array) -> Array:
        """``y = C s + d ⊙ u``."""
        return s @ self.c[...] + self.d[...] * u

    def __call__(self, u: Array) -> Array:
        return self.readout(self.states(u), u)

    def init_state(self, batch: int) -> Array:
        return jnp.zeros((batch, self.b.shape[1]), self.b.dtype)

    def step(self, state: Array, u_t: Array) -> tuple[Array, Array]:
        """One token ``u_t`` ``(B, D)``: ``(s_t, y_t)``."""
        s = self.recurrence.lam * state + self.inputs(u_t)
        return s, self.readout(s, u_t)
