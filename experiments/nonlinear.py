"""Non-linear regression: a learned feature map, then a GD-SSM, on sine tasks.

    python -m experiments.nonlinear [--out results/nonlinear] [--quick] [--train-steps 3000]

Tasks: ``y = A sin(x + φ)``, ``A ~ U(0.1, 0.5)``, ``φ ~ U(0, π)``, ``x ~ U(−5, 5)``, N context
points. Model: an MLP feature map ``f: R → R^p`` applied to every input and to the query, then a
one-step GD-SSM on the tokens ``[f(x_1), y_1, …, f(x_N), y_N, f(x_q)]``; its scalar output is the
prediction. Baselines on the same evaluation tasks: GD on the raw input (best η), kernel ridge
regression with an RBF kernel (bandwidth and ridge tuned on separate tasks), and one GD step in
the model's own learned feature space (best η) — the construction applied to the trained features.
Writes ``summary.json``, ``history.jsonl``, ``curves.png`` and ``loss_vs_context.png``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import gd, optim, plots, tasks, trainer
from ssm_gd.initializers import identity_init
from ssm_gd.layers import GDSSM, GDSSMInit


class FeatureGDSSM(nnx.Module):
    """``x ↦ f(x)`` (MLP, ``1 → hidden → features``), then a one-step :class:`GDSSM` on features."""

    def __init__(self, features: int = 16, hidden: int = 64, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(1, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, features, rngs=rngs)
        init = GDSSMInit(q_y=nnx.initializers.normal(0.01), c_y=identity_init)
        self.ssm = GDSSM(features, 1, init=init, rngs=rngs)

    def features(self, x):
        return self.out(jax.nn.gelu(self.hidden(x)))

    def featurise(self, task):
        return task._replace(x=self.features(task.x), x_query=self.features(task.x_query))

    def __call__(self, task):
        """Predictions at every window ``(B, N, 1)``; the last is the query's."""
        return self.ssm(tasks.tokens(self.featurise(task), "interleaved"))


@jax.jit
def kernel_ridge(x, y, x_query, *, bandwidth, reg, mask=None):
    """RBF kernel ridge regression per task: ``k_qᵀ (K + reg·I)⁻¹ y`` ``(B, 1)``.

    ``mask`` ``(B, N)`` (optional, 0 or 1) leaves context points out: their kernel rows and columns
    become those of the identity and their labels 0, so they get no weight and change nothing else.
    """

    def kernel(a, b):
        return jnp.exp(-((a[..., :, None, 0] - b[..., None, :, 0]) ** 2) / (2 * bandwidth**2))

    m = jnp.ones(x.shape[:2], x.dtype) if mask is None else mask.astype(x.dtype)
    k = kernel(x, x) * m[:, :, None] * m[:, None, :] + jnp.eye(x.shape[1]) * (reg + 1 - m)[:, None]
    alpha = jnp.linalg.solve(k, y * m[..., None])
    return jnp.einsum("bn,bno->bo", kernel(x_query[:, None], x)[:, 0] * m, alpha)


def tune_kernel_ridge(task):
    """The (bandwidth, reg, loss) with the lowest loss on ``task`` over a log grid."""
    best = None
    for bandwidth in np.geomspace(0.1, 10, 21):
        for reg in np.geomspace(1e-6, 1, 13):
            pred = kernel_ridge(task.x, task.y, task.x_query, bandwidth=bandwidth, reg=reg)
            value = float(gd.loss(pred, task.y_query))
            if best is None or value < best[2]:
                best = (float(bandwidth), float(reg), value)
    return best


def loss_vs_context(model, e, feat, feat_lr, *, bandwidth, reg):
    """The loss after t context points, t = 1…N, of the trained model (one forward pass: window t
    predicts y_{t+1}), kernel ridge on the first t points, and GD in the learned features."""
    n_context = e.x.shape[1]
    target = np.concatenate([np.asarray(e.y[:, 1:]), np.asarray(e.y_query)[:, None]], 1)
    nxt = jnp.concatenate([e.x[:, 1:], e.x_query[:, None]], 1)
    per_t = {"trained": 0.5 * np.mean((np.asarray(jax.jit(model)(e)) - target) ** 2, axis=(0, 2))}
    prefix = jnp.arange(n_context)[None, :] <= jnp.arange(n_context)[:, None]
    krr = jax.lax.map(
        lambda a: kernel_ridge(e.x, e.y, a[1], bandwidth=bandwidth, reg=reg,
                               mask=jnp.broadcast_to(a[0], e.x.shape[:2])),
        (prefix, jnp.moveaxis(nxt, 1, 0)),
    )  # fmt: skip
    per_t["kernel ridge (RBF)"] = 0.5 * np.mean(
        (np.asarray(krr).swapaxes(0, 1) - target) ** 2, (0, 2)
    )
    per_t["GD, learned features (η t/N)"] = 0.5 * np.mean(
        (np.asarray(gd.predict_prefixes(feat.x, feat.y, feat.x_query, lr=feat_lr)) - target) ** 2,
        axis=(0, 2),
    )

    return per_t


