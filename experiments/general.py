"""GRIL on general tasks, then ``REPORT-general.md``: what ``make reproduce-general`` runs.

    python -m experiments.general [--results results] [--quick | --accelerator] [--only mqar listops lm]

One process runs three sweeps over every mixer of :data:`ssm_gd.seq.models.MIXERS`, each writing
its folder of :data:`FOLDERS` under ``<results>`` (``mqar-general``, ``listops``, ``lm``): multi-query associative recall (:mod:`experiments.mqar`, at d_model 64,
L ∈ {32, 64} on the CPU: at d_model 32 no mixer left the plateau), ListOps
(:mod:`experiments.listops`) and character-level language modelling (:mod:`experiments.lm`).
Then it gathers their tables, figures, samples and the published anchors into
``<results>/REPORT-general.md``, with every run's size and the time each sweep took. A sweep
reads the runs an earlier call finished with the same settings, so a stopped call continues.

Sizes: the CPU settings of each experiment (about 100 minutes in all on a 2-core CPU);
``--quick``: each experiment's smoke size (a few minutes); ``--accelerator``: the published sizes
(LRA's ListOps lengths, MQAR at 4 pairs and vocabulary 128, a larger language model) for a GPU
or TPU.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from experiments import cli, listops, lm, mqar

#: The mixers of a smoke run (the test suite's size): one recurrent, one attention.
SMOKE_MIXERS = ("linear_attention", "attention")
#: The language model's sweep (one wall-clock budget, where training speed decides the steps):
#: every mixer, and GRIL with one decay per head, whose training form is matrix products.
LM_MIXERS = ("gril", "gril_scalar", "linear_attention", "attention", "ssm", "griffin")
# name: (entry point, {size: its flags}), each run with --sweep --no-progress --out <results>/<name>
EXPERIMENTS = {
    "mqar": (mqar.main, {
        "CPU": ["--d-model", "64"],
        "quick": ["--quick", "--d-model", "16"],
        "smoke": ["--quick", "--d-model", "16", "--steps", "2", "--eval-every", "1",
                  "--eval-size", "8", "--mixers", *SMOKE_MIXERS],
        "accelerator": ["--n-kv", "4", "--vocab", "128", "--steps", "5000"],
    }),
    "listops": (listops.main, {"CPU": [], "quick": ["--quick"], "accelerator": ["--lra"],
                               "smoke": ["--quick", "--steps", "2", "--eval-every", "1",
                                         "--n-train", "40", "--n-test", "10",
                                         "--mixers", *SMOKE_MIXERS]}),
    "lm": (lm.main, {"CPU": ["--mixers", *LM_MIXERS], "quick": ["--quick"], "accelerator": ["--params", "1000000", "--context", "256",
                                                          "--batch-size", "32", "--budget", "900"],
                     "smoke": ["--quick", "--budget", "0.2", "--eval-every", "1", "--eval-windows", "2",
                               "--sample-chars", "8", "--max-chars", "5000", "--mixers", *SMOKE_MIXERS]}),
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


def _section(results: pathlib.Path, name: str, seconds: dict, mode: str) -> list[str]:
    folder = results / FOLDERS[name]
    summary = _load(folder / "summary.json")
    lines = [f"## {TITLES[name]}", ""]
    if summary is None or "runs" not in summary:
        return lines + [f"_not run (`{command(name, mode, results)}`)_", ""]
    took = seconds.get(name, summary.get("wall_seconds"))
    trained = sum(r.get("wall_seconds", 0.0) for r in summary["runs"])
    lines += [
        f"`{command(name, mode, results)}` ({len(summary['runs'])} runs; this call "
        f"{took / 60:.1f} min, the runs' own training {trained / 60:.1f} min when they ran):",
        "",
        (folder / summary["table"]).read_text().rstrip(),
        "",
    ]
    lines += [f"![{f}]({FOLDERS[name]}/{f})" for f in summary.get("figures", [])]
    if (folder / "samples.md").exists():
        samples = (folder / "samples.md").read_text().rstrip()
        samples = "\n".join(
            "#" * 2 + line if line.startswith("## ") else line for line in samples.splitlines()
        )  # a level under this section's
        lines += ["", "### Samples (step forms, `generate`)", "", samples]  # fmt: skip
    return lines + [""]


def build(results, seconds: dict, mode: str) -> pathlib.Path:
    """Write ``<results>/REPORT-general.md`` from the sweeps' summaries; return its path."""
    results = pathlib.Path(results)
    total = sum(seconds.values())
    summaries = [_load(results / FOLDERS[name] / "summary.json") for name in EXPERIMENTS]
    trained = sum(r.get("wall_seconds", 0.0) for s in summaries if s and "runs" in s
                  for r in s["runs"])  # fmt: skip
    lines = [
        *([cli.SMALL_MARK, ""] if mode in ("quick", "smoke") else []),
        "# GRIL on general tasks",
        "",
        f"`make reproduce-general` ({mode} sizes): this call took {total / 60:.1f} min; its runs, "
        f"each timed when it was trained (a finished run is read back, not trained again), "
        f"{trained / 60:.1f} min in all. Every mixer has the same data, training steps, batch and "
        "learning rate within a task (the language model: the same budget of training seconds, "
        "turned into each mixer's steps by its rate timed before training; its table gives the "
        "seconds each mixer trained); parameters are stated beside each number.",
        "",
    ]
    for name in EXPERIMENTS:
        lines += _section(results, name, seconds, mode)
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
