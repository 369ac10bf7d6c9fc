"""Character-level language modelling: a model around one mixer, or every mixer, on one corpus.

    python -m experiments.lm [--mixer gril] [--text PATH] [--steps S | --budget SECONDS]
                             [--params 250000] [--context 128] [--batch-size 16] [--lr 3e-3]
                             [--temperature 0.8] [--out results/lm] [--quick] [--sweep]

The corpus (:mod:`ssm_gd.seq.text`): by default the Python standard library's own ``.py`` sources
(:func:`ssm_gd.seq.text.stdlib_corpus`, no download), split by file into a training and a held-out
part (no held-out file is seen in training); ``--text PATH``: any UTF-8 file, its last 5 % held
out. A missing, empty or non-UTF-8 file, a folder, or a part shorter than ``--context`` + 1
characters ends the program with an ``error:`` line naming ``--text`` or ``--context`` before
any model is built.

A :class:`ssm_gd.seq.models.Model` (``--n-layers`` blocks, ``--n-heads`` heads, next-token head, the
corpus's vocabulary) of about ``--params`` parameters (``d_model`` from
:func:`ssm_gd.seq.models.match_d_model`; the exact count and ``d_model`` are recorded) is trained with
AdamW (warmup, then a cosine decay to 0 at the last step) on random crops of ``--context`` + 1
characters of the training part (:func:`ssm_gd.seq.text.windows`), to minimise the bits per character
of the next character. Every ``--eval-every`` steps it is evaluated on ``--eval-windows`` fixed
windows of the held-out part (:func:`ssm_gd.seq.text.eval_windows`, the held-out text's start).

``--steps S`` trains S steps. ``--budget SECONDS`` trains for a wall-clock budget: the mixer's
training step is compiled and timed first (:func:`calibrate`), then it is trained for ``budget ×
steps per second`` steps (rounded down to a multiple of ``--eval-every``), so the learning-rate
schedule ends when the budget does. The budget counts training only, not compilation, evaluation
or the checkpoints. ``steps_per_second`` is the rate of the run's own training segments (the
median, the first left out: it compiles; a budget run of one segment: the calibration's rate) and
``train_seconds`` (each history row, the summary) is steps ÷ that rate.

After training, ``--sample-chars`` characters are sampled (``--temperature``) with
:func:`ssm_gd.seq.models.generate` (every mixer in its step form) after the held-out
text's first ``p = min(64, context // 2)`` characters. They are drawn in pieces of ``context − p``
characters, each after the last ``p`` ones, so that no model reads more than ``--context``
characters at a time, as in training (rotary attention does not extrapolate past its training
length).

A run writes ``summary.json`` (``mixer``, ``bpc``, ``params``, ``d_model``, ``train_steps``,
``steps_per_second``, ``wall_seconds``, the settings, the history, ``prompt`` and ``sample``),
``curve.png`` (held-out bits per character against the step and against the training seconds),
``samples.txt`` and, from :func:`ssm_gd.trainer.fit`, ``config.json``, ``history.jsonl`` and
the checkpoints.

``--sweep`` trains every mixer of :data:`ssm_gd.seq.models.MIXERS` on the same corpus at the same
parameter target, by default for the same training budget, :data:`SWEEP_BUDGET` seconds each
(``--steps`` or ``--budget`` replace it), each in ``<out>/<mixer>/``; a run whose
``summary.json`` holds the same settings is read, not retrained, so a stopped sweep continues.
It writes ``table.md`` (held-out bits per character, parameters, d_model, steps and steps/s per
mixer), ``curves.png`` (a line per mixer), ``samples.md`` and ``summary.json``.

CPU defaults (2 cores): about 250,000 parameters (``--params 1000000`` for a million), 4 layers,
4 heads, context 128, batch 16, lr 3e-3, an evaluation every 50 steps on 64 windows (8,192
held-out characters); a sweep trains each mixer for :data:`SWEEP_BUDGET` = 240 s. Measured here
(2-core x86-64, shared with another job; the rate of the calibration), training steps per second
at 1M parameters: gril 0.63, linear_attention 1.42, attention 1.80, ssm 5.16, griffin 1.54 —
five minutes would give GRIL under 200 steps; at 250k: gril 1.72, linear_attention 4.79,
attention 4.54, ssm 6.43, griffin 3.56, so 240 s is about 400 (gril) to 1,500 (ssm) steps. Each
model compiles twice (the calibration, then :func:`ssm_gd.trainer.fit`): 10-25 s a time, about
100 s for Griffin (recurrentgemma unrolls its RG-LRU scan 128 steps), so a sweep takes about
half an hour. ``--quick``: about 20,000 parameters, 2 layers, context 32, batch 8, 40 steps,
50,000 characters of each part of the standard library corpus (a sweep: a 3-second budget per
mixer, an evaluation every 100 steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib.figure import Figure

from experiments import cli
from ssm_gd import checkpoints, optim, plots, trainer
from ssm_gd.seq import mixers, models, text
from ssm_gd.seq.generate import generate

#: The training budget of each mixer in a sweep, seconds (compilation and evaluation not counted).
SWEEP_BUDGET = 240.0
QUICK = dict(params=20_000, n_layers=2, context=32, batch_size=8, train_steps=40, eval_every=20,
             eval_windows=16, max_chars=50_000)  # fmt: skip
QUICK_SWEEP = dict(budget=3.0, eval_every=100)
#: The sample's prompt: the held-out text's first characters (at most half the context).
PROMPT_CHARS = 64
#: The training steps of one timed call of :func:`calibrate` (the first call compiles).
CALIBRATION_STEPS = 4
#: :func:`calibrate` repeats the timed call until it has timed at least this many seconds.
CALIBRATION_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Settings:
    mixer: str = "gril"
    text: str | None = None  # None: the standard library's sources
    max_chars: int | None = None  # the standard library corpus: each part capped
    params: int = 250_000  # 1M: too slow to train on 2 CPU cores (the docstring)
    context: int = 128
    n_layers: int = 4
    n_heads: int = 4
    batch_size: int = 16
    train_steps: int | None = 1000  # None: a --budget run
    budget: float | None = None
    lr: float = 3e-3
    eval_every: int = 50
    eval_windows: int = 64
    sample_chars: int = 300
    temperature: float = 0.8
    seed: int = 0


_HELP = dict(
    text="a UTF-8 text file (default: the Python standard library's sources, split by file)",
    max_chars="cap each part of the standard library corpus at this many characters",
    params="the parameter count each model is sized to (d_model from match_d_model)",
    train_steps="training steps (not with --budget)",
    budget="seconds of training (not with --steps): steps = budget × the measured steps/s",
    eval_windows="held-out windows of --context characters evaluated",
    sample_chars="characters sampled after training",
)


def parse(argv=None):
    """``(args, out folder, settings, corpus)``; every flag and the corpus checked, nothing built."""
    parser = cli.experiment_parser(__doc__.splitlines()[0], Settings, helps=_HELP,
                                   choices={"mixer": mixers.CHOICES})  # fmt: skip
    args = parser.parse_args(argv)
    out = cli.output_folder(parser, args, "lm")
    given = cli.given_settings(args, Settings)
    if "train_steps" in given and "budget" in given:
        parser.error("--steps and --budget: give one of them, not both")
    if "text" in given and "max_chars" in given:
        parser.error("--max-chars caps the standard library corpus; it does not apply to --text")
    sweep = {}
    if args.sweep:
        sweep = dict(QUICK_SWEEP) if args.quick else {"budget": SWEEP_BUDGET}
        if "train_steps" in given or "budget" in given:
            del sweep["budget"]
    fields = {**(QUICK if args.quick else {}), **sweep, **given}
    if fields.get("budget") is not None:
        fields["train_steps"] = None
    if "text" in given:
        fields["max_chars"] = None
    settings = dataclasses.replace(Settings(), **fields)
    cli.check_settings(parser, settings, spellings={"train_steps": "--steps"})
    try:
        trainer.check_divisible(batch_size=settings.batch_size)
    except ValueError as error:
        parser.error(str(error).replace("batch_size", "--batch-size"))
    return args, out, settings, load_corpus(parser, settings)


def load_corpus(parser, s: Settings) -> text.Corpus:
    """The corpus of ``s``, checked against the context; a data error is a ``parser.error``."""
    try:
        if s.text is None:
            corpus = text.stdlib_corpus(max_chars=s.max_chars)
        else:
            corpus = text.text_corpus(s.text)
    except (OSError, ValueError) as error:
        parser.error(f"--text: {error}" if s.text is not None else str(error))
    try:
        text.check_context(corpus, s.context)
    except ValueError as error:
        where = f"--text {s.text!r}" if s.text is not None else "the standard library corpus"
        if s.max_chars is not None:
            where += f" capped by --max-chars {s.max_chars}"
        message = str(error).replace("--seq-len", "--context")
        parser.error(f"--context {s.context} does not fit {where}: {message}")
    return corpus


def optimizer(s: Settings, train_steps: int) -> optax.GradientTransformation:
    """AdamW (weight decay 0.1, gradients clipped at norm 1), warmup then cosine to 0."""
    return optim.adamw(s.lr, train_steps, warmup=min(100, train_steps // 10), weight_decay=0.1)


def _stored_steps(out) -> int:
    """The step count an interrupted budget run in ``out`` was given (its ``config.json``)."""
    try:
        return int(
            json.loads((pathlib.Path(out) / "config.json").read_text())["resolved_train_steps"]
        )
    except (OSError, KeyError, ValueError) as error:
        raise checkpoints.ResumeError(
            f"{out} holds no budget run to resume (config.json without its step count: {error})"
        ) from error


def calibrate(model, task: trainer.Task, s: Settings, key) -> dict:
    """The training rate of ``model``: the program :func:`ssm_gd.trainer.fit` runs
    (:func:`ssm_gd.trainer.training_program`), called once on :data:`CALIBRATION_STEPS` steps to
    compile, then timed on calls of as many steps until :data:`CALIBRATION_SECONDS` have passed.
    ``{"steps_per_second", "seconds"}`` (``seconds``: the whole calibration, compiling included).
    The model is left as it was."""
    start = time.perf_counter()
    segment, params, opt_state = trainer.training_program(
        model, optimizer(s, 1000), task, batch_size=s.batch_size, key=key
    )
    steps = jnp.arange(CALIBRATION_STEPS)
    jax.block_until_ready(segment(params, opt_state, steps))  # compiles
    timed, calls = 0.0, 0
    while timed < CALIBRATION_SECONDS and calls < 100:
        t0 = time.perf_counter()
        jax.block_until_ready(segment(params, opt_state, steps + CALIBRATION_STEPS * (calls + 1)))
        timed += time.perf_counter() - t0
        calls += 1
    return {
        "steps_per_second": calls * CALIBRATION_STEPS / timed,
        "seconds": time.perf_counter() - start,
    }


def budget_steps(budget: float, steps_per_second: float, eval_every: int) -> int:
    """``floor(budget × rate)``, at least 1, rounded down to a multiple of ``eval_every`` when it
    is larger (every training segment then has one length: one compiled program)."""
    steps = max(1, math.floor(budget * steps_per_second))
    return steps - steps % eval_every if steps > eval_every else steps


def sample_text(model, corpus: text.Corpus, s: Settings) -> tuple[str, str]:
    """``(prompt, sample)``: ``s.sample_chars`` characters sampled after the held-out part's first
    ``p = min(64, context // 2)`` characters, ``context − p`` at a time, each piece after the last
    ``p`` characters (one compiled :func:`ssm_gd.seq.models.generate`)."""
    p = max(1, min(PROMPT_CHARS, s.context // 2))
    n = max(1, s.context - p)
    prompt = np.asarray(corpus.held_out[:p], np.int64)  # jnp: JAX's default int, every call
    window, pieces, drawn = prompt, [], 0
    key = jax.random.key(s.seed + 3)
    while drawn < s.sample_chars:
        tokens, _ = generate(model, jnp.asarray(window)[None], n,
                                    jax.random.fold_in(key, len(pieces)), s.temperature)  # fmt: skip
        new = np.asarray(tokens[0, p:], np.int64)
        pieces.append(new)
        drawn += len(new)
        window = np.concatenate([window, new])[-p:]
    sample = np.concatenate(pieces)[: s.sample_chars]
    return text.decode(prompt, corpus.chars), text.decode(sample, corpus.chars)


def run(settings: Settings, corpus: text.Corpus, out, progress: bool = True,
        resume: bool = False) -> dict:  # fmt: skip
    """Train one model (under ``out``: fit's files, ``curve.png``, ``samples.txt``); return its
    summary. ``resume``: continue the run in ``out``; a budget run keeps the step count its first
    calibration set (``config.json``), so the resumed run is the interrupted one."""
    start = time.perf_counter()
    s = settings
    d_model = models.match_d_model(s.mixer, s.params, vocab=corpus.vocab, n_layers=s.n_layers,
                                   n_heads=s.n_heads)  # fmt: skip
    model = models.Model(corpus.vocab, d_model, s.n_layers, mixer=s.mixer, n_heads=s.n_heads,
                         rngs=nnx.Rngs(s.seed))  # fmt: skip
    train_ids = jnp.asarray(corpus.train)
    held = jnp.asarray(text.eval_windows(corpus.held_out, length=s.context,
                                         max_windows=s.eval_windows))  # fmt: skip

    def bits(model, windows):
        return text.bits_per_character(model(windows[:, :-1]), windows[:, 1:])

    @nnx.jit
    def evaluate(model):
        return bits(model, held)

    task = trainer.Task(
        sample=lambda key, batch: text.windows(key, train_ids, batch=batch, length=s.context),
        loss=bits,
        evaluate=lambda model: {"val_bpc": float(evaluate(model))},
        postfix=lambda row: {"bpc": f"{row['val_bpc']:.3f}"},
    )
    key = jax.random.key(s.seed + 2)
    calibration = {"steps_per_second": None, "seconds": None}
    train_steps = s.train_steps
    if s.budget is not None and resume:
        train_steps = _stored_steps(out)
    elif s.budget is not None:
        trainer.say(progress, f"{s.mixer}: compiling and timing the training step")
        calibration = calibrate(model, task, s, key)
        train_steps = budget_steps(s.budget, calibration["steps_per_second"], s.eval_every)
        trainer.say(progress, f"{s.mixer}: {calibration['steps_per_second']:.2f} steps/s: "
                              f"{train_steps} steps in {s.budget:g} s")  # fmt: skip
    fitted = trainer.fit(
        model, optimizer(s, train_steps), task, train_steps=train_steps, batch_size=s.batch_size,
        eval_every=min(s.eval_every, train_steps), key=key, out=out,
        config={**dataclasses.asdict(s), "resolved_train_steps": train_steps}, progress=progress,
        resume=resume,
    )  # fmt: skip
    rate = fitted.train_steps_per_second
    if calibration["steps_per_second"] is not None and train_steps <= s.eval_every:
        rate = calibration["steps_per_second"]  # fit's one segment: its rate includes compiling
    history = [{**row, "train_seconds": row["step"] / rate} for row in fitted.history]
    prompt, sample = sample_text(fitted.model, corpus, s)
    result = {
        "mixer": s.mixer,
        "bpc": history[-1]["val_bpc"],
        "params": models.parameter_count(model),
        "d_model": d_model,
        "vocab": corpus.vocab,
        "train_steps": train_steps,
        "steps_per_second": rate,
        "train_seconds": train_steps / rate,
        "calibrated_steps_per_second": calibration["steps_per_second"],
        "calibration_seconds": calibration["seconds"],
        "wall_seconds": time.perf_counter() - start,
        "corpus": {
            "source": corpus.source,
            "train_chars": len(corpus.train),
            "held_out_chars": len(corpus.held_out),
            "eval_chars": int(held.shape[0] * s.context),
        },
        "settings": dataclasses.asdict(s),
        "history": history,
        "prompt": prompt,
        "sample": sample,
    }
    (out / "samples.txt").write_text(
        f"{s.mixer}, held-out {result['bpc']:.3f} bits per character, {result['params']:,} "
        f"parameters, {train_steps} steps; temperature {s.temperature:g}.\n\n"
        f"--- prompt (the held-out text's first {len(prompt)} characters) ---\n{prompt}\n"
        f"--- sample ({len(sample)} characters) ---\n{sample}\n"
    )
    figure([result], out / "curve.png")
    return result


def figure(results, path):
    """Held-out bits per character against the training step and against the training seconds,
    a line per run (one run: its training batches' bits per character too, dashed)."""
    fig = Figure(figsize=(10, 3.8))
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    colours = dict(zip(mixers.CHOICES, [f"C{i}" for i in range(len(mixers.CHOICES))], strict=True))
    for r in results:
        h, colour = r["history"], colours[r["mixer"]]
        label = f"{r['mixer']} ({r['params']:,} params, {r['bpc']:.3f})"
        for ax, x in ((by_step, "step"), (by_time, "train_seconds")):
            ax.plot([row[x] for row in h], [row["val_bpc"] for row in h], "o-", ms=2.5,
                    color=colour, label=label)  # fmt: skip
            if len(results) == 1:
                train = [(row[x], row["train_loss"]) for row in h if row["train_loss"] is not None]
                ax.plot(*zip(*train, strict=True), "s--", ms=2.5, color=colour, alpha=0.6,
                        label="training batches")  # fmt: skip
    # The initial model (about log2 of the vocabulary) above the axis, once there is a curve.
    if all(len(r["history"]) > 2 for r in results):
        keys = ("val_bpc", "train_loss") if len(results) == 1 else ("val_bpc",)
        shown = [row[k] for r in results for row in r["history"][1:] for k in keys]
        by_step.set_ylim(min(shown) * 0.95, max(shown) * 1.05)
    by_step.set(xlabel="training step", ylabel="held-out bits per character")
    by_time.set(xlabel="training seconds (steps ÷ measured steps/s)")
    by_step.legend(fontsize=7)
    s = results[0]["settings"]
    fig.suptitle(f"character LM: {s['n_layers']} layers, context {s['context']}, batch "
                 f"{s['batch_size']}, lr {s['lr']:g}", fontsize=10)  # fmt: skip
    plots.save(fig, path)


def _budget_words(s: dict) -> str:
    if s["budget"] is not None:
        return (f"a budget of {s['budget']:g} seconds of training for every mixer, turned into "
                f"steps by the rate timed before training (compilation and evaluation not "
                f"counted); the seconds each mixer then trained differ from the budget as its "
                f"rate in training differs from the timed one")  # fmt: skip
    return f"{s['train_steps']} steps for every mixer"


def table(results) -> str:
    """A markdown table, a row per mixer, the common settings above it."""
    s, first = results[0]["settings"], results[0]
    corpus = f"--text {s['text']}" if s["text"] is not None else "the Python standard library"
    lines = [
        f"Character-level language modelling on {corpus} ({first['corpus']['train_chars']:,} "
        f"training characters, vocabulary {first['vocab']}): {s['n_layers']} layers, "
        f"{s['n_heads']} heads, about {s['params']:,} parameters, context {s['context']}, batch "
        f"{s['batch_size']}, AdamW at peak lr {s['lr']:g} (warmup, cosine to 0), "
        f"{_budget_words(s)}; bits per character on {first['corpus']['eval_chars']:,} held-out "
        f"characters:",
        "",
        "| mixer | held-out bpc | parameters | d_model | steps | seconds of training | "
        "steps/s in training | steps/s timed before (set the steps) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        timed = r.get("calibrated_steps_per_second")
        lines.append(f"| {r['mixer']} | {r['bpc']:.3f} | {r['params']:,} | {r['d_model']} | "
                     f"{r['train_steps']:,} | {r['train_seconds']:.1f} | "
                     f"{r['steps_per_second']:.2f} | {'–' if timed is None else f'{timed:.2f}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _fenced(body: str) -> str:
    """``body`` in a code fence longer than any run of backticks in it."""
    longest = max((len(run) for run in re.findall("`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{body}\n{fence}"


def samples_markdown(results) -> str:
    s = results[0]["settings"]
    parts = [
        f"Each mixer's continuation ({s['sample_chars']} characters, temperature "
        f"{s['temperature']:g}) of the held-out text's first {len(results[0]['prompt'])} "
        f"characters:",
        "",
        _fenced(results[0]["prompt"]),
    ]
    for r in results:
        parts += ["", f"## {r['mixer']} (held-out {r['bpc']:.3f} bits per character)", "",
                  _fenced(r["sample"])]  # fmt: skip
    return "\n".join(parts) + "\n"


def main(argv=None):
    args, out, settings, corpus = parse(argv)
    start = time.perf_counter()
    runs = (cli.sweep_runs(settings, out, args.mixers or mixers.MIXERS) if args.sweep
            else [(settings, out)])  # fmt: skip

    def say(one, r):
        print(f"{one.mixer}: held-out {r['bpc']:.3f} bits per character, {r['params']:,} params "
              f"(d_model {r['d_model']}), {r['train_steps']} steps in {r['train_seconds']:.1f} s "
              f"of training", flush=True)  # fmt: skip

    results = cli.run_all(
        runs, lambda one, folder: run(one, corpus, folder, not args.no_progress, args.resume),
        sweep=args.sweep, say=say,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if args.sweep:
        summary = {"runs": results, "wall_seconds": wall, "figures": ["curves.png"],
                   "table": "table.md", "samples": "samples.md"}  # fmt: skip
        (out / "table.md").write_text(table(results))
        (out / "samples.md").write_text(samples_markdown(results))
        figure(results, out / "curves.png")
    else:
        summary = {**results[0], "wall_seconds": wall, "figures": ["curve.png"]}
    cli.write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
