"""Every experiment of the paper, then ``REPORT.md``: what ``make reproduce`` runs.

    python -m experiments.reproduce [--results results] [--quick] [--only linear ood ...]

One Python process runs them in turn (imports and compiled functions are shared), each writing
``<results>/<name>/``; ``experiments.report`` then gathers them in ``<results>/REPORT.md``.
``--quick`` runs each at a small size (a few minutes in all on a 2-core CPU); ``--smoke``, the test
suite's size, runs each experiment's code path at a handful of steps (its numbers mean nothing) and
the variants that only change flags (``linear_scalar``, ``linear_constructed``) not at all.
"""

from __future__ import annotations

import sys
import time

from experiments import (
    classification,
    cli,
    construction,
    linear,
    minibatch,
    multistep,
    neighbours,
    nonlinear,
    ood,
    plateau,
    report,
    sweep,
)

# name: (entry point, its flags, the extra flags of a quick run)
EXPERIMENTS = {
    "linear": (linear.main, ["--no-progress"], ["--quick"]),
    "linear_scalar": (linear.main, ["--d-out", "1", "--no-progress"], ["--quick"]),
    "linear_constructed": (
        linear.main,
        ["--d-out", "1", "--layout", "constructed", "--no-progress"],
        ["--quick"],
    ),
    "plateau": (plateau.main, [], ["--quick"]),
    "construction": (construction.main, [], ["--max-steps", "2", "--batch", "64"]),
    "multistep": (multistep.main, [], ["--quick"]),
    "nonlinear": (nonlinear.main, [], ["--quick"]),
    "ood": (ood.main, ["--no-progress"], ["--quick"]),
    "sweep": (sweep.main, [], ["--quick"]),
    "neighbours": (neighbours.main, ["--no-progress"], ["--quick"]),
    "classification": (classification.main, [], ["--quick"]),
    "minibatch": (minibatch.main, [], ["--quick"]),
}


# The flags a smoke run adds to each experiment's quick ones (later flags win): a handful of steps and
# small evaluation sets; what stays is compilation, one program per shape.
_TINY = ["--train-steps", "4", "--eval-every", "2", "--batch-size", "32", "--eval-size", "256",
         "--sens-size", "32", "--warmup-steps", "1"]  # fmt: skip
SMOKE = {
    "linear": _TINY,
    "plateau": [],
    "construction": [],
    "multistep": ["--train-steps", "4"],
    "nonlinear": ["--train-steps", "4", "--eval-every", "2", "--batch-size", "32"],
    "ood": _TINY,
    "sweep": ["--train-steps", "4", "--batch-size", "32"],
    "neighbours": ["--train-steps", "4"],
    "classification": ["--smoke", "--train-steps", "4"],
    "minibatch": ["--smoke", "--train-steps", "4"],
}


def main(argv=None):
    parser = cli.report_parser(__doc__.splitlines()[0], EXPERIMENTS, what="experiment",
                               smoke="every code path, a handful of steps")  # fmt: skip
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file as they come
    names = args.only or list(SMOKE if args.smoke else EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"--only: unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    results = cli.results_folder(parser, args.results, small=args.quick or args.smoke,
                                 report="REPORT.md")  # fmt: skip
    start = time.perf_counter()
    seconds = {}
    for name in names:
        entry, flags, quick = EXPERIMENTS[name]
        print(f"\n== {name} ==", flush=True)
        begin = time.perf_counter()
        if args.quick or args.smoke:
            flags = flags + quick + (SMOKE.get(name, []) if args.smoke else [])
        entry(flags + ["--out", str(results / name)])
        seconds[name] = time.perf_counter() - begin
    report.main(["--results", str(results)])
    if args.quick or args.smoke:  # marked, so that a full-size call never writes over it
        path = results / "REPORT.md"
        path.write_text(f"{cli.SMALL_MARK}\n\n" + path.read_text())
    total = time.perf_counter() - start
    print("\n" + "  ".join(f"{n} {s:.0f} s" for n, s in seconds.items()))
    print(f"reproduced {len(names)} experiment(s) in {total / 60:.1f} min")
    return seconds


if __name__ == "__main__":
    main()
