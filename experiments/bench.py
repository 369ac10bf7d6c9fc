"""Benchmark: the scan and the GD-SSM forward / forward+backward, per implementation, side by side.

    python -m experiments.bench [--out results/bench] [--quick] [--n 10 100 1000] [--d 10 50]
                                [--batch 64 2048] [--impls weighted associative sequential chunked]

For each grid point (context N, width d, batch B; interleaved tokens, d_out = d, one GD step,
``Λ = 0.99``) and each implementation it times three programs: ``scan`` (the recurrence alone),
``forward`` (the query's prediction, ``(B, d)``: what training and evaluation compute) and
``forward+backward`` (the gradient of the query's squared error). The implementations:

* ``weighted``: :meth:`GDSSM.predict_query`, the last state as a weighted sum of the window
  products (:func:`ssm_gd.readout.last_state_readout`, a chunk of time steps at a time): memory the
  size of the tokens;
* ``associative`` / ``sequential``: every window's state by the scan, then the last window's
  readout; ``chunked``: every window's readout without the states (:func:`ssm_gd.readout.chunked_readout`).

It measures the compile time, the steady-state time (median of repeated calls, after
``block_until_ready``; a point's programs, the baseline among them, are called in turn, round
after round, so that they share the machine's load; ``calls`` says how many timings a median
rests on), tokens/s (``B·L`` per second) and the memory XLA assigns to the compiled program
(arguments + outputs + temporaries, ``Compiled.memory_analysis``). Every program is called with
the parameters as a list of arrays, so that the time is the computation's and not that of
flattening an ``nnx.State`` (about 0.1 ms per call on the 2-core CPU). Beside them:

* ``loop-per-dimension``: the baseline, written here only for comparison. It mirrors the published
  code's approach: a Python loop over the state's rows, each around its own sequential
  ``lax.scan`` over time, so its program (and compile time) grows with d. It is skipped where its
  ``N·d`` sequential steps pass ``--max-loop-steps`` (minutes per call), and said so.
* ``copy``: the lower bound, a program that reads the tokens and writes as many bytes back, timed
  on its own in consecutive calls (its output buffer reused, as in a training loop);
* ``dispatch``: the floor under any program, one that returns a single number of the tokens,
  timed the same way: what calling a compiled program costs, whatever it computes.

Each compiled program's ``kernels`` counts the operations at the top level of its optimised HLO
(fusions, matrix products, copies, loops; a loop counts once, its body not at all): at small sizes
the time is about that many launches.

Points whose materialised states would pass ``--max-gb`` are skipped for the implementations that
build them, and so is any program whose compiled memory passes it (checked before it runs); the
JSON says which and why. Writes ``<out>/<device>.json`` and ``<out>/<device>.png``.
Timings are for comparison within one run on one machine; they are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import plots, readout
from ssm_gd.initializers import fill_init
from ssm_gd.layers import GDSSM, GDSSMInit, windows
from ssm_gd.tokens import Tokens

IMPLS = ("weighted", "associative", "sequential", "chunked")
PASSES = ("scan", "forward", "forward+backward")


def loop_per_dimension(model: GDSSM, tokens):
    """The baseline GD-SSM forward (K = 1): one sequential scan per state row, in a Python loop."""
    x = windows(tokens, model.window, model.stride)  # (B, T, 3, H)
    q, lam = model.yx_attention.q[...], model.yx_recurrence.lam
    query = jnp.einsum("btah,a->bth", x, model.d[...])
    right = jnp.einsum("ac,btch->btah", q, x)  # U_t = Σ_a X_t[a] right_t[a]ᵀ
    out = 0.0
    for j in range(lam.shape[0]):  # one scan per row of the state

        def body(s, inputs, j=j):
            xt, rt, qt = inputs
            s = lam[j] * s + jnp.einsum("ba,bah->bh", xt[:, :, j], rt)
            return s, jnp.einsum("bh,bh->b", s, qt)

        inputs = (jnp.moveaxis(x, 1, 0), jnp.moveaxis(right, 1, 0), jnp.moveaxis(query, 1, 0))
        _, row = jax.lax.scan(body, jnp.zeros((x.shape[0], x.shape[-1]), x.dtype), inputs)
        out = out + jnp.einsum("o,tb->bto", model.c_y[...][:, j], row)
    return out


def _model(d: int, impl: str, chunk: int) -> GDSSM:
    init = GDSSMInit(lam=fill_init(0.99))
    return GDSSM(d, d, impl=impl, chunk=chunk, init=init, rngs=nnx.Rngs(0))


def _programs(model: GDSSM, impl: str):
    """``(leaves, {pass: f(leaves, tokens)})`` for one implementation (``None`` where it has no such
    pass), ``leaves`` the model's parameter arrays."""
    graphdef, params = nnx.split(model)

    def forward(params, tokens):
        m = nnx.merge(graphdef, params)
        if impl == "loop-per-dimension":
            return loop_per_dimension(m, tokens)[:, -1]
        tokens = Tokens(tokens, layout=m.layout, d_in=m.d_in, d_out=m.d_out)
        if impl == "weighted":
            return m.predict_query(tokens)
        return m(tokens)[:, -1]

    def loss(params, tokens):
        return jnp.mean(forward(params, tokens) ** 2)

    def scan_only(params, tokens):
        m = nnx.merge(graphdef, params)
        n_windows = (tokens.shape[1] - 1) // 2
        if impl == "weighted":  # the last state, applied to the last query
            w, factors = readout.window_factors(m.yx_attention, tokens)
            v = tokens[:, -1].T
            pairs = readout.last_state_readout(m.yx_recurrence.lam, factors, n_windows, v)
            return jnp.einsum("ac,acrb->rb", w, pairs)
        x = windows(tokens, m.window, m.stride)
        u = m.yx_attention.products(x)
        if impl == "chunked":
            v = x[:, :, -1]
            lam = m.yx_recurrence.lam
            return readout.chunked_readout(lam, m.yx_attention.products, x, v, chunk=m.chunk)
        return m.yx_recurrence(u)

    programs = {
        "scan": None if impl == "loop-per-dimension" else scan_only,
        "forward": forward,
        "forward+backward": jax.grad(loss),
    }
    # Called with the parameters' leaves: flattening an nnx.State on every call costs about
    # 0.1 ms on the 2-core CPU, as much as the whole computation at the smallest points.
    leaves, treedef = jax.tree.flatten(params)

    def on_leaves(fn):
        return None if fn is None else lambda leaves, tokens: fn(treedef.unflatten(leaves), tokens)

    return leaves, {name: on_leaves(fn) for name, fn in programs.items()}


