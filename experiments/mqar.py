"""Multi-query associative recall (MQAR): a two-layer model around one mixer, or every mixer.

    python -m experiments.mqar [--mixer gril] [--seq-len 64] [--n-kv 4] [--d-model 64]
                               [--vocab 128] [--steps 1000] [--batch-size 32] [--lr 1e-3]
                               [--out results/mqar] [--quick]
                               [--sweep [--mixers M ...] [--lrs LR ...] [--seeds S ...]]

A :class:`ssm_gd.seq.models.Model` (2 layers, 4 heads, next-token head) is trained with AdamW on
fresh :func:`ssm_gd.seq.mqar.mqar` batches (random fillers between the queries, as in Zoology) to
name, at each query position, the value its key was paired with. Accuracy is measured on the
query positions of ``--eval-size`` fixed validation sequences through training, and of as many
fixed test sequences once at the end (:data:`VALIDATION_KEY`, :data:`TEST_KEY`: the same for
every mixer and seed). Writes ``summary.json`` (``accuracy`` (validation), ``test_accuracy``,
``params``, ``steps_per_second``, the settings and the history) and ``accuracy.png``.

``--sweep`` runs every mixer of :data:`ssm_gd.seq.models.MIXERS` (or ``--mixers``) at every point
of a grid under the protocol of :mod:`experiments.protocol` (per mixer and point: a rate sweep
over ``--lrs`` on validation at the full budget (``--sweep-fraction`` 1: a quarter of the steps
ranks the rates by their plateau, not by whether they leave it), ties broken by the validation
loss, then ``--seeds`` runs at the chosen rate, each read once on the test sequences; the first
seed's is the sweep's run at that rate, resumed at its last step to read the test sequences). The CPU grid
:data:`SWEEP`: ``(L, pairs)`` ∈ {(64, 4), (128, 8)} × d_model ∈ {64, 128}, vocabulary 128,
batch 32, 1,000 steps (``--seq-len`` / ``--n-kv`` given: one point; ``--d-model`` given: one
width; the other flags apply to every run). Runs live in ``L<L>-kv<pairs>-d<d>/<mixer>/lr-<lr>``
and ``…/seed-<seed>``, read back when finished. The sweep writes ``table.md`` (test accuracy,
mean ± half the range over the seeds with the chosen lr; parameters and steps/s; the rate
sweep), ``accuracy.png`` (test accuracy against d_model, a panel per (L, pairs)), ``lrs.png``
and ``curves.png``. ``--quick``: L = 32, 2 pairs, d_model 32, vocabulary 32, 100 steps (a
sweep: the 2-pair smoke grid, d_model 16 and 32).

Why these sizes: with a constant filler token the project's attention model stayed at the
plateau of naming one of the values in context for 3,000 steps at (64, 4); with random fillers
it reaches 0.98 (batch 32) to 1.00 (batch 64) held-out accuracy in 1,000 steps at lr 3e-3, d_model
64. Zoology's own sizes (vocabulary 8,192, up to 64 pairs, tens of thousands of steps) run with
``--vocab``, ``--n-kv``, ``--steps`` on an accelerator.
"""

from __future__ import annotations

import dataclasses
import time

import jax
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli, protocol
from ssm_gd import flags, optim, plots, trainer
from ssm_gd.seq import mixers, models
from ssm_gd.seq.mqar import mqar, recall_loss

QUICK = dict(seq_len=32, n_kv=2, d_model=32, vocab=32, train_steps=100, eval_every=50)
#: The CPU grid: (L, pairs) points × d_model, every mixer tuned by the protocol
#: (:mod:`experiments.protocol`). See the module docstring for why these sizes.
SWEEP = dict(points=((64, 4), (128, 8)), d_models=(64, 128))
#: ``--quick --sweep``: the 2-pair smoke grid.
QUICK_SWEEP = dict(points=((32, 2),), d_models=(16, 32))


@dataclasses.dataclass(frozen=True)
class Settings:
    mixer: str = "gril"
    seq_len: int = 64
    n_kv: int = 4
    d_model: int = 64
    vocab: int = 128
    n_layers: int = 2
    n_heads: int = 4
    train_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    eval_every: int = 100
    eval_size: int = 512
    seed: int = 0


