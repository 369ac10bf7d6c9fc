"""A context of a million tokens, forward and backward, on a laptop-class CPU.

    python -m experiments.long_context [--tokens 1000000] [--d 10] [--batch 1] [--chunk 64]
                                       [--out results/long_context]

One sequence of ``L = 2N + 1 ≥ --tokens`` interleaved tokens (width ``d``, vector labels, a
two-step GD-SSM with a decay ``Λ = 0.999`` so that the whole context matters) is run through

* ``chunked``: every window's prediction, ``model(tokens)`` ``(B, N, d)`` — the in-context learning
  curve over the whole sequence — by :func:`ssm_gd.readout.chunked_readout` (memory ``O(N·d)``; the
  scans would hold ``N·d²`` entries per branch and their gradients);
* ``weighted``: the query's prediction alone, ``model.predict_query(tokens)`` ``(B, d)``, by
  :func:`ssm_gd.readout.last_state_readout`;

each forward (the output) and forward+backward (the gradient of the mean squared output with
respect to every parameter). Reported per pass: compile and run seconds, the memory XLA assigns to
the program, and the process's peak resident memory. The two formulations share no code past the
window products, so their query predictions are compared as a check (relative difference, float32).
Writes ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import cli
from ssm_gd.initializers import fill_init
from ssm_gd.layers import GDSSM, GDSSMInit
from ssm_gd.tokens import Tokens


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _run(fn, *args) -> dict:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - start
    finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(out))
    info = {"compile_seconds": compile_s, "seconds": seconds, "finite": finite}
    if mem is not None:
        info["xla_memory_gb"] = (
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        ) / 2**30
    info["peak_rss_gb"] = _peak_rss_gb()
    return info, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, default=1e6, help="at least this many tokens B·L")
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64)
    cli.out_flag(parser, "results/long_context")
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    if args.tokens < 3 or args.d <= 0 or args.batch <= 0 or args.chunk <= 0:
        parser.error(
            "--tokens must be at least 3 and --d, --batch, --chunk positive; got "
            f"{args.tokens}, {args.d}, {args.batch}, {args.chunk}"
        )
    n = int(np.ceil((args.tokens / args.batch - 1) / 2))
    length = 2 * n + 1
    model = GDSSM(args.d, args.d, n_steps=2, impl="chunked", chunk=args.chunk,
                  init=GDSSMInit(lam=fill_init(0.999)), rngs=nnx.Rngs(0))  # fmt: skip
    graphdef, params = nnx.split(model)
    tokens = jax.random.uniform(
        jax.random.key(1), (args.batch, length, args.d), jnp.float32, -0.5, 0.5
    )
    print(f"{args.batch} x {length:,} tokens of width {args.d} (N = {n:,} pairs)", flush=True)

    def wrap(tokens):  # a bare array in, so that the programs take the same input as a copy
        return Tokens(tokens, layout="interleaved", d_in=args.d, d_out=args.d)

    def every_window(params, tokens):
        return nnx.merge(graphdef, params)(wrap(tokens))

    def query(params, tokens):
        return nnx.merge(graphdef, params).predict_query(wrap(tokens))

    summary = {"batch": args.batch, "length": length, "tokens": args.batch * length,
               "n_context": n, "d": args.d, "chunk": args.chunk, "device": str(jax.devices()[0])}  # fmt: skip
    outputs = {}
    for name, fn in (("chunked", every_window), ("weighted", query)):
        for kind, program in (
            ("forward", fn),
            ("forward+backward", jax.grad(lambda p, t, fn=fn: jnp.mean(fn(p, t) ** 2))),
        ):
            info, out = _run(program, params, tokens)
            if kind == "forward":
                outputs[name] = np.asarray(out)
            summary[f"{name} {kind}"] = info
            print(f"{name:9s} {kind:17s} {info['seconds']:7.2f} s (compile "
                  f"{info['compile_seconds']:.1f} s), XLA {info.get('xla_memory_gb', 0):.2f} GB, "
                  f"peak RSS {info['peak_rss_gb']:.2f} GB", flush=True)  # fmt: skip
    last, q = outputs["chunked"][:, -1], outputs["weighted"]
    summary["query_relative_difference"] = float(np.linalg.norm(last - q) / np.linalg.norm(q))
    print(f"chunked last window vs weighted query: relative difference "
          f"{summary['query_relative_difference']:.1e}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json")
    return summary


if __name__ == "__main__":
    main()
