"""Benchmark the sequence mixers side by side: training throughput, compile time, memory, and
generation time per token.

    python -m experiments.bench_mixers [--out results/bench] [--lengths 256 1024 4096 16384]
                                       [--positions 1024 16384] [--d-model 128] [--n-heads 4]
                                       [--batch 4] [--max-gb 8] [--repeats 5] [--mixers ...]
                                       [--quick]

For each length L, every mixer of :data:`ssm_gd.seq.models.MIXERS` and GRIL's factorised-decay
variants ``gril_scalar`` and ``gril_structured`` (one layer, ``(B, L, d_model)`` in and out,
float32 or ``--dtype bfloat16``; each GRIL row names its decay, training form and chunk) is compiled twice: ``forward`` (the output) and ``forward+backward`` (the
gradient of the output's mean square with respect to every parameter). Reported per program: the
compile time, the steady-state time (the median of ``--repeats`` calls after
``block_until_ready``; a length's programs are called in turn, round after round, so that they
share the machine's load), tokens/s (``B·L`` per second) and the memory XLA assigns to the
compiled program (arguments + outputs + temporaries, ``Compiled.memory_analysis``). A program whose
memory passes ``--max-gb`` is compiled but not run, and the JSON says so.

Generation: a one-layer :class:`ssm_gd.seq.models.Model` (vocabulary 256) around each mixer reads a
prompt of ``P`` tokens (``--positions``), then the time per generated token is measured over 32
tokens, every mixer in its step form (:meth:`Model.step`, what :func:`ssm_gd.seq.generate.generate`
runs): the recurrent mixers' constant state, attention's key-value cache of ``P + 32`` positions;
in float32 whatever ``--dtype`` (``--no-generation``: none).

The machine's load average (``os.getloadavg``) before and after is written beside the timings: a
benchmark is meant for a quiet machine, and one run's figures compare with each other only.

Writes ``<out>/mixers-<device>.json`` and ``<out>/mixers-<device>.png``. Timings compare programs
within one run on one machine; no test asserts them. ``--quick``: L ∈ {64, 128}, positions
{64, 128}, d_model 32, 2 heads, 2 repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from experiments.bench import compile_program, device_name
from ssm_gd import plots
from ssm_gd.seq import mixers, models
from ssm_gd.seq.generate import prefill
from ssm_gd.seq.gril import IMPLS, GRILMixer, auto_impl

BENCHED = (*mixers.MIXERS, "gril_scalar", "gril_structured")
GRIL_IMPLS = (*IMPLS[1:], "every_state")  # the training forms --forms takes
GRILS = ("gril", "linear_attention")  # the GRIL mixers: every name that starts with one of these
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
QUICK = dict(lengths=[64, 128], positions=[64, 128], d_model=32, n_heads=2, repeats=2)
GEN_TOKENS, GEN_VOCAB = 32, 256


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/bench")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--positions", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip programs above this")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per program")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="the parameters' and inputs' dtype (default float32)")  # fmt: skip
    parser.add_argument("--mixers", nargs="+", default=list(BENCHED), choices=mixers.CHOICES,
                        metavar="MIXER", help=f"of {', '.join(mixers.CHOICES)}; default: "
                        f"{', '.join(BENCHED)}")  # fmt: skip
    parser.add_argument("--forms", nargs="+", default=[], metavar="MIXER:IMPL:CHUNK",
                        help="also time a GRIL mixer (gril, gril_scalar, linear_attention, …) "
                        f"with training form IMPL (one of {', '.join(GRIL_IMPLS)}; every_state: "
                        "the associative scan over every state; empty: auto) and CHUNK (empty: "
                        "the default), e.g. gril:chunk_scan:32 or gril_scalar::16")  # fmt: skip
    parser.add_argument("--no-generation", action="store_true",
                        help="time training programs only, not generation")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    if parser.parse_known_args(argv)[0].quick:  # --quick sets defaults; flags given still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    for spec in args.forms:
        name, impl, chunk = _form_spec(spec)
        gril = name in mixers.FACTORIES and name.startswith(GRILS)
        chunk_ok = chunk == "" or (chunk.isdigit() and int(chunk) > 0)
        if spec.count(":") != 2 or not gril or impl not in ("", *GRIL_IMPLS) or not chunk_ok:
            parser.error(
                f"--forms {spec!r}: MIXER:IMPL:CHUNK, MIXER a GRIL mixer ({', '.join(GRILS)}, "
                f"gril_…), IMPL empty or one of {', '.join(GRIL_IMPLS)}, CHUNK empty or a "
                "positive integer"
            )
    for name in ("lengths", "positions"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive integers; got {getattr(args, name)}")
    for name in ("d_model", "n_heads", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.d_model % (2 * args.n_heads):
        parser.error("--d-model must be a multiple of 2 × --n-heads (attention's rotary pairs)")
    if not args.max_gb > 0:
        parser.error(f"--max-gb must be positive; got {args.max_gb}")
    return args, cli.run_folder(parser, args)


def _form_spec(spec: str) -> list[str]:
    """``"MIXER:IMPL:CHUNK"`` (or a plain mixer name) → ``[MIXER, IMPL, CHUNK]``, missing parts
    empty."""
    return (spec.split(":") + ["", ""])[:3]


def _mixer_programs(mixer, args, length):
    """``{program name: (fn, example args)}`` of one mixer layer at one length; a ``--forms``
    entry ``"MIXER:IMPL:CHUNK"``: that GRIL mixer with that training form and chunk
    (``every_state``: :meth:`GRILMixer.scan_states`)."""
    name, impl, chunk = _form_spec(mixer)
    dtype = DTYPES[args.dtype]
    module = mixers.make_mixer(name, args.d_model, n_heads=args.n_heads, param_dtype=dtype,
                               rngs=nnx.Rngs(0))  # fmt: skip
    if impl and impl != "every_state":
        module.impl = impl
    if chunk:
        module.chunk = int(chunk)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    u = jax.random.normal(jax.random.key(1), (args.batch, length, args.d_model), dtype)

    def forward(params, u):
        layer = nnx.merge(graphdef, params, rest)
        return layer.scan_states(u) if impl == "every_state" else layer(u)

    def gradient(params, u):
        return jax.grad(lambda p: jnp.mean(forward(p, u).astype(jnp.float32) ** 2))(params)

    programs = {"forward": (forward, (params, u)), "forward+backward": (gradient, (params, u))}
    form = _form(module) | ({"impl": impl} if impl == "every_state" else {})
    return programs, form


def _form(module) -> dict:
    """A GRIL mixer's decay, training form and chunk (what its row measured); ``{}`` otherwise."""
    if not isinstance(module, GRILMixer):
        return {}
    impl = auto_impl(module.decay) if module.impl == "auto" else module.impl
    return {"decay": module.decay, "impl": impl, "chunk": module.chunk, "window": module.window}