def parse(argv=None):
    """``(args, out folder, settings)``; ``args.grid``: a sweep's ``(L, pairs, d_model)`` points,
    ``args.protocol``: its :class:`~experiments.protocol.Protocol`. Every flag checked."""
    parser = cli.experiment_parser(__doc__.splitlines()[0], Settings,
                                   choices={"mixer": mixers.CHOICES})  # fmt: skip
    args = parser.parse_args(argv)
    out = cli.output_folder(parser, args, "mqar")
    given = cli.given_settings(args, Settings)
    grid = (dict(QUICK_SWEEP) if args.quick else dict(SWEEP)) if args.sweep else {}
    base = {k: v for k, v in grid.items() if k not in ("points", "d_models")}
    fields = {**(QUICK if args.quick else {}), **base, **given}
    settings = dataclasses.replace(Settings(), **fields)
    points = grid.get("points", ())
    if "seq_len" in given or "n_kv" in given:  # one point, the flags' (or the defaults')
        points = ((settings.seq_len, settings.n_kv),)
    d_models = (settings.d_model,) if "d_model" in given else grid.get("d_models", ())
    args.grid = [(length, n, d) for length, n in points for d in d_models]
    protocol.check_mode(parser, args, given)
    # MQAR's accuracy leaves a plateau late and suddenly: its rates are judged at the full budget
    # (the chosen rate's run is then the first seed's; a shorter sweep picked the rate that is
    # best *on* the plateau, docs/design.md §17)
    args.protocol = protocol.from_args(parser, args, "accuracy", True, tiebreak="val_loss",
                                       sweep_fraction=1.0)  # fmt: skip
    for s in [settings] + [dataclasses.replace(settings, seq_len=length, n_kv=n, d_model=d)
                           for length, n, d in args.grid]:  # fmt: skip
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


#: The fixed keys of the validation and test sequences: the same for every mixer and seed, apart
#: from the training batches (drawn from ``fold_in(key(seed + 2), step)``).
VALIDATION_KEY, TEST_KEY = 2**20 + 1, 2**20 + 2


def run(settings: Settings, out, progress: bool = True, resume: bool = False,
        test: bool = True) -> dict:  # fmt: skip
    """Train one model (``resume``: continue the run in ``out``); return its summary. The curve
    and ``accuracy`` are on the validation sequences; ``test``: the test sequences once, at the
    end (``test_accuracy``, ``test_loss``)."""
    s = settings
    model = models.Model(s.vocab, s.d_model, s.n_layers, mixer=s.mixer, n_heads=s.n_heads,
                         rngs=nnx.Rngs(s.seed))  # fmt: skip

    def sample(key, batch):
        return mqar(key, batch=batch, seq_len=s.seq_len, n_kv=s.n_kv, vocab=s.vocab)

    validation = sample(jax.random.key(VALIDATION_KEY), s.eval_size)

    @nnx.jit
    def evaluate(model, data):
        return recall_loss(model(data.tokens), data.targets)

    def evaluate_row(model):
        loss, accuracy = evaluate(model, validation)
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
    result = {
        "mixer": s.mixer,
        "accuracy": fitted.history[-1]["accuracy"],
        "val_loss": fitted.history[-1]["val_loss"],
        "params": models.parameter_count(model),
        "steps_per_second": fitted.train_steps_per_second,
        "wall_seconds": fitted.wall_seconds,
        "settings": dataclasses.asdict(s),
        "history": fitted.history,
    }
    if test:
        loss, accuracy = evaluate(fitted.model, sample(jax.random.key(TEST_KEY), s.eval_size))
        result.update(test_accuracy=float(accuracy), test_loss=float(loss))
    return result


