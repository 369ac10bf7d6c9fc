"""GRIL as a sequence mixer: the GD-SSM's three parts on any token stream (docs/design.md §13).

For tokens ``u_1 … u_L ∈ R^D`` and each of ``H`` heads:

1. projections ``k_t = W_K u_t``, ``v_t = W_V u_t``, ``q_t = W_Q u_t``;
2. a causal window of ``w`` positions (row ``a`` is position ``t − w + 1 + a``, zero before the
   start) and the local cross-product update ``U_t = Σ_{a,b} Q_ab k_{t−w+1+a} v_{t−w+1+b}ᵀ``
   ``(d_k × d_v)``, one ``w × w`` matrix ``Q`` per head;
3. the diagonal recurrence ``S_t = Λ ⊙ S_{t−1} + U_t`` and the multiplicative readout
   ``o_t = S_tᵀ q̃_t`` with the windowed query ``q̃_t = Σ_a D_a q_{t−w+1+a}``; heads concatenated,
   then an output projection.

``decay``: ``"entry"`` (one ``Λ`` per state entry, as in the paper), ``"structured"``
(``Λ_jk = α_j β_k``) or ``"none"`` (``Λ = 1``); every decay is in ``(0, 1]``. With ``stride=s`` the
state is updated, and read, only at the positions ``p ≡ w − 1 (mod s)`` (0-based: the windows
that start at multiples of ``s``, the first ones padded with zeros); the output is zero elsewhere.

Three forms, one set of parameters, equal up to rounding: :meth:`GRILMixer.__call__` (for
training: never every state; ``impl="chunked"`` matrix products inside chunks, ``impl="scan"`` a
sequential scan a chunk at a time, ``"auto"`` the scan on a CPU, the chunks elsewhere),
:meth:`GRILMixer.step` from :meth:`GRILMixer.init_state` (the
recurrent form: constant memory and time per token) and :meth:`GRILMixer.scan_states` (every
state, :func:`jax.lax.associative_scan`: the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import validate
from ssm_gd.seq import gril_forms as forms

__all__ = ["DECAYS", "IMPLS", "GRILMixer", "causal_windows"]

Array = jax.Array
DECAYS = ("entry", "structured", "none")
IMPLS = ("auto", "chunked", "scan")


def _bounded(raw: Array) -> Array:
    """``exp(−exp(raw))`` ∈ (0, 1]: a decay whatever the optimiser does to ``raw``."""
    return jnp.exp(-jnp.exp(raw))


def causal_windows(x: Array, window: int) -> Array:
    """``(B, L, …) → (B, L, w, …)``: at each position ``t`` the rows of positions
    ``t − w + 1 … t`` (row ``a`` is position ``t − w + 1 + a``), zeros before the start."""
    padded = jnp.pad(x, [(0, 0), (window - 1, 0)] + [(0, 0)] * (x.ndim - 2))
    return jnp.stack([padded[:, a : a + x.shape[1]] for a in range(window)], axis=2)


def _raw_decay(key, shape, dtype, low=0.9, high=0.999):
    """The raw parameter of decays drawn uniformly in ``[low, high]``."""
    lam = jax.random.uniform(key, shape, jnp.float32, low, high)
    return jnp.log(-jnp.log(lam)).astype(dtype)


class GRILMixer(nnx.Module):
    """A sequence mixer ``(B, L, D) → (B, L, D)`` (module docstring).

    Args:
      d_model: ``D``. n_heads, d_key, d_value: ``H``, ``d_k``, ``d_v``.
      window: ``w`` positions per update; stride: update and read every ``s`` positions.
      decay: one of :data:`DECAYS`. chunk: updates per chunk of the training form (``"chunked"``:
        its work grows as ``chunk²`` per chunk, its sequential steps as ``L / chunk``; ``"scan"``:
        the states kept for the backward pass, one per chunk).
      impl: one of :data:`IMPLS`, the training form's implementation. The chunks' products with
        one decay per state entry do ``chunk · d_k · d_v`` work per update and head, which XLA:CPU
        runs slower than the plain recurrence, so ``"auto"`` picks the scan on a CPU.

    Parameters: ``w_q``, ``w_k`` ``(D, H, d_k)``, ``w_v`` ``(D, H, d_v)``, ``q_mix`` ``(H, w, w)``
    (initialised to the current position's ``k_t v_tᵀ`` plus noise), ``d_mix`` ``(H, w)`` (the
    current query plus noise), the decay (``lam_param`` ``(H, d_k, d_v)``, or ``alpha_param``
    ``(H, d_k)`` and ``beta_param`` ``(H, d_v)``; ``Λ = exp(−exp(·))``) and ``w_o`` ``(H, d_v, D)``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int,
        d_key: int,
        d_value: int,
        window: int = 3,
        stride: int = 1,
        decay: str = "entry",
        chunk: int = 16,
        impl: str = "auto",
        norm: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d, h = validate.positive_int("d_model", d_model), validate.positive_int("n_heads", n_heads)
        dk, dv = validate.positive_int("d_key", d_key), validate.positive_int("d_value", d_value)
        self.window = validate.positive_int("window", window)
        self.stride = validate.positive_int("stride", stride)
        self.decay = validate.one_of("decay", decay, DECAYS)
        self.chunk = validate.positive_int("chunk", chunk)
        self.impl = validate.one_of("impl", impl, IMPLS)
        if not isinstance(norm, bool):
            raise ValueError(f"norm must be True or False; got {norm!r}")
        self.norm = norm
        self.d_model, self.n_heads, self.d_key, self.d_value = d, h, dk, dv

        def normal(scale, shape, mean=0.0):
            noise = jax.random.normal(rngs.params(), shape, param_dtype)
            return nnx.Param(jnp.asarray(mean, param_dtype) + scale * noise)

        self.w_q, self.w_k = normal(d**-0.5, (d, h, dk)), normal(d**-0.5, (d, h, dk))
        self.w_v = normal(d**-0.5, (d, h, dv))
        last = np.eye(window)[-1]  # the current position
        self.q_mix = normal(0.02, (h, window, window), np.outer(last, last))
        self.d_mix = normal(0.02, (h, window), last)
        if decay == "entry":
            self.lam_param = nnx.Param(_raw_decay(rngs.params(), (h, dk, dv), param_dtype))
        elif decay == "structured":
            self.alpha_param = nnx.Param(_raw_decay(rngs.params(), (h, dk), param_dtype))
            self.beta_param = nnx.Param(_raw_decay(rngs.params(), (h, dv), param_dtype, 0.99, 1.0))
        self.w_o = normal((h * dv) ** -0.5, (h, dv, d))
        if norm:
            self.o_scale = nnx.Param(jnp.ones((h, dv), param_dtype))

    @property
    def lam(self) -> Array:
        """``Λ`` ``(H, d_k, d_v)``."""
        if self.decay == "entry":
            return _bounded(self.lam_param[...])
        if self.decay == "structured":
            alpha, beta = _bounded(self.alpha_param[...]), _bounded(self.beta_param[...])
            return alpha[:, :, None] * beta[:, None, :]
        return jnp.ones((self.n_heads, self.d_key, self.d_value), self.w_q.dtype)

    # ------------------------------------------------------------------------------ the forms

    def __call__(self, u: Array) -> Array:
        """The training form: chunks of ``chunk`` updates and one state carried across chunks,
        :func:`~ssm_gd.seq.gril_forms.chunked` or :func:`~ssm_gd.seq.gril_forms.scan` (``impl``).
        Memory ``O(B·L·w·D)`` plus a state per chunk, either way."""
        impl = self.impl
        if impl == "auto":
            impl = "scan" if jax.default_backend() == "cpu" else "chunked"
        form = forms.scan if impl == "scan" else forms.chunked
        return self._at_updates(u, lambda *kvq: form(self.lam, self.q_mix[...], *kvq,
                                                      chunk=self.chunk))  # fmt: skip

    def scan_states(self, u: Array) -> Array:
        """The reference form: every state by an associative scan (:func:`~ssm_gd.seq.gril_forms.
        every_state`)."""
        return self._at_updates(u, lambda *kvq: forms.every_state(self.lam, self.q_mix[...], *kvq))

    def _at_updates(self, u: Array, readout) -> Array:
        """``readout(k, v, q̃) → o`` ``(B, T, H, d_v)`` on the windows of the positions where the
        state is updated (``p ≡ w − 1 (mod s)``), projected out; zero at the other positions."""
        u = jnp.asarray(u)  # a nested list of numbers too
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must be (B, L, d_model={self.d_model}); got shape {u.shape}")
        length = u.shape[1]
        active = np.arange((self.window - 1) % self.stride, length, self.stride)
        if len(active) == 0:  # a sequence shorter than the first update: no output yet
            return jnp.zeros_like(u)
        k, v, q = (
            causal_windows(jnp.einsum("bld,dhx->blhx", u, weight[...]), self.window)[:, active]
            for weight in (self.w_k, self.w_v, self.w_q)
        )
        query = jnp.einsum("btahk,ha->bthk", q, self.d_mix[...])
        y = jnp.einsum("bthv,hvd->btd", self._normed(readout(k, v, query)), self.w_o[...])
        if len(active) == length:
            return y
        return jnp.zeros((y.shape[0], length, y.shape[-1]), y.dtype).at[:, active].set(y)

    def _normed(self, o: Array) -> Array:
        """``norm=True``: :func:`~ssm_gd.seq.gril_forms.head_norm`; else ``o`` as it is."""
        return forms.head_norm(o, self.o_scale[...]) if self.norm else o

    def init_state(self, batch: int) -> dict[str, Array]:
        """The recurrent form's state before the first token: ``S = 0``, the window's last
        ``w − 1`` keys, values and queries (zeros: before the start) and the position ``0``."""
        batch = validate.positive_int("batch", batch)
        h, dk, dv, w = self.n_heads, self.d_key, self.d_value, self.window
        dtype = self.w_q.dtype
        return {
            "s": jnp.zeros((batch, h, dk, dv), dtype),
            "k": jnp.zeros((batch, w - 1, h, dk), dtype),
            "v": jnp.zeros((batch, w - 1, h, dv), dtype),
            "q": jnp.zeros((batch, w - 1, h, dk), dtype),
            "t": jnp.zeros((), jnp.int32),
        }

    def step(self, state: dict[str, Array], u_t: Array) -> tuple[dict[str, Array], Array]:
        """One token ``u_t`` ``(B, D)`` → ``(state, y_t (B, D))``, in constant memory and time."""
        u_t = jnp.asarray(u_t)
        if u_t.ndim != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(f"u_t must be (B, d_model={self.d_model}); got shape {u_t.shape}")
        new = {
            name: jnp.concatenate(
                [state[name], jnp.einsum("bd,dhx->bhx", u_t, weight[...])[:, None]], axis=1
            )
            for name, weight in (("k", self.w_k), ("v", self.w_v), ("q", self.w_q))
        }  # each (B, w, H, d): the window ending at t
        active = (state["t"] - (self.window - 1)) % self.stride == 0
        s, o = forms.step(self.lam, self.q_mix[...], self.d_mix[...], state["s"], new["k"],
                          new["v"], new["q"], active)  # fmt: skip
        y = jnp.einsum("bhv,hvd->bd", self._normed(o), self.w_o[...])
        state = {name: x[:, 1:] for name, x in new.items()} | {"s": s, "t": state["t"] + 1}
        return state, y
