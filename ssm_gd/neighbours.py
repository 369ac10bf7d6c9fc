"""The GD-SSM's neighbours on the same tasks: linear self-attention, H3, and a plain SSM.

Li, Rawat and Oymak (NeurIPS 2024) prove that one-layer linear attention and one-layer H3 both
implement one step of *preconditioned* GD, and that H3's convolution (its diagonal SSM) adds
*sample weighting*. This module holds the three models and the closed-form constructions:

* :class:`LinearSelfAttention` with ``W_KQ = [[Γ, 0], [0, 0]]``, ``W_PV = [[0, 0], [0, I]]``
  (:func:`linear_attention_gd`): ``ŷ = (1/N) Σ_j y_j x_jᵀ Γ x_q``, preconditioned GD;
* :class:`H3` with ``W_k, W_v, W_q`` picking ``x``, ``y``, ``Γ x``, decay ``Λ = λ``, shift filter
  ``(1, 0)``, ``W_o = I`` (:func:`h3_gd`): ``ŷ = (1/N) Σ_j λ^{N−j} y_j x_jᵀ Γ x_q``,
  preconditioned and sample-weighted GD;
* :class:`PlainSSM`, the negative control: no construction. Apart from the GELU between its
  layers every operation is linear in the tokens, so the products ``y_j x_jᵀ x_q`` a GD step is
  made of are out of exact reach (the nonlinearity can only approximate them).

(The references are :func:`ssm_gd.gd.preconditioned_predict` and
:func:`ssm_gd.gd.weighted_predict`.)

**Tokens and positions.** Every model reads the ``"pairs"`` layout (:func:`ssm_gd.tasks.tokens`):
``e_j = [x_j, y_j]`` for ``j = 1…N``, then the query token ``e_{N+1} = [x_q, 0]``, width
``D = d_in + d_out``. Output ``t = 1…N`` predicts the label of token ``t + 1`` from the context
tokens ``e_1…e_t`` and the *input half* of token ``t + 1``, ``ẽ_{t+1} = [x_{t+1}, 0]``: the label
being predicted is never read, so every position is an honest prediction (the loss may be taken on
all of them), and the last (``t = N``) is the query's (``ẽ_{N+1} = e_{N+1}``). ``model(tokens)``
is ``(B, N, d_out)`` like the GD-SSM's, and ``model.predict_query(tokens)`` ``(B, d_out)`` equals
``model(tokens)[:, -1]``, computed for the query alone. Tokens after ``t + 1`` never reach output
``t`` (causality). Like the rest of the library, sums over the context are normalised by ``N``
(the context size, on every prefix).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import scan, validate
from ssm_gd.initializers import (
    Initializer,
    constant_init,
    fill_init,
    first_tap_init,
)
from ssm_gd.recurrence import DiagonalRecurrence, DiagonalSSM
from ssm_gd.tokens import Tokens, check_layout, read_tokens, token_width

__all__ = [
    "H3",
    "MODELS",
    "H3Init",
    "LinearAttentionInit",
    "LinearSelfAttention",
    "PlainSSM",
    "h3_gd",
    "linear_attention_gd",
    "make",
    "split_pairs",
]

Array = jax.Array

#: The models of this module, by the name :func:`make` (and ``ssm_gd.config.Config.model``) takes.
MODELS = ("linear_attention", "h3", "plain_ssm")


def split_pairs(tokens: Array, d_in: int, d_out: int) -> tuple[Array, Array]:
    """``(context, queries)``, both ``(B, N, D)``, from ``"pairs"`` tokens ``(B, N + 1, D)``.

    ``context[:, t] = e_{t+1}`` (0-based: the ``N`` context tokens) and
    ``queries[:, t] = [x_{t+2}, 0]``: the input half of the token after it, the label zeroed (the
    last, ``[x_q, 0]``, is the query token).
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, L, H); got shape {tokens.shape}")
    width = d_in + d_out
    if tokens.shape[-1] != width:
        raise ValueError(
            f"tokens have width {tokens.shape[-1]}, but layout='pairs' with d_in={d_in}, "
            f"d_out={d_out} needs H = d_in + d_out = {width}"
        )
    if tokens.shape[1] < 2:
        raise ValueError(
            "pairs tokens need L = N + 1 >= 2 (context pairs then the query); "
            f"got L={tokens.shape[1]}"
        )
    nxt = tokens[:, 1:]
    queries = jnp.concatenate([nxt[..., :d_in], jnp.zeros_like(nxt[..., d_in:])], axis=-1)
    return tokens[:, :-1], queries


