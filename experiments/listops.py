"""ListOps (Long Range Arena): a classifier around one mixer, or every mixer.

    python -m experiments.listops [--mixer gril] [--max-length 128] [--max-depth 6] [--steps 1500]
                                  [--params 85000] [--out results/listops] [--quick] [--sweep]

A :class:`ssm_gd.seq.models.Model` of about ``--params`` parameters (``d_model`` from
:func:`ssm_gd.seq.models.match_d_model`, so every mixer has one size) with the classification head (the mean over each expression's own
tokens: right padding is never read, every mixer being causal) is trained with AdamW to name the
value 0–9 of a nested ``MIN``/``MAX``/``MED``/``SM`` expression (:mod:`ssm_gd.seq.listops`). The
training set is a fixed draw of ``--n-train`` expressions, the test set ``--n-test`` more from a
separate seed (:func:`ssm_gd.seq.listops.splits`); batches are drawn from the training set with
replacement. Writes ``summary.json`` (test ``accuracy``, the accuracy on 1,000 training
expressions, chance and the majority class, ``params``, ``steps_per_second``, the settings, the
history) and ``accuracy.png``.

The CPU settings (the defaults): LRA's operators, values and ``max_args = 10``, but ``max_depth
6`` and 16–128 tokens (mean about 68) instead of LRA's ``max_depth 10`` and 500–2,000: at
LRA's lengths one training step of a 2-layer model takes seconds on a 2-core CPU (at 32–256
tokens, batch 32, d_model 64: 0.6–0.8 s a step, a sweep of five mixers over an hour). 2 layers,
about 85,000 parameters (d_model 64; the SSM 72), 4 heads, batch 32, 1,500 steps, 20,000
training and 1,000 test expressions.
``--lra`` gives LRA's data settings (depth 10, 10 arguments, 500–2,000 tokens) for an
accelerator. LRA's published test accuracies, at LRA's settings: Transformer 36.4%, S4 59.6%,
S5 62.2% (:data:`ANCHORS`).

``--sweep`` trains every mixer of :data:`ssm_gd.seq.models.MIXERS` with the same data, steps, batch
and learning rate, each in ``<out>/<mixer>`` (a finished run with the same settings is read, not
retrained), and writes ``table.md``, ``accuracy.png`` (test accuracy against steps, a line per
mixer) and ``summary.json``. ``--quick``: 300 expressions of 8–40 tokens, about 6,000
parameters, 30 steps.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import flags, optim, plots, trainer
from ssm_gd.seq import listops, mixers, models

ANCHORS = (  # LRA test accuracy at LRA's settings (max_depth 10, max_args 10, 500–2,000 tokens)
    ("Transformer (Tay et al. 2021)", 0.364),
    ("S4 (Gu et al. 2022)", 0.596),
    ("S5 (Smith et al. 2023)", 0.622),
)
N_CLASSES = 10
LRA = dict(max_depth=10, max_args=10, min_length=500, max_length=2000)
QUICK = dict(max_depth=3, max_args=4, min_length=8, max_length=40, n_train=300, n_test=100,
             params=6_000, train_steps=30, eval_every=15, batch_size=16)  # fmt: skip
EVAL_BATCH = 250  # test expressions per evaluated batch (attention holds B·H·L² scores)


@dataclasses.dataclass(frozen=True)
class Settings:
    mixer: str = "gril"
    max_depth: int = 6
    max_args: int = 10
    min_length: int = 16
    max_length: int = 128
    n_train: int = 20_000
    n_test: int = 1_000
    params: int = 85_000
    n_layers: int = 2
    n_heads: int = 4
    train_steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    eval_every: int = 250
    seed: int = 0


def parse(argv=None):
    parser = cli.experiment_parser(__doc__.splitlines()[0], Settings,
                                   choices={"mixer": mixers.CHOICES})  # fmt: skip
    parser.add_argument("--lra", action="store_true",
                        help="LRA's data settings: depth 10, 10 arguments, 500-2000 tokens")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick and args.lra:
        parser.error("--quick and --lra are two sizes; give one")
    out = cli.output_folder(parser, args, "listops")
    given = cli.given_settings(args, Settings)
    size = QUICK if args.quick else LRA if args.lra else {}
    settings = dataclasses.replace(Settings(), **{**size, **given})
    _check(parser, settings)
    return args, out, settings


def _check(parser, s: Settings):
    cli.check_settings(parser, s)
    try:  # the generator's own checks (bounds, depth, arguments), on one expression
        listops.dataset(1, seed=0, **_data_kwargs(s))
    except ValueError as error:
        parser.error(flags.with_flags(str(error), ["max_length", "min_length", "max_depth",
                                                   "max_args"]))  # fmt: skip


def _data_kwargs(s: Settings) -> dict:
    return dict(max_depth=s.max_depth, max_args=s.max_args, min_length=s.min_length,
                max_length=s.max_length)  # fmt: skip


def classify_loss(logits, labels):
    """``(mean cross-entropy, accuracy)`` of class logits ``(B, C)`` against labels ``(B,)``."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def run(settings: Settings, out, progress: bool = True, data=None, resume: bool = False) -> dict:
    """Train one classifier (``resume``: continue the run in ``out``); return its summary.
    ``data``: the ``(train, test)`` sets of :func:`ssm_gd.seq.listops.splits` for these settings,
    if already drawn."""
    s = settings
    t0 = time.perf_counter()
    train_set, test_set = data or listops.splits(s.n_train, s.n_test, seed=s.seed,
                                                 **_data_kwargs(s))  # fmt: skip
    data_seconds = time.perf_counter() - t0
    vocab = len(listops.VOCAB)
    d_model = models.match_d_model(s.mixer, s.params, vocab=vocab, n_layers=s.n_layers,
                                   n_heads=s.n_heads, head="classify", n_classes=N_CLASSES)  # fmt: skip
    model = models.Model(vocab, d_model, s.n_layers, mixer=s.mixer,
                         n_heads=s.n_heads, head="classify", n_classes=N_CLASSES,
                         rngs=nnx.Rngs(s.seed))  # fmt: skip
    train_arrays = jax.tree.map(jnp.asarray, train_set)

    def sample(key, batch):
        rows = jax.random.randint(key, (batch,), 0, s.n_train)
        return jax.tree.map(lambda x: x[rows], train_arrays)

    def loss(model, batch):
        return classify_loss(model(batch.tokens, batch.lengths), batch.labels)[0]

    @nnx.jit
    def hits(model, tokens, lengths, labels):
        return jnp.sum(jnp.argmax(model(tokens, lengths), -1) == labels)

    def accuracy(model, data):
        total = 0
        for i in range(0, len(data.labels), EVAL_BATCH):
            rows = slice(i, i + EVAL_BATCH)
            total += int(hits(model, data.tokens[rows], data.lengths[rows], data.labels[rows]))
        return total / len(data.labels)

    train_probe = jax.tree.map(lambda x: x[: min(s.n_train, 1000)], train_set)

    def evaluate_row(model):
        return {"accuracy": accuracy(model, test_set),
                "train_accuracy": accuracy(model, train_probe)}  # fmt: skip

    task = trainer.Task(sample=sample, loss=loss, evaluate=evaluate_row,
                        postfix=lambda row: {"acc": f"{row['accuracy']:.3f}"})  # fmt: skip
    optimizer = optim.adamw(s.lr, s.train_steps, warmup=min(100, s.train_steps // 10),
                            weight_decay=0.1)  # fmt: skip
    fitted = trainer.fit(
        model, optimizer, task, train_steps=s.train_steps, batch_size=s.batch_size,
        eval_every=min(s.eval_every, s.train_steps), key=jax.random.key(s.seed + 2), out=out,
        config=dataclasses.asdict(s), progress=progress, resume=resume,
    )  # fmt: skip
    counts = np.bincount(test_set.labels, minlength=N_CLASSES)
    train_majority = int(np.argmax(np.bincount(train_set.labels, minlength=N_CLASSES)))
    return {
        "mixer": s.mixer,
        "accuracy": fitted.history[-1]["accuracy"],
        "train_accuracy": fitted.history[-1]["train_accuracy"],
        "chance": 1 / N_CLASSES,
        # the training set's most frequent class, always answered, on the test set
        "majority": float(counts[train_majority] / counts.sum()),
        "mean_length": float(np.mean(test_set.lengths)),
        "params": models.parameter_count(model),
        "d_model": d_model,
        "steps_per_second": fitted.train_steps_per_second,
        "data_seconds": data_seconds,
        "wall_seconds": fitted.wall_seconds,
        "settings": dataclasses.asdict(s),
        "history": fitted.history,
    }


def figure(results, path):
    """Test accuracy against training steps, a line per mixer; chance and the majority class."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for i, r in enumerate(results):
        h = r["history"]
        ax.plot([row["step"] for row in h], [row["accuracy"] for row in h], "o-", ms=2,
                color=f"C{i}", label=f"{r['mixer']} ({r['params']:,} params)")  # fmt: skip
    r = results[0]
    ax.axhline(r["chance"], color="gray", ls=":", lw=1, label="chance")
    ax.axhline(r["majority"], color="gray", ls="--", lw=1, label="majority class")
    s = r["settings"]
    ax.set(xlabel="training step", ylabel="test accuracy", ylim=(0, 1),
           title=f"ListOps: depth {s['max_depth']}, {s['max_args']} args, "
                 f"{s['min_length']}–{s['max_length']} tokens, {s['n_train']:,} train")  # fmt: skip
    ax.legend(fontsize=7)
    plots.save(fig, path)


def table(results) -> str:
    """A markdown table: a row per mixer, then LRA's published numbers at LRA's settings."""
    s, r0 = results[0]["settings"], results[0]
    lines = [
        f"ListOps at max_depth {s['max_depth']}, max_args {s['max_args']}, {s['min_length']}–"
        f"{s['max_length']} tokens (mean {r0['mean_length']:.0f}); {s['n_train']:,} training and "
        f"{s['n_test']:,} test expressions (separate seeds); {s['n_layers']} layers, about "
        f"{s['params']:,} parameters, {s['n_heads']} heads, batch {s['batch_size']}, {s['train_steps']:,} AdamW "
        f"steps at peak lr {s['lr']:g} for every mixer. Chance {r0['chance']:.1%}, the majority "
        f"class {r0['majority']:.1%}. Train accuracy: on the first 1,000 training expressions.",
        "",
        "| model | test accuracy | train accuracy | parameters | d_model | steps/s | settings |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| {r['mixer']} | {r['accuracy']:.1%} | {r['train_accuracy']:.1%} | "
                     f"{r['params']:,} | {r['d_model']} | {r['steps_per_second']:.1f} | "
                     "these (CPU) |")  # fmt: skip
    for name, acc in ANCHORS:
        lines.append(
            f"| {name} | {acc:.1%} | – | – | – | – | LRA: depth 10, 10 args, 500–2,000 tokens |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, out, settings = parse(argv)
    start = time.perf_counter()
    runs = (cli.sweep_runs(settings, out, args.mixers or mixers.MIXERS) if args.sweep
            else [(settings, out)])  # fmt: skip
    data = []  # drawn once, for the first run that trains: every mixer sees the same sets

    def train_one(one, folder):
        if not data:
            data.append(listops.splits(one.n_train, one.n_test, seed=one.seed,
                                       **_data_kwargs(one)))  # fmt: skip
        return run(one, folder, progress=not args.no_progress, data=data[0], resume=args.resume)

    def say(one, r):
        print(f"{one.mixer}: test accuracy {r['accuracy']:.3f} (train {r['train_accuracy']:.3f}), "
              f"{r['params']:,} params, {r['steps_per_second']:.1f} steps/s", flush=True)  # fmt: skip

    results = cli.run_all(runs, train_one, sweep=args.sweep, say=say)
    wall = time.perf_counter() - start
    figure(results, out / "accuracy.png")
    if args.sweep:
        (out / "table.md").write_text(table(results))
        summary = {"runs": results, "wall_seconds": wall, "figures": ["accuracy.png"],
                   "table": "table.md", "anchors": dict(ANCHORS)}  # fmt: skip
    else:
        summary = {**results[0], "wall_seconds": wall, "figures": ["accuracy.png"]}
    cli.write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
