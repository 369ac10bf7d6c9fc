"""`linear_recurrence` and `step` against a plain loop, in float64, for every implementation."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_gd import scan
from ssm_gd.scan import IMPLEMENTATIONS, linear_recurrence, step

jax.config.update("jax_enable_x64", True)

IMPLS = sorted(IMPLEMENTATIONS)
TOL = dict(rtol=1e-12, atol=1e-12)  # float64 rounding on O(1) values

# Compiling dominates this file's run time (each shape, dtype and option is a new program), so
# the numerical tests run every implementation inside one jitted call, compiled on CPU with XLA
# options that cut compile time about 3x (backend optimisation level 0; the older, quicker-to-
# compile fusion emitters). Both leave float64 results as they are: XLA on CPU does not
# reassociate floating point unless fast-math is on, and it stays off. The argument checks run
# in Python at trace time exactly as they do eagerly; `test_length_one_eager` and the bad-input
# tests call `linear_recurrence` without jit.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _compiler_options():
    """The options of _QUICK_COMPILE that this backend and jaxlib accept (none off CPU)."""
    options = {}
    if jax.default_backend() != "cpu":
        return options
    for key, value in _QUICK_COMPILE.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={**options, key: value})(1.0)
        except Exception:  # an option this XLA does not know: compile without it
            continue
        options[key] = value
    return options


fast_jit = functools.partial(jax.jit, compiler_options=_compiler_options())


def impls_unjitted(a, b, h0=None, reverse=False, axis=0):
    """{impl: (h, h_last)} for every implementation."""
    return {
        impl: linear_recurrence(a, b, h0, reverse=reverse, impl=impl, axis=axis) for impl in IMPLS
    }


all_impls = fast_jit(impls_unjitted, static_argnames=("reverse", "axis"))


def assert_all_close(got, want, want_last, **tol):
    """Every implementation's (h, h_last) equals (want, want_last), dtypes and shapes included."""
    tol = tol or TOL
    for impl, (h, h_last) in got.items():
        assert h.shape == want.shape and h_last.shape == want_last.shape, impl
        assert h.dtype == want.dtype and h_last.dtype == want_last.dtype, impl
        np.testing.assert_allclose(h, want, **tol, err_msg=f"h, impl={impl}")
        np.testing.assert_allclose(h_last, want_last, **tol, err_msg=f"h_last, impl={impl}")


def loop_reference(a, b, h0=None, reverse=False):
    """h_t = a_t h_{t∓1} + b_t one step at a time along axis 0; returns (h, h_last)."""
    a, b = np.broadcast_to(np.asarray(a), np.shape(b)), np.asarray(b)
    dtype = np.result_type(a, b, *([] if h0 is None else [np.asarray(h0)]))
    h = np.zeros(b.shape[1:], dtype) if h0 is None else np.broadcast_to(h0, b.shape[1:])
    out = np.empty(b.shape, dtype)
    for t in reversed(range(len(b))) if reverse else range(len(b)):
        h = a[t] * h + b[t]
        out[t] = h
    return out, out[0] if reverse else out[-1]


def random_inputs(rng, shape, a_shape, kind="real", dtype=np.float64):
    """(a, b, h0) as jax arrays: |a| < 1 of shape `a_shape`, b of `shape`, h0 of the state shape.

    kind: "real"; "complex" (all three complex); "mixed" (complex a, real b and h0).
    """

    def draw(s, scale, complex_):
        if complex_:
            r, phase = rng.uniform(0, scale, s), rng.uniform(-np.pi, np.pi, s)
            return jnp.asarray(r * np.exp(1j * phase), np.complex128)
        return jnp.asarray(rng.uniform(-scale, scale, s), dtype)

    return (
        draw(a_shape, 0.99, kind != "real"),
        draw(shape, 1.0, kind == "complex"),
        draw(shape[1:], 1.0, kind == "complex"),
    )


