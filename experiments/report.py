"""Gather ``results/*/summary.json`` into ``results/REPORT.md``: our numbers beside the anchors.

python -m experiments.report [--results results]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

# Published reference points (docs/design.md §7). von Oswald et al. 2023: one-layer linear
# self-attention at N = d = 10 with scalar labels.
ANCHORS = {"gd_loss": 0.2047, "trained_loss": 0.2049, "model_cos": 0.9994}


def _load(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


RUNS = {
    "linear": "vector labels (default)",
    "linear_scalar": "scalar labels (`--d-out 1`)",
    "linear_constructed": "constructed tokens (`--layout constructed --d-out 1`)",
}


def _from_summary(name: str):
    """A section drawn from ``<results>/<name>/summary.json`` (``fn(summary)``): nothing where
    that experiment has not run."""

    def wrap(fn):
        @functools.wraps(fn)
        def section(results: pathlib.Path) -> list[str]:
            summary = _load(results / name / "summary.json")
            return [] if summary is None else fn(summary)

        return section

    return wrap


def linear_section(results: pathlib.Path) -> list[str]:
    runs = {name: _load(results / name / "summary.json") for name in RUNS}
    runs = {name: s for name, s in runs.items() if s is not None}
    if not runs:
        return ["## Linear regression", "", "_not run (`python -m experiments.linear`)_", ""]
    lines = ["## Linear regression: from random initialisation to GD", ""]
    for name, s in runs.items():
        c = s["config"]
        lines.append(
            f"* {RUNS[name]}: `python -m experiments.linear --d-out {c['d_out']} --layout "
            f"{c['layout']} --out results/{name}`: N = {c['n_context']}, d_in = {c['d_in']}, {c['layout']} tokens, "
            f"{s['train_steps']} steps × {s['batch_size']} fresh tasks, seed {s['seed']}, evaluated on "
            f"{c['eval_size']} fixed tasks; {s['wall_seconds']:.1f} s on {len(s['devices'])} × "
            f"{s['devices'][0]}."
        )
    a = ANCHORS
    rows = [
        (
            "GD loss at its best η",
            lambda s: f"{s['gd_loss']:.4f} (η = {s['gd_lr']:.3f})",
            a["gd_loss"],
        ),
        ("trained loss", lambda s: f"{s['val_loss']:.4f}", a["trained_loss"]),
        (
            "trained / GD",
            lambda s: f"{s['loss_ratio']:.4f}",
            f"{a['trained_loss'] / a['gd_loss']:.4f}",
        ),
        ("model_cos", lambda s: f"{s['model_cos']:.5f}", a["model_cos"]),
        ("model_diff", lambda s: f"{s['model_diff']:.4f}", ""),
        ("preds_diff", lambda s: f"{s['preds_diff']:.4f}", ""),
        ("param_match_error", lambda s: f"{s['param_match_error']:.4f}", ""),
        ("least squares loss", lambda s: f"{s['lsq_loss']:.2e}", ""),
        ("wall seconds", lambda s: f"{s['wall_seconds']:.1f}", ""),
    ]
    lines += [
        "",
        "| metric | " + " | ".join(RUNS[n] for n in runs) + " | anchor: von Oswald et al., "
        "linear self-attention, N = d = 10, scalar labels |",
        "|---" * (len(runs) + 2) + "|",
    ]
    for label, fmt, anchor in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(s) for s in runs.values()) + f" | {anchor} |")
    lines += [
        "",
        "Loss ratios are taken on one evaluation set, so its sampling noise cancels; the GD loss",
        "itself moves by about 1% between sets of 10,000 tasks.",
        "",
    ]
    for name, s in runs.items():
        lines += [f"### {RUNS[name]}", ""]
        lines += [f"![{f}]({name}/{f})" for f in s.get("figures", [])]
        lines.append("")
    return lines


@_from_summary("construction")
def construction_section(s: dict) -> list[str]:
    lines = [
        "## The construction equals K-step GD",
        "",
        "`python -m experiments.construction`: largest error of the constructed GD-SSM against",
        "explicit GD on every prefix (scalar labels).",
        "",
        "| layout | K | best η | GD loss | max abs err (float64) | max rel err (float32) |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['layout']} | {r['steps']} | {r['lr']:.4f} | {r['gd_loss']:.4f} | "
            f"{r['max_abs_err_float64']:.1e} | {r['max_rel_err_float32']:.1e} |"
        )
    return lines + [""]


@_from_summary("plateau")
def plateau_section(s: dict) -> list[str]:
    n = s["seeds"]
    lines = [
        "## Leaving the plateau: initialisation",
        "",
        f"`python -m experiments.plateau`: the default run from {n} seeds per initialisation;",
        "reached GD = loss ratio ≤ 1.01 and model_cos ≥ 0.999 at the end of training.",
        "",
        "| initialisation | reached GD | worst loss ratio | worst model_cos |",
        "|---|---|---|---|",
    ]
    for init, rows in s["runs"].items():
        lines.append(
            f"| {init} | {s['reached_gd'][init]}/{n} | {max(r['loss_ratio'] for r in rows):.4f} | "
            f"{min(r['model_cos'] for r in rows):.5f} |"
        )
    return lines + ["", "![plateau.png](plateau/plateau.png)", ""]


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def more_sections(results: pathlib.Path) -> list[str]:
    """The experiments beyond the linear headline, each where its summary exists."""
    lines = []
    s = _load(results / "multistep" / "summary.json")
    if s is not None:
        lines += ["## Multi-step GD (`python -m experiments.multistep`)", ""]

        def shape(pm):  # the blocks' directions, without the two scales
            return max(v for k, v in pm.items() if not k.startswith(("scale", "total")))

        lines += _table(
            ["K", "trained", "K-step GD", "ratio", "model_cos", "param_match_error",
             "blocks (shape)", "scale_y", "scale_x"],
            [[r["n_steps"], f"{r['val_loss']:.4f}", f"{r['gd_loss']:.4f}",
              f"{r['loss_ratio']:.4f}", f"{r['model_cos']:.5f}",
              f"{r['param_match_error']:.3f}", f"{shape(r['param_match']):.3f}",
              f"{r['param_match']['scale_y']:.3f}",
              f"{r['param_match'].get('scale_x', float('nan')):.3f}"] for r in s["rows"]],
        )  # fmt: skip
        better = [r for r in s["rows"] if r["loss_ratio"] < 0.99]
        if better:
            ks = ", ".join(str(r["n_steps"]) for r in better)
            lines += [
                "",
                f"The trained model beats K-step GD at K = {ks}. The columns say how: the "
                "blocks' shapes (each block normalised) against the scales of the y·x and x·x "
                "branches. Small shape errors with large scale errors mean the two terms of the "
                "update take different step sizes, a freedom plain GD with one η lacks (GD++ of "
                "von Oswald et al. adds a similar one).",
            ]
        lines += [""]
        lines += [f"![{f}](multistep/{f})" for f in s["figures"]] + [""]
    s = _load(results / "ood" / "summary.json")
    if s is not None:
        lines += ["## Out of distribution (`python -m experiments.ood`)", ""]
        rows = [[f"{k}={r[k]}", f"{r['loss']:.4f}", f"{r['gd_loss']:.4f}",
                 f"{r['model_cos']:.5f}"]
                for name, k in (("x_stretch", "x_scale"), ("w_stretch", "w_scale"),
                                ("distribution", "dist"))
                for r in s[name]]  # fmt: skip
        lines += _table(["shift", "trained", "GD at training η", "model_cos"], rows)
        lines += [""] + [f"![{f}](ood/{f})" for f in s["figures"]] + [""]
    s = _load(results / "sweep" / "summary.json")
    if s is not None:
        lines += [f"## Size sweep (`python -m experiments.sweep`, {s['layout']} tokens)", ""]
        lines += [f"{s['train_steps']} steps of {s.get('batch_size', 512)} tasks per size.", ""]
        lines += _table(
            ["d", "N", "trained", "GD", "ratio", "model_cos"],
            [[r["d"], r["n_context"], f"{r['val_loss']:.4f}", f"{r['gd_loss']:.4f}",
              f"{r['loss_ratio']:.4f}", f"{r['model_cos']:.5f}"] for r in s["rows"]],
        )  # fmt: skip
        lines += ["", "![sweep.png](sweep/sweep.png)", ""]
    s = _load(results / "nonlinear" / "summary.json")
    if s is not None:
        lines += ["## Non-linear regression (`python -m experiments.nonlinear`)", ""]
        lines += _table(
            ["predictor", "loss", "trained model beats it"],
            [[k, f"{v:.5f}", "" if k == "trained" else ("yes" if s["beats"][k] else "no")]
             for k, v in s["losses"].items()],
        )  # fmt: skip
        lines += [""] + [f"![{f}](nonlinear/{f})" for f in s["figures"]] + [""]
    return lines


def _rounded(tree, digits=4):
    if isinstance(tree, dict):
        return {k: _rounded(v, digits) for k, v in tree.items()}
    return round(tree, digits) if isinstance(tree, float) else tree


@_from_summary("neighbours")
def neighbours_section(s: dict) -> list[str]:
    """The neighbours (``experiments.neighbours``): one table per task, the targets, the figures."""
    c = s["config"]
    lines = [
        "## The neighbours: linear attention, H3, a plain SSM (`python -m experiments.neighbours`)",
        "",
        f"N = {c['n_context']}, d = {c['d_in']}, scalar labels; each model trained from random "
        f"initialisation with the same trainer, {c['train_steps']} steps × {c['batch_size']} fresh "
        f"tasks at lr {c['lr']}, evaluated on {c['eval_size']} fixed tasks per task family "
        f"({s['wall_seconds']:.0f} s for {len(s['rows'])} runs). The GD-SSM has a learned "
        "readout matrix (a preconditioner) and a learned decay; the others read `[x_i, y_i]` "
        "tokens. References on the same tasks: plain GD at its best η, preconditioned GD with "
        "the optimal Γ* (closed form for Gaussian inputs; a multiple of I for the isotropic and "
        "drifting tasks, by symmetry), sample-weighted GD at its best (η, λ).",
        "",
    ]
    for task in s["tasks"]:
        rows = [r for r in s["rows"] if r["task"] == task]
        if not rows:
            continue
        r0 = rows[0]
        letter = {"isotropic": "(a) ", "anisotropic": "(b) ", "drift": "(c) "}.get(task, "")
        lines += [
            f"### {letter}{task}: {s['task_text'][task]}",
            "",
            f"GD {r0['gd_loss']:.4f}, preconditioned GD {r0['pgd_loss']:.4f}, weighted GD "
            f"{r0['wgd_loss']:.4f} (λ = {r0['wgd_decay']:.3f}); predicting 0 costs "
            f"{r0['zero_loss']:.4f}.",
            "",
        ]
        lines += _table(
            ["model", "loss", "/ GD", "/ PGD", "/ WGD", "cos GD", "cos PGD", "cos WGD",
             "learned λ"],
            [[r["model"], f"{r['val_loss']:.4f}", f"{r['loss_ratio']:.4f}",
              f"{r['loss_ratio_pgd']:.4f}", f"{r['loss_ratio_wgd']:.4f}",
              f"{r['model_cos']:.4f}", f"{r['model_cos_pgd']:.4f}", f"{r['model_cos_wgd']:.4f}",
              "" if r["learned_decay"] is None else f"{r['learned_decay']:.3f}"] for r in rows],
        )  # fmt: skip
        lines.append("")
    if s["targets"]:
        lines += ["Targets:", ""]
        for t in s["targets"].values():
            values = json.dumps(_rounded(t["values"]))
            lines.append(f"* {'met' if t['met'] else '**not met**'}: {t['what']}: `{values}`")
        lines.append("")
    lines += [f"![{f}](neighbours/{f})" for f in s["figures"]] + [""]
    return lines


@_from_summary("classification")
def classification_section(s: dict) -> list[str]:
    """In-context classification (``experiments.classification``): the table, the figures."""
    c, focus = s["config"], s["focus"]
    lines = [
        "## In-context classification with the cross-entropy "
        "(`python -m experiments.classification`)",
        "",
        f"d = {c['d_in']}, inputs N(0, I), labels argmax W x (W ~ N(0, 1)); every GD-SSM trained "
        f"from random initialisation on the query's cross-entropy, {c['train_steps']} steps × "
        f"{c['batch_size']} fresh tasks, evaluated on {c['eval_size']} fixed tasks "
        f"({s['wall_seconds']:.0f} s in all). The anchors are computed on the same tasks: "
        "cross-entropy GD from 0 at its best η (the model's target: one step for one layer, K "
        "steps for K layers), GD on the squared loss of the one-hot targets, multinomial logistic "
        "regression fitted on each context (ridge tuned on the set), chance. The construction's "
        "probabilities equal one cross-entropy GD step's exactly (tests, float64); a trained "
        "layer is measured against that.",
        "",
    ]
    rows = [[r["classes"], r["n_context"], r["n_steps"], r["seed"], f"{r['accuracy']:.4f}",
             f"{r['gd_accuracy']:.4f}", f"{r['sq_gd_accuracy']:.4f}",
             f"{r['logistic_accuracy']:.4f}", f"{r['chance_accuracy']:.4f}",
             f"{r['val_loss']:.4f}", f"{r['gd_loss']:.4f}", f"{r['loss_ratio']:.4f}",
             f"{r['model_cos']:.4f}", f"{r['param_match_error']:.3f}"] for r in s["rows"]]  # fmt: skip
    lines += _table(
        ["K", "N", "steps", "seed", "accuracy", "CE GD", "squared GD", "logistic", "chance",
         "CE loss",
         "CE GD loss", "/ GD", "model_cos", "param match"],
        rows,
    )  # fmt: skip
    lines += [
        "",
        f"The accuracy of the next label after t examples is drawn at K = {focus['classes']}, "
        f"N = {focus['n_context']} for every predictor; multi-layer rows compare with K-step "
        "cross-entropy GD, which no diagonal recurrence computes exactly beyond one step.",
        "",
    ]
    return lines + [f"![{f}](classification/{f})" for f in s["figures"]] + [""]


@_from_summary("minibatch")
def minibatch_section(s: dict) -> list[str]:
    """Minibatch windows (``experiments.minibatch``): accuracy to GD, cost, the drifting task."""
    c = s["config"]
    lines = [
        "## Minibatch windows (`python -m experiments.minibatch`)",
        "",
        f"N = {c['n_context']}, d = {c['d_in']}, scalar labels; windows of 2m + 1 tokens, stride "
        f"2m (N/m recurrence steps); {c['train_steps']} steps × {c['batch_size']} fresh tasks per "
        f"run, evaluated on {c['eval_size']} tasks; forward times on {s['forward_batch']} tasks, "
        f"median of rounds that time every m in turn, on {s['devices'][0]} "
        f"({s['wall_seconds']:.0f} s in all). The anchor of each row is one GD step at its best "
        "η on the same tasks (the construction with minibatch m equals it exactly).",
        "",
    ]
    lines += _table(
        ["m", "windows", "/ GD", "model_cos", "param match", "train steps/s", "query ms",
         "every window ms"],
        [[r["minibatch"], r["windows"], f"{r['loss_ratio']:.4f}", f"{r['model_cos']:.5f}",
          f"{r['param_match_error']:.3f}", f"{r['train_steps_per_second']:.0f}",
          f"{1e3 * r['forward_seconds']['query']:.2f}",
          f"{1e3 * r['forward_seconds']['all_windows']:.2f}"] for r in s["rows"]],
    )  # fmt: skip
    lines += ["", "Drifting task (the map rotates along the context), the decay learned:", ""]
    lines += _table(
        ["m", "learned λ (mean ± sd)", "best per-window λ", "loss", "best weighted GD loss",
         "model_cos to it"],
        [[d["minibatch"],
          f"{d['learned_lambda']['mean']:.4f} ± {d['learned_lambda']['std']:.4f}",
          f"{d['wgd_decay']:.4f}", f"{d['val_loss']:.4f}", f"{d['wgd_loss']:.4f}",
          f"{d['model_cos_wgd']:.4f}"] for d in s["drift"]],
    )  # fmt: skip
    lines += [
        "",
        "The figure: left, the trained model against one GD step per m; middle, the cost of the "
        "query's prediction, of every window's and of a training step, relative to m = 1 (a "
        "window of 2m + 1 tokens has (2m + 1)² products, and there are N/m of them); right, the "
        "decay learned on drifting tasks beside the best per-window λ.",
        "",
    ]
    return lines + [f"![{f}](minibatch/{f})" for f in s["figures"]] + [""]


def build(results="results") -> pathlib.Path:
    results = pathlib.Path(results)
    lines = ["# ssm-gd: results", ""]
    lines += linear_section(results)
    lines += plateau_section(results)
    lines += more_sections(results)
    lines += neighbours_section(results)
    lines += classification_section(results)
    lines += minibatch_section(results)
    lines += construction_section(results)
    path = results / "REPORT.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    print(f"wrote {build(args.results)}")


if __name__ == "__main__":
    main()
