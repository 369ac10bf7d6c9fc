"""experiments.launch: its flags, a failing process stopping the others, --timeout, the relayed
output, and the programs that run in one process refusing to be launched as several."""

import os
import subprocess
import sys
import time

import pytest

from experiments import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, limit=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSM_GD_")}
    return subprocess.run([sys.executable, "-m", "experiments.launch", *args], cwd=ROOT,
                          env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          timeout=limit)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processes", "2"], "follows '--'"),
        (["--"], "no command"),
        (["--processes", "0", "--", "true"], "--processes must be a positive integer"),
        (["--cpu-devices", "0", "--", "true"], "--cpu-devices must be a positive integer"),
        (["--port", "70000", "--", "true"], "--port must be in"),
        (["--timeout", "0", "--", "true"], "--timeout must be a positive"),
    ],
)
def test_bad_flags_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        launch.parse(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_each_process_is_told_its_place_and_the_others_speak_prefixed():
    show = ("import os; print(os.environ['SSM_GD_PROCESS_ID'], os.environ['SSM_GD_NUM_PROCESSES'], "
            "os.environ['SSM_GD_COORDINATOR'].split(':')[0], os.environ['JAX_NUM_CPU_DEVICES'])")  # fmt: skip
    done = _run("--processes", "3", "--cpu-devices", "2", "--", sys.executable, "-c", show)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "3", "127.0.0.1", "2"]
    assert sorted(done.stderr.splitlines()) == ["[process 1] 1 3 127.0.0.1 2",
                                                "[process 2] 2 3 127.0.0.1 2"]  # fmt: skip


def test_a_failing_process_stops_the_others_with_its_status():
    code = ("import os, sys, time\n"
            "if os.environ['SSM_GD_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(120)")  # fmt: skip
    start = time.monotonic()
    done = _run("--", sys.executable, "-c", code)
    assert done.returncode == 3
    assert "process 1 exited with status 3; stopping the others" in done.stderr
    assert time.monotonic() - start < 60  # process 0 did not sleep its 120 s


def test_a_process_killed_by_a_signal_is_named_and_its_status_is_the_shells():
    code = ("import os, signal, time\n"
            "if os.environ['SSM_GD_PROCESS_ID'] == '1': os.kill(os.getpid(), signal.SIGKILL)\n"
            "time.sleep(120)")  # fmt: skip
    done = _run("--", sys.executable, "-c", code)
    assert done.returncode == 128 + 9
    assert "process 1 was killed by SIGKILL; stopping the others" in done.stderr


def test_timeout_stops_every_process():
    start = time.monotonic()
    done = _run("--timeout", "1", "--", sys.executable, "-c", "import time; time.sleep(120)")
    assert done.returncode == 124
    assert "--timeout 1 s reached" in done.stderr
    assert time.monotonic() - start < 60


def test_a_program_that_runs_in_one_process_refuses_to_be_launched(tmp_path):
    done = _run("--", sys.executable, "-m", "experiments.mqar", "--quick", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "this program runs in one process" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_language_model_sweep_refuses_to_be_launched(tmp_path):
    done = _run("--", sys.executable, "-m", "experiments.lm", "--quick", "--sweep",
                "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 2
    assert "--sweep runs in one process" in done.stderr