# ---------------------------------------------------------------------------------------------
# 1. Every implementation equals the loop, over every combination of options.

L = 13
STATES = {"vector": (4,), "matrix": (3, 5)}
# "full": a varies in time, a.shape == b.shape; "invariant": a has the state shape (H,) or
# (H, K), a time-invariant Λ broadcast over time.
A_SHAPES = {"full": lambda shape: shape, "invariant": lambda shape: shape[1:]}
CASES = list(itertools.product(["real", "complex"], [False, True], [False, True], STATES, A_SHAPES))


@pytest.mark.parametrize(("kind", "with_h0", "reverse", "state", "a_shape"), CASES)
def test_matches_loop(kind, with_h0, reverse, state, a_shape):
    rng = np.random.default_rng(0)
    shape = (L, *STATES[state])
    a, b, h0 = random_inputs(rng, shape, A_SHAPES[a_shape](shape), kind)
    h0 = h0 if with_h0 else None
    got = all_impls(a, b, h0, reverse=reverse)
    assert_all_close(got, *loop_reference(a, b, h0, reverse))
    # And the implementations agree with each other (not only each with the loop).
    (h_ref, last_ref), *rest = got.values()
    for h, h_last in rest:
        np.testing.assert_allclose(h, h_ref, **TOL)
        np.testing.assert_allclose(h_last, last_ref, **TOL)


@pytest.mark.parametrize(
    "a_shape",
    [(L, 3, 1), (1, 3, 5), (1, 1, 5), (5,), (3, 1), ()],
    ids=lambda s: "x".join(map(str, s)) or "scalar",
)
def test_partially_broadcast_a(a_shape):
    """a with size-1 axes or fewer axes than b (state (3, 5)), with h0 and mixed dtypes."""
    rng = np.random.default_rng(1)
    a, b, h0 = random_inputs(rng, (L, 3, 5), a_shape, "mixed")
    assert_all_close(all_impls(a, b, h0), *loop_reference(a, b, h0))


def test_h0_broadcasts():
    """h0 broadcastable to the state, here (1, K) for state (H, K), acts as its broadcast."""
    rng = np.random.default_rng(2)
    a, b, _ = random_inputs(rng, (L, 3, 5), (L, 3, 5))
    h0 = jnp.asarray(rng.normal(size=(1, 5)))
    for reverse in (False, True):
        got = all_impls(a, b, h0, reverse=reverse)
        assert_all_close(got, *loop_reference(a, b, h0, reverse))


def test_implementations_agree_long():
    """A long complex run (L = 1000, |a| close to 1) where rounding has time to accumulate."""
    rng = np.random.default_rng(3)
    shape = (1000, 4)
    _, b, h0 = random_inputs(rng, shape, shape, "complex")
    a = jnp.asarray(np.exp(-rng.uniform(1e-3, 1e-2, shape) + 1j * rng.uniform(-1, 1, shape)))
    want, want_last = loop_reference(a, b, h0)
    (h_ref, last_ref), *rest = all_impls(a, b, h0).values()
    for h, h_last in rest:
        np.testing.assert_allclose(h, h_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(h_last, last_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(h_ref, want, rtol=1e-10, atol=1e-10)


def test_length_one_eager():
    """L = 1: h_1 = a_1 h0 + b_1 = 4 both ways; called without jit, so eagerly."""
    a, b, h0 = jnp.array([0.5]), jnp.array([2.0]), jnp.array(4.0)
    for impl in IMPLS:
        for reverse in (False, True):
            h, h_last = linear_recurrence(a, b, h0, reverse=reverse, impl=impl)
            np.testing.assert_allclose(h, [4.0], **TOL)
            np.testing.assert_allclose(h_last, 4.0, **TOL)


# ---------------------------------------------------------------------------------------------
# 2. Property test over shapes.


@st.composite
def problems(draw):
    length = draw(st.integers(1, 40))
    state = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=2)))
    shape = (length, *state)
    # Each axis of a is either full or 1, and a may drop leading axes (time-invariant).
    mask = draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    a_shape = tuple(n if keep else 1 for n, keep in zip(shape, mask, strict=True))
    a_shape = a_shape[draw(st.integers(0, len(shape))) :]
    return dict(
        shape=shape,
        a_shape=a_shape,
        kind=draw(st.sampled_from(["real", "complex", "mixed"])),
        with_h0=draw(st.booleans()),
        reverse=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=30, deadline=None)
