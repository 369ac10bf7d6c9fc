"""One command that says what this project does on the machine it runs on: the accelerator check.

    python -m experiments.device_check [--out results/bench] [--quick] [--deadline 450]
    make device-check

Made for the day a GPU or TPU is lent (a few minutes of it): one program, run once, that prints a
short table and writes ``<out>/<device>.json`` after every part (so a run stopped at its limit
keeps what it measured), ``<out>/<device>.txt`` (the table) and the benchmark's own files
(``mixers-<device>[-bfloat16].json/.png``). The parts, in order:

1. **backend**: JAX's backend, devices, versions;
2. **linear**: ``experiments.linear`` at its defaults (the paper's setting, 3,000 steps), evaluated
   every 100 steps: its seconds, steps/s, loss ratio to GD, and the *time to GD level* (the first
   evaluation within 1% of GD at its best step size, ``loss_ratio ≤ 1.01``);
3. **tests**: the part of the suite whose numbers depend on the backend (:data:`TESTS`: the scans,
   the GD-SSM layers and readout rules, GRIL's forms, every mixer's step form against its parallel
   form, export), run by pytest in a child process (float64 where the tests ask for it);
4. **bench float32 / bench bfloat16**: ``experiments.bench_mixers`` at L = 4,096 and 16,384 for
   every mixer (forward and forward+backward; generation after 4,096 and 16,384 tokens in float32);
5. **memory**: the device's peak bytes in use (``Device.memory_stats``; on a CPU the process's
   peak resident memory).

A part that fails is recorded (its error) and the next one runs; a part that would start after
``--deadline`` seconds is recorded as skipped; ``--parts`` runs some of them. ``--quick``: the
same parts at a smoke size (the linear experiment's quick size, L = 64, one test file), for the
CPU (about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from xml.etree import ElementTree

import jax

from experiments import bench_mixers, cli
from experiments.bench import device_name

#: The backend-dependent tests: every form of every recurrence and mixer against its reference.
TESTS = (
    "tests/test_scan.py",
    "tests/test_layers.py",
    "tests/test_readout.py",
    "tests/test_gril.py",
    "tests/test_gril_forms.py",
    "tests/test_models.py",
    "tests/test_export.py",
)
QUICK_TESTS = ("tests/test_readout.py",)
PARTS = ("backend", "linear", "tests", "bench-float32", "bench-bfloat16", "memory")
GD_LEVEL = 1.01  # "at GD level": validation loss within 1% of GD's at its best step size


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.out_flag(parser, "results/bench")
    parser.add_argument("--quick", action="store_true", help="a smoke size (the CPU, the tests)")
    parser.add_argument("--deadline", type=float, default=450.0,
                        help="seconds after which no part starts (default 450)")  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help=f"the parts to run, of {', '.join(PARTS)} (default: all)")  # fmt: skip
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384],
                        help="the benchmark's sequence lengths (default 4096 16384)")  # fmt: skip
    parser.add_argument("--positions", type=int, nargs="+", default=[4096, 16384],
                        help="the prompt lengths of the generation benchmark (default 4096 16384)")  # fmt: skip
    parser.add_argument("--test-workers", type=int, default=0,
                        help="pytest-xdist workers for the tests (default 0: one process; on an "
                             "accelerator several share it, compiling in parallel)")  # fmt: skip
    parser.add_argument("--test-timeout", type=float, default=240.0,
                        help="seconds the tests may take (default 240)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.test_workers < 0:
        parser.error("--test-workers must be a non-negative integer")
    for name in ("lengths", "positions"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive integers")
    for name in ("deadline", "test_timeout"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive number of seconds")
    return args, cli.run_folder(parser, args)


def backend() -> dict:
    devices = jax.devices()
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    return {"backend": jax.default_backend(), "devices": [str(d) for d in devices],
            "device_kind": devices[0].device_kind, "python": platform.python_version(),
            **versions}  # fmt: skip


def linear(quick: bool) -> dict:
    from experiments import linear as experiment

    with tempfile.TemporaryDirectory() as scratch:  # its checkpoints and figures: not kept
        argv = ["--out", scratch, "--no-progress", "--eval-every", "100"]
        start = time.perf_counter()
        summary = experiment.main([*argv, "--quick"] if quick else argv)
        seconds = time.perf_counter() - start
        history = [json.loads(line) for line in open(os.path.join(scratch, "history.jsonl"))]
    reached = [row for row in history if row.get("loss_ratio") is not None
               and row["loss_ratio"] <= GD_LEVEL]  # fmt: skip
    return {
        "seconds": seconds,
        "train_steps": summary["train_steps"],
        "train_steps_per_second": summary["train_steps_per_second"],
        "loss_ratio": summary["loss_ratio"],
        "model_cos": summary["model_cos"],
        "gd_level": GD_LEVEL,
        "step_at_gd_level": reached[0]["step"] if reached else None,
        "seconds_to_gd_level": reached[0]["elapsed"] if reached else None,
    }


def tests(files, timeout: float, workers: int = 0) -> dict:
    """pytest on ``files`` in a child process (``workers``: pytest-xdist's, sharing the device,
    its memory taken as needed). The tally: the JUnit report's when pytest finishes; when it is
    stopped at ``timeout`` (the child and its workers killed together), the results it had
    printed, one line per test (``stopped``: true)."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        report, log = os.path.join(scratch, "junit.xml"), os.path.join(scratch, "log")
        command = [sys.executable, "-m", "pytest", *files, "-o", "addopts=", "-v", "-rfE",
                   *(["-n", str(workers)] if workers else ["-p", "no:xdist"]),
                   "-p", "no:cacheprovider", "-p", "no:warnings", f"--junitxml={report}"]  # fmt: skip
        with open(log, "w") as sink:
            child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # fmt: skip
            try:
                code, stopped = child.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # the workers too: they hold device memory
                code, stopped = child.wait(), True
        output = open(log).read()
        tally = {}
        if not stopped and os.path.exists(report):
            suite = ElementTree.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            tally = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    lines = output.splitlines()
    failures = sorted({line.split("FAILED", 1)[1].strip() for line in lines if " FAILED " in line
                       or line.startswith("FAILED ")})  # fmt: skip
    if tally:
        passed = tally["tests"] - tally["failures"] - tally["errors"] - tally["skipped"]
        counts = (passed, tally["failures"], tally["errors"], tally["skipped"])
    else:  # stopped, or no report: what it printed
        counts = tuple(sum(f" {word}" in line and "::" in line for line in lines)
                       for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"))  # fmt: skip
    return {"files": list(files), "returncode": None if stopped else code, "stopped": stopped,
            "seconds": time.perf_counter() - start, "passed": counts[0], "failed": counts[1],
            "errors": counts[2], "skipped": counts[3], "failures": failures[:40],
            "tail": output[-12000:]}  # fmt: skip


def bench(out, dtype: str, args) -> dict:
    argv = ["--out", str(out), "--dtype", dtype, "--repeats", "3", "--max-gb", "40"]
    if args.quick:
        argv += ["--quick", "--lengths", "64", "--positions", "64", "--repeats", "1"]
    else:
        argv += ["--lengths", *map(str, args.lengths), "--positions", *map(str, args.positions)]
    if dtype != "float32":
        argv += ["--no-generation"]
    result = bench_mixers.main(argv)
    return {"throughput": result["throughput"], "generation": result["generation"],
            "settings": result["settings"]}  # fmt: skip


def memory() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"device_peak_gb": None if peak is None else peak / 1e9,
            "device_limit_gb": stats.get("bytes_limit", 0) / 1e9 or None,
            "process_peak_rss_gb": rss / 1e9}  # fmt: skip


