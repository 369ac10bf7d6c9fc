"""Out of distribution: the trained GD-SSM and GD at its η, on inputs and maps it never saw.

    python -m experiments.ood [--out results/ood] [--quick] [Config flags for the training run]

Trains at the given setting (the paper's by default), then evaluates the trained model and GD with
the step size that was best on the *training* distribution on: inputs over a stretched range
(0.5–2× the training range), maps with a stretched scale (0.5–5×), and inputs from other
distributions with the training inputs' variance (normal, Laplace, centred exponential).
Writes ``summary.json``, ``stretch.png`` and ``distributions.png``; prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys

import jax
from matplotlib.figure import Figure

from experiments import linear
from ssm_gd import plots, tasks, train

X_STRETCH = (0.5, 0.75, 1.0, 1.5, 2.0)
W_STRETCH = (0.5, 1.0, 2.0, 3.0, 5.0)


def shifted_tasks(
    config: train.Config, key, batch: int, *, x_scale=1.0, w_scale=1.0, dist="uniform"
):
    """Linear tasks like the training ones, with inputs and maps rescaled or redrawn."""
    return tasks.shifted_regression(
        key,
        batch=batch,
        n_context=config.n_context,
        d_in=config.d_in,
        d_out=config.d_out,
        x_std=config.x_range / math.sqrt(12.0) * x_scale,  # the training inputs' std, stretched
        w_scale=config.w_scale * w_scale,
        dist=dist,
        dtype=config.dtype,
    )


def main(argv=None):
    config, args = linear.parse(argv, out="results/ood", description=__doc__.splitlines()[0])
    out = pathlib.Path(args.out)
    # This experiment's own summary and figures are recomputed in full (also on --resume, which
    # continues the training in out/train): an earlier run's must not outlive a failed one.
    train.clear_outputs(out)
    try:
        result = train.train(
            config, out / "train", resume=args.resume, progress=not args.no_progress
        )
    except train.ResumeError as error:  # one line, exit status 1: not a traceback
        sys.exit(f"error: {error}")
    gd_lr = result.summary["gd_lr"]
    batch = 4096 if args.quick else 16_384
    evaluate = train.evaluator(config, gd_lr, sens_size=2048)

    def measure(**shift):
        task = shifted_tasks(config, jax.random.key(config.seed + 11), batch, **shift)
        values = evaluate(result.model, task)
        values["loss_ratio"] = values["loss"] / values["gd_loss"]
        return {**shift, **values}

    rows = {
        "x_stretch": [measure(x_scale=s) for s in X_STRETCH],
        "w_stretch": [measure(w_scale=s) for s in W_STRETCH],
        "distribution": [measure(dist=d) for d in ("uniform", "normal", "laplace", "exponential")],
    }
    summary = {
        "config": dataclasses.asdict(config),
        "gd_lr": gd_lr,
        "train": {k: result.summary[k] for k in ("val_loss", "gd_loss", "model_cos", "loss_ratio")},
        **rows,
        "model_cos_range": [
            min(r["model_cos"] for v in rows.values() for r in v),
            max(r["model_cos"] for v in rows.values() for r in v),
        ],
        "figures": ["stretch.png", "distributions.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for name, key, xlabel in (("x_stretch", "x_scale", "input range / training range"),
                              ("w_stretch", "w_scale", "map scale / training scale")):  # fmt: skip
        ax = axes[0] if name == "x_stretch" else axes[1]
        s = [r[key] for r in rows[name]]
        ax.loglog(s, [r["loss"] for r in rows[name]], "o-", label="GD-SSM (trained)")
        ax.loglog(s, [r["gd_loss"] for r in rows[name]], "s--", label="GD at its training η")
        ax.set(xlabel=xlabel, ylabel="query loss")
        ax.legend(fontsize=8)
    for name, key in (("x_stretch", "x_scale"), ("w_stretch", "w_scale")):
        axes[2].semilogx([r[key] for r in rows[name]], [r["model_cos"] for r in rows[name]],
                         "o-", label=f"model_cos vs {key}")  # fmt: skip
    axes[2].set(xlabel="stretch", ylabel="model_cos")
    axes[2].legend(fontsize=8)
    plots.save(fig, out / "stretch.png")
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    names = [r["dist"] for r in rows["distribution"]]
    pos = range(len(names))
    ax.bar([p - 0.2 for p in pos], [r["loss"] for r in rows["distribution"]], 0.4, label="GD-SSM")
    ax.bar([p + 0.2 for p in pos], [r["gd_loss"] for r in rows["distribution"]], 0.4, label="GD")
    ax.set_xticks(list(pos), names)
    ax.set(ylabel="query loss", title="inputs with the training variance")
    ax.legend(fontsize=8)
    plots.save(fig, out / "distributions.png")

    print(f"{'shift':<22} {'model':>9} {'GD':>9} {'ratio':>7} {'model_cos':>9}")
    for name, key in (("x_stretch", "x_scale"), ("w_stretch", "w_scale"), ("distribution", "dist")):
        for r in rows[name]:
            label = f"{key}={r[key]}"
            print(f"{label:<22} {r['loss']:>9.4f} {r['gd_loss']:>9.4f} "
                  f"{r['loss_ratio']:>7.3f} {r['model_cos']:>9.5f}")  # fmt: skip
    print(f"wrote {out}/summary.json and figures")
    return summary


if __name__ == "__main__":
    main()