def figures(model, e, per_t, out):
    """``curves.png``: predicted curves on four tasks (the context fixed, the query swept over
    the range); ``loss_vs_context.png``: :func:`loss_vs_context`."""
    grid = jnp.linspace(-5, 5, 200)[:, None]
    fig = Figure(figsize=(14, 3.2))
    axes = fig.subplots(1, 4)
    for i, ax in enumerate(axes):
        one = jax.tree.map(lambda v, i=i: jnp.repeat(v[i : i + 1], grid.shape[0], 0), e)
        one = one._replace(x_query=grid)
        pred = np.asarray(jax.jit(model)(one))[:, -1, 0]
        truth = np.asarray(e.amplitude[i] * jnp.sin(grid[:, 0] + e.phase[i]))
        ax.plot(grid[:, 0], truth, "k-", lw=1, label="true")
        ax.plot(grid[:, 0], pred, "C0-", label="GD-SSM")
        ax.plot(e.x[i, :, 0], e.y[i, :, 0], "C3o", ms=4, label="context")
        ax.set_title(f"task {i}", fontsize=9)
    axes[0].legend(fontsize=7)
    plots.save(fig, out / "curves.png")
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for name, values in per_t.items():
        ax.semilogy(np.arange(1, len(values) + 1), values, "o-", ms=3, label=name)
    ax.set(xlabel="context points", ylabel="loss of the next prediction")
    ax.legend(fontsize=8)
    plots.save(fig, out / "loss_vs_context.png")


def parse(argv=None):
    """``(args, out, steps, eval_every)`` from the command line, every value checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/nonlinear")
    parser.add_argument("--n-context", type=int, default=20)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument(
        "--train-steps", "--steps", type=int, default=None,
        help="training steps (default 3000, 300 with --quick; --steps: an alias kept for one "
        "release)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 steps (flags win)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = cli.run_folder(parser, args)  # before any work
    if args.train_steps is None:
        args.train_steps = 300 if args.quick else 3000
    for name in ("n_context", "features", "train_steps", "batch_size", "eval_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not args.lr > 0:
        parser.error(f"--lr must be positive; got {args.lr}")
    steps = args.train_steps
    every = min(args.eval_every, steps)
    return args, out, steps, every


def main(argv=None):
    args, out, steps, every = parse(argv)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def sample(key, batch):
        return tasks.sine_regression(key, batch=batch, n_context=args.n_context)

    model = FeatureGDSSM(args.features, rngs=nnx.Rngs(args.seed))
    optimizer = optim.adamw(args.lr, steps, warmup=min(100, steps // 5))  # no weight decay: Adam
    key_train, key_eval, key_tune = jax.random.split(jax.random.key(args.seed + 1), 3)
    eval_task = sample(key_eval, 4096)

    def loss(model, task):
        return gd.loss(model(task)[:, -1], task.y_query)

    evaluate = nnx.jit(loss)
    task = trainer.Task(
        sample=sample,
        loss=loss,
        evaluate=lambda model: {"val_loss": float(evaluate(model, eval_task))},
        postfix=lambda row: {"val": f"{row['val_loss']:.5f}"},
    )
    fitted = trainer.fit(
        model,
        optimizer,
        task,
        train_steps=steps,
        batch_size=args.batch_size,
        eval_every=every,
        key=key_train,
        out=out,
        config=vars(args) | {"train_steps": steps},
        progress=not args.no_progress,
    )
    history, model = fitted.history, fitted.model
    e = eval_task
    raw_lr, raw_loss = gd.best_lr(e.x, e.y, e.x_query, e.y_query)
    feat = jax.jit(model.featurise)(e)
    feat_lr, feat_loss = gd.best_lr(feat.x, feat.y, feat.x_query, feat.y_query)
    bandwidth, reg, _ = tune_kernel_ridge(sample(key_tune, 1024))
    krr_loss = float(gd.loss(kernel_ridge(e.x, e.y, e.x_query, bandwidth=bandwidth, reg=reg),
                             e.y_query))  # fmt: skip
    losses = {
        "trained": history[-1]["val_loss"],
        "gd_raw_input": float(raw_loss),
        "kernel_ridge_rbf": krr_loss,
        "gd_learned_features": float(feat_loss),
        "zero_predictor": float(gd.loss(jnp.zeros_like(e.y_query), e.y_query)),
    }

    per_t = loss_vs_context(model, e, feat, feat_lr, bandwidth=bandwidth, reg=reg)

    summary = {
        "losses": losses,
        "gd_raw_lr": float(raw_lr),
        "gd_features_lr": float(feat_lr),
        "kernel_ridge": {"bandwidth": bandwidth, "reg": reg},
        "beats": {k: losses["trained"] < v for k, v in losses.items() if k != "trained"},
        "loss_vs_context": {k: [float(x) for x in v] for k, v in per_t.items()},
        "config": vars(args) | {"train_steps": steps},
        "wall_seconds": time.perf_counter() - start,
        "figures": ["curves.png", "loss_vs_context.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    figures(model, e, per_t, out)
    for name, value in losses.items():
        print(f"{name:<22} {value:.5f}")
    print(f"wrote {out}/summary.json and figures ({summary['wall_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
