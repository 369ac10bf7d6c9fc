"""GRIL on general tasks, then ``REPORT-general.md``: what ``make reproduce-general`` runs.

    python -m experiments.general [--results results] [--quick | --smoke | --accelerator]
                                  [--only mqar listops lm]

One process runs three sweeps, each writing its folder of :data:`FOLDERS` under ``<results>``
(``mqar-general``, ``listops``, ``lm``): multi-query associative recall
(:mod:`experiments.mqar`), ListOps (:mod:`experiments.listops`) and character-level language
modelling at equal training tokens (:mod:`experiments.lm`). Every mixer of every task goes
through one protocol (:mod:`experiments.protocol`): a learning-rate sweep on validation, two
seeds at the chosen rate, the test split read once per seed run. Then it gathers the tables,
figures, samples, the published anchors and a point-by-point verdict (:func:`verdict`: each GRIL
variant against each mixer, with the seeds' spread) into ``<results>/REPORT-general.md``, with
the time each sweep took. Finished runs are read back, a stopped run continues from its last
checkpoint: an interrupted call picks up where it stopped.

Sizes: the CPU settings of each experiment (the README gives the time of each part on a 2-core
CPU); ``--quick``: each experiment's quick size; ``--smoke``: the test suite's (two mixers, a
handful of steps, one rate); ``--accelerator``: larger sizes (LRA's ListOps lengths, more MQAR
steps, a million-parameter language model) for a GPU or TPU.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

from experiments import ablation, cli, listops, lm, mqar

#: The mixers of a smoke run (the test suite's size): one recurrent, one attention.
SMOKE_MIXERS = ("linear_attention", "attention")
#: The language model's sweep: every mixer, and GRIL with one decay per head, whose training form
#: is matrix products.
LM_MIXERS = ("gril", "gril_scalar", "linear_attention", "attention", "ssm", "griffin")
#: A smoke run's protocol: one rate, one seed, the sweep at half the steps (the choice among
#: rates, the seeds' loop and spread are tested with stand-in runs: tests/test_protocol.py and
#: each experiment's sweep test).
SMOKE_PROTOCOL = ["--lrs", "1e-3", "--seeds", "0", "--sweep-fraction", "0.5"]
# name: (entry point, {size: its flags}), each run with --sweep --no-progress --out <results>/<name>
EXPERIMENTS = {
    "mqar": (mqar.main, {
        "CPU": [],
        "quick": ["--quick"],
        "smoke": ["--quick", "--d-model", "16", "--steps", "4", "--eval-every", "2",
                  "--eval-size", "8", "--mixers", *SMOKE_MIXERS, *SMOKE_PROTOCOL],
        "accelerator": ["--steps", "5000"],
    }),
    "listops": (listops.main, {"CPU": [], "quick": ["--quick"], "accelerator": ["--lra"],
                               "smoke": ["--quick", "--steps", "4", "--eval-every", "2",
                                         "--n-train", "40", "--n-val", "10", "--n-test", "10",
                                         "--mixers", *SMOKE_MIXERS, *SMOKE_PROTOCOL]}),
    "lm": (lm.main, {"CPU": ["--mixers", *LM_MIXERS, "--lrs", *lm.RATES], "quick": ["--quick"],
                     "accelerator": ["--params", "1000000", "--batch-size", "32", "--steps", "5000"],
                     "smoke": ["--quick", "--steps", "4", "--eval-every", "2", "--eval-windows", "2",
                               "--sample-chars", "8", "--max-chars", "5000",
                               "--mixers", *SMOKE_MIXERS, *SMOKE_PROTOCOL]}),
}  # fmt: skip
# Each sweep's folder under --results: MQAR's is its own, apart from the full grid's results/mqar.
FOLDERS = {"mqar": "mqar-general", "listops": "listops", "lm": "lm"}
TITLES = {
    "mqar": "Multi-query associative recall",
    "listops": "ListOps (Long Range Arena)",
    "lm": "Character-level language modelling",
}


def _load(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def command(name: str, mode: str, results) -> str:
    """The command line that runs sweep ``name`` at size ``mode`` under ``results``."""
    flags = " ".join(["--sweep", *EXPERIMENTS[name][1][mode]])
    return f"python -m experiments.{name} {flags} --out {pathlib.Path(results) / FOLDERS[name]}"


def _own_runs(summary) -> list[dict]:
    """A sweep's runs, each once: a seed run that is a sweep run read again (``trained_in``, MQAR's
    full-budget sweep) is not counted twice."""
    runs = [x for r in summary["runs"] for x in (*r.get("sweep", ()), *r.get("runs", ()))]
    return [x for x in runs if not x.get("trained_in")]


def _trained(summary) -> float:
    """The seconds of every run of a sweep's summary, each timed when it was trained."""
    return sum(x.get("wall_seconds", 0.0) for x in _own_runs(summary))