def _throughput_names(args) -> list[str]:
    """The mixers of the throughput rows: ``--mixers``, then each of ``--forms``."""
    return [*args.mixers, *args.forms]


def _time(program) -> float:
    start = time.perf_counter()
    jax.block_until_ready(program.compiled(*program.args))
    return time.perf_counter() - start


def throughput(args, limit_bytes):
    """One row per (mixer, length, program); programs of one length timed round-robin."""
    rows = []
    for length in args.lengths:
        compiled, point = {}, []
        for mixer in _throughput_names(args):
            try:
                programs, form = _mixer_programs(mixer, args, length)
            except Exception as error:  # a mixer that fails here (a dtype, a backend): said, kept
                point.append({"mixer": mixer, "length": length, "program": "build",
                              "failed": _failure(error)})  # fmt: skip
                continue
            for name, (fn, example) in programs.items():
                try:
                    program = compile_program(fn, example)
                except Exception as error:
                    point.append({"mixer": mixer, "length": length, "program": name, **form,
                                  "failed": _failure(error)})  # fmt: skip
                    continue
                row = {"mixer": mixer, "length": length, "program": name,
                       "compile_seconds": program.compile_seconds,
                       "memory_gb": (program.memory_bytes or 0) / 1e9, **form}  # fmt: skip
                if program.memory_bytes and program.memory_bytes > limit_bytes:
                    row["skipped"] = f"needs {row['memory_gb']:.1f} GB > --max-gb"
                else:
                    try:
                        _time(program)  # a first call: buffers and caches warm
                        compiled[(mixer, name)] = program
                    except Exception as error:  # out of the device's memory, say: said, kept
                        row["failed"] = _failure(error)
                point.append(row)
        times = {k: [] for k in compiled}
        for _ in range(args.repeats):
            for k, program in compiled.items():
                times[k].append(_time(program))
        for row in point:
            k = (row["mixer"], row["program"])
            if k in times:
                row["seconds"] = statistics.median(times[k])
                row["tokens_per_second"] = args.batch * length / row["seconds"]
            print(_line(row), flush=True)
        rows += point
    return rows


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


def _line(row):
    form = f" ({row['decay']}, {row['impl']}, chunk {row['chunk']})" if "decay" in row else ""
    head = f"{row['mixer'] + form:>48} L={row['length']:<6} {row['program']:<17}"
    if "failed" in row:
        return f"{head} FAILED: {row['failed']}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (f"{head} {row['tokens_per_second']:>11,.0f} tok/s  compile {row['compile_seconds']:.1f} s"
            f"  memory {row['memory_gb']:.3f} GB")  # fmt: skip


