"""The construction check: the closed-form GD-SSM against explicit K-step GD, on every prefix.

    python -m experiments.construction [--out results/construction] [--n-context 10] [--d-in 10]

For K = 1…5 and both token layouts, builds :func:`ssm_gd.construction.gd_ssm` at GD's best step
size, runs it on fresh tasks, and reports the largest error against :func:`ssm_gd.gd.predict_prefixes`
in float64 and float32. Writes ``summary.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import cli  # noqa: E402
from ssm_gd import construction, gd, tasks  # noqa: E402


def check(*, steps: int, layout: str, n_context: int, d_in: int, d_out: int, batch: int, seed: int):
    """Errors of the constructed model against K-step GD at GD's best η (on these tasks)."""
    task = tasks.linear_regression(
        jax.random.key(seed),
        batch=batch,
        n_context=n_context,
        d_in=d_in,
        d_out=d_out,
        dtype=jnp.float64,
    )
    lr, gd_loss = gd.best_lr(task.x, task.y, task.x_query, task.y_query, steps=steps)
    lr = float(lr)
    ref = np.asarray(gd.predict_prefixes(task.x, task.y, task.x_query, lr=lr, steps=steps))
    row = {"steps": steps, "layout": layout, "lr": lr, "gd_loss": float(gd_loss)}
    for dtype in (jnp.float64, jnp.float32):
        model = construction.gd_ssm(
            d_in=d_in,
            d_out=d_out,
            n_context=n_context,
            lr=lr,
            steps=steps,
            layout=layout,
            dtype=dtype,
        )
        t = jax.tree.map(lambda v, dt=dtype: v.astype(dt), task)
        out = np.asarray(nnx.jit(lambda m, x: m(x))(model, tasks.tokens(t, layout)), np.float64)
        err = np.abs(out - ref).max()
        row[f"max_abs_err_{jnp.dtype(dtype).name}"] = float(err)
        row[f"max_rel_err_{jnp.dtype(dtype).name}"] = float(err / np.abs(ref).max())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/construction")
    parser.add_argument("--n-context", type=int, default=10)
    parser.add_argument("--d-in", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--max-steps", type=int, default=5, help="check K = 1…max-steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work

    start = time.perf_counter()
    rows = []
    for layout in tasks.LAYOUTS:
        for k in range(1, args.max_steps + 1):
            rows.append(
                check(
                    steps=k,
                    layout=layout,
                    n_context=args.n_context,
                    d_in=args.d_in,
                    d_out=1,
                    batch=args.batch,
                    seed=args.seed,
                )
            )
    header = f"{'layout':<12} {'K':>2} {'best η':>8} {'GD loss':>8} {'err f64':>9} {'rel f32':>9}"
    print(header)
    for r in rows:
        print(
            f"{r['layout']:<12} {r['steps']:>2} {r['lr']:>8.4f} {r['gd_loss']:>8.4f} "
            f"{r['max_abs_err_float64']:>9.1e} {r['max_rel_err_float32']:>9.1e}"
        )
    out.mkdir(parents=True, exist_ok=True)
    summary = {"config": vars(args), "rows": rows, "wall_seconds": time.perf_counter() - start}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'summary.json'} in {summary['wall_seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