class _PairsModel(nnx.Module):
    """Shared by the three models: sizes, the token check, and ``predict_query``'s contract."""

    def _sizes(self, d_in: int, d_out: int) -> None:
        check_layout("pairs", d_in, d_out, allowed=("pairs",))
        self.d_in, self.d_out = d_in, d_out
        self.layout = "pairs"
        self.token_width = token_width("pairs", d_in, d_out)

    def split(self, tokens: Tokens) -> tuple[Array, Array]:
        """:func:`split_pairs` of :class:`~ssm_gd.tokens.Tokens` made for this model's sizes
        (a bare array, or tokens made for other sizes, are refused)."""
        tokens = read_tokens(tokens, layout="pairs", d_in=self.d_in, d_out=self.d_out)
        return split_pairs(tokens.array, self.d_in, self.d_out)


# --------------------------------------------------------------------- linear self-attention


@dataclasses.dataclass(frozen=True)
class LinearAttentionInit:
    """Initializers for :class:`LinearSelfAttention`: both matrices ``N(0, 1/D)`` by default."""

    w_kq: Initializer | None = None
    w_pv: Initializer | None = None


class LinearSelfAttention(_PairsModel):
    """One layer of linear self-attention on ``"pairs"`` tokens (von Oswald et al. 2023).

    Parameters ``W_KQ``, ``W_PV`` ``(D, D)``, ``D = d_in + d_out``. Output ``t`` (causal: context
    tokens ``j ≤ t`` only, the query excluded from the sum, see the module docstring)::

        ŷ_t = [W_PV (1/N) Σ_{j≤t} e_j e_jᵀ W_KQ ẽ_{t+1}]_{y rows}        (B, N, d_out)

    computed as attention: scores ``e_jᵀ W_KQ ẽ_{t+1}`` masked to ``j ≤ t``, values the ``y`` rows
    of ``W_PV e_j``. Only those rows of ``W_PV`` and the ``x`` columns of ``W_KQ`` reach the output
    (``ẽ`` has a zero label); the full matrices are kept as in the paper.
    With :func:`linear_attention_gd` (``W_KQ = [[Γ, 0], [0, 0]]``, ``W_PV = [[0, 0], [0, I]]``),
    ``ŷ_t = (1/N) Σ_{j≤t} y_j x_jᵀ Γ x_{t+1}``: one step of preconditioned GD from ``W_0 = 0``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int = 1,
        *,
        init: LinearAttentionInit = LinearAttentionInit(),
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._sizes(d_in, d_out)
        width = self.token_width
        default = nnx.initializers.normal(width**-0.5)
        self.w_kq = nnx.Param((init.w_kq or default)(rngs.params(), (width, width), param_dtype))
        self.w_pv = nnx.Param((init.w_pv or default)(rngs.params(), (width, width), param_dtype))

    def __call__(self, tokens: Array) -> Array:
        """Predictions ``(B, N, d_out)``; entry ``t`` from the first ``t + 1`` tokens' pairs."""
        e, q = self.split(tokens)
        n = e.shape[1]
        scores = jnp.einsum("bjd,de,bte->btj", e, self.w_kq[...], q)
        causal = jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]  # (t, j): j ≤ t
        values = jnp.einsum("od,bjd->bjo", self.w_pv[...][self.d_in :], e)
        return jnp.einsum("btj,bjo->bto", jnp.where(causal, scores, 0), values) / n

    def predict_query(self, tokens: Array) -> Array:
        """``self(tokens)[:, -1]`` ``(B, d_out)``: ``O(N·D)`` per task, no ``N × N`` scores."""
        e, q = self.split(tokens)
        scores = jnp.einsum("bjd,de,be->bj", e, self.w_kq[...], q[:, -1])
        values = jnp.einsum("od,bjd->bjo", self.w_pv[...][self.d_in :], e)
        return jnp.einsum("bj,bjo->bo", scores, values) / e.shape[1]


