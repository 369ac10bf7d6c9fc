"""The GD-SSM layer (flax.nnx): local self-attention, a diagonal recurrence, a multiplicative readout.

For windows ``X_t ∈ R^{w×H}`` of the token sequence (``w`` tokens, stride ``s``):

1. local self-attention, a sum of cross products inside the window (no softmax)::

       U_t = Σ_{a,b} Q_ab X_t[a] X_t[b]ᵀ = X_tᵀ Q X_t          (H × H),   Q ∈ R^{w×w}

2. a diagonal linear recurrence on the matrix state, elementwise::

       S_t = Λ ⊙ S_{t−1} + U_t                                   (via ssm_gd.scan)

3. a multiplicative readout with the query picked out of the window::

       ŷ_t = C S_t (X_tᵀ D),   D ∈ R^w.

With ``Q = e_2 e_1ᵀ``, ``Λ = 1``, ``D = e_3``, ``C = (η/N) I`` on interleaved windows
``[x_t; y_t; x_{t+1}]`` this is one GD step on the first ``t`` pairs, evaluated at ``x_{t+1}``.
:class:`GDSSM` composes a second accumulator (``S_x = Σ x_i x_iᵀ``) into K steps;
:mod:`ssm_gd.construction` builds the exact parameters.

Modules hold parameters; the computations are the pure functions :func:`windows`,
:func:`local_self_attention` and :func:`gd_readout`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_gd import scan, validate
from ssm_gd.initializers import Initializer, identity_init
from ssm_gd.readout import auto_impl, chunked_readout, last_state_readout, window_factors
from ssm_gd.recurrence import LAMBDA_INITS, PARAMETRIZATIONS, DiagonalRecurrence
from ssm_gd.tokens import Tokens, check_layout, read_tokens, row_width, token_width

__all__ = [
    "GDSSM",
    "GDSSMInit",
    "LAMBDA_INITS",
    "PARAMETRIZATIONS",
    "QUERY_MAPS",
    "DiagonalRecurrence",
    "LocalMixing",
    "LocalSelfAttention",
    "compose_readout",
    "gd_readout",
    "local_self_attention",
    "windows",
]

Array = jax.Array


def windows(tokens: Array, window: int, stride: int) -> Array:
    """Sliding windows ``(B, T, window, H)`` of ``tokens`` ``(B, L, H)``, ``T = (L − window)//stride + 1``.

    Window ``t`` holds tokens ``t·stride, …, t·stride + window − 1``; a tail that does not fill a
    window is dropped.
    """
    window = validate.positive_int("window", window)
    stride = validate.positive_int("stride", stride)
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, L, H); got shape {tokens.shape}")
    length = tokens.shape[1]
    if window > length:
        raise ValueError(f"window={window} is longer than the sequence (L={length})")
    n = (length - window) // stride + 1
    last = stride * (n - 1) + 1
    return jnp.stack([tokens[:, a : a + last : stride] for a in range(window)], axis=2)


def local_self_attention(x: Array, q: Array) -> Array:
    """``U_t = Σ_{a,b} Q_ab X_t[a] X_t[b]ᵀ`` for windows ``x`` ``(B, T, w, H)``: ``(B, T, H, H)``."""
    return jnp.einsum("ntah,ac,ntck->nthk", x, q, x)


def gd_readout(
    s_y: Array, s_x: Array | None, query: Array, c_y: Array, c_x: Array | None, steps: int
):
    """The K-step multiplicative readout ``ŷ_t = C_y S^y_t u_K`` with ``(B, T, d_out)`` output.

    ``u_1 = q_t`` and ``u_{k+1} = q_t + u_k − C_x S^x_t u_k``, so that with ``C_y = C_x = (η/N) I``,
    ``S^y = Σ y_i x_iᵀ`` and ``S^x = Σ x_i x_iᵀ``:  ``ŷ = (η/N) S^y Σ_{j<K} (I − (η/N) S^x)^j x_q
    = W_K x_q``, the K-step GD prediction (unrolling ``W_{k+1} = W_k (I − (η/N) S^x) + (η/N) S^y``).

    Shapes: ``s_y (B, T, R, H)``, ``s_x (B, T, H, H)``, ``query (B, T, H)``, ``c_y (d_out, R)``,
    ``c_x (H, H)``.
    """

    def apply(s):
        return None if s is None else (lambda v: jnp.einsum("btrk,btk->btr", s, v))

    return compose_readout(apply(s_y), apply(s_x), query, c_y, c_x, steps)


def compose_readout(apply_y, apply_x, query: Array, c_y: Array, c_x: Array | None, steps: int):
    """:func:`gd_readout` with the states given as maps ``v ↦ S_t v_t`` ``(B, T, H) → (B, T, R)``.

    This is how the readout runs without materialising the states
    (:func:`ssm_gd.readout.chunked_readout`): each of the ``K`` products is one pass over the sequence.
    """
    u = query
    for _ in range(steps - 1):
        u = query + u - jnp.einsum("ij,btj->bti", c_x, apply_x(u))
    return jnp.einsum("or,btr->bto", c_y, apply_y(u))


class _LocalWindow(nnx.Module):
    """A layer on sliding windows of ``window`` tokens, ``stride`` apart: ``U_t`` from ``X_t``.

    Subclasses give :meth:`products` (``U_t`` from the windows ``(B, T, window, H)``); calling
    the layer on tokens ``(B, L, H)`` cuts the windows (:func:`windows`) and applies it.
    """

    def __init__(self, window: int, stride: int):
        self.window = validate.positive_int("window", window)
        self.stride = validate.positive_int("stride", stride)

    def products(self, x: Array) -> Array:
        raise NotImplementedError

    def __call__(self, tokens: Array) -> Array:
        return self.products(windows(tokens, self.window, self.stride))


class LocalSelfAttention(_LocalWindow):
    """Cross products inside sliding windows: ``(B, L, H) → (B, T, H, H)``, ``U_t = X_tᵀ Q X_t``.

    Attributes: ``q`` (``nnx.Param``, ``(window, window)``).
    """

    def __init__(
        self,
        window: int = 3,
        stride: int = 2,
        *,
        q_init: Initializer = nnx.initializers.normal(0.1),
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(window, stride)
        self.q = nnx.Param(q_init(rngs.params(), (window, window), param_dtype))

    def products(self, x: Array) -> Array:
        """``U_t`` ``(B, T, H, H)`` from windows ``x`` ``(B, T, window, H)``."""
        return local_self_attention(x, self.q[...])

    def weights(self) -> Array:
        """``w = Q`` ``(window, window)``: ``U_t = Σ_{a,c} w_ac left_{t,a} right_{t,c}ᵀ`` (:meth:`factors`)."""
        return self.q[...]

    def factors(self, rows: tuple) -> tuple[tuple, tuple]:
        """``(lefts, rights) = (X_t, X_t)``, so that ``U_t = Σ_{a,c} Q_ac X_t[a] X_t[c]ᵀ``.

        ``rows``: the window's rows ``X_t[a]`` as one array per position ``a`` (any leading axes,
        the features on any axis but the same in all): the form
        :func:`ssm_gd.readout.last_state_readout` takes.
        """
        return tuple(rows), tuple(rows)


class LocalMixing(_LocalWindow):
    """A linear mix of the tokens in each window: ``(B, L, H) → (B, T, 1, H)``, ``U_t = Pᵀ X_t``.

    The first-order counterpart of :class:`LocalSelfAttention`, for tokens that already carry a
    product (the ``"constructed"`` layout's ``x_i·y_i``). Attributes: ``p`` (``(window,)``).
    """

    def __init__(
        self,
        window: int = 3,
        stride: int = 2,
        *,
        p_init: Initializer = nnx.initializers.normal(0.1),
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(window, stride)
        self.p = nnx.Param(p_init(rngs.params(), (window,), param_dtype))

    def products(self, x: Array) -> Array:
        """``U_t`` ``(B, T, 1, H)`` from windows ``x`` ``(B, T, window, H)``."""
        return jnp.einsum("btah,a->bth", x, self.p[...])[:, :, None, :]

    def weights(self) -> Array:
        """``w = P`` as a row ``(1, window)``: ``U_t = Σ_c w_0c left_t right_{t,c}ᵀ`` (:meth:`factors`)."""
        return self.p[...][None]

    def factors(self, rows: tuple, features: int = -2) -> tuple[tuple, tuple]:
        """``(lefts, rights) = ((1,), X_t)``, so that ``U_t = Σ_c P_c 1 X_t[c]ᵀ``.

        ``rows``: the window's rows ``X_t[c]`` as one array per position ``c``, the features on
        axis ``features``; the single left factor is a row of ones (``R = 1``) on that axis.
        """
        shape = list(rows[0].shape)
        shape[features] = 1
        return (jnp.ones(shape, rows[0].dtype),), tuple(rows)


@dataclasses.dataclass(frozen=True)
class GDSSMInit:
    """Initializers ``(key, shape, dtype) → array`` for each parameter of a :class:`GDSSM`.

    Defaults: ``Q ~ N(0, 0.1²)``, ``Λ = 1``, ``C = I``, ``D ~ N(0, 1)`` (``query_map="vector"``)
    or ``D_a ~ N(0, 1/h)`` entrywise (``query_map="matrix"``). ``q_y`` also serves ``P_y`` in the
    constructed layout; ``lam`` serves both recurrences unless ``lam_x`` is set.
    """

    q_y: Initializer = nnx.initializers.normal(0.1)
    q_x: Initializer = nnx.initializers.normal(0.1)
    lam: str | Initializer = "ones"
    lam_x: str | Initializer | None = None
    c_y: Initializer = identity_init
    c_x: Initializer = identity_init
    d: Initializer | None = None


IMPLS = ("associative", "sequential", "chunked", "auto")
QUERY_MAPS = ("vector", "matrix")


def _branch(kind: str, h: int, q_init, lam_init, rec: dict, att: dict):
    """One accumulator of the GD-SSM: ``(attention, recurrence)``. ``kind``: ``"interleaved"`` (the
    y·x branch, ``Q_y``, an ``(h, h)`` state), ``"constructed"`` (the y·x branch on constructed
    tokens, ``P_y``, a ``(1, h)`` state) or ``"xx"`` (the x·x branch, ``Q_x``, ``(h, h)``).
    ``att`` holds the ``window`` and ``stride``."""
    if kind == "constructed":
        attention = LocalMixing(p_init=q_init, **att)
        return attention, DiagonalRecurrence((1, h), lam_init=lam_init, **rec)
    attention = LocalSelfAttention(q_init=q_init, **att)
    return attention, DiagonalRecurrence((h, h), lam_init=lam_init, **rec)


class GDSSM(nnx.Module):
    """The GD-SSM model: :class:`~ssm_gd.tokens.Tokens` ``(B, L, H)`` → a prediction at every
    window ``(B, N, d_out)`` (docs/design.md §3, §5).

    Windows of 3 tokens, stride 2, give ``X_t = [x_t; y_t; x_{t+1}]``, ``t = 1…N``; with
    ``minibatch=m`` (interleaved tokens, ``N`` a multiple of ``m``) windows of ``2m + 1`` tokens,
    stride ``2m``, hold ``m`` pairs and the next input, ``t = 1…N/m`` (docs/design.md §12).
    The y·x branch (``U^y_t = X_tᵀ Q_y X_t``, ``S^y_t = Λ_y ⊙ S^y_{t−1} + U^y_t``) and, for
    ``n_steps > 1``, the x·x branch (``Q_x``, ``Λ_x``) run side by side; the readout composes them
    step by step (:func:`gd_readout`) with the query ``v_t = Σ_a D_a X_t[a]`` (``query_map="vector"``: scalars
    ``D_a``; ``"matrix"``: ``(h, h)`` matrices, a learned preconditioner). Every position is causal.
    On ``"constructed"`` tokens the y·x branch is first order (:class:`LocalMixing`).

    Tokens made for other sizes, or a bare array, are refused; ``n_context`` (``None``: any) pins
    the context size (the construction's readout holds ``1/N``), a multiple of ``minibatch``.
    Parameters: ``yx_attention``, ``yx_recurrence``, (``xx_attention``, ``xx_recurrence``, ``c_x``
    ``(h, h)``), ``c_y`` ``(d_out, R)`` (``R = h``, or 1 constructed) and ``d``.

    ``impl``: ``"associative"`` or ``"sequential"`` build every state
    (:func:`ssm_gd.scan.linear_recurrence`); ``"chunked"`` never does
    (:func:`ssm_gd.readout.chunked_readout`, ``chunk`` windows at a time); ``"auto"`` picks per call
    (:meth:`resolve_impl`); all agree to rounding. :meth:`predict_query` computes the query's
    prediction alone from weighted sums (:func:`ssm_gd.readout.last_state_readout`), memory the
    size of the tokens: what training and the metrics call.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int = 1,
        *,
        n_steps: int = 1,
        layout: str = "interleaved",
        init: GDSSMInit = GDSSMInit(),
        parametrization: str = "direct",
        impl: str = "associative",
        chunk: int = 32,
        query_map: str = "vector",
        n_context: int | None = None,
        minibatch: int = 1,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_in, d_out, self.n_context, m = _sizes(layout, d_in, d_out, n_context, minibatch)
        self.d_in, self.d_out, self.minibatch = d_in, d_out, m
        self.window, self.stride = 2 * m + 1, 2 * m  # m pairs and the next input, m pairs apart
        self.impl = validate.one_of("impl", impl, IMPLS)
        self.query_map = validate.one_of("query_map", query_map, QUERY_MAPS)
        self.chunk = validate.positive_int("chunk", chunk)
        if impl not in scan.IMPLEMENTATIONS:  # the recurrences' own impl, when states are built
            impl = "associative"
        self.n_steps = validate.positive_int("n_steps", n_steps)
        self.layout = layout
        self.token_width = token_width(layout, d_in, d_out)
        h = row_width(layout, d_in, d_out)
        rec = dict(parametrization=parametrization, impl=impl, param_dtype=param_dtype, rngs=rngs)
        att = dict(window=self.window, stride=self.stride, param_dtype=param_dtype, rngs=rngs)
        # Built in this order (the initializers draw from rngs in turn): y·x, then x·x, c_y, d.
        self.yx_attention, self.yx_recurrence = _branch(layout, h, init.q_y, init.lam, rec, att)
        state_rows = 1 if layout == "constructed" else h  # R: a state is R × h
        if n_steps > 1:
            lam_x = init.lam if init.lam_x is None else init.lam_x
            self.xx_attention, self.xx_recurrence = _branch("xx", h, init.q_x, lam_x, rec, att)
            self.c_x = nnx.Param(init.c_x(rngs.params(), (h, h), param_dtype))
        else:
            self.xx_attention = self.xx_recurrence = self.c_x = None
        self.c_y = nnx.Param(init.c_y(rngs.params(), (d_out, state_rows), param_dtype))
        if query_map == "vector":
            d_init, d_shape = init.d or nnx.initializers.normal(1.0), (self.window,)
        else:
            d_init, d_shape = init.d or nnx.initializers.normal(h**-0.5), (self.window, h, h)
        self.d = nnx.Param(d_init(rngs.params(), d_shape, param_dtype))

    def rows(self, tokens: Tokens) -> Array:
        """The token sequence as window rows ``(B, 2N + 1, h)``, after checking that the tokens
        were made for this model's layout and sizes (and context size, if it has one)."""
        array = read_tokens(
            tokens, layout=self.layout, d_in=self.d_in, d_out=self.d_out, n_context=self.n_context
        ).array
        if self.layout == "interleaved":
            _check_multiple(tokens.n_context, self.minibatch)
            return array
        return array.reshape(array.shape[0], 2 * array.shape[1], self.d_in)[:, 1:]

    def __call__(self, tokens: Tokens) -> Array:
        """Predictions ``(B, N, d_out)``: entry ``t`` predicts ``y_{t+1}`` (``y_q`` for the last)."""
        x = windows(self.rows(tokens), self.window, self.stride)  # (B, N/m, 2m + 1, h)
        query = self.query(x)
        c_x = None if self.n_steps == 1 else self.c_x[...]
        branches = self._branches()
        if self.resolve_impl(x.shape[0], x.shape[1]) == "chunked":

            def apply(attention, recurrence):
                lam = recurrence.lam
                return lambda v: chunked_readout(lam, attention.products, x, v, chunk=self.chunk)

        else:

            def apply(attention, recurrence):
                s = recurrence(attention.products(x))
                return lambda v: jnp.einsum("btrk,btk->btr", s, v)

        applies = [apply(*b) for b in branches] + [None]
        return compose_readout(applies[0], applies[1], query, self.c_y[...], c_x, self.n_steps)

    def predict_query(self, tokens: Tokens) -> Array:
        """The query's prediction ``(B, d_out)``, ``self(tokens)[:, -1]`` up to rounding, from the
        last states as weighted sums ``S_N = Σ_t Λ^{N−t} ⊙ U_t`` (docs/design.md §3,
        :func:`ssm_gd.readout.last_state_readout`): no states built, no sequential dependency."""
        rows = self.rows(tokens)  # (B, 2N + 1, h)
        n = (rows.shape[1] - 1) // self.stride  # windows
        query = self.query(rows[:, -self.window :])  # (B, h): the last window's query, x_q

        def apply(attention, recurrence):
            w, factors = window_factors(attention, rows)

            def readout(u):  # (B, 1, h) → (B, 1, R)
                m = last_state_readout(recurrence.lam, factors, n, u[:, 0].T)
                return jnp.einsum("ac,acrb->br", w, m)[:, None]

            return readout

        applies = [apply(*b) for b in self._branches()] + [None]
        c_x = None if self.n_steps == 1 else self.c_x[...]
        return compose_readout(
            applies[0], applies[1], query[:, None], self.c_y[...], c_x, self.n_steps
        )[:, 0]

    def query(self, x: Array) -> Array:
        """``v = Σ_a D_a X[a]`` ``(…, h)`` for windows ``x`` ``(…, window, h)``."""
        if self.query_map == "vector":
            return jnp.einsum("...ah,a->...h", x, self.d[...])
        return jnp.einsum("...ah,aih->...i", x, self.d[...])

    def _branches(self):
        branches = [(self.yx_attention, self.yx_recurrence)]
        if self.n_steps > 1:
            branches.append((self.xx_attention, self.xx_recurrence))
        return branches

    def resolve_impl(self, batch: int, n_windows: int) -> str:
        """The implementation a call with ``batch`` sequences of ``n_windows`` windows runs:
        ``impl``, or for ``"auto"`` :func:`ssm_gd.readout.auto_impl` of the default backend and the
        entries one branch's states would have (``batch · n_windows · R · h``)."""
        if self.impl != "auto":
            return self.impl
        state_rows = self.c_y.shape[1]
        h = row_width(self.layout, self.d_in, self.d_out)
        entries = batch * n_windows * max(state_rows, h if self.n_steps > 1 else 1) * h
        return auto_impl(jax.default_backend(), n_windows, entries)


def _sizes(layout, d_in, d_out, n_context, minibatch) -> tuple:
    """A GD-SSM's checked ``(d_in, d_out, n_context, minibatch)``. ``n_context``: ``None`` (any), or
    the one context size the model reads (the construction's ``C`` holds ``η/N``)."""
    check_layout(layout, d_in, d_out)
    minibatch = validate.positive_int("minibatch", minibatch)
    if minibatch > 1 and layout != "interleaved":
        raise ValueError(f"minibatch > 1 reads interleaved tokens; got layout={layout!r}")
    if n_context is not None:
        n_context = validate.positive_int("n_context", n_context)
        _check_multiple(n_context, minibatch)
    return int(d_in), int(d_out), n_context, minibatch


def _check_multiple(n_context: int, minibatch: int) -> None:
    if n_context % minibatch:
        raise ValueError(
            f"n_context={n_context} is not a multiple of minibatch={minibatch}: windows of "
            f"minibatch pairs must cover the context (use a context of {minibatch}·k pairs)"
        )
