"""Character-level language modelling: a model around one mixer, or every mixer, on one corpus.

    python -m experiments.lm [--mixer gril] [--text PATH] [--steps S | --budget SECONDS]
                             [--params 250000] [--context 256] [--batch-size 16] [--lr 3e-3]
                             [--temperature 0.8] [--out results/lm] [--quick]
                             [--sweep [--mixers M ...] [--lrs LR ...] [--seeds S ...]]

The corpus (:mod:`ssm_gd.seq.text`): by default the Python standard library's own ``.py`` sources
(:func:`ssm_gd.seq.text.stdlib_corpus`, no download), split by file into a training and a held-out
part (no held-out file is seen in training); ``--text PATH``: any UTF-8 file, its last 5 % held
out. The held-out part is halved (:func:`held_out_parts`): the first half is the validation text
(the curves, the rate sweep), the second the test text (read once, after a run's last step). A
missing, empty or non-UTF-8 file, a folder, or a part too short for ``--context`` ends the
program with an ``error:`` line naming ``--text`` or ``--context`` before any model is built.

A :class:`ssm_gd.seq.models.Model` (``--n-layers`` blocks, ``--n-heads`` heads, next-token head, the
corpus's vocabulary) of about ``--params`` parameters (``d_model`` from
:func:`ssm_gd.seq.models.match_d_model`; the exact count and ``d_model`` are recorded) is trained with
AdamW (warmup, then a cosine decay to 0 at the last step) on random crops of ``--context`` + 1
characters of the training part (:func:`ssm_gd.seq.text.windows`), to minimise the bits per character
of the next character. Every ``--eval-every`` steps it is evaluated on ``--eval-windows`` fixed
windows spread evenly over the validation text (:func:`spread_windows`); the test text is read
on every one of its windows (``--test-windows``: fewer).

``--steps S`` trains S steps (S × batch × context training tokens). ``--budget SECONDS`` (one run
only) trains for a wall-clock budget: the mixer's training step is compiled and timed first
(:func:`calibrate`), then it is trained for ``budget × steps per second`` steps (rounded down to a
multiple of ``--eval-every``), so the learning-rate schedule ends when the budget does.
``steps_per_second`` is the rate of the run's own training segments (the median, the first left
out: it compiles; a budget run of one segment: the calibration's rate) and ``train_seconds``
(each history row, the summary) is steps ÷ that rate: compilation, evaluation and checkpoints
are not counted.

After training (a run that reads the test text), ``--sample-chars`` characters are sampled (``--temperature``) with
:func:`ssm_gd.seq.models.generate` (every mixer in its step form) after the held-out
text's first ``p = min(64, context // 2)`` characters. They are drawn in pieces of ``context − p``
characters, each after the last ``p`` ones, so that no model reads more than ``--context``
characters at a time, as in training (rotary attention does not extrapolate past its training
length).

A run writes ``summary.json`` (``mixer``, ``bpc`` (validation), ``test_bpc``, ``params``,
``d_model``, ``train_steps``, ``tokens``, ``steps_per_second``, ``train_seconds``, the settings,
the history with the tokens and seconds of each evaluation, ``prompt`` and ``sample``),
``curve.png`` (validation bits per character against the training tokens and seconds),
``samples.txt`` (a run that reads the test text: not the rate sweep's) and, from
:func:`ssm_gd.trainer.fit`, ``config.json``, ``history.jsonl`` and
the checkpoints.

``--sweep`` compares the mixers (every mixer of :data:`ssm_gd.seq.models.MIXERS`, or
``--mixers``) at **equal training tokens** and equal parameter target under the protocol of
:mod:`experiments.protocol`: per mixer a rate sweep (``--lrs``) on the validation text at a
quarter of the steps, then ``--seeds`` runs at the chosen rate, each read once on the test
text; every run in ``<out>/<mixer>/lr-<lr>`` or ``seed-<seed>``, read back when finished. It
writes ``table.md`` (test bits per character, mean ± half the range over the seeds, the chosen
lr, parameters, tokens, steps/s and seconds; then the **equal-time table**: every mixer's
validation bits per character at the training time of the shortest seed run, read off
its curves), ``curves.png`` (against tokens and against seconds), ``lrs.png``, ``samples.md``
(each mixer's first seed) and ``summary.json``.

CPU defaults (2 cores): about 250,000 parameters (``--params 1000000`` for a million), 4 layers,
4 heads, context 256, batch 16, 1,000 steps (4,096,000 training tokens), an evaluation every
50 steps on 64 windows (16,384 validation characters). Training steps per second here (quiet
2-core x86-64, the calibration's rate, context 256): gril 3.96, gril_scalar 6.06,
linear_attention 7.01, attention 3.49 (see results/lm for every mixer in training).
``--quick``: about 20,000 parameters, 2 layers, context 32, batch 8, 40 steps, 50,000
characters of each part of the standard library corpus.
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

from experiments import cli, protocol
from ssm_gd import checkpoints, distributed, optim, plots, trainer
from ssm_gd.seq import mixers, models, text
from ssm_gd.seq.generate import generate

QUICK = dict(params=20_000, n_layers=2, context=32, batch_size=8, train_steps=40, eval_every=20,
             eval_windows=16, max_chars=50_000)  # fmt: skip
#: The rates of the comparison's sweeps (general, ablation): one past the protocol's default top,
#: which every mixer chose at first.
RATES = ("3e-4", "1e-3", "3e-3", "1e-2", "3e-2")
#: The sample's prompt: the held-out text's first characters (at most half the context).
PROMPT_CHARS = 64
#: Windows per evaluated batch (attention holds B·H·L² scores).
EVAL_BATCH = 64
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
    context: int = 256
    n_layers: int = 4
    n_heads: int = 4
    batch_size: int = 16
    train_steps: int | None = 1000  # None: a --budget run; 1000 × 16 × 256 = 4.1M tokens
    budget: float | None = None
    lr: float = 3e-3
    eval_every: int = 50
    eval_windows: int = 64
    test_windows: int | None = None  # None: every window of the test half
    sample_chars: int = 300
    temperature: float = 0.8
    seed: int = 0


_HELP = dict(
    text="a UTF-8 text file (default: the Python standard library's sources, split by file)",
    max_chars="cap each part of the standard library corpus at this many characters",
    params="the parameter count each model is sized to (d_model from match_d_model)",
    train_steps="training steps (not with --budget)",
    budget="seconds of training (not with --steps): steps = budget × the measured steps/s",
    eval_windows="validation windows of --context characters, spread over the validation half",
    test_windows="test windows, spread over the test half (default: all of them)",
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
    if args.sweep and distributed.launched():
        parser.error("--sweep runs in one process: several processes (experiments.launch) "
                     "train one run")  # fmt: skip
    if args.sweep and "budget" in given:
        parser.error("--budget is for one run: a --sweep compares the mixers at equal tokens "
                     "(--steps; the equal-time table is read off their curves)")  # fmt: skip
    fields = {**(QUICK if args.quick else {}), **given}
    if fields.get("budget") is not None:
        fields["train_steps"] = None
    if "text" in given:
        fields["max_chars"] = None
    settings = dataclasses.replace(Settings(), **fields)
    cli.check_settings(parser, settings, spellings={"train_steps": "--steps"})
    protocol.check_mode(parser, args, given)
    args.protocol = protocol.from_args(parser, args, "bpc", False)
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
    half = min(len(part) for part in held_out_parts(corpus))
    if half < s.context + 1:
        where = f"--text {s.text!r}" if s.text is not None else "the standard library corpus"
        parser.error(
            f"--context {s.context} does not fit {where}: the held-out part's halves (validation "
            f"and test) hold {half} characters, and a window needs --context + 1 = {s.context + 1}"
        )
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
    # Every call spans every process's devices: with several, all make as many as process 0 does.
    while distributed.agree(int(timed < CALIBRATION_SECONDS and calls < 100)):
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


def spread_windows(part, length: int, count: int | None) -> np.ndarray:
    """``count`` windows of ``length + 1`` characters spread evenly over ``part`` (every one of
    its non-overlapping windows when ``count`` is ``None`` or larger): a sample of the whole part,
    not of the one or two files at its start."""
    windows = text.eval_windows(part, length=length)
    if count is None or count >= len(windows):
        return windows
    return windows[np.linspace(0, len(windows) - 1, count).round().astype(int)]


def held_out_parts(corpus: text.Corpus):
    """``(validation, test)``: the held-out text's first and second halves. The curves and the
    rate sweep read the first; the test half is read once, at the end of a run."""
    half = len(corpus.held_out) // 2
    return corpus.held_out[:half], corpus.held_out[half:]


def run(settings: Settings, corpus: text.Corpus, out, progress: bool = True,
        resume: bool = False, test: bool = True) -> dict:  # fmt: skip
    """Train one model (under ``out``: fit's files, ``curve.png``, ``samples.txt``); return its
    summary: ``bpc`` and the curve on the validation half of the held-out text, and with
    ``test`` ``test_bpc`` on the test half, once, after training. ``resume``: continue the run
    in ``out``; a budget run keeps the step count its first calibration set (``config.json``),
    so the resumed run is the interrupted one."""
    start = time.perf_counter()
    s = settings
    d_model = models.match_d_model(s.mixer, s.params, vocab=corpus.vocab, n_layers=s.n_layers,
                                   n_heads=s.n_heads)  # fmt: skip
    model = models.Model(corpus.vocab, d_model, s.n_layers, mixer=s.mixer, n_heads=s.n_heads,
                         rngs=nnx.Rngs(s.seed))  # fmt: skip
    train_ids = jnp.asarray(corpus.train)
    validation, test_part = (
        jnp.asarray(spread_windows(part, s.context, n))
        for part, n in zip(held_out_parts(corpus), (s.eval_windows, s.test_windows), strict=True)
    )

    def bits(model, windows):
        return text.bits_per_character(model(windows[:, :-1]), windows[:, 1:])

    @nnx.jit
    def batch_bits(model, windows):
        return bits(model, windows)

    def evaluate(model, windows):
        """Bits per character over ``windows``, :data:`EVAL_BATCH` windows at a time (every
        window has the same number of characters: the mean of the batches' means, weighted)."""
        total = 0.0
        for i in range(0, windows.shape[0], EVAL_BATCH):
            part = windows[i : i + EVAL_BATCH]
            total += float(batch_bits(model, part)) * part.shape[0]
        return total / windows.shape[0]

    task = trainer.Task(
        sample=lambda key, batch: text.windows(key, train_ids, batch=batch, length=s.context),
        loss=bits,
        evaluate=lambda model: {"val_bpc": evaluate(model, validation)},
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
        train_steps = distributed.agree(train_steps)  # several processes: process 0's count
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
    tokens = s.batch_size * s.context  # per step
    history = [{**row, "train_seconds": row["step"] / rate, "tokens": row["step"] * tokens}
               for row in fitted.history]  # fmt: skip
    # a sample for the runs that are reported (not the rate sweep's)
    prompt, sample = sample_text(fitted.model, corpus, s) if test else (None, None)
    result = {
        "mixer": s.mixer,
        "bpc": history[-1]["val_bpc"],
        "params": models.parameter_count(model),
        "d_model": d_model,
        "vocab": corpus.vocab,
        "train_steps": train_steps,
        "tokens": train_steps * tokens,
        "steps_per_second": rate,
        "train_seconds": train_steps / rate,
        "calibrated_steps_per_second": calibration["steps_per_second"],
        "calibration_seconds": calibration["seconds"],
        "wall_seconds": time.perf_counter() - start,
        "corpus": {
            "source": corpus.source,
            "train_chars": len(corpus.train),
            "held_out_chars": len(corpus.held_out),
            "eval_chars": int(validation.shape[0] * s.context),
            "test_chars": int(test_part.shape[0] * s.context),
        },
        "settings": dataclasses.asdict(s),
        "history": history,
        "prompt": prompt,
        "sample": sample,
    }
    if test:
        result["test_bpc"] = evaluate(fitted.model, test_part)
    if not distributed.is_writer():  # one of several processes: process 0 writes
        return result
    if test:
        (out / "samples.txt").write_text(
            f"{s.mixer}, validation {result['bpc']:.3f} and test {result['test_bpc']:.3f} bits "
            f"per character, {result['params']:,} parameters, {train_steps} steps; temperature "
            f"{s.temperature:g}.\n\n"
            f"--- prompt (the held-out text's first {len(prompt)} characters) ---\n{prompt}\n"
            f"--- sample ({len(sample)} characters) ---\n{sample}\n"
        )
    figure([result], out / "curve.png")
    return result


def figure(results, path):
    """Validation bits per character against the training tokens and against the training
    seconds, a line per run (a colour per mixer; one run: its training batches' bits too)."""
    fig = Figure(figsize=(10, 3.8))
    by_tokens, by_time = fig.subplots(1, 2, sharey=True)
    colours = dict(zip(mixers.CHOICES, [f"C{i}" for i in range(len(mixers.CHOICES))], strict=True))
    labelled = set()
    for r in results:
        h, colour = r["history"], colours[r["mixer"]]
        label = None if r["mixer"] in labelled else f"{r['mixer']} ({r['params']:,} params)"
        labelled.add(r["mixer"])
        for ax, x in ((by_tokens, lambda row: row["tokens"]),
                      (by_time, lambda row: row["train_seconds"])):  # fmt: skip
            ax.plot([x(row) for row in h], [row["val_bpc"] for row in h], "o-", ms=2.5,
                    color=colour, label=label, alpha=0.85)  # fmt: skip
            if len(results) == 1:
                train = [(x(row), row["train_loss"]) for row in h if row["train_loss"] is not None]
                ax.plot(*zip(*train, strict=True), "s--", ms=2.5, color=colour, alpha=0.6,
                        label="training batches")  # fmt: skip
    # The initial model (about log2 of the vocabulary) above the axis, once there is a curve.
    if all(len(r["history"]) > 2 for r in results):
        keys = ("val_bpc", "train_loss") if len(results) == 1 else ("val_bpc",)
        shown = [row[k] for r in results for row in r["history"][1:] for k in keys]
        by_tokens.set_ylim(min(shown) * 0.95, max(shown) * 1.05)
    by_tokens.set(xlabel="training tokens", ylabel="validation bits per character")
    by_time.set(xlabel="training seconds (steps ÷ measured steps/s)")
    by_tokens.legend(fontsize=7)
    s = results[0]["settings"]
    fig.suptitle(f"character LM: {s['n_layers']} layers, context {s['context']}, batch "
                 f"{s['batch_size']}" + (f", lr {s['lr']:g}" if len(results) == 1 else
                                         ", each mixer at its chosen lr"), fontsize=10)  # fmt: skip
    plots.save(fig, path)


def _seed_runs(results) -> list[dict]:
    return [x for r in results for x in r["runs"] if "history" in x]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def bpc_at(history, seconds: float) -> float | None:
    """Validation bits per character at ``seconds`` of training, interpolated linearly between
    the evaluations of ``history`` (``None`` past its end)."""
    points = [(row["train_seconds"], row["val_bpc"]) for row in history]
    for (t0, b0), (t1, b1) in zip(points, points[1:], strict=False):
        if t0 <= seconds <= t1:
            return b0 if t1 == t0 else b0 + (b1 - b0) * (seconds - t0) / (t1 - t0)
    return None


def equal_time(results) -> tuple[float | None, dict]:
    """``(T, {mixer: (validation bpc at T, tokens by T)})``: ``T`` the shortest training time of
    any seed run, so that every seed run of every mixer is read on its curve at ``T`` (the mean
    over a mixer's seeds)."""
    runs = {r["mixer"]: [x for x in r["runs"] if "history" in x] for r in results}
    times = [x["train_seconds"] for found in runs.values() for x in found]
    if not times:
        return None, {}
    limit = min(times)
    rows = {}
    for mixer, found in runs.items():
        if found:  # the tokens by T: each run's share T is of its own training time
            rows[mixer] = (_mean([bpc_at(x["history"], limit) for x in found]),
                           _mean([min(1.0, limit / x["train_seconds"]) * x["tokens"]
                                  for x in found]))  # fmt: skip
    return limit, rows


def table(results, proto: protocol.Protocol) -> str:
    """Markdown: equal tokens (test bits per character, mean ± half the range over the seeds, at
    the lr chosen on validation), then equal training time read off the same runs' curves."""
    s = results[0]["settings"]
    done = _seed_runs(results)
    found = [x for r in results for x in r["sweep"] if "corpus" in x]
    first = done[0] if done else found[0] if found else None
    if first is None:
        return "Every run of every mixer diverged: nothing to tabulate.\n"
    corpus = f"--text {s['text']}" if s["text"] is not None else "the Python standard library"
    tokens = s["train_steps"] * s["batch_size"] * s["context"]
    short = proto.sweep_steps(s["train_steps"], s["eval_every"])[0]

    def bits(x):
        return f"{x:.3f}"

    lines = [
        f"Character-level language modelling on {corpus} ({first['corpus']['train_chars']:,} "
        f"training characters, vocabulary {first['vocab']}): {s['n_layers']} layers, "
        f"{s['n_heads']} heads, about {s['params']:,} parameters, context {s['context']}, batch "
        f"{s['batch_size']}, {s['train_steps']:,} AdamW steps (warmup, cosine to 0) = "
        f"{tokens:,} training tokens for every mixer. Each mixer's peak lr chosen among "
        f"{', '.join(f'{lr:g}' for lr in proto.lrs)} on {first['corpus']['eval_chars']:,} "
        f"characters spread over the validation half of the held-out text after {short:,} steps (seed "
        f"{proto.seeds[0]}), then seeds {', '.join(map(str, proto.seeds))} at that lr, each read "
        f"once on the test half (all {first['corpus'].get('test_chars', 0):,} characters of its "
        "windows). Test bits "
        f"per character, mean ± half the range over the seeds:",
        "",
        "| mixer | test bpc | lr | parameters | d_model | training tokens | steps/s | seconds of "
        f"training | validation bpc by lr ({short:,} steps) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        runs = [x for x in r["runs"] if "history" in x]
        size = runs[0] if runs else next((x for x in r["sweep"] if "params" in x), {})
        rate = _mean([x.get("steps_per_second") for x in runs])
        seconds = _mean([x.get("train_seconds") for x in runs])
        cells = [
            r["mixer"],
            protocol.cell(r, "bpc", bits),
            "–" if r["lr"] is None else f"{r['lr']:g}",
            f"{size['params']:,}" if "params" in size else "–",
            str(size.get("d_model", "–")),
            f"{runs[0]['tokens']:,}" if runs else "–",
            "–" if rate is None else f"{rate:.2f}",
            "–" if seconds is None else f"{seconds:.0f}",
            protocol.sweep_cell(r, "bpc", bits),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    limit, rows = equal_time(results)
    if limit is not None:
        lines += [
            "",
            f"Equal training time, read off the same runs' validation curves at {limit:.0f} s "
            "(the shortest seed run's whole training; steps ÷ the rate measured in training; every "
            "learning-rate schedule set for the full token budget, so a slower mixer is read "
            "before its schedule ends):",
            "",
            "| mixer | validation bpc at the time | training tokens by then |",
            "| --- | --- | --- |",
        ]
        for mixer, (value, seen) in rows.items():
            lines.append(f"| {mixer} | {'–' if value is None else bits(value)} | {seen:,.0f} |")
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
        parts += ["", f"## {r['mixer']} (test {r['test_bpc']:.3f} bits per character)", "",
                  _fenced(r["sample"])]  # fmt: skip
    return "\n".join(parts) + "\n"


def main(argv=None):
    # One of several processes (python -m experiments.launch; one run, not --sweep): join the
    # others before anything touches a device (the flags' checks count the devices).
    distributed.initialize()
    args, out, settings, corpus = parse(argv)
    start = time.perf_counter()
    if not args.sweep:
        progress = not args.no_progress and distributed.is_writer()
        return cli.one_run(
            args, out, start, lambda: run(settings, corpus, out, progress, args.resume),
            lambda r: f"{settings.mixer}: validation {r['bpc']:.3f}, test {r['test_bpc']:.3f} bits "
                      f"per character, {r['params']:,} params (d_model {r['d_model']}), "
                      f"{r['train_steps']} steps in {r['train_seconds']:.1f} s of training",
            "curve.png",
        )  # fmt: skip
    cli.compile_cache()

    def train(one, folder, test, resume):
        return run(one, corpus, folder, not args.no_progress, resume, test)

    results = []
    for mixer in args.mixers or mixers.MIXERS:
        print(f"{mixer}:", flush=True)
        results.append(protocol.tune(dataclasses.replace(settings, mixer=mixer), out / mixer,
                                     train, args.protocol, say=lambda line: print(line, flush=True)))  # fmt: skip
    wall = time.perf_counter() - start
    summary = {"runs": results, "wall_seconds": wall, "figures": ["curves.png", "lrs.png"],
               "table": "table.md", "samples": "samples.md",
               "protocol": dataclasses.asdict(args.protocol)}  # fmt: skip
    (out / "table.md").write_text(table(results, args.protocol))
    first_seeds = [x for r in results for x in r["runs"][:1] if x.get("sample") is not None]
    if first_seeds:
        (out / "samples.md").write_text(samples_markdown(first_seeds))
    runs = _seed_runs(results)
    if runs:
        figure(runs, out / "curves.png")
    protocol.lr_figure({"character LM": results}, "bpc", out / "lrs.png",
                       ylabel="validation bits per character",
                       title=f"the rate sweep ({args.protocol.sweep_steps(settings.train_steps, settings.eval_every)[0]} "
                             f"steps, seed {args.protocol.seeds[0]}; ringed: chosen)")  # fmt: skip
    cli.write_summary(out, {**summary, "quick": args.quick})
    print(f"wrote {out}/summary.json, table.md and the figures in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
