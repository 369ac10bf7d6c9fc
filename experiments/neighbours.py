"""The neighbours on the same tasks: linear self-attention, H3, a plain SSM, against GD variants.

    python -m experiments.neighbours [--out results/neighbours] [--quick] [--train-steps 2000]
                                     [--models gdssm h3 ...] [--tasks drift ...] [--seed 0]

Li, Rawat and Oymak (NeurIPS 2024) prove that one-layer linear attention and one-layer H3 both
implement one step of *preconditioned* GD, and that H3's convolution adds *sample weighting*.
This experiment trains, with the same trainer (:func:`ssm_gd.train.train`), from random
initialisation, at N = d = 10 with scalar labels:

* ``gdssm``: the GD-SSM with a learned readout matrix (``query_map="matrix"``: a preconditioner)
  and a learned decay ``Λ`` (sample weighting), on interleaved tokens;
* ``linear_attention``, ``h3``, ``plain_ssm`` (:mod:`ssm_gd.neighbours`) on ``"pairs"`` tokens;

on three task families (:data:`TASKS`): (a) ``isotropic``, the default ``x ~ U(−1/2, 1/2)``;
(b) ``anisotropic``, ``x ~ N(0, Σ)`` with a geometric spectrum of condition number 20, rotated,
of the same total variance; (c) ``drift``, the map rotating from an old to a new one along the
context (the query follows the new one). Each run is evaluated on its own fixed set of tasks
against plain GD at its best η, preconditioned GD with the optimal Γ
(:func:`ssm_gd.train.reference_preconditioner`) and sample-weighted GD at its best (η, λ):
loss ratios and ``model_cos`` against each. The summary checks three expected outcomes
(:func:`check_targets`): (a) the plain SSM, without local self-attention, stays well above GD;
(b) on anisotropic inputs the GD-SSM and linear attention come within 2% of optimal
preconditioned GD (a loss ratio of at most :data:`PGD_TOLERANCE`) and beat plain GD; (c) on drifting tasks the GD-SSM with a learned decay
and H3 beat linear attention, which cannot weight its samples.

Writes ``summary.json`` (the table, the targets), ``runs/<model>_<task>.jsonl`` (each run's
history), ``ratios.png`` (each model's loss over each GD variant's, per task) and ``alignment.png``
(``model_cos`` against each variant); prints the table.

Sizes: 2000 steps × 256 fresh tasks per run (lr 0.05), evaluation on 16,384 tasks; the 12 runs
took 122 s on 2 CPU cores (290 s with the cores shared with another job), the plain SSM and
compilation the largest parts. ``--quick`` runs 4 of them (:data:`QUICK_RUNS`) at 100 steps × 128
tasks, evaluated on 2048 tasks: a smoke run (about 40 s, three quarters of it compiling each run's
training and evaluation programs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np
from matplotlib.figure import Figure

from experiments import cli
from experiments.tables import text_table
from ssm_gd import plots, train

#: model name → the Config fields that select it.
MODELS = {
    "gdssm": dict(model="gdssm", layout="interleaved", query_map="matrix"),
    "linear_attention": dict(model="linear_attention", layout="pairs"),
    "h3": dict(model="h3", layout="pairs"),
    "plain_ssm": dict(model="plain_ssm", layout="pairs", impl="sequential"),
}
#: task name → the Config fields that select it.
TASKS = {
    "isotropic": dict(task="isotropic"),
    "anisotropic": dict(task="anisotropic", condition=20.0, rotation=1),
    "drift": dict(task="drift", switch_at=0),
}
#: How each task family reads in the report.
TASK_TEXT = {
    "isotropic": "x ~ U(−1/2, 1/2)^d",
    "anisotropic": "x ~ N(0, Σ), a geometric spectrum of condition number 20 with the same "
    "trace, rotated",
    "drift": "W_i = cos θ_i W_old + sin θ_i W_new, θ_i = (π/2) i/N; the query follows W_new",
}
BASE = dict(
    n_context=10,
    d_in=10,
    d_out=1,
    train_steps=2000,
    batch_size=256,
    lr=0.05,
    warmup_steps=50,
    eval_every=500,
    eval_size=16_384,
    sens_size=2048,
)
QUICK = dict(
    train_steps=100,
    batch_size=128,
    warmup_steps=10,
    eval_every=100,
    eval_size=2048,
    sens_size=256,
)
#: What ``--quick`` runs: every model and every task, and each target on at least one model
#: ((a) the plain SSM, (b) the GD-SSM, (c) H3 against linear attention); the time is compilation.
QUICK_RUNS = (
    ("isotropic", "plain_ssm"),
    ("anisotropic", "gdssm"),
    ("drift", "linear_attention"),
    ("drift", "h3"),
)
LABELS = {
    "gdssm": "GD-SSM (Γ, λ learned)",
    "linear_attention": "linear attention",
    "h3": "H3",
    "plain_ssm": "plain SSM (no LSA)",
}
#: (suffix of the ratio and cosine keys, key of the loss, label) of each GD variant.
REFERENCES = (
    ("", "gd_loss", "GD (best η)"),
    ("_pgd", "pgd_loss", "preconditioned GD (Γ*)"),
    ("_wgd", "wgd_loss", "weighted GD (best η, λ)"),
)
#: Within this factor of optimal preconditioned GD counts as "implements it" (target (b)).
PGD_TOLERANCE = 1.02


def config_for(model: str, task: str, *, quick=False, train_steps=None, seed=0) -> train.Config:
    """The training config of one run."""
    fields = {**BASE, **(QUICK if quick else {}), **MODELS[model], **TASKS[task], "seed": seed}
    if train_steps is not None:
        fields["train_steps"] = train_steps
        fields["eval_every"] = min(fields["eval_every"], train_steps)
        fields["warmup_steps"] = min(fields["warmup_steps"], train_steps - 1)
    return train.Config(**fields)


def learned_decay(model_name: str, model) -> float | None:
    """The mean learned decay where it weights the samples: H3's ``Λ``; the GD-SSM's ``Λ_y`` on
    the entries the construction reads (rows of the labels, columns of the inputs)."""
    if model_name == "h3":
        return float(np.mean(np.asarray(model.decay.lam)))
    if model_name == "gdssm":
        lam = np.asarray(model.yx_recurrence.lam)
        return float(np.mean(lam[: model.d_out, : model.d_in]))
    return None


KEYS = ("val_loss", "gd_loss", "pgd_loss", "pgd_fitted_loss", "wgd_loss", "wgd_lr", "wgd_decay",
        "loss_ratio", "loss_ratio_pgd", "loss_ratio_wgd", "model_cos", "model_cos_pgd",
        "model_cos_wgd", "model_diff", "model_diff_pgd", "model_diff_wgd", "wall_seconds",
        "train_steps_per_second")  # fmt: skip


def run_one(
    model: str, task: str, out: pathlib.Path, *, quick, train_steps, seed, progress
) -> dict:
    config = config_for(model, task, quick=quick, train_steps=train_steps, seed=seed)
    result = train.train(config, None, progress=progress)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{model}_{task}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in result.history)
    row = {"model": model, "task": task, **{k: result.summary[k] for k in KEYS}}
    row["learned_decay"] = learned_decay(model, result.model)
    # Predicting 0 costs E‖y_q‖²/(2 d_out) = (w² tr Σ + σ²)/2, tr Σ = d·x_range²/12 for all three.
    c = config
    row["zero_loss"] = 0.5 * (c.w_scale**2 * c.d_in * c.x_range**2 / 12 + c.noise_std**2)
    return row


def check_targets(rows: list[dict]) -> dict:
    """The expected outcomes (a)–(c) of the module docstring, each with the numbers it rests on
    and whether it is met (runs that were not made are skipped)."""
    at = {(r["model"], r["task"]): r for r in rows}
    targets = {}
    aniso = [
        at[(m, "anisotropic")] for m in ("gdssm", "linear_attention") if (m, "anisotropic") in at
    ]
    if aniso:
        targets["b_preconditioned"] = {
            "what": f"(b) GD-SSM and linear attention within {PGD_TOLERANCE - 1:.0%} of optimal "
            "preconditioned GD and better than plain GD",
            "met": all(r["loss_ratio_pgd"] <= PGD_TOLERANCE and r["loss_ratio"] < 1 for r in aniso),
            "values": {r["model"]: {"loss_ratio_pgd": r["loss_ratio_pgd"],
                                    "loss_ratio": r["loss_ratio"]} for r in aniso},
        }  # fmt: skip
    if ("linear_attention", "drift") in at:
        base = at[("linear_attention", "drift")]["val_loss"]
        drift = [at[(m, "drift")] for m in ("gdssm", "h3") if (m, "drift") in at]
        if drift:
            targets["c_weighted"] = {
                "what": "(c) GD-SSM with a learned decay and H3 beat linear attention",
                "met": all(r["val_loss"] < base for r in drift),
                "values": {"linear_attention": base, **{r["model"]: r["val_loss"] for r in drift}},
            }
    if ("plain_ssm", "isotropic") in at:
        r = at[("plain_ssm", "isotropic")]
        targets["a_plain_ssm"] = {
            "what": "(a) the plain SSM without local self-attention stays well above GD",
            "met": r["loss_ratio"] > 1.25,
            "values": {"loss_ratio": r["loss_ratio"], "val_loss": r["val_loss"],
                       "gd_loss": r["gd_loss"], "zero_predictor_loss": r["zero_loss"]},
        }  # fmt: skip
    return targets


def _grouped_bars(rows, tasks, models, key_of, *, ylabel, ylim, line=None):
    """One panel per task; per model a group of bars, one per GD variant (``key_of(suffix)``).

    Bars beyond ``ylim`` are drawn to its edge and labelled with their value."""
    at = {(r["model"], r["task"]): r for r in rows}
    fig = Figure(figsize=(4.6 * len(tasks), 4.2))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    width = 0.8 / len(REFERENCES)
    for ax, task in zip(axes[0], tasks, strict=True):
        present = [m for m in models if (m, task) in at]
        for k, (suffix, _, label) in enumerate(REFERENCES):
            pos = np.arange(len(present)) + (k - 1) * width
            values = np.array([at[(m, task)][key_of(suffix)] for m in present])
            shown = np.clip(values, *ylim)
            ax.bar(pos, shown - ylim[0], width, bottom=ylim[0], label=label, color=f"C{k}")
            for p, v, h in zip(pos, values, shown, strict=True):
                if v != h:
                    va = "top" if v > h else "bottom"
                    ax.text(p, h, f"{v:.2f}", ha="center", va=va, fontsize=6, rotation=90)
        if line is not None:
            ax.axhline(line, color="k", lw=0.8)
        ax.set_xticks(range(len(present)), [LABELS[m] for m in present], rotation=20, fontsize=8)
        ax.set(title=task, ylabel=ylabel, ylim=ylim)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def figures(rows: list[dict], out: pathlib.Path) -> list[str]:
    """``ratios.png`` (each model's loss over each GD variant's) and ``alignment.png``
    (``model_cos`` against each variant), one panel per task."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    fig = _grouped_bars(
        rows, tasks, models, lambda suffix: f"loss_ratio{suffix}",
        ylabel="trained loss / GD variant's loss", ylim=(0.85, 1.25), line=1.0,
    )  # fmt: skip
    plots.save(fig, out / "ratios.png")
    fig = _grouped_bars(
        rows, tasks, models, lambda suffix: f"model_cos{suffix}", ylabel="model_cos against",
        ylim=(0.85, 1.0),
    )  # fmt: skip
    plots.save(fig, out / "alignment.png")
    return ["ratios.png", "alignment.png"]


