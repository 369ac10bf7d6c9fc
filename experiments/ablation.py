"""GRIL with the ingredients of gated linear attention, RetNet and Mamba-2, ablated one by one.

    python -m experiments.ablation [--results results] [--quick | --smoke] [--only lm mqar]
                                   [--rows gril gril_gated ...]

Runs the language model's and MQAR's protocol (:mod:`experiments.protocol`: each variant's rate
chosen on validation, two seeds at it, the test split read once per seed) for GRIL with the
ingredients added one at a time and the full GRIL with each removed
(:data:`ssm_gd.seq.mixers.ABLATION`: multiscale decays ``ms``, a decay per head and token
``data``, an output gate after each head's normalisation ``gate``, unit keys and queries ``qk``),
each under ``<results>/ablation/<task>/``; then ``<results>/ablation/table.md`` and
``ablation.png``, with attention, linear attention and Griffin from the general sweeps
(``<results>/lm``, ``<results>/mqar-general``) beside them where those ran at the same settings
and rates. The paper's GRIL is read from there too, and trained here only where it is missing.
The language model runs at its CPU settings (equal training tokens); MQAR at (L, pairs, d_model) =
(64, 4, 64), where attention leaves the plateau. Finished runs are read back.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

from matplotlib.figure import Figure

from experiments import cli, lm, mqar, protocol
from ssm_gd.seq import mixers

#: The ablation's rows: the paper's GRIL, then :data:`ssm_gd.seq.mixers.ABLATION`.
ROWS = ("gril", *mixers.ABLATION)
#: The mixers read from the general sweeps and shown beside the rows.
BASELINES = ("attention", "linear_attention", "griffin")
#: What the general sweeps give where they ran at the ablation's settings and rates: the paper's
#: GRIL (trained there; ``--rows gril`` trains it here instead) and the baselines.
SHARED = ("gril", *BASELINES)
SMOKE = ["--lrs", "1e-3", "--seeds", "0", "--sweep-fraction", "0.5"]
#: task: (entry point, its general sweep's folder, metric, higher is better, {size: flags}).
TASKS = {
    "lm": (lm.main, "lm", "bpc", False, {
        "CPU": ["--lrs", *lm.RATES], "quick": ["--quick"],
        "smoke": ["--quick", "--steps", "4", "--eval-every", "2", "--eval-windows", "2",
                  "--sample-chars", "8", "--max-chars", "5000", *SMOKE],
    }),
    "mqar": (mqar.main, "mqar-general", "accuracy", True, {
        "CPU": ["--seq-len", "64", "--n-kv", "4", "--d-model", "64"],
        "quick": ["--quick"],
        "smoke": ["--quick", "--d-model", "16", "--steps", "4", "--eval-every", "2",
                  "--eval-size", "8", *SMOKE],
    }),
}  # fmt: skip
TITLES = {"lm": "language model: test bits per character", "mqar": "MQAR: test accuracy"}
#: Settings that may differ between a row and a baseline it is compared with.
FREE = ("mixer", "lr", "seed")


def _load(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def fixed(result: dict) -> dict:
    """A tune result's settings but for :data:`FREE`, and the rates its sweep tried."""
    kept = {k: v for k, v in result["settings"].items() if k not in FREE}
    return kept | {"rates": sorted(r["settings"]["lr"] for r in result.get("sweep", []))}


def tuned(summary, general=None) -> dict:
    """``{mixer: tune result}`` of a task's ablation sweep, then the :data:`SHARED` mixers of its
    general sweep (``general``) that ran at the ablation's settings over the same rates (the rows
    trained here first); ``{}`` before the ablation ran."""
    if not summary or "runs" not in summary:
        return {}
    out = {r["mixer"]: r for r in summary["runs"]}
    reference = fixed(summary["runs"][0])
    for r in (general or {}).get("runs", []):
        if r["mixer"] in SHARED and fixed(r) == reference:
            out.setdefault(r["mixer"], r)
    return out


