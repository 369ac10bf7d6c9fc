"""Size sweep: the trained GD-SSM against GD at its best η for d ∈ {5, 10, 20, 35, 50}, N = d and 2d.

    python -m experiments.sweep [--out results/sweep] [--dims 5 10 20 35 50] [--quick]

Scalar labels in the constructed layout by default (its y-branch state is ``1 × d``, so the large
sizes stay cheap on a CPU); ``--layout interleaved`` uses the ``d × d`` state. Writes
``summary.json`` and ``sweep.png``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import time

from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import plots, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/sweep")
    parser.add_argument("--dims", type=int, nargs="+", default=[5, 10, 20, 35, 50])
    parser.add_argument("--ratios", type=int, nargs="+", default=[1, 2], help="N = ratio · d")
    parser.add_argument("--layout", default="constructed", choices=["constructed", "interleaved"])
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="d = 5, 200 steps")
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    dims = [5] if args.quick else args.dims
    steps = 200 if args.quick else args.train_steps
    for name, values in (
        ("--dims", dims),
        ("--ratios", args.ratios),
        ("--batch-size", [args.batch_size]),
    ):
        if any(v <= 0 for v in values):
            parser.error(f"{name} must be positive integers; got {values}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for ratio in args.ratios:
        for d in dims:
            config = train.Config(
                n_context=ratio * d,
                d_in=d,
                d_out=1,
                layout=args.layout,
                train_steps=steps,
                batch_size=args.batch_size,
                eval_every=steps,  # only the end of training is reported
                warmup_steps=min(50, steps // 5),
                eval_size=8192,
                sens_size=512,
                seed=args.seed,
            )
            s = train.train(config, None, progress=False).summary
            row = {"d": d, "n_context": ratio * d}
            row.update({k: s[k] for k in ("val_loss", "gd_loss", "gd_lr", "lsq_loss", "loss_ratio",
                                          "model_cos", "param_match_error", "wall_seconds")})  # fmt: skip
            rows.append(row)
            print(
                f"d={d:>3} N={ratio * d:>3}: trained {s['val_loss']:.4f}, GD {s['gd_loss']:.4f}, "
                f"ratio {s['loss_ratio']:.4f}, cos {s['model_cos']:.5f} ({s['wall_seconds']:.0f} s)",
                flush=True,
            )
    summary = {
        "layout": args.layout,
        "train_steps": steps,
        "batch_size": args.batch_size,
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
        "figures": ["sweep.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for i, ratio in enumerate(args.ratios):
        sel = [r for r in rows if r["n_context"] == ratio * r["d"]]
        ds = [r["d"] for r in sel]
        ax.plot(
            ds, [r["val_loss"] for r in sel], "o-", color=f"C{i}", label=f"trained, N = {ratio}d"
        )
        ax.plot(ds, [r["gd_loss"] for r in sel], "s--", color=f"C{i}", alpha=0.6,
                label=f"GD best η, N = {ratio}d")  # fmt: skip
    ax.set(xlabel="d", ylabel="query loss", title=f"{args.layout} tokens, scalar labels")
    ax.legend(fontsize=8)
    plots.save(fig, out / "sweep.png")
    print(f"wrote {out}/summary.json and sweep.png ({summary['wall_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
