"""ListOps (Long Range Arena): a classifier around one mixer, or every mixer tuned and repeated.

    python -m experiments.listops [--mixer gril] [--max-length 128] [--max-depth 6] [--steps 1500]
                                  [--params 85000] [--out results/listops] [--quick] [--sweep]
                                  [--lrs 3e-4 1e-3 3e-3 1e-2] [--seeds 0 1] [--sweep-fraction 0.25]

A :class:`ssm_gd.seq.models.Model` of about ``--params`` parameters (``d_model`` from
:func:`ssm_gd.seq.models.match_d_model`, so every mixer has one size) with the classification
head (the mean over each expression's own tokens: right padding is never read, every mixer being
causal) is trained with AdamW to name the value 0–9 of a nested ``MIN``/``MAX``/``MED``/``SM``
expression (:mod:`ssm_gd.seq.listops`); batches are drawn from the training set with replacement.

The data (:func:`draw`) depend on ``--data-seed`` only, never on ``--seed`` (which seeds the
model and the order of the batches), so every mixer and every seed sees the same three splits:
``--n-train`` training and ``--n-test`` test expressions from the two streams of
:func:`ssm_gd.seq.listops.splits`, and ``--n-val`` validation expressions from a third stream
(:func:`validation_seed`). Validation is drawn exactly as the test set is, so it estimates the
same quantity; like the test set it may hold expressions that also occur in training (none
does at the default or ``--quick`` settings with data seed 0; only tiny settings make it
likely). A run's curve and its ``accuracy`` are on validation (with ``train_accuracy`` on the
first 1,000 training expressions); the test set is evaluated once, after the last step
(``test_accuracy``). A single run writes ``summary.json``
(``accuracy``, ``test_accuracy``, ``train_accuracy``, chance and the majority class — the
training set's most frequent class, on the test set — ``mean_length`` of the test expressions,
``params``, ``d_model``, ``steps_per_second``, the settings, the history) and ``accuracy.png``.

The CPU settings (the defaults): LRA's operators, values and ``max_args = 10``, but ``max_depth
6`` and 16–128 tokens (mean about 68) instead of LRA's ``max_depth 10`` and 500–2,000: at
LRA's lengths one training step of a 2-layer model takes seconds on a 2-core CPU (at 32–256
tokens, batch 32, d_model 64: 0.6–0.8 s a step). 2 layers, about 85,000 parameters (d_model 64;
the SSM 72), 4 heads, batch 32, 1,500 steps, 20,000 training, 1,000 validation and 1,000 test
expressions. ``--lra`` gives LRA's data settings (depth 10, 10 arguments, 500–2,000 tokens) for
an accelerator. LRA's published test accuracies, at LRA's settings: Transformer 36.4%, S4 59.6%,
S5 62.2% (:data:`ANCHORS`).

``--sweep`` runs the comparison protocol (:mod:`experiments.protocol`) for every mixer of
:data:`ssm_gd.seq.models.MIXERS` (or ``--mixers``), on the same data: a run per rate of
``--lrs`` at ``--sweep-fraction`` of the steps (the first of ``--seeds``), judged on validation
accuracy, then a full-budget run per seed at the best rate, each evaluated once on the test set
(``--lr`` and ``--seed`` are not used). Every run has its folder, ``<out>/<mixer>/lr-<lr>`` and
``<out>/<mixer>/seed-<seed>``; a finished run with the same settings is read back, not
retrained, and a stopped one continues from its checkpoint. The sweep writes ``table.md`` (test
accuracy, mean ± half the range over the seeds, with the chosen rate; train accuracy, parameters,
d_model, steps/s; the validation accuracy of each swept rate; LRA's published numbers),
``accuracy.png`` (validation accuracy against steps, every seed run, a colour per mixer),
``lrs.png`` (the rate sweep) and ``summary.json`` (``runs``: each mixer's
:func:`~experiments.protocol.tune` result, the protocol, the anchors). ``--quick``: 300
training, 100 validation and 100 test expressions of 8–40 tokens, about 6,000 parameters, 30
steps.
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

from experiments import cli, protocol
from ssm_gd import flags, optim, plots, trainer
from ssm_gd.seq import listops, mixers, models

ANCHORS = (  # LRA test accuracy at LRA's settings (max_depth 10, max_args 10, 500–2,000 tokens)
    ("Transformer (Tay et al. 2021)", 0.364),
    ("S4 (Gu et al. 2022)", 0.596),
    ("S5 (Smith et al. 2023)", 0.622),
)
N_CLASSES = 10
LRA = dict(max_depth=10, max_args=10, min_length=500, max_length=2000)
QUICK = dict(max_depth=3, max_args=4, min_length=8, max_length=40, n_train=300, n_val=100,
             n_test=100, params=6_000, train_steps=30, eval_every=15, batch_size=16)  # fmt: skip
EVAL_BATCH = 250  # expressions per evaluated batch (attention holds B·H·L² scores)
TRAIN_PROBE = 1_000  # the training expressions of ``train_accuracy`` (the first ones)


@dataclasses.dataclass(frozen=True)
class Settings:
    mixer: str = "gril"
    max_depth: int = 6
    max_args: int = 10
    min_length: int = 16
    max_length: int = 128
    n_train: int = 20_000
    n_val: int = 1_000
    n_test: int = 1_000
    params: int = 85_000
    n_layers: int = 2
    n_heads: int = 4
    train_steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    eval_every: int = 250
    seed: int = 0  # the model's initialisation and the order of the batches
    data_seed: int = 0  # the three splits (the same for every seed)


def parse(argv=None):
    """``(args, out folder, settings)``; ``args.protocol``: a sweep's
    :class:`~experiments.protocol.Protocol`. Every flag checked before any work."""
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
    protocol.check_mode(parser, args, given)
    args.protocol = protocol.from_args(parser, args, "accuracy", True, tiebreak="val_loss")
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


def validation_seed(data_seed: int) -> int:
    """The validation set's seed: the third stream spawned from ``data_seed``, beside the train
    and test streams of :func:`ssm_gd.seq.listops.split_seeds` (the first two, spawned the same
    way)."""
    child = np.random.SeedSequence(int(data_seed)).spawn(3)[2]
    seed = int(child.generate_state(1, np.uint64)[0])
    if seed in listops.split_seeds(data_seed):  # three 64-bit hashes; never seen in practice
        raise RuntimeError(f"data_seed={data_seed} derives a validation seed equal to another")
    return seed


def draw(s: Settings) -> tuple[listops.ListOps, listops.ListOps, listops.ListOps]:
    """The ``(train, validation, test)`` sets of these settings, from ``s.data_seed`` alone:
    train and test as :func:`ssm_gd.seq.listops.splits` draws them, validation from
    :func:`validation_seed`."""
    kwargs = _data_kwargs(s)
    train, test = listops.splits(s.n_train, s.n_test, seed=s.data_seed, **kwargs)
    val = listops.dataset(s.n_val, seed=validation_seed(s.data_seed), **kwargs)
    return train, val, test


def classify_loss(logits, labels):
    """``(mean cross-entropy, accuracy)`` of class logits ``(B, C)`` against labels ``(B,)``."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def run(settings: Settings, out, progress: bool = True, data=None, resume: bool = False,
        test: bool = True) -> dict:  # fmt: skip
    """Train one classifier (``resume``: continue the run in ``out``); return its summary. The
    curve and ``accuracy`` are on the validation set; ``test``: the test set once, at the end
    (``test_accuracy``). ``data``: the ``(train, validation, test)`` sets of :func:`draw` for
    these settings, if already drawn."""
    s = settings
    t0 = time.perf_counter()
    train_set, val_set, test_set = data or draw(s)
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
        logits = model(tokens, lengths)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.sum(jnp.argmax(logits, -1) == labels), jnp.sum(losses)

    def scores(model, data) -> tuple[float, float]:
        """``(accuracy, mean cross-entropy)`` on ``data``, in batches of EVAL_BATCH."""
        total, loss = 0, 0.0
        for i in range(0, len(data.labels), EVAL_BATCH):
            rows = slice(i, i + EVAL_BATCH)
            n, l = hits(model, data.tokens[rows], data.lengths[rows], data.labels[rows])
            total, loss = total + int(n), loss + float(l)
        return total / len(data.labels), loss / len(data.labels)

    def accuracy(model, data):
        return scores(model, data)[0]

    train_probe = jax.tree.map(lambda x: x[: min(s.n_train, TRAIN_PROBE)], train_set)

    def evaluate_row(model):
        val_accuracy, val_loss = scores(model, val_set)
        return {"accuracy": val_accuracy, "val_loss": val_loss,
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
    result = {
        "mixer": s.mixer,
        "accuracy": fitted.history[-1]["accuracy"],
        "val_loss": fitted.history[-1]["val_loss"],
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
    if test:
        result["test_accuracy"] = accuracy(fitted.model, test_set)
    return result


def figure(runs, path, *, note: str = ""):
    """Validation accuracy against training steps, a line per run (a colour per mixer); chance
    and the majority class."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    names = list(dict.fromkeys(r["mixer"] for r in runs))
    labelled = set()
    for r in runs:
        h = r["history"]
        label = None if r["mixer"] in labelled else f"{r['mixer']} ({r['params']:,} params)"
        labelled.add(r["mixer"])
        ax.plot([row["step"] for row in h], [row["accuracy"] for row in h], "o-", ms=2,
                color=f"C{names.index(r['mixer'])}", label=label, alpha=0.8)  # fmt: skip
    ax.axhline(1 / N_CLASSES, color="gray", ls=":", lw=1, label="chance")
    if runs:
        ax.axhline(runs[0]["majority"], color="gray", ls="--", lw=1,
                   label="majority class (test set)")  # fmt: skip
        s = runs[0]["settings"]
        ax.set_title(f"ListOps: depth {s['max_depth']}, {s['max_args']} args, "
                     f"{s['min_length']}–{s['max_length']} tokens, {s['n_train']:,} train{note}",
                     fontsize=9)  # fmt: skip
    ax.set(xlabel="training step", ylabel="validation accuracy", ylim=(0, 1))
    ax.legend(fontsize=7)
    plots.save(fig, path)


def _finished(results) -> list[dict]:
    """Every run of the tune ``results`` that trained to the end (sweep and seed runs)."""
    return [x for r in results for x in r["sweep"] + r["runs"] if "history" in x]


def _seed_runs(results) -> list[dict]:
    return [x for r in results for x in r["runs"] if "history" in x]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table(results, proto: protocol.Protocol) -> str:
    """Markdown: a row per mixer (test accuracy, mean ± half the range over the seeds, at the lr
    chosen on validation; train accuracy, parameters, d_model and steps/s, the seed runs' mean;
    the rate sweep's validation accuracies), then LRA's published numbers at LRA's settings."""
    s = results[0]["settings"]
    done = _finished(results)
    first = done[0] if done else {}
    short = proto.sweep_steps(s["train_steps"], s["eval_every"])[0]
    mean_length = f" (mean {first['mean_length']:.0f})" if "mean_length" in first else ""
    majority = f"{first['majority']:.1%}" if "majority" in first else "–"
    lines = [
        f"ListOps at max_depth {s['max_depth']}, max_args {s['max_args']}, {s['min_length']}–"
        f"{s['max_length']} tokens{mean_length}; {s['n_train']:,} training, {s['n_val']:,} "
        f"validation and {s['n_test']:,} test expressions (three streams of data seed "
        f"{s['data_seed']}, the same for every run); {s['n_layers']} layers, about "
        f"{s['params']:,} parameters, {s['n_heads']} heads, batch {s['batch_size']}, "
        f"{s['train_steps']:,} AdamW steps. Each mixer's peak lr chosen among "
        f"{', '.join(f'{lr:g}' for lr in proto.lrs)} on validation accuracy after {short:,} steps "
        f"(seed {proto.seeds[0]}), then seeds {', '.join(map(str, proto.seeds))} at that lr, the "
        f"test set evaluated once per seed run: test accuracy, mean ± half the range over the "
        f"seeds. Chance {1 / N_CLASSES:.1%}, the majority class {majority} (the training set's "
        f"most frequent class, on the test set). Train accuracy: on the first {TRAIN_PROBE:,} "
        "training expressions, the seed runs' mean.",
        "",
        "| model | test accuracy | lr | train accuracy | parameters | d_model | steps/s | "
        f"validation accuracy by lr ({short:,} steps) | settings |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        runs = [x for x in r["runs"] if "history" in x]
        train = _mean([x.get("train_accuracy") for x in runs])
        rate = _mean([x.get("steps_per_second") for x in runs])
        size = runs[0] if runs else next((x for x in r["sweep"] if "params" in x), {})
        cells = [
            r["mixer"],
            protocol.cell(r, "accuracy", lambda x: f"{x:.1%}"),
            "–" if r["lr"] is None else f"{r['lr']:g}",
            "–" if train is None else f"{train:.1%}",
            f"{size['params']:,}" if "params" in size else "–",
            str(size.get("d_model", "–")),
            "–" if rate is None else f"{rate:.1f}",
            protocol.sweep_cell(r, "accuracy", lambda x: f"{x:.1%}"),
            "these (CPU)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, acc in ANCHORS:
        lines.append(f"| {name} | {acc:.1%} | – | – | – | – | – | – | "
                     "LRA: depth 10, 10 args, 500–2,000 tokens |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, out, settings = parse(argv)
    start = time.perf_counter()
    if args.sweep:
        cli.compile_cache()
    if not args.sweep:
        return cli.one_run(
            args, out, start, lambda: run(settings, out, not args.no_progress, resume=args.resume),
            lambda r: f"{settings.mixer}: validation accuracy {r['accuracy']:.3f}, test "
                      f"{r['test_accuracy']:.3f} (train {r['train_accuracy']:.3f}), "
                      f"{r['params']:,} params, {r['steps_per_second']:.1f} steps/s",
            "accuracy.png", figure,
        )  # fmt: skip

    data = []  # drawn once, for the first run that trains: every run sees the same sets

    def train(one, folder, test, resume):
        if not data:
            data.append(draw(one))
        return run(one, folder, not args.no_progress, data[0], resume, test)

    proto = args.protocol
    results = []
    for mixer in args.mixers or mixers.MIXERS:
        print(f"{mixer}:", flush=True)
        one = dataclasses.replace(settings, mixer=mixer)
        results.append(protocol.tune(one, out / mixer, train, proto,
                                     say=lambda line: print(line, flush=True)))  # fmt: skip
    wall = time.perf_counter() - start
    (out / "table.md").write_text(table(results, proto))
    figure(_seed_runs(results), out / "accuracy.png",
           note=": each mixer at its chosen lr, every seed")  # fmt: skip
    short = proto.sweep_steps(settings.train_steps, settings.eval_every)[0]
    protocol.lr_figure({"ListOps": results}, "accuracy", out / "lrs.png",
                       ylabel="validation accuracy",
                       title=f"ListOps: the rate sweep ({short:,} steps, seed {proto.seeds[0]}; "
                             "ringed: chosen)")  # fmt: skip
    summary = {"runs": results, "wall_seconds": wall, "table": "table.md",
               "figures": ["accuracy.png", "lrs.png"], "protocol": dataclasses.asdict(proto),
               "anchors": dict(ANCHORS)}  # fmt: skip
    cli.write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json, table.md and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
