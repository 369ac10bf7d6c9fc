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

import dataclasses
import time

import jax
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import flags, optim, plots, trainer
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
    parser = cli.experiment_parser(__doc__.splitlines()[0], Settings,
                                   choices={"mixer": mixers.CHOICES})  # fmt: skip
    args = parser.parse_args(argv)
    out = cli.output_folder(parser, args, "mqar")
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
    cli.check_settings(parser, settings)
    if settings.d_model % (2 * settings.n_heads):
        parser.error(
            f"--d-model must be a multiple of 2 × --n-heads (attention's rotary pairs); got "
            f"{settings.d_model}"
        )
    try:  # the sampler's own checks (vocabulary, room for the queries), before any work
        mqar(jax.random.key(0), batch=1, seq_len=settings.seq_len, n_kv=settings.n_kv,
             vocab=settings.vocab)  # fmt: skip
    except ValueError as error:
        parser.error(flags.with_flags(str(error), ["seq_len", "n_kv", "vocab"]))


def run(settings: Settings, out, progress: bool = True, resume: bool = False) -> dict:
    """Train one model (``resume``: continue the run in ``out``); return its summary."""
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
    optimizer = optim.adamw(s.lr, s.train_steps, warmup=min(100, s.train_steps // 10),
                            weight_decay=0.1)  # fmt: skip
    fitted = trainer.fit(
        model, optimizer, task, train_steps=s.train_steps, batch_size=s.batch_size,
        eval_every=min(s.eval_every, s.train_steps), key=jax.random.key(s.seed + 2), out=out,
        config=dataclasses.asdict(s), progress=progress, resume=resume,
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


def _mixers(results) -> list[str]:
    """The mixers of ``results``, in the order of their first run."""
    return list(dict.fromkeys(r["mixer"] for r in results))


def sweep_figure(results, path):
    """Final accuracy against d_model: a line per mixer, a panel per L."""
    lengths = sorted({r["settings"]["seq_len"] for r in results})
    fig = Figure(figsize=(4.5 * len(lengths), 3.8))
    axes = fig.subplots(1, len(lengths), squeeze=False)[0]
    s = results[0]["settings"]
    for ax, length in zip(axes, lengths, strict=True):
        for mixer in _mixers(results):
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
        "| L | d_model | " + " | ".join(_mixers(results)) + " |",
        "| --- | --- |" + " --- |" * len(_mixers(results)),
    ]
    points = sorted({(r["settings"]["seq_len"], r["settings"]["d_model"]) for r in results})
    for length, d in points:
        cells = []
        for mixer in _mixers(results):
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
        runs = [pair for length, d in args.grid for pair in cli.sweep_runs(
            dataclasses.replace(settings, seq_len=length, d_model=d), out,
            args.mixers or mixers.MIXERS, folder=lambda s: f"L{s.seq_len}-d{s.d_model}/{s.mixer}",
        )]  # fmt: skip

    def say(one, r):
        print(f"{one.mixer} (L {one.seq_len}, d_model {one.d_model}): accuracy {r['accuracy']:.3f}, "
              f"{r['params']:,} params, {r['steps_per_second']:.1f} steps/s", flush=True)  # fmt: skip

    results = cli.run_all(
        runs, lambda one, folder: run(one, folder, not args.no_progress, args.resume),
        sweep=args.sweep, say=say,
    )  # fmt: skip
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
    cli.write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