# ---------------------------------------------------------------------------------------- H3


@dataclasses.dataclass(frozen=True)
class H3Init:
    """Initializers for :class:`H3`.

    Defaults: ``W_q, W_k, W_v ~ N(0, 1/D)``, ``W_o ~ N(0, 1/p)``, the shift filter ``(1, 0, …)``
    and ``Λ = 1`` (a pure accumulator, as the GD-SSM starts), both learned.
    """

    w_q: Initializer | None = None
    w_k: Initializer | None = None
    w_v: Initializer | None = None
    w_o: Initializer | None = None
    shift: Initializer = first_tap_init
    lam: str | Initializer = "ones"


class H3(_PairsModel):
    """One H3 layer, one head (Fu et al. 2023), on ``"pairs"`` tokens.

    With ``m`` key channels (``state``, default ``d_in``) and ``p`` value channels (``value``,
    default ``d_out``), for context tokens ``e_j`` ``(D,)``:

    1. keys through the *shift SSM*, a short causal filter of ``shift`` taps ``a``::

           k_j = Σ_{s<shift} a_s W_k e_{j−s}          (m,),  e_j = 0 for j < 1

    2. values ``v_j = W_v e_j`` ``(p,)``; the *diagonal SSM* on their outer products, one decay per
       key channel (``Λ`` ``(m,)``, broadcast along the rows of the state)::

           S_t = Λ ⊙ S_{t−1} + k_t v_tᵀ              (m × p),  S_0 = 0

    3. the *multiplicative gate* with the next token's query, ``q = W_q ẽ_{t+1}``::

           ŷ_t = (1/N) W_o S_tᵀ q                   (d_out,)

    Causality: ``S_t`` holds tokens ``1…t`` only (the shift reads earlier tokens, never later
    ones), and the gate reads the input half ``ẽ_{t+1} = [x_{t+1}, 0]`` of the next token, never its
    label; output ``N`` gates ``S_N`` with the query token. ``S_t`` is thus the state *before*
    token ``t + 1`` enters: a one-token delay of H3's usual ``ŷ_t = W_o S_tᵀ q_t``.

    With :func:`h3_gd` (``W_k e = x``, ``W_v e = y``, ``W_q e = Γ x``, ``a = (1, 0)``,
    ``Λ = λ``, ``W_o = I``): ``ŷ_t = (1/N) Σ_{j≤t} λ^{t−j} y_j x_jᵀ Γ x_{t+1}``, one step of
    preconditioned, sample-weighted GD (:func:`ssm_gd.gd.preconditioned_predict` at ``t = N``).

    Parameters: ``w_q``, ``w_k`` ``(m, D)``, ``w_v`` ``(p, D)``, ``w_o`` ``(d_out, p)``, ``shift``
    ``(shift,)`` and ``decay`` (a :class:`~ssm_gd.layers.DiagonalRecurrence` of shape ``(m, 1)``,
    its ``parametrization`` and scan ``impl``).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int = 1,
        *,
        state: int | None = None,
        value: int | None = None,
        shift: int = 2,
        init: H3Init = H3Init(),
        parametrization: str = "direct",
        impl: str = "associative",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._sizes(d_in, d_out)
        m = d_in if state is None else validate.positive_int("state", state)
        p = d_out if value is None else validate.positive_int("value", value)
        self.n_taps = validate.positive_int("shift", shift)
        width = self.token_width
        normal = nnx.initializers.normal
        self.w_q = nnx.Param(
            (init.w_q or normal(width**-0.5))(rngs.params(), (m, width), param_dtype)
        )
        self.w_k = nnx.Param(
            (init.w_k or normal(width**-0.5))(rngs.params(), (m, width), param_dtype)
        )
        self.w_v = nnx.Param(
            (init.w_v or normal(width**-0.5))(rngs.params(), (p, width), param_dtype)
        )
        self.w_o = nnx.Param((init.w_o or normal(p**-0.5))(rngs.params(), (d_out, p), param_dtype))
        self.shift = nnx.Param(init.shift(rngs.params(), (self.n_taps,), param_dtype))
        self.decay = DiagonalRecurrence(
            (m, 1),
            lam_init=init.lam,
            parametrization=parametrization,
            impl=impl,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def keys(self, e: Array) -> Array:
        """The shift SSM ``k_j = Σ_s a_s W_k e_{j−s}``: ``(B, N, m)`` from ``e`` ``(B, N, D)``."""
        raw = jnp.einsum("md,bjd->bjm", self.w_k[...], e)
        a = self.shift[...]
        n = raw.shape[1]
        k = a[0] * raw
        for s in range(1, min(self.n_taps, n)):
            k = k + a[s] * jnp.pad(raw[:, : n - s], ((0, 0), (s, 0), (0, 0)))
        return k

    def _kv(self, tokens):
        e, q = self.split(tokens)
        v = jnp.einsum("pd,bjd->bjp", self.w_v[...], e)
        return e, q, self.keys(e), v

    def __call__(self, tokens: Array) -> Array:
        """Predictions ``(B, N, d_out)``; entry ``t`` gates ``S_t`` with the next token's query."""
        e, q, k, v = self._kv(tokens)
        states = self.decay(k[..., :, None] * v[..., None, :])  # (B, N, m, p)
        gate = jnp.einsum("md,btd->btm", self.w_q[...], q)
        out = jnp.einsum("btmp,btm->btp", states, gate)
        return jnp.einsum("op,btp->bto", self.w_o[...], out) / e.shape[1]

    def predict_query(self, tokens: Array) -> Array:
        """``self(tokens)[:, -1]`` ``(B, d_out)`` from ``S_N = Σ_j Λ^{N−j} ⊙ k_j v_jᵀ``: no scan."""
        e, q, k, v = self._kv(tokens)
        n = e.shape[1]
        lam = self.decay.lam[:, 0]  # (m,)
        powers = scan.decay_powers(lam, n)  # Λ^{N−j} for j = 1…N: (N, m)
        state = jnp.einsum("jm,bjm,bjp->bmp", powers, k, v)
        gate = jnp.einsum("md,bd->bm", self.w_q[...], q[:, -1])
        return jnp.einsum("op,bmp,bm->bo", self.w_o[...], state, gate) / n