def _count(summary) -> int:
    return len(_own_runs(summary))


def _section(results: pathlib.Path, name: str, seconds: dict, mode: str) -> list[str]:
    folder = results / FOLDERS[name]
    summary = _load(folder / "summary.json")
    lines = [f"## {TITLES[name]}", ""]
    if summary is None or "runs" not in summary:
        return lines + [f"_not run (`{command(name, mode, results)}`)_", ""]
    if not all("sweep" in r for r in summary["runs"]):  # written before the protocol
        return lines + [
            f"_Not yet run under the protocol (`{command(name, mode, results)}`); the table "
            "below is the earlier one: one learning rate for every mixer, one seed, no "
            "validation split._",
            "",
            (folder / summary["table"]).read_text().rstrip(),
            "",
        ]
    took = seconds.get(name, summary.get("wall_seconds"))
    trained = _trained(summary)
    lines += [
        f"`{command(name, mode, results)}` ({_count(summary)} runs; this call "
        f"{took / 60:.1f} min, the runs' own training {trained / 60:.1f} min when they ran):",
        "",
        (folder / summary["table"]).read_text().rstrip(),
        "",
    ]
    if summary.get("not_yet_run"):  # a grid tabulated before every point finished
        points = ", ".join(str(tuple(p)) for p in summary["not_yet_run"])
        lines += [f"_Not yet run: the grid point(s) {points}; the table holds the points whose "
                  "every run finished._", ""]  # fmt: skip
    lines += [f"![{f}]({FOLDERS[name]}/{f})" for f in summary.get("figures", [])]
    if (folder / "samples.md").exists():
        samples = (folder / "samples.md").read_text().rstrip()
        samples = "\n".join(
            "#" * 2 + line if line.startswith("## ") else line for line in samples.splitlines()
        )  # a level under this section's
        lines += ["", "### Samples (step forms, `generate`)", "", samples]  # fmt: skip
    return lines + [""]


#: Per task: the test metric, whether higher is better, its format, and a run's point in the grid.
VERDICT = {
    "mqar": ("accuracy", True, "{:.3f}",
             lambda s: f"L {s['seq_len']}, {s['n_kv']} pairs, d_model {s['d_model']}"),
    "listops": ("accuracy", True, "{:.1%}", lambda s: "test accuracy"),
    "lm": ("bpc", False, "{:.3f}", lambda s: "test bits per character, equal tokens"),
}  # fmt: skip
#: The GRIL variants compared with every other mixer: the paper's and one decay per head; beside
#: them the ablation's best GRIL by validation (:func:`experiments.ablation.best`) where the
#: ablation ran at the general sweep's settings and rates.
GRILS = ("gril", "gril_scalar")


def compare(ours: dict, other: dict, metric: str, higher: bool) -> tuple[str, float | None]:
    """``(word, difference)`` of two tuned mixers (:func:`experiments.protocol.tune` results):
    "wins" / "loses" when their seeds' ranges do not overlap, "ties" when they do; the
    difference of the means (ours − other), or ``None`` when either has no finished seed."""
    a = [r.get("test_" + metric) for r in ours["runs"]]
    b = [r.get("test_" + metric) for r in other["runs"]]
    if not a or not b or any(v is None or not math.isfinite(v) for v in a + b):
        return "–", None
    better = (min(a) > max(b)) if higher else (max(a) < min(b))
    worse = (max(a) < min(b)) if higher else (min(a) > max(b))
    difference = sum(a) / len(a) - sum(b) / len(b)
    return ("wins" if better else "loses" if worse else "ties"), difference


def _ablated(results: pathlib.Path, name: str, summary: dict) -> list[dict]:
    """The ablation's best GRIL of task ``name`` by validation (:func:`experiments.ablation.best`)
    where it ran at the settings and rates of a run of the general sweep (``summary``) and is not
    one of its mixers, for the verdict; else nothing."""
    found = ablation.tuned(_load(results / "ablation" / name / "summary.json"), summary)
    chosen = ablation.best(found, name) if name in ablation.TASKS else None
    if chosen is None or chosen in {r["mixer"] for r in summary["runs"]}:
        return []
    alike = [ablation.fixed(r) for r in summary["runs"]]
    return [found[chosen]] if ablation.fixed(found[chosen]) in alike else []


def ablation_section(results: pathlib.Path, small: bool) -> list[str]:
    """The report's section of the ablation (``python -m experiments.ablation``): its table and
    figure when they are of the report's size (``small``: quick or smoke), else what to run."""
    lines = ["## GRIL's ingredients, ablated", ""]
    path = results / "ablation" / "table.md"
    text = path.read_text().splitlines() if path.exists() else None
    if text is None or (text[0] == cli.SMALL_MARK) != small:
        size = "" if text is None else " at this report's size"
        return lines + [f"_not run{size} (`python -m experiments.ablation`)_", ""]
    body = [line for line in text if line != cli.SMALL_MARK and not line.startswith("# ")]
    return lines + ["`python -m experiments.ablation`:", "", "\n".join(body).strip(), "",
                    "![ablation.png](ablation/ablation.png)", ""]  # fmt: skip


