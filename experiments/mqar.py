"""Multi-query associative recall (MQAR): a two-layer model around one mixer, or every mixer.

    python -m experiments.mqar [--mixer gril] [--seq-len 64] [--n-kv 4] [--d-model 64]
                               [--vocab 128] [--train-steps 1500] [--lr 1e-3] [--out results/mqar]
                               [--quick] [--sweep]

A :class:`ssm_gd.seq.models.Model` (2 layers, 4 heads, next-token head) is trained with AdamW on fresh
:func:`ssm_gd.seq.mqar.mqar` batches to name, at each query position, the value its key was paired
with; accuracy is measured on the query positions of 512 fixed sequences. Writes
``summary.json`` (``accuracy``, ``params``, ``steps_per_second``, the settings and the history)
and ``accuracy.png``.

``--sweep`` trains every mixer of :data:`ssm_gd.seq.models.MIXERS` at every point of a grid, with the
same data, budget and learning rate: by default the CPU grid :data:`SWEEP` (L ∈ {32, 64}, d_model
∈ {32, 64}, 2 pairs, vocabulary 32, 1500 steps; the flags ``--seq-len`` / ``--d-model`` given
replace a grid axis by one value, the other flags apply to every run). Each run writes its own
folder ``L<L>-d<d>/<mixer>``; a run whose ``summary.json`` already holds the same settings is
read, not retrained, so a stopped sweep continues. The sweep writes ``table.md`` and
``accuracy.png`` (accuracy against d_model, a line per mixer, a panel per L) and ``curves.png``.
``--quick``: L = 32, 2 pairs, d_model 32, vocabulary 32, 100 steps (a sweep: d_model 16 and 32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import optax
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import plots, trainer
from ssm_gd.seq import mixers, models
from ssm_gd.seq.mqar import mqar, recall_loss

QUICK = dict(seq_len=32, n_kv=2, d_model=32, vocab=32, train_steps=100, eval_every=50)
# The CPU grid: softmax attention leaves the plateau at "one of the values in context" (accuracy
# 1/n_kv) after about 500 steps at L = 32, 2 pairs, vocabulary 32, d_model 64, and not within
# 2,000 steps at L = 64, 4 pairs, vocabulary 64 (lr 1e-3 or 3e-3): 2 pairs, and 1500 steps a run.
SWEEP = dict(seq_lens=(32, 64), d_models=(32, 64), n_kv=2, vocab=32, train_steps=1500)
QUICK_SWEEP = dict(seq_lens=(32,), d_models=(16, 32))


@dataclasses.dataclass(frozen=True)
class Settings:
    mixer: str = "gril"
    seq_len: int = 64
    n_kv: int = 4
    d_model: int = 64
    vocab: int = 128
    n_layers: int = 2
    n_heads: int = 4
    train_steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 250
    eval_size: int = 512
    seed: int = 0


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.settings_flags(parser, Settings, choices={"mixer": mixers.CHOICES})
    parser.add_argument("--out", default="results/mqar", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smoke size (a run: under a minute)")
    parser.add_argument("--sweep", action="store_true",
                        help="every mixer over the grid of L and d_model (--mixer is not used)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = cli.writable_folder(parser, args.out)
    given = cli.given_settings(args, Settings)
    grid = {}
    if args.sweep:
        grid = dict(QUICK_SWEEP) if args.quick else dict(SWEEP)
        grid["seq_lens"] = (
            (given["seq_len"],) if "seq_len" in given else grid.get("seq_lens", (32,))
        )
        grid["d_models"] = (given["d_model"],) if "d_model" in given else grid["d_models"]
    base = {k: v for k, v in grid.items() if k not in ("seq_lens", "d_models")}
    fields = {**(QUICK if args.quick else {}), **base, **given}
    settings = dataclasses.replace(Settings(), **fields)
    args.grid = [
        (length, d) for length in grid.get("seq_lens", ()) for d in grid.get("d_models", ())
    ]
    checks = [settings] + [
        dataclasses.replace(settings, seq_len=L, d_model=d) for L, d in args.grid
    ]
    for s in checks:
        _check(parser, s)
    return args, out, settings


def _check(parser, settings):
    for name, value in dataclasses.asdict(settings).items():
        if isinstance(value, int) and name != "seed" and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    if not settings.lr > 0:
        parser.error(f"--lr must be positive; got {settings.lr}")
    if settings.d_model % (2 * settings.n_heads):
        parser.error(
            f"--d-model must be a multiple of 2 × --n-heads (attention's rotary pairs); got "
            f"{settings.d_model}"
        )
    try:  # the sampler's own checks (vocabulary, room for the queries), before any work
        mqar(jax.random.key(0), batch=1, seq_len=settings.seq_len, n_kv=settings.n_kv,
                   vocab=settings.vocab)  # fmt: skip
    except ValueError as error:
        parser.error(str(error).replace("seq_len", "--seq-len").replace("n_kv", "--n-kv"))


def run(settings: Settings, out, progress: bool = True) -> dict:
    """Train one model; return (and write under ``out``) its summary."""
    s = settings
    model = models.Model(s.vocab, s.d_model, s.n_layers, mixer=s.mixer, n_heads=s.n_heads,
                         rngs=nnx.Rngs(s.seed))  # fmt: skip

    def sample(key, batch):
        return mqar(key, batch=batch, seq_len=s.seq_len, n_kv=s.n_kv, vocab=s.vocab)

    eval_set = sample(jax.random.key(s.seed + 1), s.eval_size)

    @nnx.jit
    def evaluate(model):
        return recall_loss(model(eval_set.tokens), eval_set.targets)

    def evaluate_row(model):
        loss, accuracy = evaluate(model)
        return {"val_loss": float(loss), "accuracy": float(accuracy)}

    task = trainer.Task(
        sample=sample,
        loss=lambda model, batch: recall_loss(model(batch.tokens), batch.targets)[0],
        evaluate=evaluate_row,
        postfix=lambda row: {"acc": f"{row['accuracy']:.3f}"},
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, s.lr, min(100, s.train_steps // 10),
                                                  s.train_steps)  # fmt: skip
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
    fitted = trainer.fit(
        model, optimizer, task, train_steps=s.train_steps, batch_size=s.batch_size,
        eval_every=min(s.eval_every, s.train_steps), key=jax.random.key(s.seed + 2), out=out,
        config=dataclasses.asdict(s), progress=progress,
    )  # fmt: skip
    return {
        "mixer": s.mixer,
        "accuracy": fitted.history[-1]["accuracy"],
        "val_loss": fitted.history[-1]["val_loss"],
        "params": models.parameter_count(model),
        "steps_per_second": fitted.train_steps_per_second,
        "wall_seconds": fitted.wall_seconds,
        "settings": dataclasses.asdict(s),
        "history": fitted.history,
    }


def figure(results, path):
    """Accuracy against training steps, a line per mixer; a sweep: a panel per (L, d_model)."""
    points = sorted({(r["settings"]["seq_len"], r["settings"]["d_model"]) for r in results})
    lengths = sorted({p[0] for p in points})
    widths = sorted({p[1] for p in points})
    fig = Figure(figsize=(4.2 * len(widths) + 1.3, 3.3 * len(lengths)))
    axes = fig.subplots(len(lengths), len(widths), squeeze=False, sharex=True, sharey=True)
    colours = dict(zip(mixers.CHOICES, [f"C{i}" for i in range(len(mixers.CHOICES))], strict=True))
    s = results[0]["settings"]
    for r in results:
        length, d = r["settings"]["seq_len"], r["settings"]["d_model"]
        ax = axes[lengths.index(length), widths.index(d)]
        h = r["history"]
        ax.plot([row["step"] for row in h], [row["accuracy"] for row in h], "o-", ms=2,
                color=colours[r["mixer"]], label=f"{r['mixer']} ({r['params']:,} params)")  # fmt: skip
        ax.set_title(f"L = {length}, d_model {d}", fontsize=9)
    for ax in axes.flat:
        ax.axhline(1 / s["n_kv"], color="gray", ls=":", lw=1)
        ax.set(ylim=(0, 1.02))
        if ax.lines:
            ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy on the queries")
    fig.suptitle(f"MQAR: {s['n_kv']} pairs, vocabulary {s['vocab']}, batch {s['batch_size']}, "
                 f"lr {s['lr']:g}", fontsize=10)  # fmt: skip
    plots.save(fig, path)


def sweep_figure(results, path):
    """Final accuracy against d_model: a line per mixer, a panel per L."""
    lengths = sorted({r["settings"]["seq_len"] for r in results})
    fig = Figure(figsize=(4.5 * len(lengths), 3.8))
    axes = fig.subplots(1, len(lengths), squeeze=False)[0]
    s = results[0]["settings"]
    for ax, length in zip(axes, lengths, strict=True):
        for mixer in mixers.MIXERS:
            pts = sorted((r["settings"]["d_model"], r["accuracy"]) for r in results
                         if r["mixer"] == mixer and r["settings"]["seq_len"] == length)  # fmt: skip
            ax.plot(*zip(*pts, strict=True), "o-", label=mixer)
        ax.axhline(1 / s["n_kv"], color="gray", ls=":", lw=1, label="one of the values in context")
        ax.set(xlabel="d_model", ylabel="accuracy on the queries", ylim=(0, 1.02),
               title=f"L = {length}, {s['n_kv']} pairs, vocab {s['vocab']}, {s['train_steps']} steps")  # fmt: skip
        ax.set_xticks(sorted({r["settings"]["d_model"] for r in results}))
        ax.set_xticklabels([str(d) for d in sorted({r["settings"]["d_model"] for r in results})])
    axes[0].legend(fontsize=7)
    plots.save(fig, path)


def table(results) -> str:
    """A markdown table: a row per (L, d_model), accuracy (parameters) per mixer."""
    s = results[0]["settings"]
    lines = [
        f"MQAR, {s['n_kv']} key-value pairs, vocabulary {s['vocab']}, {s['n_layers']} layers, "
        f"{s['n_heads']} heads, batch {s['batch_size']}, {s['train_steps']} AdamW steps at peak lr "
        f"{s['lr']:g} for every mixer; accuracy on the queries of {s['eval_size']} held-out "
        f"sequences (parameters):",
        "",
        "| L | d_model | " + " | ".join(mixers.MIXERS) + " |",
        "| --- | --- |" + " --- |" * len(mixers.MIXERS),
    ]
    points = sorted({(r["settings"]["seq_len"], r["settings"]["d_model"]) for r in results})
    for length, d in points:
        cells = []
        for mixer in mixers.MIXERS:
            match = [r for r in results if r["mixer"] == mixer
                     and (r["settings"]["seq_len"], r["settings"]["d_model"]) == (length, d)]  # fmt: skip
            cells.append(f"{match[0]['accuracy']:.3f} ({match[0]['params']:,})" if match else "–")
        lines.append(f"| {length} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, out, settings = parse(argv)
    start = time.perf_counter()
    if not args.sweep:
        runs = [(settings, out)]
    else:
        runs = [(dataclasses.replace(settings, seq_len=length, d_model=d, mixer=mixer),
                 out / f"L{length}-d{d}" / mixer)
                for length, d in args.grid for mixer in mixers.MIXERS]  # fmt: skip
    results = []
    for one, folder in runs:
        r = cli.finished_run(folder, one) if args.sweep else None
        if r is None:
            r = run(one, folder, progress=not args.no_progress)
            if args.sweep:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "summary.json").write_text(json.dumps(r, indent=2))
        results.append(r)
        print(f"{one.mixer} (L {one.seq_len}, d_model {one.d_model}): accuracy {r['accuracy']:.3f}, "
              f"{r['params']:,} params, {r['steps_per_second']:.1f} steps/s", flush=True)  # fmt: skip
    wall = time.perf_counter() - start
    if args.sweep:
        summary = {"runs": results, "wall_seconds": wall,
                   "figures": ["accuracy.png", "curves.png"], "table": "table.md"}  # fmt: skip
        (out / "table.md").write_text(table(results))
        sweep_figure(results, out / "accuracy.png")
        figure(results, out / "curves.png")
    else:
        summary = {**results[0], "wall_seconds": wall, "figures": ["accuracy.png"]}
        figure(results, out / "accuracy.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