def table(rows: list[dict]) -> str:
    return text_table(rows, [
        ("task", "task", "<"), ("model", "model", "<"), ("loss", "val_loss", ".4f"),
        ("GD", "gd_loss", ".4f"), ("PGD", "pgd_loss", ".4f"), ("WGD", "wgd_loss", ".4f"),
        ("/GD", "loss_ratio", ".3f"), ("/PGD", "loss_ratio_pgd", ".3f"),
        ("/WGD", "loss_ratio_wgd", ".3f"), ("cos GD", "model_cos", ".4f"),
        ("cos PGD", "model_cos_pgd", ".4f"), ("cos WGD", "model_cos_wgd", ".4f"),
    ])  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/neighbours")
    parser.add_argument("--quick", action="store_true", help="a smoke run of the same grid")
    parser.add_argument(
        "--train-steps", "--steps", type=int, default=None,
        help="training steps per run (--steps: an alias kept for one release)",
    )  # fmt: skip
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    for name, given, known in (("--models", args.models, MODELS), ("--tasks", args.tasks, TASKS)):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"{name}: unknown {unknown}; choose from {list(known)}")
    if args.train_steps is not None and args.train_steps < 2:
        parser.error(f"--train-steps must be at least 2; got {args.train_steps}")
    # Every config is built (and so checked) before the first run starts.
    for task in args.tasks:
        for model in args.models:
            config_for(model, task, quick=args.quick, train_steps=args.train_steps, seed=args.seed)

    grid = [(t, m) for t in args.tasks for m in args.models]
    if args.quick:
        grid = [run for run in grid if run in QUICK_RUNS]
    if not grid:
        parser.error(f"--quick runs only {list(QUICK_RUNS)}: none is in --models × --tasks")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for task, model in grid:
        rows.append(
            run_one(
                model,
                task,
                out,
                quick=args.quick,
                train_steps=args.train_steps,
                seed=args.seed,
                progress=not args.no_progress,
            )
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    # The fields every run shares (those that pick the model or the task are in models / tasks).
    config = config_for(
        grid[0][1], grid[0][0], quick=args.quick, train_steps=args.train_steps, seed=args.seed
    )
    own = {k for fields in (*MODELS.values(), *TASKS.values()) for k in fields}
    summary = {
        "rows": rows,
        "targets": check_targets(rows),
        "models": {m: MODELS[m] for m in args.models},
        "tasks": {t: TASKS[t] for t in args.tasks},
        "task_text": {t: TASK_TEXT[t] for t in args.tasks},
        "runs": [f"{m}_{t}" for t, m in grid],
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in own},
        "pgd_tolerance": PGD_TOLERANCE,
        "figures": figures(rows, out),
        "wall_seconds": time.perf_counter() - start,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(table(rows))
    for t in summary["targets"].values():
        print(f"{'met' if t['met'] else 'NOT met':>7}  {t['what']}")
    print(f"wrote {out}/summary.json, runs/ and figures in {summary['wall_seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