# ---------------------------------------------------------------------------------- plain SSM


class _SSMLayer(nnx.Module):
    """A :class:`ssm_gd.recurrence.DiagonalSSM` (``s_t = Λ ⊙ s_{t−1} + B u_t``,
    ``z_t = C s_t + d ⊙ u_t``) read on two streams: the context and the next token."""

    def __init__(self, hidden: int, state: int, *, impl: str, param_dtype, rngs: nnx.Rngs):
        self.ssm = DiagonalSSM(hidden, state=state, lam_low=0.5, lam_high=0.99, impl=impl,
                               param_dtype=param_dtype, rngs=rngs)  # fmt: skip

    def __call__(self, u: Array, u_next: Array) -> tuple[Array, Array]:
        """The context stream ``u`` and the next-token stream ``u_next``, both ``(B, N, h)``.

        Context: ``s_t`` after tokens ``1…t``. Next token: ``s̃_t = Λ ⊙ s_t + B ũ_t``, the state had
        the SSM read ``ũ_t`` (the input half of token ``t + 1``) after token ``t``.
        """
        ssm = self.ssm
        states = ssm.states(u)
        ahead = ssm.recurrence.lam * states + ssm.inputs(u_next)
        return ssm.readout(states, u), ssm.readout(ahead, u_next)