def figure(results, path):
    """Validation accuracy against training steps, a line per run, a panel per (L, pairs,
    d_model)."""
    points = sorted({_point(r["settings"]) for r in results})
    fig = Figure(figsize=(4.2 * len(points) + 1.3, 3.4))
    axes = fig.subplots(1, len(points), squeeze=False, sharey=True)[0]
    colours = dict(zip(mixers.CHOICES, [f"C{i}" for i in range(len(mixers.CHOICES))], strict=True))
    labelled = set()
    for r in results:
        point = _point(r["settings"])
        ax = axes[points.index(point)]
        h = r.get("history", [])
        label = None if (point, r["mixer"]) in labelled else f"{r['mixer']} ({r['params']:,})"
        labelled.add((point, r["mixer"]))
        ax.plot([row["step"] for row in h], [row["accuracy"] for row in h], "o-", ms=2,
                color=colours[r["mixer"]], label=label, alpha=0.8)  # fmt: skip
        ax.set_title(f"L {point[0]}, {point[1]} pairs, d_model {point[2]}", fontsize=9)
    for ax, point in zip(axes, points, strict=True):
        ax.axhline(1 / point[1], color="gray", ls=":", lw=1)
        ax.set(ylim=(0, 1.02), xlabel="training step")
        if ax.lines:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("validation accuracy on the queries")
    s = results[0]["settings"]
    fig.suptitle(f"MQAR: vocabulary {s['vocab']}, batch {s['batch_size']}; each mixer at its "
                 "chosen lr, every seed", fontsize=10)  # fmt: skip
    plots.save(fig, path)


def _point(s: dict) -> tuple[int, int, int]:
    return s["seq_len"], s["n_kv"], s["d_model"]


def _mixers(results) -> list[str]:
    """The mixers of ``results``, in the order of their first run."""
    return list(dict.fromkeys(r["mixer"] for r in results))


def _seed_runs(results) -> list[dict]:
    return [run for r in results for run in r["runs"] if "history" in run]


def sweep_figure(results, path):
    """Test accuracy (mean over seeds, bars: their range) against d_model: a line per mixer, a
    panel per (L, pairs)."""
    pairs = sorted({_point(r["settings"])[:2] for r in results})
    fig = Figure(figsize=(4.5 * len(pairs), 3.8))
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    widths = sorted({r["settings"]["d_model"] for r in results})
    for ax, (length, n_kv) in zip(axes, pairs, strict=True):
        for mixer in _mixers(results):
            pts = []
            for r in results:
                if r["mixer"] == mixer and _point(r["settings"])[:2] == (length, n_kv):
                    values = [run.get("test_accuracy") for run in r["runs"]]
                    mean, half = protocol.spread(values)
                    pts.append((r["settings"]["d_model"], mean, half))
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        fmt="o-", capsize=3, label=mixer)  # fmt: skip
        ax.axhline(1 / n_kv, color="gray", ls=":", lw=1, label="one of the values in context")
        ax.set(xlabel="d_model", ylabel="test accuracy on the queries", ylim=(0, 1.02),
               title=f"L = {length}, {n_kv} pairs")  # fmt: skip
        ax.set_xticks(widths)
        ax.set_xticklabels([str(d) for d in widths])
    axes[0].legend(fontsize=7)
    s = results[0]["settings"]
    fig.suptitle(f"MQAR, vocabulary {s['vocab']}, {s['train_steps']} steps: each mixer at the "
                 "lr chosen on validation", fontsize=10)  # fmt: skip
    plots.save(fig, path)


