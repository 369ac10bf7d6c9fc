"""Minibatch windows: GD-SSMs whose windows hold m pairs, trained beside GD, and timed.

    python -m experiments.minibatch [--out results/minibatch] [--quick] [--train-steps 2000]
                                    [--seed 0]

N = 40 pairs, d = 10, scalar labels (docs/design.md §12). For m ∈ {1, 2, 5} (windows of
2m + 1 tokens, stride 2m, N/m recurrence steps):

* **isotropic tasks**: a GD-SSM trained from random initialisation against one GD step at its best
  η (loss ratio, ``model_cos``, parameter match against the minibatch construction);
* **speed**: training steps per second (each run's own, in this process) and the forward time of
  the query's prediction and of every window's, per m, measured side by side in rounds (every m
  once per round, median over the rounds) on one batch;
* **drifting tasks** (the map rotates along the context): a GD-SSM with a learned decay, its
  learned ``λ`` (mean and spread over the entries that reach the output) beside the best
  per-window weighting ``λ^{N/m − ⌈i/m⌉}`` with its best η (:func:`ssm_gd.gd.best_weighted`).

Writes ``summary.json`` (every number, with the settings), ``minibatch.png``; prints the tables.
``--quick``: 100 training steps, smaller evaluation sets, timing batch and fewer rounds.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from experiments.tables import text_table
from ssm_gd import construction, plots, tasks, train

MINIBATCHES = (1, 2, 5)
#: ``--smoke``: the smallest set that compares a minibatch with m = 1.
SMOKE_MINIBATCHES = (1, 2)
BASE = dict(
    n_context=40,
    d_in=10,
    d_out=1,
    train_steps=2000,
    batch_size=512,
    eval_every=500,
    eval_size=8192,
    sens_size=1024,
)
QUICK = dict(train_steps=100, batch_size=256, eval_every=50, eval_size=1024, sens_size=128)
#: The drifting task's model: a learned decay Λ (Adam on Λ at ``recurrence_lr``), plain query map.
DRIFT = dict(task="drift", switch_at=0, recurrence_lr=0.01)
KEYS = ("val_loss", "gd_loss", "gd_lr", "loss_ratio", "model_cos", "model_diff",
        "param_match_error", "train_steps_per_second", "wall_seconds")  # fmt: skip


def parse(argv=None):
    parser, args, out = cli.grid_runs(__doc__.splitlines()[0], "results/minibatch", argv)
    base = cli.base_config(
        parser, args, BASE, QUICK, variants=[{"minibatch": m, **DRIFT} for m in MINIBATCHES]
    )
    args.minibatches = SMOKE_MINIBATCHES if args.smoke else MINIBATCHES
    return args, out, base


def forward_times(
    config: train.Config, batch: int, rounds: int = 7, minibatches=MINIBATCHES
) -> dict[int, dict]:
    """Seconds per call of the query's prediction and of every window's prediction, per m: the
    minibatch constructions (float32) on one batch of tasks, every m once per round."""
    task = tasks.linear_regression(
        jax.random.key(1), batch=batch, n_context=config.n_context, d_in=config.d_in,
        d_out=config.d_out,
    )  # fmt: skip
    toks = tasks.tokens(task)
    calls = {}
    for m in minibatches:
        model = construction.gd_ssm(
            d_in=config.d_in, d_out=config.d_out, n_context=config.n_context, lr=1.0, minibatch=m
        )
        query, every = nnx.jit(lambda mod, t: mod.predict_query(t)), nnx.jit(lambda mod, t: mod(t))
        calls[m] = {"query": lambda q=query, mod=model: q(mod, toks),
                    "all_windows": lambda e=every, mod=model: e(mod, toks)}  # fmt: skip
        for call in calls[m].values():
            jax.block_until_ready(call())  # compile
    times = {m: {name: [] for name in calls[m]} for m in minibatches}
    for _ in range(rounds):
        for m in minibatches:
            for name, call in calls[m].items():
                begin = time.perf_counter()
                jax.block_until_ready(call())
                times[m][name].append(time.perf_counter() - begin)
    return {m: {k: float(np.median(v)) for k, v in t.items()} for m, t in times.items()}


def learned_decay(model, config) -> dict[str, float]:
    """Mean and standard deviation of the learned ``Λ_y`` over the entries that reach the output
    (rows below ``d_out``, columns below ``d_in``)."""
    lam = np.asarray(model.yx_recurrence.lam)[: config.d_out, : config.d_in]
    return {"mean": float(lam.mean()), "std": float(lam.std())}


def main(argv=None):
    args, out, base = parse(argv)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, drift = [], []
    for m in args.minibatches:
        s = train.train(dataclasses.replace(base, minibatch=m), None, progress=False).summary
        rows.append({"minibatch": m, "windows": base.n_context // m, **{k: s[k] for k in KEYS}})
        print(f"m={m}: ratio {s['loss_ratio']:.4f}, cos {s['model_cos']:.5f}, match "
              f"{s['param_match_error']:.3f}, {s['train_steps_per_second']:.0f} steps/s", flush=True)  # fmt: skip
    for m in args.minibatches:
        result = train.train(dataclasses.replace(base, minibatch=m, **DRIFT), None, progress=False)
        s = result.summary
        drift.append({
            "minibatch": m, "val_loss": s["val_loss"], "gd_loss": s["gd_loss"],
            "learned_lambda": learned_decay(result.model, base), "wgd_decay": s["wgd_decay"],
            "wgd_lr": s["wgd_lr"], "wgd_loss": s["wgd_loss"], "loss_ratio_wgd": s["loss_ratio_wgd"],
            "model_cos_wgd": s["model_cos_wgd"],
        })  # fmt: skip
        print(f"drift m={m}: learned λ {drift[-1]['learned_lambda']['mean']:.4f}, best per-window "
              f"λ {s['wgd_decay']:.4f}; loss {s['val_loss']:.4f} vs {s['wgd_loss']:.4f}", flush=True)  # fmt: skip
    batch = 256 if args.quick else 2048
    times = forward_times(base, batch, rounds=3 if args.quick else 7, minibatches=args.minibatches)
    for row in rows:
        row["forward_seconds"] = times[row["minibatch"]]
        row["forward_ratio_to_m1"] = {
            k: v / times[1][k] for k, v in times[row["minibatch"]].items()
        }
        row["train_speed_ratio_to_m1"] = (
            row["train_steps_per_second"] / rows[0]["train_steps_per_second"]
        )
    summary = {
        "rows": rows,
        "drift": drift,
        "forward_batch": batch,
        "config": dataclasses.asdict(base),
        "drift_config": DRIFT,
        "devices": [str(d) for d in jax.devices()],
        "wall_seconds": time.perf_counter() - start,
        "figures": ["minibatch.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    figure(rows, drift, out / "minibatch.png")
    print(table(rows, drift))
    print(f"wrote {out}/summary.json and minibatch.png in {summary['wall_seconds']:.0f} s")
    return summary


def table(rows, drift) -> str:
    first = text_table(rows, [
        ("m", "minibatch", ""), ("windows", "windows", ""), ("ratio", "loss_ratio", ".4f"),
        ("cos", "model_cos", ".5f"), ("match", "param_match_error", ".3f"),
        ("train/s", "train_steps_per_second", ".0f"),
        ("query ms", lambda r: 1e3 * r["forward_seconds"]["query"], ".2f"),
        ("all ms", lambda r: 1e3 * r["forward_seconds"]["all_windows"], ".2f"),
    ])  # fmt: skip
    second = text_table(drift, [
        ("m", "minibatch", ""), ("learned λ", lambda d: d["learned_lambda"]["mean"], ".4f"),
        ("best λ", "wgd_decay", ".4f"), ("loss", "val_loss", ".4f"), ("best loss", "wgd_loss", ".4f"),
    ])  # fmt: skip
    return first + "\n" + second


def figure(rows, drift, path):
    ms = [r["minibatch"] for r in rows]
    fig = Figure(figsize=(10, 3.4))
    a, b, c = fig.subplots(1, 3)
    a.plot(ms, [r["loss_ratio"] for r in rows], "o-", label="loss / GD's")
    a.plot(ms, [r["model_cos"] for r in rows], "s-", label="model_cos")
    a.set(xlabel="m (pairs per window)", xticks=ms, title="trained vs one GD step")
    a.legend(fontsize=8)
    for key, style in (("query", "o-"), ("all_windows", "s--")):
        b.plot(ms, [r["forward_ratio_to_m1"][key] for r in rows], style, label=f"forward, {key}")
    b.plot(ms, [1 / r["train_speed_ratio_to_m1"] for r in rows], "^:", label="training step")
    b.set(xlabel="m", xticks=ms, ylabel="time / time at m = 1", title="cost")
    b.legend(fontsize=8)
    c.plot(ms, [d["learned_lambda"]["mean"] for d in drift], "o-", label="learned λ (mean)")
    c.plot(ms, [d["wgd_decay"] for d in drift], "s--", label="best per-window λ")
    c.set(xlabel="m", xticks=ms, title="drifting task: decay")
    c.legend(fontsize=8)
    plots.save(fig, path)


if __name__ == "__main__":
    main()