class PlainSSM(_PairsModel):
    """A plain diagonal-SSM stack (S5-like) with no local self-attention: the negative control.

    ``u^0 = W_in e`` ``(hidden,)``; ``n_layers`` layers of ``s_t = Λ ⊙ s_{t−1} + B u_t``
    (a real diagonal ``Λ ∈ (0, 1)``, ``state`` channels, learned; initialised ``U(0.5, 0.99)``)
    and ``z_t = C s_t + d ⊙ u_t`` (a linear readout with a skip), GELU between layers; then
    ``ŷ = W_out z``. Output ``t`` is this stack's output at the position of ``ẽ_{t+1}`` had it read
    ``e_1…e_t`` then ``ẽ_{t+1} = [x_{t+1}, 0]``: every layer runs the context tokens once and
    takes one extra step from ``s_t`` for the next token (exact, any depth, since each layer is
    causal). The last output is the SSM read at the query token.

    **No construction.** Every operation is linear in the tokens but the GELU, so no layer can
    form the products ``y_j x_jᵀ`` (nor ``y_j (x_jᵀ x_q)``) that one GD step needs; the network
    approximates them only through the nonlinearity.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int = 1,
        *,
        hidden: int = 32,
        state: int = 32,
        n_layers: int = 2,
        impl: str = "associative",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._sizes(d_in, d_out)
        hidden = validate.positive_int("hidden", hidden)
        state = validate.positive_int("state", state)
        validate.positive_int("n_layers", n_layers)
        normal = nnx.initializers.normal
        width = self.token_width
        self.w_in = nnx.Param(normal(width**-0.5)(rngs.params(), (hidden, width), param_dtype))
        self.layers = nnx.List(
            [
                _SSMLayer(hidden, state, impl=impl, param_dtype=param_dtype, rngs=rngs)
                for _ in range(n_layers)
            ]
        )
        self.w_out = nnx.Param(normal(hidden**-0.5)(rngs.params(), (d_out, hidden), param_dtype))

    def _streams(self, tokens):
        e, q = self.split(tokens)
        u = jnp.einsum("hd,btd->bth", self.w_in[...], e)
        u_next = jnp.einsum("hd,btd->bth", self.w_in[...], q)
        for i, layer in enumerate(self.layers):
            if i:
                u, u_next = jax.nn.gelu(u), jax.nn.gelu(u_next)
            u, u_next = layer(u, u_next)
        return u_next

    def __call__(self, tokens: Array) -> Array:
        """Predictions ``(B, N, d_out)``; entry ``t`` is read at the next token's input half."""
        return jnp.einsum("oh,bth->bto", self.w_out[...], self._streams(tokens))

    def predict_query(self, tokens: Array) -> Array:
        """``self(tokens)[:, -1]`` ``(B, d_out)`` (the context stream must run in full anyway)."""
        return self(tokens)[:, -1]


# ------------------------------------------------------------------------------ constructions


def _gamma(gamma, d_in: int) -> np.ndarray:
    g = np.asarray(gamma, np.float64)
    if g.ndim == 0:
        g = g * np.eye(d_in)
    if g.shape != (d_in, d_in) or not np.all(np.isfinite(g)):
        raise ValueError(
            f"gamma must be a finite scalar (Γ = γ I) or a (d_in, d_in) = ({d_in}, {d_in}) matrix; "
            f"got shape {g.shape}"
        )
    return g


