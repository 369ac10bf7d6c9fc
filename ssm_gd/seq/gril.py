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
(``Λ_jk = α_j β_k``), ``"scalar"`` (one ``γ`` per head, ``Λ = γ``: RetNet's), ``"data"`` (one
decay per head and position, ``λ_t = exp(−softplus(w · u_t + b))``: Mamba-2's; GRIL then leaves
the paper's time-invariant ``Λ``) or ``"none"`` (``Λ = 1``); every decay is in ``(0, 1]``.
``decay_init``: ``"uniform"`` (every decay drawn in ``[0.9, 0.999]``) or ``"multiscale"`` (head
``h``'s decays at ``1 − 2^−(5 + 7h/(H−1))``: time scales from 32 to 4096 positions across the
heads); by default multiscale for ``"scalar"`` and ``"data"``, uniform for the others. Options,
off by default: ``norm`` (each head's output divided by its root mean square, times a learned
scale), ``gate`` (the output times ``swish(W_g u_t)``, per head and channel), ``qk_norm`` (keys
and queries L2-normalised per head). With ``stride=s`` the state is updated, and read, only at the positions
``p ≡ w − 1 (mod s)`` (0-based: the windows that start at multiples of ``s``, the first ones
padded with zeros); the output is zero elsewhere.

Three forms, one set of parameters, equal up to rounding: :meth:`GRILMixer.__call__` (for
training, ``impl``: ``"chunked"`` products inside chunks — matrix products for the decays that
factorise (:func:`~ssm_gd.seq.gril_forms.products`), weighted per state entry for ``"entry"``;
``"chunk_scan"`` the recurrence inside every chunk at once; ``"scan"`` a sequential scan;
``"scaled"`` a scaled cumulative sum, exact only for decays not too small; ``"auto"``:
:func:`auto_impl`), :meth:`GRILMixer.step` from :meth:`GRILMixer.init_state` (the recurrent
form: constant memory and time per token) and :meth:`GRILMixer.scan_states` (every state,
:func:`jax.lax.associative_scan`: the reference). Every training form reads the window as ``w``
key-shifted streams (:mod:`~ssm_gd.seq.gril_forms`), built head-major from the projections.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_gd import validate
from ssm_gd.seq import gril_forms as forms

__all__ = ["CHUNKS", "DECAYS", "DECAY_INITS", "FACTORISED", "IMPLS", "GRILMixer", "auto_impl",
           "default_chunk"]  # fmt: skip

Array = jax.Array
DECAYS = ("entry", "structured", "scalar", "data", "none")
DECAY_INITS = ("uniform", "multiscale")
FACTORISED = ("structured", "scalar", "none")  # Λ = α βᵀ: the chunk form is matrix products
IMPLS = ("auto", "chunked", "chunk_scan", "scan", "scaled")
# The training forms of any Λ; "chunked" with a factorised decay is forms.products instead.
_FORMS = {"chunked": forms.chunked, "chunk_scan": forms.chunk_scan, "scan": forms.scan,
          "scaled": forms.scaled}  # fmt: skip
# The chunk ``chunk=None`` takes for the forms auto_impl picks, measured on a 2-core CPU
# (results/bench/README.md): the scan's checkpointed segment for one decay per entry, four updates
# for the structured decay (its intra-chunk table costs chunk · d_k per update), and for one decay
# per head or none :func:`default_chunk`'s rule.
CHUNKS = {"entry": 16, "structured": 4}


def default_chunk(decay: str, window: int, d_key: int) -> int:
    """``chunk=None``'s chunk: :data:`CHUNKS` for ``"entry"`` and ``"structured"``; for
    ``"scalar"`` and ``"none"`` the power of two at or below ``d_key`` (twice that with one
    stream, ``window=1``), within ``[8, 64]``. Inside a chunk the work per update grows as
    ``chunk · window · d_k`` while the matrix products grow more efficient: on the CPU the best
    chunk followed the head's width (16 at ``d_k = 18``, 32 at 32; linear attention 32 and 64)."""
    if decay in CHUNKS:
        return CHUNKS[decay]
    power = 2 ** int(np.floor(np.log2(max(d_key, 1))))
    return int(np.clip(power * (2 if window == 1 else 1), 8, 64))


def auto_impl(decay: str, backend: str | None = None) -> str:
    """The training form ``impl="auto"`` runs: the matrix products (``"chunked"``) for every
    decay that factorises, on every backend; for one decay per state entry, the sequential
    ``"scan"`` on a CPU (there it is faster than the recurrence inside every chunk at once, the
    per-entry products and the scaled cumulative sum: results/bench/README.md) and
    ``"chunk_scan"`` elsewhere (``chunk`` sequential steps instead of ``L``; not yet measured on an
    accelerator)."""
    if decay in (*FACTORISED, "data"):
        return "chunked"
    return "scan" if (backend or jax.default_backend()) == "cpu" else "chunk_scan"


def _bounded(raw: Array) -> Array:
    """``exp(−exp(raw))`` ∈ (0, 1]: a decay whatever the optimiser does to ``raw``."""
    return jnp.exp(-jnp.exp(raw))


def _log_bounded(raw: Array) -> Array:
    """``log`` of :func:`_bounded`: ``−exp(raw)`` ≤ 0."""
    return -jnp.exp(raw)


def _raw_decay(key, shape, dtype, low=0.9, high=0.999):
    """The raw parameter of decays drawn uniformly in ``[low, high]``."""
    lam = jax.random.uniform(key, shape, jnp.float32, low, high)
    return jnp.log(-jnp.log(lam)).astype(dtype)


def multiscale(n_heads: int) -> np.ndarray:
    """One decay per head, ``1 − 2^−e`` with ``e`` from 5 to 12 evenly across the heads: time
    scales ``1 / (1 − γ)`` from 32 to 4096 positions."""
    return 1.0 - 2.0 ** -np.linspace(5.0, 12.0, n_heads)


def _head_decays(key, n_heads, shape, dtype, init, low=0.9, high=0.999):
    """The raw parameter (``exp(−exp(raw))``) of decays ``(H, *shape)``: ``init`` ``"uniform"``
    (drawn in ``[low, high]``) or ``"multiscale"`` (each head's at :func:`multiscale`'s)."""
    if init == "uniform":
        return _raw_decay(key, (n_heads, *shape), dtype, low, high)
    gamma = multiscale(n_heads).reshape(n_heads, *(1,) * len(shape))
    return jnp.asarray(np.broadcast_to(np.log(-np.log(gamma)), (n_heads, *shape)), dtype)


class GRILMixer(nnx.Module):
    """A sequence mixer ``(B, L, D) → (B, L, D)`` (module docstring).

    Args:
      d_model: ``D``. n_heads, d_key, d_value: ``H``, ``d_k``, ``d_v``.
      window: ``w`` positions per update; stride: update and read every ``s`` positions.
      decay: one of :data:`DECAYS`. chunk: updates per chunk of the training form (``None``: the
        measured best, :func:`default_chunk`). ``"chunked"``: its work grows as ``chunk`` per update, its
        sequential steps as ``L / chunk``; ``"scan"``: the states kept for the backward pass, one
        per chunk; ``"chunk_scan"``: ``chunk`` sequential steps.
      impl: one of :data:`IMPLS`, the training form's implementation; ``"auto"``:
        :func:`auto_impl`. ``"scaled"`` divides by ``Λ^i`` inside a chunk: exact only while
        ``(chunk − 1)·|log Λ|`` stays well inside the float range, never a default.
        ``decay="data"`` runs its chunk form (:func:`~ssm_gd.seq.gril_forms.selective`).
      norm, gate, qk_norm, decay_init: the options of the module docstring.

    Parameters: ``w_q``, ``w_k`` ``(D, H, d_k)``, ``w_v`` ``(D, H, d_v)``, ``q_mix`` ``(H, w, w)``
    (initialised to the current position's ``k_t v_tᵀ`` plus noise), ``d_mix`` ``(H, w)`` (the
    current query plus noise), the decay (``lam_param`` ``(H, d_k, d_v)``, or ``alpha_param``
    ``(H, d_k)`` and ``beta_param`` ``(H, d_v)``, or ``gamma_param`` ``(H,)``; ``Λ = exp(−exp(·))``;
    ``decay="data"``: ``w_dt`` ``(D, H)`` and ``dt_bias`` ``(H,)``), ``w_o`` ``(H, d_v, D)``, and with
    the options ``o_scale`` ``(H, d_v)`` (``norm``) and ``w_g`` ``(D, H, d_v)`` (``gate``).
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
        chunk: int | None = None,
        impl: str = "auto",
        norm: bool = False,
        gate: bool = False,
        qk_norm: bool = False,
        decay_init: str | None = None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d, h = validate.positive_int("d_model", d_model), validate.positive_int("n_heads", n_heads)
        dk, dv = validate.positive_int("d_key", d_key), validate.positive_int("d_value", d_value)
        self.window = validate.positive_int("window", window)
        self.stride = validate.positive_int("stride", stride)
        self.decay = validate.one_of("decay", decay, DECAYS)
        self.chunk = (default_chunk(decay, window, d_key) if chunk is None
                      else validate.positive_int("chunk", chunk))  # fmt: skip
        self.impl = validate.one_of("impl", impl, IMPLS)
        if decay == "data" and impl not in ("auto", "chunked"):
            raise ValueError(f'impl {impl!r} does not run decay="data"; its training form is '
                             'impl="chunked" (or "auto")')  # fmt: skip
        for name, value in (("norm", norm), ("gate", gate), ("qk_norm", qk_norm)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}")
        self.norm, self.gate, self.qk_norm = norm, gate, qk_norm
        default_init = "multiscale" if decay in ("scalar", "data") else "uniform"
        init = validate.one_of("decay_init", decay_init or default_init, DECAY_INITS)
        self.decay_init = init
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
            self.lam_param = nnx.Param(_head_decays(rngs.params(), h, (dk, dv), param_dtype, init))
        elif decay == "structured":
            self.alpha_param = nnx.Param(_head_decays(rngs.params(), h, (dk,), param_dtype, init))
            self.beta_param = nnx.Param(_raw_decay(rngs.params(), (h, dv), param_dtype, 0.99, 1.0))
        elif decay == "scalar":
            self.gamma_param = nnx.Param(_head_decays(rngs.params(), h, (), param_dtype, init))
        elif decay == "data":  # softplus(b) = −log γ: the decay of a zero input, as decay_init says
            raw = _head_decays(rngs.params(), h, (), param_dtype, init)  # −log γ = exp(raw)
            self.dt_bias = nnx.Param(jnp.log(jnp.expm1(jnp.exp(raw))))
            self.w_dt = normal(0.02 * d**-0.5, (d, h))
        self.w_o = normal((h * dv) ** -0.5, (h, dv, d))
        if norm:
            self.o_scale = nnx.Param(jnp.ones((h, dv), param_dtype))
        if gate:
            self.w_g = normal(d**-0.5, (d, h, dv))

    def log_decays(self) -> tuple[Array | None, Array | None]:
        """A factorised decay's ``(log α, log β)``: ``(H, d_k)`` and ``(H, d_v)`` for
        ``"structured"``, ``(H, 1)`` and ``None`` for ``"scalar"``, ``(None, None)`` for
        ``"none"`` (``None``: that factor is 1)."""
        if self.decay == "structured":
            return _log_bounded(self.alpha_param[...]), _log_bounded(self.beta_param[...])
        if self.decay == "scalar":
            return _log_bounded(self.gamma_param[...])[:, None], None
        if self.decay == "none":
            return None, None
        raise ValueError(f"decay={self.decay!r} does not factorise into one decay per key and "
                         "value channel")  # fmt: skip

    def data_log_decay(self, u: Array) -> Array:
        """``decay="data"``: ``log λ = −softplus(u · w + b)`` ``(…, H)`` for tokens ``u``
        ``(…, D)``."""
        return -jax.nn.softplus(jnp.einsum("...d,dh->...h", u, self.w_dt[...]) + self.dt_bias[...])

    @property
    def lam(self) -> Array:
        """``Λ`` ``(H, d_k, d_v)`` (not for ``decay="data"``, whose decay depends on the token)."""
        if self.decay == "data":
            raise ValueError('decay="data" has a decay per token: data_log_decay(u), not lam')
        if self.decay == "entry":
            return _bounded(self.lam_param[...])
        shape = (self.n_heads, self.d_key, self.d_value)
        return forms.factorised_lam(*self.log_decays(), shape, self.w_q.dtype)

    # ------------------------------------------------------------------------------ the forms

    def __call__(self, u: Array) -> Array:
        """The training form, ``impl`` (:data:`IMPLS`): chunks of ``chunk`` updates and a state
        carried across them (:func:`~ssm_gd.seq.gril_forms.products` for a factorised decay,
        else :func:`~ssm_gd.seq.gril_forms.chunked`), :func:`~ssm_gd.seq.gril_forms.chunk_scan`,
        :func:`~ssm_gd.seq.gril_forms.scan` or :func:`~ssm_gd.seq.gril_forms.scaled`."""
        impl = auto_impl(self.decay, jax.default_backend()) if self.impl == "auto" else self.impl
        if self.decay == "data":
            return self._at_updates(u, lambda log_lam, *streams: forms.selective(
                log_lam, *streams, chunk=self.chunk))  # fmt: skip
        if impl == "chunked" and self.decay in FACTORISED:
            log_alpha, log_beta = self.log_decays()
            return self._at_updates(
                u, lambda *streams: forms.products(log_alpha, log_beta, *streams, chunk=self.chunk)
            )
        form = _FORMS[impl]
        return self._at_updates(u, lambda *streams: form(self.lam, *streams, chunk=self.chunk))

    def scan_states(self, u: Array) -> Array:
        """The reference form: every state by an associative scan (:func:`~ssm_gd.seq.gril_forms.
        every_state`, :func:`~ssm_gd.seq.gril_forms.selective_states` for ``decay="data"``)."""
        if self.decay == "data":
            return self._at_updates(u, forms.selective_states)
        return self._at_updates(u, lambda *streams: forms.every_state(self.lam, *streams))

    def _at_updates(self, u: Array, readout) -> Array:
        """``readout(k, ṽ, q̃) → o`` ``(B, H, T, d_v)`` on the ``T`` positions where the state is
        updated (``p ≡ w − 1 (mod s)``), the window as streams (:func:`~ssm_gd.seq.gril_forms.
        streams`; ``decay="data"``: ``readout(log λ, k, ṽ, q̃)``, ``log λ`` ``(B, H, T)``),
        normalised and gated as asked, projected out; zero at the other positions."""
        u = jnp.asarray(u)  # a nested list of numbers too
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must be (B, L, d_model={self.d_model}); got shape {u.shape}")
        length, first = u.shape[1], (self.window - 1) % self.stride
        if first >= length:  # a sequence shorter than the first update: no output yet
            return jnp.zeros_like(u)
        weights = (self.w_k, self.w_v, self.w_q, self.q_mix, self.d_mix)
        windowed = forms.streams(u, *(x[...] for x in weights), window=self.window,
                                 stride=self.stride, qk_norm=self.qk_norm)  # fmt: skip
        at = u[:, first :: self.stride]  # the tokens of the update positions (B, T, D)
        if self.decay == "data":
            windowed = (jnp.moveaxis(self.data_log_decay(at), -1, 1), *windowed)
        o = self._gated(self._normed(readout(*windowed)), at)
        y = jnp.einsum("bhtv,hvd->btd", o, self.w_o[...])
        if y.shape[1] == length:
            return y
        return (
            jnp.zeros((*y.shape[:1], length, y.shape[-1]), y.dtype)
            .at[:, first :: self.stride]
            .set(y)
        )

    def _normed(self, o: Array) -> Array:
        """``norm=True``: :func:`~ssm_gd.seq.gril_forms.head_norm` of ``o`` ``(B, H, [T,] d_v)``;
        else ``o`` as it is."""
        if not self.norm:
            return o
        scale = self.o_scale[...]
        return forms.head_norm(o, scale.reshape(scale.shape[0], *(1,) * (o.ndim - 3), -1))

    def _gated(self, o: Array, u: Array) -> Array:
        """``gate=True``: ``o ⊙ swish(W_g u)`` for ``o`` ``(B, H, T, d_v)`` and its tokens ``u``
        ``(B, T, D)`` (or one position: ``(B, H, d_v)`` and ``(B, D)``); else ``o`` as it is."""
        if not self.gate:
            return o
        spec = "btd,dhv->bhtv" if o.ndim == 4 else "bd,dhv->bhv"
        return o * jax.nn.silu(jnp.einsum(spec, u, self.w_g[...]))

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
        new = {}
        for name, weight in (("k", self.w_k), ("v", self.w_v), ("q", self.w_q)):
            x = jnp.einsum("bd,dhx->bhx", u_t, weight[...])
            x = forms.unit(x) if self.qk_norm and name != "v" else x
            new[name] = jnp.concatenate([state[name], x[:, None]], axis=1)  # the window ending at t
        active = (state["t"] - (self.window - 1)) % self.stride == 0
        if self.decay == "data":
            lam = jnp.exp(self.data_log_decay(u_t))[:, :, None, None]  # (B, H, 1, 1)
        else:
            lam = self.lam
        s, o = forms.step(lam, self.q_mix[...], self.d_mix[...], state["s"], new["k"], new["v"],
                          new["q"], active)  # fmt: skip
        y = jnp.einsum("bhv,hvd->bd", self._gated(self._normed(o), u_t), self.w_o[...])
        state = {name: x[:, 1:] for name, x in new.items()} | {"s": s, "t": state["t"] + 1}
        return state, y