def table(result: dict) -> str:
    """The short table the check prints: one line per part."""
    lines = [f"device check on {result['device']} ({result['wall_seconds']:.0f} s)", ""]
    parts = result["parts"]
    for name, part in parts.items():
        if "error" in part or "not_started" in part:
            lines.append(f"{name:<16} {part.get('not_started') or 'FAILED: ' + part['error']}")
            continue
        if name == "backend":
            text = (f"{part['backend']} · {part['device_kind']} × {len(part['devices'])} · "
                    f"jax {part['jax']}, flax {part['flax']}")  # fmt: skip
        elif name == "linear":
            gd = part["seconds_to_gd_level"]
            text = (f"{part['train_steps']} steps in {part['seconds']:.1f} s "
                    f"({part['train_steps_per_second']:.0f} steps/s), loss ratio "
                    f"{part['loss_ratio']:.4f}, GD level (≤ {GD_LEVEL}) "
                    + ("not reached" if gd is None else
                       f"at step {part['step_at_gd_level']}, {gd:.1f} s"))  # fmt: skip
        elif name == "tests":
            text = (f"{part['passed']} passed, {part['failed']} failed, {part['errors']} errors "
                    f"in {part['seconds']:.0f} s")  # fmt: skip
            if part.get("stopped"):
                text += " (stopped at --test-timeout: the tests not yet run are not counted)"
            if part.get("failures"):
                text += "; failed: " + ", ".join(part["failures"][:6])
        elif name.startswith("bench"):
            rows = part["throughput"]
            ok = [
                r for r in rows if "tokens_per_second" in r and r["program"] == "forward+backward"
            ]
            failed = [r for r in rows if "failed" in r]
            longest = max((r["length"] for r in ok), default=None)
            best = {r["mixer"]: r["tokens_per_second"] for r in ok if r["length"] == longest}
            speeds = ", ".join(f"{m} {v / 1e6:.2f}M" for m, v in best.items())
            text = (f"fwd+bwd tok/s at L={longest}: {speeds}" if best else "nothing timed") + (
                f"; {len(failed)} programs failed" if failed else "")  # fmt: skip
        elif name == "memory":
            peak = part["device_peak_gb"]
            text = f"device peak {peak:.2f} GB" if peak is not None else "device peak: n/a"
            text += f", process peak RSS {part['process_peak_rss_gb']:.2f} GB"
        else:
            text = json.dumps(part)[:200]
        lines.append(f"{name:<16} {text}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, out = parse(argv)
    start = time.perf_counter()
    result = {"device": device_name(), "quick": args.quick, "parts": {}}
    path = out / f"{result['device']}.json"
    parts = {
        "backend": backend,
        "linear": lambda: linear(args.quick),
        "tests": lambda: tests(
            QUICK_TESTS if args.quick else TESTS, args.test_timeout, args.test_workers
        ),
        "bench-float32": lambda: bench(out, "float32", args),
        "bench-bfloat16": lambda: bench(out, "bfloat16", args),
        "memory": memory,
    }
    for name, part in parts.items():
        if name not in args.parts:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > args.deadline and name != "memory":
            result["parts"][name] = {"not_started": f"not started: {elapsed:.0f} s > --deadline"}
        else:
            print(f"== {name} ({elapsed:.0f} s in)", flush=True)
            t0 = time.perf_counter()
            try:
                result["parts"][name] = {**part(), "part_seconds": time.perf_counter() - t0}
            except Exception as error:  # recorded, and the next part runs
                traceback.print_exc()
                result["parts"][name] = {"error": f"{type(error).__name__}: {error}"[:500],
                                         "part_seconds": time.perf_counter() - t0}  # fmt: skip
        result["wall_seconds"] = time.perf_counter() - start
        path.write_text(json.dumps(result, indent=2))
    text = table(result)
    (out / f"{result['device']}.txt").write_text(text)
    print(text, end="")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