def _generation_program(mixer, args, position):
    """``(compiled program, its share of a token, method)`` for generating after ``position``."""
    model = models.Model(GEN_VOCAB, args.d_model, 1, mixer=mixer, n_heads=args.n_heads,
                         rngs=nnx.Rngs(0))  # fmt: skip
    graphdef, state = nnx.split(model)
    prompt = jax.random.randint(jax.random.key(2), (args.batch, position), 0, GEN_VOCAB)
    cached = mixer in mixers.CACHED
    length = position + GEN_TOKENS if cached else None
    carry = jax.jit(lambda s, p: prefill(nnx.merge(graphdef, s), p, length))(state, prompt)

    def decode(s, carry, token):
        model = nnx.merge(graphdef, s)

        def body(c, _):
            c, token = c
            c, logits = model.step(c, token)
            return (c, jnp.argmax(logits, -1)), None

        return jax.lax.scan(body, (carry, token), None, length=GEN_TOKENS)[0][1]

    program = compile_program(decode, (state, carry, prompt[:, -1]))
    kind = f"key-value cache of {length} positions" if cached else "recurrent step"
    return program, 1 / GEN_TOKENS, f"{kind} ({GEN_TOKENS} tokens timed)"


def generation(args, limit_bytes):
    """Seconds per generated token after a prompt of each of ``args.positions``."""
    rows = []
    for mixer in args.mixers:
        for position in args.positions:
            program, share, method = _generation_program(mixer, args, position)
            row = {"mixer": mixer, "position": position, "method": method,
                   "memory_gb": (program.memory_bytes or 0) / 1e9}  # fmt: skip
            if program.memory_bytes and program.memory_bytes > limit_bytes:
                row["skipped"] = f"needs {row['memory_gb']:.1f} GB > --max-gb"
            else:
                _time(program)
                seconds = statistics.median(_time(program) for _ in range(args.repeats))
                row["seconds_per_token"] = share * seconds
            result = row.get("skipped") or f"{1e3 * row['seconds_per_token']:.3f} ms/token"
            print(f"{mixer:>16} generation at {position:<6} {result}", flush=True)
            rows.append(row)
    return rows


def figure(result, path):
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    for mixer in result["settings"]["mixers"]:
        for ax, key, program in ((axes[0], "tokens_per_second", "forward+backward"),
                                 (axes[1], "memory_gb", "forward+backward")):  # fmt: skip
            pts = [r for r in result["throughput"] if r["mixer"] == mixer
                   and r["program"] == program and key in r and "skipped" not in r]  # fmt: skip
            ax.plot([r["length"] for r in pts], [r[key] for r in pts], "o-", label=mixer)
        gen = [r for r in result["generation"] if r["mixer"] == mixer and "seconds_per_token" in r]
        axes[2].plot([r["position"] for r in gen], [1e3 * r["seconds_per_token"] for r in gen],
                     "o-", label=mixer)  # fmt: skip
    s = result["settings"]
    title = f"d_model {s['d_model']}, {s['n_heads']} heads, batch {s['batch']}"
    axes[0].set(ylabel="forward+backward tokens/s", title=title)
    axes[1].set(ylabel="forward+backward memory (GB)", title="XLA's assigned memory")
    axes[2].set(xlabel="position", ylabel="ms per generated token", title="generation")
    for ax in axes:
        if any(len(line.get_xdata()) for line in ax.lines):  # nothing to draw where all skipped
            ax.set(xscale="log", yscale="log")
            ax.legend(fontsize=8)
    axes[0].set_xlabel("sequence length L")
    axes[1].set_xlabel("sequence length L")
    plots.save(fig, path)


def main(argv=None):
    args, out = parse(argv)
    limit = args.max_gb * 1e9
    settings = {k: getattr(args, k) for k in ("mixers", "lengths", "positions", "d_model",
                                              "n_heads", "batch", "max_gb", "repeats", "dtype",
                                              "forms")}  # fmt: skip
    result = {"device": device_name(), "settings": settings, "load_before": os.getloadavg()}
    result["throughput"] = throughput(args, limit)
    result["generation"] = [] if args.no_generation else generation(args, limit)
    result["load_after"] = os.getloadavg()
    dtype = "" if args.dtype == "float32" else f"-{args.dtype}"  # float32: the name it always had
    stem = out / f"mixers-{result['device']}{dtype}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    figure(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png")
    return result


if __name__ == "__main__":
    main()