def table(results, proto: protocol.Protocol) -> str:
    """Markdown: test accuracy (mean ± half the range over seeds; the chosen lr) per (L, pairs,
    d_model) and mixer, then the parameters, the rate sweep's validation accuracies and the
    training rates."""
    s = results[0]["settings"]
    names = _mixers(results)
    short = proto.sweep_steps(s["train_steps"], s["eval_every"])[0]
    head = "| L | pairs | d_model | " + " | ".join(names) + " |"
    rule = "| --- | --- | --- |" + " --- |" * len(names)
    lines = [
        f"MQAR, vocabulary {s['vocab']}, {s['n_layers']} layers, {s['n_heads']} heads, batch "
        f"{s['batch_size']}, {s['train_steps']:,} AdamW steps ({s['train_steps'] * s['batch_size']:,} "
        f"sequences); each mixer's peak lr chosen among {', '.join(f'{lr:g}' for lr in proto.lrs)} "
        f"on {s['eval_size']} validation sequences after {short:,} steps (seed "
        f"{proto.seeds[0]}), then {len(proto.seeds)} seeds at that lr"
        + (f" (seed {proto.seeds[0]}'s run is the sweep's)" if short == s["train_steps"] else "")
        + " evaluated once on "
        f"{s['eval_size']} test sequences. Test accuracy on the queries, mean ± half the range "
        f"over the seeds (the chosen lr):",
        "",
        head,
        rule,
    ]
    points = sorted({_point(r["settings"]) for r in results})

    def row(point, text):
        cells = []
        for mixer in names:
            match = [r for r in results if r["mixer"] == mixer and _point(r["settings"]) == point]
            cells.append(text(match[0]) if match else "–")
        return f"| {point[0]} | {point[1]} | {point[2]} | " + " | ".join(cells) + " |"

    def acc(x):
        return f"{x:.3f}"

    lines += [row(p, lambda r: protocol.cell(r, "accuracy", acc)
                  + (f" ({r['lr']:g})" if r["lr"] else "")) for p in points]  # fmt: skip
    lines += [
        "",
        "Parameters, and training steps per second (the seed runs' mean):",
        "",
        head,
        rule,
    ]
    lines += [row(p, lambda r: f"{_params(r)}, {_rate(r)}") for p in points]
    lines += ["", f"The rate sweep: validation accuracy after {short:,} steps at each lr (the "
              "chosen one in bold; div.: diverged):", "", head, rule]  # fmt: skip
    lines += [row(p, lambda r: protocol.sweep_cell(r, "accuracy", acc)) for p in points]
    return "\n".join(lines) + "\n"


def _params(result) -> str:
    found = [r["params"] for r in result["runs"] + result["sweep"] if "params" in r]
    return f"{found[0]:,}" if found else "–"


def _rate(result) -> str:
    rates = [r["steps_per_second"] for r in result["runs"] if "steps_per_second" in r]
    return f"{sum(rates) / len(rates):.1f} steps/s" if rates else "–"


def main(argv=None):
    args, out, settings = parse(argv)
    start = time.perf_counter()
    if args.sweep:
        cli.compile_cache()
    if not args.sweep:
        return cli.one_run(
            args, out, start, lambda: run(settings, out, not args.no_progress, args.resume),
            lambda r: f"{settings.mixer}: validation accuracy {r['accuracy']:.3f}, test "
                      f"{r['test_accuracy']:.3f}, {r['params']:,} params, "
                      f"{r['steps_per_second']:.1f} steps/s",
            "accuracy.png", figure,
        )  # fmt: skip

    def train(one, folder, test, resume):
        return run(one, folder, not args.no_progress, resume, test)

    results = []
    for length, n_kv, d in args.grid:
        point = dataclasses.replace(settings, seq_len=length, n_kv=n_kv, d_model=d)
        print(f"L {length}, {n_kv} pairs, d_model {d}:", flush=True)
        for mixer in args.mixers or mixers.MIXERS:
            one = dataclasses.replace(point, mixer=mixer)
            tuned = protocol.tune(one, out / f"L{length}-kv{n_kv}-d{d}" / mixer, train,
                                  args.protocol, say=lambda line: print(line, flush=True))  # fmt: skip
            results.append(tuned)
    wall = time.perf_counter() - start
    summary = {"runs": results, "wall_seconds": wall, "table": "table.md",
               "figures": ["accuracy.png", "lrs.png", "curves.png"],
               "protocol": dataclasses.asdict(args.protocol)}  # fmt: skip
    (out / "table.md").write_text(table(results, args.protocol))
    sweep_figure(results, out / "accuracy.png")
    panels = {}
    for r in results:
        p = r["settings"]
        panels.setdefault(
            f"L {p['seq_len']}, {p['n_kv']} pairs, d_model {p['d_model']}", []
        ).append(r)
    protocol.lr_figure(panels, "accuracy", out / "lrs.png", ylabel="validation accuracy",
                       title="MQAR: the rate sweep ("
                             + ("full" if args.protocol.sweep_fraction == 1 else "short")
                             + " budget, seed "
                             f"{args.protocol.seeds[0]}; ringed: chosen)")  # fmt: skip
    figure(_seed_runs(results), out / "curves.png")
    cli.write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json, table.md and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