def verdict(results: pathlib.Path) -> list[str]:
    """The report's section: each GRIL variant against each other mixer, task by task and point
    by point — the difference of the test means and whether the seeds' ranges separate them."""
    lines = ["## GRIL against each mixer", "",
             "Each GRIL variant's test metric minus the other mixer's (means over the seeds, "
             "each at its own chosen lr): **wins** / **loses** when no seed of one reaches the "
             "range of the other, **ties** when the seeds' ranges overlap.", ""]  # fmt: skip
    for name, (metric, higher, fmt, point) in VERDICT.items():
        summary = _load(results / FOLDERS[name] / "summary.json")
        if not summary or not all("sweep" in r for r in summary.get("runs", [])):
            continue
        groups, best = {}, _ablated(results, name, summary)
        for r in summary["runs"] + best:
            groups.setdefault(point(r["settings"]), {})[r["mixer"]] = r
        grils = [*GRILS, *(r["mixer"] for r in best)]
        for where, tuned in groups.items():
            for ours in (g for g in grils if g in tuned):
                cells = []
                for mixer, other in tuned.items():
                    if mixer in grils and grils.index(mixer) <= grils.index(ours):
                        continue
                    word, diff = compare(tuned[ours], other, metric, higher)
                    text = (
                        "–" if diff is None else ("+" if diff >= 0 else "−") + fmt.format(abs(diff))
                    )
                    cells.append(f"{word} against {mixer} ({text})")
                if cells:
                    lines.append(f"- {TITLES[name]}, {where}: {ours} " + "; ".join(cells) + ".")
    return lines + [""]


def build(results, seconds: dict, mode: str) -> pathlib.Path:
    """Write ``<results>/REPORT-general.md`` from the sweeps' summaries; return its path."""
    results = pathlib.Path(results)
    total = sum(seconds.values())
    summaries = [_load(results / FOLDERS[name] / "summary.json") for name in EXPERIMENTS]
    trained = sum(_trained(s) for s in summaries if s and "runs" in s)
    lines = [
        *([cli.SMALL_MARK, ""] if mode in ("quick", "smoke") else []),
        "# GRIL on general tasks",
        "",
        f"`make reproduce-general` ({mode} sizes): "
        + (
            f"this call took {total / 60:.1f} min; "
            if seconds
            else "rebuilt from the runs' summaries; "
        )
        + f"its runs, each timed when it was trained (a finished run is read back, not trained "
        f"again), {trained / 60:.1f} min in all. Within a task every mixer has the same data, training "
        "steps, batch and parameter target (the language model: the same training tokens; "
        "parameters stated beside each number) and the same protocol "
        "(`experiments/protocol.py`): its peak learning rate chosen on a validation split among "
        "the rates each table lists (at a quarter of the budget; MQAR, whose accuracy leaves a "
        "plateau late, at the full budget), then one run per seed at that rate, each evaluated "
        "once on the test split; a number is the mean over the seeds ± half their range.",
        "",
    ]
    lines += verdict(results)
    for name in EXPERIMENTS:
        lines += _section(results, name, seconds, mode)
    lines += ablation_section(results, small=mode in ("quick", "smoke"))
    path = results / "REPORT-general.md"
    path.write_text("\n".join(lines))
    return path


def main(argv=None):
    parser = cli.report_parser(__doc__.splitlines()[0], EXPERIMENTS, what="sweep",
                               smoke="two mixers, a handful of steps", accelerator=True)  # fmt: skip
    args = parser.parse_args(argv)
    mode = ("quick" if args.quick else "smoke" if args.smoke else "accelerator"
            if args.accelerator else "CPU")  # fmt: skip
    unknown = [n for n in args.only or () if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"--only: unknown sweep(s) {unknown}; choose from {list(EXPERIMENTS)}")
    results = cli.results_folder(parser, args.results, small=mode in ("quick", "smoke"),
                                 report="REPORT-general.md")  # fmt: skip
    sys.stdout.reconfigure(line_buffering=True)
    seconds = {}
    for name in args.only or list(EXPERIMENTS):
        entry, sizes = EXPERIMENTS[name]
        print(f"\n== {name} ==", flush=True)
        begin = time.perf_counter()
        entry(["--sweep", "--no-progress", *sizes[mode], "--out", str(results / FOLDERS[name])])
        seconds[name] = time.perf_counter() - begin
    path = build(results, seconds, mode)
    print("\n" + "  ".join(f"{n} {s / 60:.1f} min" for n, s in seconds.items()))
    print(f"wrote {path} ({sum(seconds.values()) / 60:.1f} min)")
    return seconds


if __name__ == "__main__":
    main()
