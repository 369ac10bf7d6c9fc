"""One run over 2 processes on this machine (``python -m experiments.launch``: ``jax.distributed``
on 127.0.0.1, gloo collectives, 2 CPU devices each, a global mesh of 4): the numbers of one process
on 4 devices, files written by process 0 alone, and a run killed mid-way resumed to the numbers
of the run that was not.

Every launch is bounded (the launcher's ``--timeout``, which stops its processes, and a wait a
little longer here that stops the launcher, which stops them too).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
AUDIT = pathlib.Path(__file__).with_name("write_audit.py")
LIMIT = 300  # seconds for one launch: ~40 s on 2 idle cores
# float64: the processes add the 4 devices' gradients in another order than one process does, so
# the runs agree to float64 rounding grown over 400 Adam steps, not bit for bit. 400 steps: on an
# idle CPU a shorter run ended before the kill test could stop it.
RTOL = 1e-12
LINEAR = ["-m", "experiments.linear", "--train-steps", "400", "--eval-every", "20",
          "--eval-size", "256", "--sens-size", "64", "--batch-size", "64", "--dtype", "float64",
          "--no-progress"]  # fmt: skip
LM = ["-m", "experiments.lm", "--quick", "--mixer", "gril", "--steps", "20", "--eval-every", "10",
      "--no-progress"]  # fmt: skip


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSM_GD_")}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _finish(proc, limit):
    """Wait for ``proc`` (a launcher or one process); past ``limit`` stop it (a launcher stops its
    processes on SIGTERM) and fail."""
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {limit} s")
    return out


def _launch(command, **popen):
    args = [sys.executable, "-m", "experiments.launch", "--processes", "2", "--cpu-devices", "2",
            "--timeout", str(LIMIT), "--", sys.executable, *command]  # fmt: skip
    return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)  # fmt: skip


def _launched(command):
    proc = _launch(command)
    out = _finish(proc, LIMIT + 60)
    assert proc.returncode == 0, out
    return out


def _one_process(command, devices=4):
    proc = subprocess.Popen([sys.executable, *command], cwd=ROOT,
                            env=_env(JAX_NUM_CPU_DEVICES=str(devices)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = _finish(proc, LIMIT)
    assert proc.returncode == 0, out
    return out


def _history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _numbers(rows, skip=("elapsed",)):
    """Every number of the history rows, by (step, name), timings left out."""
    return {(r["step"], k): v for r in rows for k, v in r.items()
            if isinstance(v, float) and k not in skip}  # fmt: skip


def _assert_close(got: dict, want: dict, rtol=RTOL):
    assert got.keys() == want.keys()
    worst = max(abs(got[k] - want[k]) / max(abs(want[k]), 1e-300) for k in want)
    assert worst <= rtol, worst


SUMMARY = ("val_loss", "gd_loss", "loss_ratio", "model_cos", "model_diff", "preds_diff",
           "param_match_error")  # fmt: skip


@pytest.fixture(scope="module")
def linear_runs(tmp_path_factory):
    """The linear experiment over 2 processes (each under the write audit) and in one process on
    4 devices, same flags."""
    tmp = tmp_path_factory.mktemp("linear")
    two, one, log = tmp / "two", tmp / "one", tmp / "writes"
    _launched([str(AUDIT), str(log), *LINEAR, "--out", str(two)])
    _one_process([*LINEAR, "--out", str(one)])
    return two, one, log


def test_two_processes_train_what_one_process_trains(linear_runs):
    two, one, _ = linear_runs
    _assert_close(_numbers(_history(two)), _numbers(_history(one)))
    s2, s1 = (json.loads((run / "summary.json").read_text()) for run in (two, one))
    _assert_close({k: s2[k] for k in SUMMARY}, {k: s1[k] for k in SUMMARY})
    assert len(s2["devices"]) == len(s1["devices"]) == 4  # the mesh spans both processes
    assert s2["loss_ratio"] < 1.05  # a run that trained, not two equal failures


def test_process_one_writes_nothing_of_the_runs_own(linear_runs):
    """Process 0 writes every file of the run; process 1 writes only its share of orbax's
    multi-process checkpoint (its array metadata, inside ``checkpoints/``)."""
    two, _, log = linear_runs
    lines = lambda i: pathlib.Path(f"{log}.{i}").read_text().splitlines()  # noqa: E731
    mine = lambda i: [x for x in lines(i) if str(two) in x]  # noqa: E731
    first = {pathlib.Path(x.split(" ", 1)[1]).name for x in mine(0)}
    assert {"history.jsonl", "summary.json", "config.json", "loss.png"} <= first  # the witness sees
    outside = [x for x in mine(1) if not x.split(" ", 1)[1].startswith(str(two / "checkpoints"))]
    assert outside == []
    assert all("/array_metadatas/process_1" in x for x in mine(1)), mine(1)


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_numbers(linear_runs, tmp_path):
    two, _, _ = linear_runs
    run = tmp_path / "killed"
    proc = _launch([*LINEAR, "--out", str(run)], start_new_session=True)
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # a line may be half written
            if any(r["step"] > 0 for r in _history(run)):
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the launcher stops both processes
    _finish(proc, 60)
    steps = [r["step"] for r in _history(run)]
    assert not (run / "summary.json").exists() and steps[-1] < 400, steps  # stopped mid-way
    out = _launched([*LINEAR, "--out", str(run), "--resume"])
    assert "loss ratio" in out
    _assert_close(_numbers(_history(run)), _numbers(_history(two)), rtol=0.0)  # the same program


def test_a_language_model_on_two_processes_trains_what_one_process_trains(tmp_path):
    """float32: the gradients' sum in another order, rounding grown over 20 steps."""
    two, one = tmp_path / "two", tmp_path / "one"
    _launched([*LM, "--out", str(two)])
    _one_process([*LM, "--out", str(one)])
    s2, s1 = (json.loads((run / "summary.json").read_text()) for run in (two, one))
    for key in ("val_bpc", "train_loss"):
        got = np.array([r[key] for r in s2["history"] if r[key] is not None])
        want = np.array([r[key] for r in s1["history"] if r[key] is not None])
        np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(s2["test_bpc"], s1["test_bpc"], rtol=1e-5)
    assert s2["sample"] == s1["sample"]