def _ingredients(name: str) -> list[str]:
    """The ingredients a row has (none for the paper's GRIL and the baselines)."""
    options = mixers.ABLATION.get(name)
    if options is None:
        return []
    return [
        i for i, o in mixers.INGREDIENTS.items() if all(options.get(k) == v for k, v in o.items())
    ]


def best(results: dict, task: str) -> str | None:
    """The ablation's best GRIL of a task by validation — the mean over its seed runs of the
    validation metric each run ends with (never the test split) — among :data:`ROWS` in
    ``results`` (:func:`tuned`); ``None`` when none finished."""
    metric, higher = TASKS[task][2], TASKS[task][3]
    scores = {}
    for name in (n for n in ROWS if n in results):
        mean, _ = protocol.spread([r.get(metric) for r in results[name]["runs"]])
        if math.isfinite(mean):
            scores[name] = mean
    if not scores:
        return None
    return (max if higher else min)(scores, key=scores.get)


def _stats(result, metric) -> tuple[float, float]:
    return protocol.spread([r.get("test_" + metric) for r in result["runs"]])


def table(by_task: dict) -> str:
    """The ablation's markdown table: one row per variant (its ingredients marked), each task's
    test mean ± half the seeds' range and chosen lr; the baselines under a rule."""
    names = [n for n in ROWS if any(n in t for t in by_task.values())]
    names += [n for n in BASELINES if any(n in t for t in by_task.values())]
    head = ["mixer", *mixers.INGREDIENTS]
    for task in by_task:
        head += [TITLES[task], "lr", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in names:
        have = _ingredients(name)
        cells = [name if name in ROWS else f"*{name}*"]
        cells += ["✓" if i in have else ("" if name in ROWS else "–") for i in mixers.INGREDIENTS]
        for task, results in by_task.items():
            metric, fmt = TASKS[task][2], ("{:.3f}").format
            r = results.get(name)
            if r is None:
                cells += ["not run", "", ""]
                continue
            params = next((x.get("params") for x in r["runs"] if x.get("params")), None)
            cells += [protocol.cell(r, metric, fmt), "–" if r["lr"] is None else f"{r['lr']:g}",
                      "–" if params is None else f"{params:,}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(by_task: dict, path) -> None:
    """Each task a panel: every row's test mean with its seeds' range, the baselines as lines."""
    fig = Figure(figsize=(5.5 * len(by_task), 0.45 * len(ROWS) + 1.6))
    axes = fig.subplots(1, len(by_task), squeeze=False)[0]
    for ax, (task, results) in zip(axes, by_task.items(), strict=True):
        metric = TASKS[task][2]
        names = [n for n in ROWS if n in results]
        for y, name in enumerate(names):
            values = [v for v in (x.get("test_" + metric) for x in results[name]["runs"])
                      if v is not None and math.isfinite(v)]  # fmt: skip
            if values:
                mean = sum(values) / len(values)
                ax.errorbar(mean, y, xerr=[[mean - min(values)], [max(values) - mean]], fmt="o",
                            color="C0" if name == "gril" else "C1", capsize=3)  # fmt: skip
        for i, name in enumerate(n for n in BASELINES if n in results):
            mean, _ = _stats(results[name], metric)
            if math.isfinite(mean):
                ax.axvline(mean, color=f"C{i + 2}", ls="--", label=name)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(TITLES[task] + (" (lower is better)" if not TASKS[task][3] else ""))
        ax.grid(alpha=0.3)
        if any(n in results for n in BASELINES):
            ax.legend(fontsize=8)
    fig.suptitle("GRIL's ingredients: each point the mean of the seeds, the bar their range")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


INTRO = (
    "GRIL's ingredients, each task under the protocol of `experiments/protocol.py` (each row's "
    "peak lr chosen on validation, then a run per seed at it, the test split read once; mean ± "
    "half the seeds' range). Columns ms, data, gate, qk: multiscale decays, a decay per head and "
    "token, an output gate after each head's normalisation, unit keys and queries. Rows in "
    "italics: the general sweeps' mixers at the same settings and rates. Read from the general "
    "sweeps: {shared}. The tasks' settings: {settings}."
)


def build(results, only, small: bool = False) -> pathlib.Path:
    """``<results>/ablation/table.md`` and ``ablation.png`` from the sweeps' summaries."""
    results = pathlib.Path(results)
    folder = results / "ablation"
    by_task, settings, shared, chosen = {}, [], [], []
    for task in only:
        general = _load(results / TASKS[task][1] / "summary.json")
        own = _load(folder / task / "summary.json")
        by_task[task] = tuned(own, general)
        first = next(iter(by_task[task].values()), None)
        if first is not None:
            settings.append(f"{task} {json.dumps(fixed(first))}")
            read = [n for n in by_task[task] if n not in {r["mixer"] for r in own["runs"]}]
            shared.append(f"{task} ({', '.join(read) or 'none'})")
            if best(by_task[task], task):
                chosen.append(f"{task}: **{best(by_task[task], task)}**")
    intro = INTRO.format(
        shared="; ".join(shared) or "none", settings="; ".join(settings) or "none run"
    )
    pick = ("The best GRIL by validation (the mean of its seed runs' final validation metric; the "
            "test split is not looked at): " + "; ".join(chosen) + ".") if chosen else ""  # fmt: skip
    text = "\n".join([*([cli.SMALL_MARK, ""] if small else []), "# GRIL's ingredients, ablated",
                      "", intro, "", table(by_task), pick])  # fmt: skip
    (folder / "table.md").write_text(text)
    figure(by_task, folder / "ablation.png")
    return folder / "table.md"


def main(argv=None):
    parser = cli.report_parser(__doc__.splitlines()[0], TASKS, what="task",
                               smoke="a handful of steps")  # fmt: skip
    parser.add_argument("--rows", nargs="+", default=None, metavar="MIXER",
                        help="the variants to train (of " + ", ".join(ROWS) + "; default: all "
                             "but gril, read from the general sweep where it ran at the same "
                             "settings and rates, else trained too)")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [n for n in args.only or () if n not in TASKS]
    if unknown:
        parser.error(f"--only: unknown task(s) {unknown}; choose from {list(TASKS)}")
    bad = [r for r in args.rows or () if r not in ROWS]
    if bad:
        parser.error(f"--rows: unknown variant(s) {bad}; choose from {list(ROWS)}")
    mode = "quick" if args.quick else "smoke" if args.smoke else "CPU"
    results = cli.results_folder(
        parser, args.results, small=mode != "CPU", report="ablation/table.md"
    )
    sys.stdout.reconfigure(line_buffering=True)
    only = args.only or list(TASKS)
    for task in only:
        entry, general, sizes = TASKS[task][0], TASKS[task][1], TASKS[task][4]
        print(f"\n== {task} ==", flush=True)
        begin = time.perf_counter()
        rows = args.rows or [r for r in ROWS if r not in SHARED]
        folder = results / "ablation" / task
        entry(["--sweep", "--no-progress", *sizes[mode], "--mixers", *rows, "--out", str(folder)])
        found = tuned(_load(folder / "summary.json"), _load(results / general / "summary.json"))
        if args.rows is None and "gril" not in found:
            print(f"{results / general} has no gril at these settings and rates: training it "
                  "here (the other rows are read back)", flush=True)  # fmt: skip
            entry(["--sweep", "--no-progress", *sizes[mode], "--mixers", "gril", *rows,
                   "--out", str(folder)])  # fmt: skip
        print(f"{task}: {(time.perf_counter() - begin) / 60:.1f} min", flush=True)
    path = build(results, only, small=mode != "CPU")
    print(f"wrote {path} and {path.with_name('ablation.png')}")
    return path


if __name__ == "__main__":
    main()
