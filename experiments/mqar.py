"""Multi-query associative recall (MQAR): a two-layer model around one mixer, or every mixer.

    python -m experiments.mqar [--mixer gril] [--seq-len 64] [--n-kv 4] [--d-model 64]
                               [--vocab 128] [--train-steps 1500] [--out results/mqar]
                               [--quick] [--sweep]

A :class:`ssm_gd.models.Model` (2 layers, 4 heads, next-token head) is trained with AdamW on fresh
:func:`ssm_gd.tasks.mqar` batches to name, at each query position, the value its key was paired
with; accuracy is measured on the query positions of 512 fixed sequences. ``--sweep`` trains
every mixer of :data:`ssm_gd.models.MIXERS` at the same settings, data and budget (the
parameter count of each is reported beside its accuracy). Writes ``summary.json`` (``accuracy``,
``params``, ``steps_per_second``, the settings and the history) and ``accuracy.png``.
``--quick``: L = 32, 2 pairs, d_model 32, vocabulary 32, 100 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import models, plots, tasks, trainer

QUICK = dict(seq_len=32, n_kv=2, d_model=32, vocab=32, train_steps=100, eval_every=50)


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
    lr: float = 3e-3
    eval_every: int = 250
    eval_size: int = 512
    seed: int = 0


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        names = (flag, "--steps") if field.name == "train_steps" else (flag,)
        kind = type(getattr(defaults, field.name))
        choices = models.MIXERS if field.name == "mixer" else None
        parser.add_argument(*names, type=kind, default=None, choices=choices,
                            help=f"default {getattr(defaults, field.name)}")  # fmt: skip
    parser.add_argument("--out", default="results/mqar", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    parser.add_argument("--sweep", action="store_true", help="every mixer at these settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = cli.writable_folder(parser, args.out)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    fields = {**(QUICK if args.quick else {}), **{k: v for k, v in given.items() if v is not None}}
    settings = dataclasses.replace(defaults, **fields)
    for name, value in dataclasses.asdict(settings).items():
        if isinstance(value, int) and name != "seed" and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    if not settings.lr > 0:
        parser.error(f"--lr must be positive; got {settings.lr}")
    if settings.d_model % settings.n_heads:
        parser.error(f"--d-model must be a multiple of --n-heads; got {settings.d_model}")
    try:  # the sampler's own checks (vocabulary, room for the queries), before any work
        tasks.mqar(jax.random.key(0), batch=1, seq_len=settings.seq_len, n_kv=settings.n_kv,
                   vocab=settings.vocab)  # fmt: skip
    except ValueError as error:
        parser.error(str(error).replace("seq_len", "--seq-len").replace("n_kv", "--n-kv"))
    return args, out, settings


def recall_loss(logits, targets):
    """``(cross-entropy, accuracy)`` over the positions with a target (``targets ≥ 0``)."""
    mask = targets >= 0
    safe = jnp.where(mask, targets, 0)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), safe[..., None], axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(mask), 1)
    hits = (jnp.argmax(logits, -1) == targets) & mask
    return -jnp.sum(jnp.where(mask, logp, 0.0)) / count, jnp.sum(hits) / count


def run(settings: Settings, out, progress: bool = True) -> dict:
    """Train one model; return (and write under ``out``) its summary."""
    s = settings
    model = models.Model(s.vocab, s.d_model, s.n_layers, mixer=s.mixer, n_heads=s.n_heads,
                         rngs=nnx.Rngs(s.seed))  # fmt: skip

    def sample(key, batch):
        return tasks.mqar(key, batch=batch, seq_len=s.seq_len, n_kv=s.n_kv, vocab=s.vocab)

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
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for r in results:
        h = r["history"]
        ax.plot([row["step"] for row in h], [row["accuracy"] for row in h], "o-", ms=3,
                label=f"{r['mixer']} ({r['params']:,} params)")  # fmt: skip
    s = results[0]["settings"]
    ax.set(xlabel="training step", ylabel="accuracy on the queries", ylim=(0, 1.02),
           title=f"MQAR: L = {s['seq_len']}, {s['n_kv']} pairs, d_model {s['d_model']}, "
                 f"vocabulary {s['vocab']}")  # fmt: skip
    ax.legend(fontsize=8)
    plots.save(fig, path)


def main(argv=None):
    args, out, settings = parse(argv)
    start = time.perf_counter()
    mixers = models.MIXERS if args.sweep else (settings.mixer,)
    results = []
    for mixer in mixers:
        folder = out / mixer if args.sweep else out
        one = dataclasses.replace(settings, mixer=mixer)
        results.append(run(one, folder, progress=not args.no_progress))
        r = results[-1]
        print(f"{mixer}: accuracy {r['accuracy']:.3f}, {r['params']:,} params, "
              f"{r['steps_per_second']:.1f} steps/s", flush=True)  # fmt: skip
    summary = results[0] if not args.sweep else {"runs": results}
    summary = {**summary, "wall_seconds": time.perf_counter() - start, "figures": ["accuracy.png"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    figure(results, out / "accuracy.png")
    print(f"wrote {out}/summary.json and accuracy.png in {summary['wall_seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