@given(problems())
def test_property_matches_loop(p):
    rng = np.random.default_rng(p["seed"])
    a, b, h0 = random_inputs(rng, p["shape"], p["a_shape"], p["kind"])
    h0 = h0 if p["with_h0"] else None
    got = all_impls(a, b, h0, reverse=p["reverse"])
    assert_all_close(got, *loop_reference(a, b, h0, p["reverse"]))


# ---------------------------------------------------------------------------------------------
# 3. `step`, applied token by token, equals the parallel scan.


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_step_matches_scan(with_h0, kind):
    rng = np.random.default_rng(4)
    shape = (17, 3, 2)
    a, b, h0 = random_inputs(rng, shape, shape, kind)
    a_inv = a[0]  # also a time-invariant decay, broadcast against each b_t by `step`
    for decay in (a, a_inv):
        h = h0 if with_h0 else jnp.zeros(shape[1:], b.dtype)
        states = []
        for t in range(shape[0]):
            h = step(decay if decay.ndim == 2 else decay[t], b[t], h)
            states.append(h)
        assert_all_close(all_impls(decay, b, h0 if with_h0 else None), jnp.stack(states), h)


# ---------------------------------------------------------------------------------------------
# 4. The time axis need not lead.


@pytest.mark.parametrize("reverse", [False, True])
def test_axis(reverse):
    rng = np.random.default_rng(5)
    B, T, H = 3, 11, 4
    a, b, _ = random_inputs(rng, (B, T, H), (B, T, H))
    h0 = jnp.asarray(rng.normal(size=(B, H)))
    ref = [loop_reference(a[i], b[i], h0[i], reverse) for i in range(B)]
    want = np.stack([r[0] for r in ref]), np.stack([r[1] for r in ref])
    for axis in (1, -2):
        assert_all_close(all_impls(a, b, h0, reverse=reverse, axis=axis), *want)

    @fast_jit
    def per_sequence(a, b, h0):
        vmapped = jax.vmap(functools.partial(impls_unjitted, reverse=reverse))(a, b, h0)
        transposed = impls_unjitted(a.transpose(1, 0, 2), b.transpose(1, 0, 2), h0, reverse=reverse)
        return vmapped, transposed

    vmapped, transposed = per_sequence(a, b, h0)
    assert_all_close(vmapped, *want)
    transposed = {k: (h.transpose(1, 0, 2), hl) for k, (h, hl) in transposed.items()}
    assert_all_close(transposed, *want)


# ---------------------------------------------------------------------------------------------
# 5. Low precision: bfloat16 in and out, float32 inside.

BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2**-7 ≈ 7.8e-3


@pytest.mark.parametrize("with_h0", [False, True])
def test_bfloat16_close_to_float32(with_h0):
    rng = np.random.default_rng(6)
    shape = (64, 8)
    a, b, h0 = (x.astype(jnp.bfloat16) for x in random_inputs(rng, shape, shape))
    h0 = h0 if with_h0 else None
    got = all_impls(a, b, h0)
    for h, h_last in got.values():
        assert h.dtype == jnp.bfloat16 and h_last.dtype == jnp.bfloat16

    # The same (bfloat16-representable) inputs in float32. Accumulating in float32, the only
    # bfloat16 error is the final rounding, at most eps/2 relative: allow 2 eps relative, plus
    # 2 eps of the largest |h| absolute for entries that happen to cancel to near zero.
    up = lambda x: None if x is None else x.astype(jnp.float32)  # noqa: E731
    want = all_impls(up(a), up(b), up(h0))
    for impl, (h, h_last) in got.items():
        w, w_last = want[impl]
        assert w.dtype == jnp.float32
        tol = dict(rtol=2 * BF16_EPS, atol=2 * BF16_EPS * float(jnp.max(jnp.abs(w))))
        np.testing.assert_allclose(h.astype(np.float32), w, **tol, err_msg=impl)
        np.testing.assert_allclose(h_last.astype(np.float32), w_last, **tol, err_msg=impl)


