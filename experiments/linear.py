"""From random initialisation to gradient descent: the one-layer GD-SSM on linear regression.

    python -m experiments.linear [--out results/linear] [--quick] [--train-steps 1000] [--d-out 1] ...

Trains a randomly initialised GD-SSM on freshly sampled tasks (the paper's setting by default:
N = d = 10, vector labels, interleaved tokens) and compares it with GD at its best step size and with
the constructed model. Writes under ``--out``: ``summary.json``, ``history.jsonl``, checkpoints and
figures (``loss.png``, ``alignment.png``, ``parameters.png``, ``icl_curve.png``). Every
:class:`ssm_gd.config.Config` field is a flag (``--batch-size``, ``--layout``, ``--init``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np

from experiments import cli
from ssm_gd import distributed, gd, metrics, plots, tasks, train

# A smoke run: the same pipeline at a size that finishes in well under a minute on 2 CPU cores.
QUICK = dict(train_steps=300, eval_every=100, eval_size=4096, sens_size=1024, batch_size=256)


def parse(argv=None, *, out="results/linear", description=None):
    """``(config, args)`` from the command line; ``--quick`` changes the defaults, flags win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    quick = pre.parse_known_args(argv)[0].quick
    defaults = dataclasses.replace(train.Config(), **QUICK) if quick else train.Config()
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    cli.out_flag(parser, out)
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    parser.add_argument("--resume", action="store_true", help="resume from --out's checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    config, args = train.config_from_args(argv, defaults=defaults, parser=parser)
    if config.task == "classification":  # its figures and references are another experiment's
        parser.error("--task classification is run by python -m experiments.classification")
    cli.run_folder(parser, args)
    return config, args


def icl_curves(result: train.Result, config: train.Config, batch: int = 4096):
    """Loss of the next prediction after t = 1…N examples: trained model, GD, least squares.

    One forward pass gives the model's whole curve (window t predicts ``y_{t+1}``). GD uses the
    construction's convention (normaliser N on every prefix: step ``η t / N`` on ``t`` examples).
    """
    task = train.sample(config, jax.random.key(config.seed + 7), batch)
    target = np.concatenate([np.asarray(task.y[:, 1:]), np.asarray(task.y_query)[:, None]], 1)
    model_pred = np.asarray(result.model(tasks.tokens(task, config.layout)))
    gd_pred = np.asarray(
        gd.predict_prefixes(
            task.x, task.y, task.x_query, lr=result.summary["gd_lr"], steps=config.n_steps
        )
    )
    lsq_pred = np.asarray(gd.least_squares_prefixes(task.x, task.y, task.x_query))

    def per_position(pred):
        return 0.5 * np.mean((pred - target) ** 2, axis=(0, 2))

    return {
        "GD-SSM (trained)": per_position(model_pred),
        f"GD, {config.n_steps} step(s), η t/N": per_position(gd_pred),
        "least squares": per_position(lsq_pred),
    }


def _display_blocks(model, constructed):
    """Parameter blocks as 2-D arrays, each scaled to unit norm with its sign aligned (display)."""
    t, c = metrics.parameter_blocks(model), metrics.parameter_blocks(constructed)
    shown_t, shown_c = {}, {}
    for name in t:
        a, b = np.atleast_2d(t[name]), np.atleast_2d(c[name])
        if not name.startswith("lambda"):
            a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
            a = a * (np.sign(np.sum(a * b)) or 1.0)
        shown_t[name], shown_c[name] = a, b
    return shown_t, shown_c


def run(config: train.Config, out, *, resume=False, progress=True) -> dict:
    """Train, write the figures, return the summary (also in ``out/summary.json``)."""
    out = pathlib.Path(out)
    result = train.train(config, out, resume=resume, progress=progress)
    summary = result.summary
    curves = icl_curves(result, config)
    summary["icl_curve"] = {k: [float(v) for v in vals] for k, vals in curves.items()}
    summary["figures"] = ["loss.png", "alignment.png", "parameters.png", "icl_curve.png"]
    if not distributed.is_writer():  # one of several processes: process 0 writes
        return summary
    if progress:
        print("drawing the figures", file=sys.stderr, flush=True)
    what = f"N={config.n_context}, d_in={config.d_in}, d_out={config.d_out}, {config.layout}"
    plots.loss_curve(
        result.history,
        out / "loss.png",
        gd_loss=summary["gd_loss"],
        lsq_loss=summary["lsq_loss"],
        title=what,
    )
    plots.alignment_curves(result.history, out / "alignment.png", title=what)
    shown_t, shown_c = _display_blocks(result.model, result.constructed)
    plots.parameters(
        shown_t,
        shown_c,
        out / "parameters.png",
        title="unit-norm blocks, sign aligned (the output sees (αQ, βC, γD) with αβγ = 1)",
    )
    plots.icl_curve(curves, out / "icl_curve.png", title=what)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict) -> str:
    """A short plain-text table of the headline numbers."""
    rows = [
        ("val_loss", summary["val_loss"]),
        ("gd_loss (best η)", summary["gd_loss"]),
        ("gd_lr", summary["gd_lr"]),
        ("loss ratio", summary["loss_ratio"]),
        ("model_cos", summary["model_cos"]),
        ("model_diff", summary["model_diff"]),
        ("preds_diff", summary["preds_diff"]),
        ("param_match_error", summary["param_match_error"]),
        ("steps × batch", f"{summary['train_steps']} × {summary['batch_size']}"),
        ("train steps/s", summary["train_steps_per_second"]),  # no evaluation, no compilation
        ("wall seconds", summary["wall_seconds"]),
    ]
    return "\n".join(
        f"{name:<20} {value:.6g}" if isinstance(value, float) else f"{name:<20} {value}"
        for name, value in rows
    )


def main(argv=None):
    # One of several processes (python -m experiments.launch): join the others before anything
    # touches a device (the flags' checks count the devices). Process 0 speaks and writes.
    distributed.initialize()
    config, args = parse(argv)
    writer = distributed.is_writer()
    try:
        summary = run(config, args.out, resume=args.resume,
                      progress=not args.no_progress and writer)  # fmt: skip
    except train.ResumeError as error:  # one line, exit status 1: not a traceback
        sys.exit(f"error: {error}")
    if not writer:
        return summary
    print(table(summary))
    print(f"wrote {args.out}/summary.json, history.jsonl and figures")
    return summary


if __name__ == "__main__":
    main()