class Program(NamedTuple):
    compiled: Callable
    compile_seconds: float
    memory_bytes: int | None
    kernels: int
    args: tuple


# Top-level HLO instructions that launch nothing: they only name or reshape buffers.
_NOT_KERNELS = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})
_OPCODE = re.compile(r"=\s+(?:\([^=]*?\)|\S+)\s+([a-z][a-z0-9-]*)\(")


def count_kernels(hlo_text: str) -> int:
    """The operations of an optimised HLO module's entry computation that run as kernels.

    Every instruction of the ``ENTRY`` block but those in :data:`_NOT_KERNELS`; a ``while`` counts
    once, whatever its body runs.
    """
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    entry = re.sub(r"/\*.*?\*/", "", entry[: entry.index("\n}")])  # /*index=5*/ in tuple types
    lines = entry.splitlines()[2:]  # after the blank line and the ENTRY header
    opcodes = [m.group(1) for line in lines if (m := _OPCODE.search(line))]
    if len(opcodes) != len(lines):
        raise ValueError(f"could not read {len(lines) - len(opcodes)} instruction(s) of the HLO")
    return sum(op not in _NOT_KERNELS for op in opcodes)


def compile_program(fn, args) -> Program:
    """``jit(fn)`` compiled for ``args``, with its compile seconds and memory bytes."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    memory = None
    if mem is not None:
        memory = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    return Program(compiled, compile_s, memory, count_kernels(compiled.as_text()), args)


MIN_ROUNDS = 5


def _time_interleaved(programs: dict, repeats: int, budget: float) -> dict:
    """``{key: (median seconds, timed calls)}`` of each ``{key: Program}``, called in turn, round after round.

    Interleaving puts every program under the same load, so that a slow spell of the machine
    (timings here drift by up to 2x between runs) falls on all of them, not on one; each is called
    once a round, so that none runs with caches its own previous call warmed (calls in a row of
    one program ran up to 1.4x faster at the smallest points). After a warm-up call each, rounds go
    on while fewer than :data:`MIN_ROUNDS` are done (a median of at least 5 timings, also beside a
    baseline of seconds), or while the rounds have taken less than ``budget`` seconds per program
    and fewer than ``repeats`` are done.
    """
    for p in programs.values():
        jax.block_until_ready(p.compiled(*p.args))  # warm up
    times = {key: [] for key in programs}
    start = time.perf_counter()
    rounds = 0
    while rounds < MIN_ROUNDS or (
        rounds < repeats and time.perf_counter() - start < budget * len(programs)
    ):
        for key, p in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(p.compiled(*p.args))
            times[key].append(time.perf_counter() - t0)
        rounds += 1
    return {key: (statistics.median(t), len(t)) for key, t in times.items()}


def run_point(n: int, d: int, batch: int, impls, *, chunk: int, repeats: int, budget: float,
              max_gb: float, max_loop_steps: float, too_slow=frozenset()) -> dict:  # fmt: skip
    tokens = jax.random.uniform(jax.random.key(0), (batch, 2 * n + 1, d), jnp.float32, -0.5, 0.5)
    point = {"n_context": n, "d": d, "batch": batch, "tokens": batch * (2 * n + 1), "results": {}}
    states_gb = batch * n * d * d * 4 / 2**30
    # The copy alone, in consecutive calls that reuse its output buffer: interleaved with the
    # others, each call would pay fresh pages for the tokens' bytes (6x slower at 10^7 floats).
    copy_s, _ = _time_interleaved({"c": compile_program(lambda t: -t, (tokens,))}, repeats, budget)[
        "c"
    ]
    point["copy"] = {"seconds": copy_s, "bytes": 2 * tokens.size * 4}
    dispatch = compile_program(lambda t: t[0, 0, 0], (tokens,))
    point["dispatch"] = {"seconds": _time_interleaved({"d": dispatch}, repeats, budget)["d"][0]}
    compiled = {}
    for impl in [*impls, "loop-per-dimension"]:
        materialises = impl in ("associative", "sequential", "loop-per-dimension")
        # The baseline holds one row of states at a time (a d-th of the rest) but keeps d scans.
        need = states_gb / d if impl == "loop-per-dimension" else states_gb
        if materialises and need * 3 > max_gb:
            point["results"][impl] = {"skipped": f"states alone need {need:.1f} GB (x3 for AD)"}
            continue
        if impl in too_slow:
            point["results"][impl] = {"skipped": "the previous N took over --max-seconds"}
            continue
        if impl == "loop-per-dimension" and n * d > max_loop_steps:
            point["results"][impl] = {"skipped": f"N·d = {n * d} sequential steps per call"}
            continue
        if impl == "weighted":  # the tokens and their time-major copy; chunks are O(1 MiB)
            inputs_gb = 2 * tokens.size * 4 / 2**30
        else:  # chunked: the windows and their Q-products, x2 for AD
            inputs_gb = 4 * batch * n * 3 * d * 4 / 2**30
        if impl in ("weighted", "chunked") and inputs_gb > max_gb:
            point["results"][impl] = {"skipped": f"window inputs need {inputs_gb:.1f} GB"}
            continue
        model = _model(d, "chunked" if impl == "chunked" else "associative", chunk)
        if impl == "sequential":
            model = _model(d, "sequential", chunk)
        params, programs = _programs(model, impl)
        ours = {
            (impl, name): compile_program(fn, (params, tokens))
            for name, fn in programs.items()
            if fn is not None
        }
        over = {
            name: p.memory_bytes / 2**30
            for (_, name), p in ours.items()
            if (p.memory_bytes or 0) > max_gb * 2**30
        }
        if over:  # what XLA assigns the compiled program, checked before it runs
            name, gb = max(over.items(), key=lambda item: item[1])
            point["results"][impl] = {"skipped": f"{name} needs {gb:.1f} GB (--max-gb)"}
            continue
        compiled.update(ours)
        point["results"][impl] = {}
    steady = _time_interleaved(compiled, repeats, budget)
    for (impl, name), p in compiled.items():
        seconds, calls = steady[impl, name]
        point["results"][impl][name] = {
            "compile_seconds": p.compile_seconds,
            "seconds": seconds,
            "calls": calls,
            "tokens_per_second": point["tokens"] / seconds,
            "memory_bytes": p.memory_bytes,
            "kernels": p.kernels,
        }
    base = point["results"].get("loop-per-dimension", {})
    for row in point["results"].values():
        for name, r in row.items() if "skipped" not in row else ():
            if name in base:
                r["speedup_vs_loop"] = base[name]["seconds"] / r["seconds"]
                if r["memory_bytes"] and base[name]["memory_bytes"]:
                    r["memory_ratio_vs_loop"] = base[name]["memory_bytes"] / r["memory_bytes"]
            if name == "forward":
                r["ratio_to_copy"] = r["seconds"] / point["copy"]["seconds"]
    return point


def device_name() -> str:
    dev = jax.devices()[0]
    kind = dev.device_kind if dev.platform != "cpu" else f"cpu-{platform.machine()}"
    return f"{kind}-x{jax.device_count()}".replace(" ", "_").lower()


def _figure(points, path):
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for d, ax in zip(sorted({p["d"] for p in points}), axes, strict=False):
        for impl in [*IMPLS, "loop-per-dimension"]:
            for batch, style in zip(
                sorted({p["batch"] for p in points}), ("-", "--"), strict=False
            ):
                xs, ys = [], []
                for p in points:
                    r = p["results"].get(impl, {}).get("forward+backward")
                    if p["d"] == d and p["batch"] == batch and r:
                        xs.append(p["n_context"])
                        ys.append(r["tokens_per_second"])
                if xs:
                    ax.loglog(xs, ys, style, marker="o", ms=3, label=f"{impl}, B={batch}")
        ax.set(title=f"forward+backward, d = {d}", xlabel="N (context pairs)", ylabel="tokens/s")
        ax.legend(fontsize=6)
    plots.save(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/bench")
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000, 10_000, 100_000])
    parser.add_argument("--d", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=200, help="most rounds of steady-state calls"
    )
    parser.add_argument(
        "--budget", type=float, default=1.0, help="seconds of interleaved calls per program"
    )
    parser.add_argument(
        "--max-gb", type=float, default=12.0, help="skip programs and states that need more GB"
    )
    parser.add_argument("--max-tokens", type=float, default=3e7, help="skip bigger B·L points")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="skip an implementation at larger N once its forward+backward took this long",
    )
    parser.add_argument(
        "--max-loop-steps", type=float, default=1e6, help="skip the baseline past N·d scan steps"
    )
    parser.add_argument("--quick", action="store_true", help="N ∈ {10, 100}, d = 10, B = 64")
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    for name in ("n", "d", "batch"):
        if any(v <= 0 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive integers; got {getattr(args, name)}")
    if args.quick:
        args.n, args.d, args.batch = [10, 100], [10], [64]
    out.mkdir(parents=True, exist_ok=True)
    device = device_name()
    points, skipped = [], []
    for d in args.d:
        for batch in args.batch:
            too_slow = set()
            for n in sorted(args.n):
                if batch * (2 * n + 1) > args.max_tokens:
                    skipped.append({"n_context": n, "d": d, "batch": batch, "why": "--max-tokens"})
                    print(f"skip N={n} d={d} B={batch}: B·L over --max-tokens", flush=True)
                    continue
                p = run_point(n, d, batch, args.impls, chunk=args.chunk, repeats=args.repeats,
                              budget=args.budget, max_gb=args.max_gb,
                              max_loop_steps=args.max_loop_steps,
                              too_slow=frozenset(too_slow))  # fmt: skip
                for impl, row in p["results"].items():
                    fb = row.get("forward+backward", {}).get("seconds", 0.0)
                    if "skipped" in row or fb > args.max_seconds:
                        too_slow.add(impl)
                points.append(p)
                print(_row(p), flush=True)
    result = {
        "device": device,
        "devices": [str(x) for x in jax.devices()],
        "jax": jax.__version__,
        "chunk": args.chunk,
        "points": points,
        "skipped": skipped,
    }
    (out / f"{device}.json").write_text(json.dumps(result, indent=2))
    _figure(points, out / f"{device}.png")
    print(f"wrote {out}/{device}.json and {device}.png")
    return result


def _row(p) -> str:
    parts = [f"N={p['n_context']:>6} d={p['d']:>2} B={p['batch']:>4}"]
    for impl, row in p["results"].items():
        r = row.get("forward+backward") if "skipped" not in row else None
        if r:
            extra = f" ({r['speedup_vs_loop']:.1f}x)" if "speedup_vs_loop" in r else ""
            parts.append(f"{impl} {r['seconds'] * 1e3:.2f} ms{extra}")
        else:
            parts.append(f"{impl} skipped")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
