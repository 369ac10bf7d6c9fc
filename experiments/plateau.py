"""Leaving the trivial-predictor plateau: our initialisation against the published code's style.

    python -m experiments.plateau [--out results/plateau] [--seeds 10] [--quick]

The output is a product of Q, C, D and Λ, so the zero predictor (loss E‖y‖²/(2 d_out), about
0.42 at the default setting) is a wide plateau. For each initialisation (``identity``: C = I;
``published``: C ~ N(0, 1/H)) and each seed, trains the default configuration and records whether
it reaches GD (loss ratio ≤ 1.01 and model_cos ≥ 0.999). Writes ``summary.json`` and
``plateau.png`` (validation loss / GD loss against steps, every run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import plots, train


def reached_gd(summary) -> bool:
    return summary["loss_ratio"] <= train.TARGETS["loss_ratio"] and (
        summary["model_cos"] >= train.TARGETS["model_cos"]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/plateau")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps")
    parser.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: Config's)"
    )
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    seeds = 1 if args.quick else args.seeds
    # Leaving the plateau happens in the first few hundred steps: 1500 are plenty to tell.
    base = train.Config(eval_size=4096, sens_size=1024, train_steps=1500)
    if args.lr is not None:
        base = dataclasses.replace(base, lr=args.lr)
    if args.quick:
        base = dataclasses.replace(base, train_steps=200, eval_every=100)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = {}
    for init in train.INITS:
        runs[init] = []
        for seed in range(seeds):
            config = dataclasses.replace(base, init=init, seed=seed)
            result = train.train(config, None, progress=False)
            s = result.summary
            runs[init].append(
                {
                    "seed": seed,
                    "reached_gd": reached_gd(s),
                    "loss_ratio": s["loss_ratio"],
                    "model_cos": s["model_cos"],
                    "param_match_error": s["param_match_error"],
                    "curve": [(r["step"], r["loss_ratio"]) for r in result.history],
                }
            )
            print(
                f"{init:<10} seed {seed}: loss/GD {s['loss_ratio']:.4f}, cos {s['model_cos']:.5f}"
            )
    summary = {
        "config": dataclasses.asdict(base),
        "seeds": seeds,
        "reached_gd": {init: sum(r["reached_gd"] for r in rows) for init, rows in runs.items()},
        "runs": runs,
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for init, color in zip(train.INITS, ("C0", "C3"), strict=False):
        for i, r in enumerate(runs[init]):
            steps, ratio = zip(*r["curve"], strict=True)
            ax.semilogy(steps, ratio, color=color, alpha=0.6, label=init if i == 0 else None)
    ax.axhline(1.0, color="k", lw=1)
    ax.set(xlabel="training step", ylabel="validation loss / GD loss",
           title=f"{seeds} seeds per initialisation")  # fmt: skip
    ax.legend()
    plots.save(fig, out / "plateau.png")
    print(
        "reached GD: "
        + ", ".join(f"{k} {v}/{seeds}" for k, v in summary["reached_gd"].items())
        + f" ({summary['wall_seconds']:.0f} s)"
    )
    return summary


if __name__ == "__main__":
    main()
