"""Multi-step GD: a K-step GD-SSM trained from random initialisation, for K = 1…4.

    python -m experiments.multistep [--out results/multistep] [--max-steps 4] [--quick]

For each K, trains a GD-SSM with ``n_steps = K`` (scalar labels, interleaved tokens, N = d = 10)
and compares it with K-step GD at its best step size on the evaluation set and with the
constructed K-step model. Writes ``summary.json``, ``history.jsonl`` (every K, tagged),
``loss_vs_k.png`` (trained, GD, least squares) and ``alignment_vs_k.png``; prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import plots, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/multistep")
    parser.add_argument("--max-steps", type=int, default=4, help="K = 1…max-steps")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps per K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="K ≤ 2, 200 training steps")
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    if args.max_steps < 1:
        parser.error(f"--max-steps must be a positive integer; got {args.max_steps}")
    base = train.Config(d_out=1, seed=args.seed, eval_size=16_384, sens_size=2048)
    ks = range(1, (2 if args.quick else args.max_steps) + 1)
    steps = args.train_steps or (200 if args.quick else base.train_steps)
    base = dataclasses.replace(
        base,
        train_steps=steps,
        eval_every=max(1, min(base.eval_every, steps)),
        warmup_steps=min(base.resolved_warmup_steps, steps // 5),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.jsonl").unlink(missing_ok=True)
    start = time.perf_counter()
    rows = []
    for k in ks:
        config = dataclasses.replace(base, n_steps=k)
        result = train.train(config, None, progress=False)
        s = result.summary
        rows.append(
            {
                "n_steps": k,
                "val_loss": s["val_loss"],
                "gd_loss": s["gd_loss"],
                "gd_lr": s["gd_lr"],
                "lsq_loss": s["lsq_loss"],
                "loss_ratio": s["loss_ratio"],
                "model_cos": s["model_cos"],
                "model_diff": s["model_diff"],
                "param_match_error": s["param_match_error"],
                "param_match": s["param_match"],
                "wall_seconds": s["wall_seconds"],
            }
        )
        with open(out / "history.jsonl", "a") as f:
            for r in result.history:
                f.write(json.dumps({"n_steps": k, **r}) + "\n")
        print(
            f"K={k}: trained {s['val_loss']:.4f}, GD {s['gd_loss']:.4f} (η {s['gd_lr']:.3f}), "
            f"ratio {s['loss_ratio']:.4f}, cos {s['model_cos']:.5f}, "
            f"param match {s['param_match_error']:.3f}",
            flush=True,
        )
    summary = {
        "config": dataclasses.asdict(base),
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
        "figures": ["loss_vs_k.png", "alignment_vs_k.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    ks = [r["n_steps"] for r in rows]
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    ax.plot(ks, [r["val_loss"] for r in rows], "o-", label="GD-SSM (trained)")
    ax.plot(ks, [r["gd_loss"] for r in rows], "s--", label="K-step GD, best η")
    ax.axhline(rows[0]["lsq_loss"], color="gray", ls=":", label="least squares")
    ax.set(xlabel="K (GD steps)", ylabel="query loss", xticks=ks)
    ax.legend(fontsize=8)
    plots.save(fig, out / "loss_vs_k.png")
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    ax.semilogy(ks, [1 - r["model_cos"] for r in rows], "o-", label="1 − model_cos")
    ax.semilogy(ks, [abs(r["loss_ratio"] - 1) for r in rows], "s-", label="|loss ratio − 1|")
    ax.semilogy(ks, [r["param_match_error"] for r in rows], "^-", label="param_match_error")
    ax.set(xlabel="K (GD steps)", ylabel="distance to K-step GD", xticks=ks)
    ax.legend(fontsize=8)
    plots.save(fig, out / "alignment_vs_k.png")
    print(f"wrote {out}/summary.json and figures ({summary['wall_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