def test_bfloat16_accumulates_in_float32():
    """Counting to 512 by ones: a bfloat16 running sum sticks at 256 (256 + 1 rounds to 256)."""
    n = 512
    ones = jnp.ones((n,), jnp.bfloat16)
    counts = np.arange(1, n + 1, dtype=np.float32)
    for impl, (h, h_last) in all_impls(ones, ones).items():
        assert h_last.dtype == jnp.bfloat16, impl
        assert float(h_last) == n, impl
        # Every exact partial count, rounded once to bfloat16 at the end.
        np.testing.assert_array_equal(h, counts.astype(jnp.bfloat16), err_msg=impl)


# ---------------------------------------------------------------------------------------------
# 6. Bad input fails early, with a message naming the argument.


@pytest.fixture
def no_impl_calls(monkeypatch):
    """Replace every implementation by one that records calls: errors must come before them."""
    calls = []

    def spy(a, b):
        calls.append((a.shape, b.shape))
        raise AssertionError("implementation reached")

    for name in IMPLS:
        monkeypatch.setitem(scan.IMPLEMENTATIONS, name, spy)
    yield calls
    assert calls == []


def _ab(shape=(5, 3)):
    return jnp.full(shape, 0.5), jnp.ones(shape)


def test_unknown_impl():
    a, b = _ab()
    with pytest.raises(ValueError, match=r"impl must be one of .*'parallel'"):
        linear_recurrence(a, b, impl="parallel")


def test_integer_a(no_impl_calls):
    _, b = _ab()
    with pytest.raises(TypeError, match=r"^a must have a floating or complex dtype"):
        linear_recurrence(jnp.ones((5, 3), jnp.int32), b)


def test_integer_b(no_impl_calls):
    a, _ = _ab()
    with pytest.raises(TypeError, match=r"^b must have a floating or complex dtype"):
        linear_recurrence(a, jnp.ones((5, 3), jnp.int32))


def test_integer_h0(no_impl_calls):
    a, b = _ab()
    with pytest.raises(TypeError, match=r"^h0 must have a floating or complex dtype"):
        linear_recurrence(a, b, jnp.zeros((3,), jnp.int32))


def test_non_array_a(no_impl_calls):
    _, b = _ab()
    with pytest.raises(TypeError, match=r"^a must be an array"):
        linear_recurrence([0.5, 0.5, 0.5], b)


@pytest.mark.parametrize("a_shape", [(5, 4), (6, 3), (2, 5, 3)])
def test_a_not_broadcastable(no_impl_calls, a_shape):
    """(5, 4) and (6, 3) do not broadcast with b (5, 3); (2, 5, 3) does, but would grow b."""
    _, b = _ab()
    with pytest.raises(ValueError, match=r"^a of shape .* must broadcast to b's shape"):
        linear_recurrence(jnp.full(a_shape, 0.5), b)


def test_h0_broadcasting_beyond_state(no_impl_calls):
    """h0 (2, 3) broadcasts with the state (3,) but would enlarge it."""
    a, b = _ab()
    with pytest.raises(ValueError, match=r"^h0 of shape \(2, 3\) must broadcast"):
        linear_recurrence(a, b, jnp.zeros((2, 3)))


