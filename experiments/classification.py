"""In-context classification: GD-SSMs trained with the cross-entropy beside GD and logistic regression.

    python -m experiments.classification [--out results/classification] [--quick]
                                         [--train-steps 2000] [--seed 0]

d = 10 inputs ``N(0, I)``, labels ``argmax W x`` with ``W ~ N(0, 1)`` (docs/design.md §11). For
K ∈ {2, 5, 10} classes and N ∈ {10, 40} examples a one-layer GD-SSM is trained from random
initialisation on the query's cross-entropy and compared, on the same evaluation set, with one
cross-entropy GD step at its best η, GD on the squared loss of the one-hot targets, multinomial
logistic regression fitted on each context (ridge tuned on the set) and chance. At K = 5, N = 40
GD-SSMs of 2 and 3 steps are compared with K-step cross-entropy GD as well, and the one-layer
run is repeated with two more seeds.

Writes ``summary.json`` (every number of the table), ``accuracy_vs_examples.png`` (accuracy of
the next label after t examples, for each predictor, at K = 5, N = 40), ``accuracy.png`` (every
setting) and ``parameters.png`` (trained beside constructed, K = 5, N = 40); prints the table.
``--quick``: K ∈ {2, 5} at N = 10, 2 steps, 200 training steps.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from experiments import cli
from experiments.tables import text_table
from ssm_gd import gd, metrics, plots, tasks, train

BASE = dict(
    task="classification",
    d_in=10,
    train_steps=2000,
    batch_size=512,
    eval_every=500,
    eval_size=8192,
    sens_size=1024,
)
QUICK = dict(train_steps=200, batch_size=256, eval_every=100, eval_size=1024, sens_size=128)
CLASSES, CONTEXTS, MULTI_STEPS = (2, 5, 10), (10, 40), (2, 3)
#: The setting of the multi-layer runs, the curve and the heatmaps: (classes, context size).
FOCUS = (5, 40)
#: More seeds of the one-layer run at FOCUS (the spread of a trained model's figures).
EXTRA_SEEDS = 2
ROW_KEYS = ("val_loss", "accuracy", "gd_loss", "gd_accuracy", "gd_lr", "loss_ratio", "model_cos",
            "model_diff", "param_match_error", "sq_gd_loss", "sq_gd_accuracy", "logistic_loss",
            "logistic_accuracy", "logistic_reg", "chance_loss", "chance_accuracy",
            "majority_accuracy", "train_steps_per_second", "wall_seconds")  # fmt: skip


def parse(argv=None):
    parser, args, out = cli.grid_runs(__doc__.splitlines()[0], "results/classification", argv)
    base = cli.base_config(
        parser,
        args,
        BASE,
        QUICK,
        variants=[{"d_out": k, "n_context": n} for k in CLASSES for n in CONTEXTS],
    )
    return args, out, base


def grid(quick: bool, seed: int, smoke: bool = False):
    """``(classes, context, n_steps, seed)`` of every run: one-layer runs, then the focus
    setting's other seeds (:data:`EXTRA_SEEDS` after ``seed``), then the multi-layer runs
    (``smoke``: one of each)."""
    if smoke:
        return [(5, 10, 1, seed), (5, 10, 2, seed)]
    if quick:
        return [(k, 10, 1, seed) for k in (2, 5)] + [(5, 10, 2, seed)]
    runs = [(k, n, 1, seed) for n in CONTEXTS for k in CLASSES]
    runs += [(*FOCUS, 1, seed + i) for i in range(1, EXTRA_SEEDS + 1)]
    return runs + [(*FOCUS, s, seed) for s in MULTI_STEPS]


def prefixes(n: int) -> list[int]:
    """The numbers of examples the curve is measured at: every one up to 10, ten points beyond."""
    return list(range(1, n + 1)) if n <= 10 else [max(1, round(n * i / 10)) for i in range(1, 11)]


def accuracy_curves(results: dict, config: train.Config, batch: int = 1024) -> dict[str, list]:
    """Accuracy of the next label after t examples (t in :func:`prefixes`), per predictor, on
    ``batch`` fresh tasks.

    The models' windows give every prefix at once (window t predicts label t + 1). The
    references see the first t pairs and normalise by N, as the construction does (step ``η t/N``
    on t examples; the accuracy of one step does not depend on it): the later pairs are zeroed,
    which removes them from every gradient and from the logistic regression's loss.
    """
    task = train.sample(config, jax.random.key(config.seed + 7), batch)
    n, ts = config.n_context, jnp.asarray(prefixes(config.n_context))
    target = jnp.concatenate([task.y[:, 1:], task.y_query[:, None]], axis=1)[:, ts - 1]
    queries = jnp.concatenate([task.x[:, 1:], task.x_query[:, None]], axis=1)

    def per_prefix(predict):  # predict(x_masked, x_query) → logits, for each t
        def at(t):
            mask = (jnp.arange(n) < t)[None, :, None]
            return predict(task.x * mask, queries[:, t - 1])

        logits = jax.lax.map(at, ts)  # (T, B, K)
        return _accuracy(jnp.moveaxis(logits, 0, 1), target)

    curves = {}
    for steps, result in results.items():
        label = "GD-SSM (trained)" if steps == 1 else f"GD-SSM, {steps} steps (trained)"
        curves[label] = _accuracy(result.model(tasks.tokens(task))[:, ts - 1], target)
    s = results[1].summary
    curves["cross-entropy GD, 1 step"] = per_prefix(
        lambda x, q: gd.cross_entropy_predict(x, task.y, q, lr=s["gd_lr"])
    )
    for steps, result in results.items():
        if steps > 1:
            lr = result.summary["gd_lr"]
            curves[f"cross-entropy GD, {steps} steps"] = per_prefix(
                lambda x, q, lr=lr, k=steps: gd.cross_entropy_predict(x, task.y, q, lr=lr, steps=k)
            )
    curves["squared-loss GD, 1 step"] = _accuracy(
        gd.predict_prefixes(task.x, task.y, task.x_query, lr=s["sq_gd_lr"])[:, ts - 1], target
    )
    curves["logistic regression"] = per_prefix(
        lambda x, q: gd.logistic_regression(x, task.y, q, reg=s["logistic_reg"])
    )
    return curves


def _accuracy(logits, target) -> list[float]:
    """Accuracy per position of logits ``(B, N, K)`` against one-hot targets ``(B, N, K)``."""
    hits = jnp.argmax(logits, -1) == jnp.argmax(target, -1)
    return [float(v) for v in jnp.mean(hits, axis=0)]


def table(rows) -> str:
    return text_table(rows, [
        ("K", "classes", ""), ("N", "n_context", ""), ("steps", "n_steps", ""), ("seed", "seed", ""),
        ("acc", "accuracy", ".4f"), ("CE-GD", "gd_accuracy", ".4f"), ("sq-GD", "sq_gd_accuracy", ".4f"),
        ("logreg", "logistic_accuracy", ".4f"), ("chance", "chance_accuracy", ".4f"),
        ("loss", "val_loss", ".4f"), ("GD loss", "gd_loss", ".4f"), ("ratio", "loss_ratio", ".4f"),
        ("cos", "model_cos", ".4f"), ("match", "param_match_error", ".3f"),
    ])  # fmt: skip


def figures(rows, curves, focus_result, out, config) -> list[str]:
    k, n = config.d_out, config.n_context
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (name, values) in enumerate(curves.items()):
        style = "-" if name.startswith("GD-SSM") else ("--" if "GD" in name else ":")
        ax.plot(prefixes(n), values, style, marker="os^v<>"[i % 6], ms=3, label=name)
    ax.axhline(1 / k, color="gray", lw=0.8, label="chance")
    ax.set(xlabel="in-context examples", ylabel="accuracy of the next label",
           title=f"K = {k} classes, d = {config.d_in}, N = {n}")  # fmt: skip
    ax.legend(fontsize=7)
    plots.save(fig, out / "accuracy_vs_examples.png")

    one = [r for r in rows if r["n_steps"] == 1 and r["seed"] == config.seed]
    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    names = (("accuracy", "GD-SSM (trained)"), ("gd_accuracy", "cross-entropy GD, best η"),
             ("sq_gd_accuracy", "squared-loss GD"), ("logistic_accuracy", "logistic regression"),
             ("chance_accuracy", "chance"))  # fmt: skip
    x = np.arange(len(one))
    for i, (key, label) in enumerate(names):
        ax.bar(x + (i - 2) * 0.16, [r[key] for r in one], 0.16, label=label)
    ax.set_xticks(x, [f"K={r['classes']}\nN={r['n_context']}" for r in one])
    ax.set(ylabel="query accuracy", title="one layer / one step")
    ax.legend(fontsize=7)
    plots.save(fig, out / "accuracy.png")

    blocks = []
    for model in (focus_result.model, focus_result.constructed):
        b = {name: np.atleast_2d(v) for name, v in metrics.parameter_blocks(model).items()}
        b["C_y"] = np.asarray(metrics.centred(b["C_y"].T).T)  # the part the softmax sees
        blocks.append(b)
    plots.parameters(
        *blocks,
        out / "parameters.png",
        title="trained (random init) above the construction (one CE GD step); C_y centred "
        "over the classes",
    )
    return ["accuracy_vs_examples.png", "accuracy.png", "parameters.png"]


def main(argv=None):
    args, out, base = parse(argv)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, focus = [], {}
    runs = grid(args.quick, args.seed, args.smoke)
    focus_setting = (runs[-1][0], runs[-1][1])
    for classes, n_context, n_steps, seed in runs:
        config = dataclasses.replace(
            base, d_out=classes, n_context=n_context, n_steps=n_steps, seed=seed
        )
        result = train.train(config, None, progress=False)
        s = result.summary
        rows.append({"classes": classes, "n_context": n_context, "n_steps": n_steps, "seed": seed,
                     **{k: s[k] for k in ROW_KEYS}, "gd1_loss": s.get("gd1_loss")})  # fmt: skip
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if (classes, n_context) == focus_setting and seed == args.seed:
            focus[n_steps] = result
    config = dataclasses.replace(base, d_out=focus_setting[0], n_context=focus_setting[1])
    curves = accuracy_curves(focus, config, batch=256 if args.quick else 1024)
    names = figures(rows, curves, focus[1], out, config)
    summary = {
        "rows": rows,
        "accuracy_vs_examples": {"examples": prefixes(config.n_context), **curves},
        "focus": {"classes": focus_setting[0], "n_context": focus_setting[1]},
        "config": dataclasses.asdict(base),
        "wall_seconds": time.perf_counter() - start,
        "figures": names,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(rows))
    print(f"wrote {out}/summary.json and figures in {summary['wall_seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