def linear_attention_gd(*, d_in: int, d_out: int, gamma, dtype=jnp.float32) -> LinearSelfAttention:
    """:class:`LinearSelfAttention` equal to one step of preconditioned GD with ``Γ = gamma``.

    ``W_KQ = [[Γ, 0], [0, 0]]`` and ``W_PV = [[0, 0], [0, I]]`` give
    ``ŷ_t = (1/N) Σ_{j≤t} y_j x_jᵀ Γ x_{t+1}``; at the query
    :func:`ssm_gd.gd.preconditioned_predict` with ``gamma``. A scalar ``gamma = η`` is ``Γ = η I``:
    plain GD with step size ``η``.
    """
    check_layout("pairs", d_in, d_out, allowed=("pairs",))
    g = _gamma(gamma, d_in)
    width = d_in + d_out
    kq = np.zeros((width, width))
    kq[:d_in, :d_in] = g
    pv = np.zeros((width, width))
    pv[d_in:, d_in:] = np.eye(d_out)
    init = LinearAttentionInit(w_kq=constant_init(kq), w_pv=constant_init(pv))
    return LinearSelfAttention(d_in, d_out, init=init, param_dtype=dtype, rngs=nnx.Rngs(0))


def h3_gd(
    *,
    d_in: int,
    d_out: int,
    gamma,
    decay: float = 1.0,
    impl: str = "associative",
    dtype=jnp.float32,
) -> H3:
    """:class:`H3` equal to one step of preconditioned, sample-weighted GD.

    ``W_k = [I, 0]`` (keys: ``x``), ``W_v = [0, I]`` (values: ``y``), ``W_q = [Γ, 0]`` (the gate:
    ``Γ x``), the shift filter ``(1, 0)``, ``Λ = decay`` on every key channel and ``W_o = I`` give
    ``ŷ_t = (1/N) Σ_{j≤t} λ^{t−j} y_j x_jᵀ Γ x_{t+1}``; at the query
    :func:`ssm_gd.gd.preconditioned_predict` with ``gamma`` and ``decay``
    (:func:`ssm_gd.gd.weighted_predict` for a scalar ``gamma = η``).
    """
    check_layout("pairs", d_in, d_out, allowed=("pairs",))
    g = _gamma(gamma, d_in)
    decay = validate.finite_number("decay", decay)
    width = d_in + d_out
    pick_x = np.eye(d_in, width)
    pick_y = np.eye(d_out, width, k=d_in)
    init = H3Init(
        w_q=constant_init(g @ pick_x),
        w_k=constant_init(pick_x),
        w_v=constant_init(pick_y),
        w_o=constant_init(np.eye(d_out)),
        shift=first_tap_init,
        lam=fill_init(decay),
    )
    return H3(d_in, d_out, init=init, impl=impl, param_dtype=dtype, rngs=nnx.Rngs(0))


# -------------------------------------------------------------------------------------- make


def make(
    name: str,
    d_in: int,
    d_out: int = 1,
    *,
    parametrization: str = "direct",
    impl: str = "associative",
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """A randomly initialised model of :data:`MODELS` by name, at its default sizes.

    ``parametrization`` is H3's decay's (the plain SSM's decays are always ``"bounded"``); ``impl``
    the scan (:data:`ssm_gd.scan.IMPLEMENTATIONS`) of H3 and the plain SSM.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS}; got {name!r}")
    if impl not in scan.IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {sorted(scan.IMPLEMENTATIONS)}; got {impl!r}")
    if name == "linear_attention":
        return LinearSelfAttention(d_in, d_out, param_dtype=param_dtype, rngs=rngs)
    if name == "h3":
        return H3(
            d_in, d_out, parametrization=parametrization, impl=impl, param_dtype=param_dtype,
            rngs=rngs,
        )  # fmt: skip
    return PlainSSM(d_in, d_out, impl=impl, param_dtype=param_dtype, rngs=rngs)