def test_h0_incompatible_shape(no_impl_calls):
    """h0 (4,) does not broadcast with the state (3,) at all; the error should still name h0."""
    a, b = _ab()
    with pytest.raises(ValueError, match=r"h0"):
        linear_recurrence(a, b, jnp.zeros((4,)))


def test_bad_axis(no_impl_calls):
    a, b = _ab()
    with pytest.raises(ValueError, match=r"^axis must be in"):
        linear_recurrence(a, b, axis=2)


def test_scalar_b(no_impl_calls):
    with pytest.raises(ValueError, match=r"^b must have a time axis"):
        linear_recurrence(jnp.array(0.5), jnp.array(1.0))


def test_errors_raised_at_trace_time():
    """Under jit the checks fire while tracing, before anything is compiled or run."""
    traced = jax.jit(lambda a, b: linear_recurrence(a, b)[0])
    with pytest.raises(ValueError, match=r"^a of shape"):
        jax.make_jaxpr(traced)(jnp.ones((5, 4)), jnp.ones((5, 3)))
    with pytest.raises(TypeError, match=r"^b must have a floating"):
        jax.make_jaxpr(traced)(jnp.ones((5, 3)), jnp.ones((5, 3), jnp.int32))


# ---------------------------------------------------------------------------------------------
# 7. Gradients: both implementations give the same derivatives, and they are the derivatives.


@pytest.mark.parametrize("kind", ["real", "complex"])
def test_gradients_agree(kind):
    rng = np.random.default_rng(7)
    shape = (19, 3, 2)
    a, b, h0 = random_inputs(rng, shape, shape, kind)
    w = jnp.asarray(rng.normal(size=shape))

    def loss(a, b, h0, impl, reverse):
        h, h_last = linear_recurrence(a, b, h0, reverse=reverse, impl=impl)
        return jnp.sum(w * jnp.abs(h) ** 2) + jnp.sum(jnp.real(h_last) ** 3)

    @fast_jit
    def grads(a, b, h0):
        return {
            (impl, reverse): jax.grad(loss, argnums=(0, 1, 2))(a, b, h0, impl, reverse)
            for impl in IMPLS
            for reverse in (False, True)
        }

    g = grads(a, b, h0)
    for reverse in (False, True):
        g0 = g[IMPLS[0], reverse]
        for impl in IMPLS[1:]:
            for x, x0 in zip(g[impl, reverse], g0, strict=True):
                assert x.dtype == x0.dtype
                np.testing.assert_allclose(x, x0, rtol=1e-10, atol=1e-12, err_msg=impl)

    if kind == "real":
        # Directional derivative vs central differences (float64, step 1e-6: error ~1e-9).
        @fast_jit
        def losses(a, b, h0, eps, da, db, dh0):
            return {
                (impl, reverse): loss(a + eps * da, b + eps * db, h0 + eps * dh0, impl, reverse)
                for impl in IMPLS
                for reverse in (False, True)
            }

        d = [jnp.asarray(rng.normal(size=x.shape)) for x in (a, b, h0)]
        plus, minus = losses(a, b, h0, 1e-6, *d), losses(a, b, h0, -1e-6, *d)
        for key, gk in g.items():
            numeric = (plus[key] - minus[key]) / 2e-6
            analytic = sum(jnp.vdot(x, dx) for x, dx in zip(gk, d, strict=True))
            np.testing.assert_allclose(analytic, numeric, rtol=1e-7, err_msg=str(key))


# --- decay_powers ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 9])
def test_decay_powers_equal_integer_powers(length):
    lam = np.array([[0.9, -0.5, 0.0], [1.0, -1.2, 0.3]])  # signs, zero, one, |λ| > 1
    got = np.asarray(scan.decay_powers(jnp.asarray(lam), length))
    want = np.stack([lam ** (length - 1 - t) for t in range(length)])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


def test_decay_powers_rejects_bad_length():
    with pytest.raises(ValueError, match="length must be a positive integer; got 0"):
        scan.decay_powers(jnp.ones((2, 2)), 0)
