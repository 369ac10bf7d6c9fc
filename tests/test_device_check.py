"""The accelerator check (experiments/device_check.py) on the CPU: its flags, the tally of a real
pytest child, a part that fails or runs past the deadline, and the table it prints. Its heavy parts
(the linear experiment, the benchmark) are the experiments' own code paths, tested beside them."""

import json
import time

import pytest

from experiments import device_check


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--deadline", "0"], "--deadline must be a positive"),
        (["--test-timeout", "-1"], "--test-timeout must be a positive"),
        (["--test-workers", "-2"], "--test-workers must be a non-negative"),
        (["--parts", "gpu"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        device_check.main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_tests_part_counts_what_a_real_pytest_run_passed_and_failed(tmp_path, monkeypatch):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_two.py").write_text(
        "def test_passes():\n    assert 1 + 1 == 2\n\n\ndef test_fails():\n    assert 1 + 1 == 3\n"
    )
    monkeypatch.setattr(device_check, "QUICK_TESTS", (str(suite / "test_two.py"),))
    out = tmp_path / "out"
    result = device_check.main(["--quick", "--parts", "backend", "tests", "memory",
                                "--out", str(out)])  # fmt: skip
    parts = result["parts"]
    assert list(parts) == ["backend", "tests", "memory"]
    assert parts["backend"]["backend"] == "cpu"
    tally = parts["tests"]
    assert (tally["passed"], tally["failed"], tally["errors"]) == (1, 1, 0)
    assert tally["returncode"] == 1 and any("test_fails" in line for line in tally["failures"])
    assert parts["memory"]["process_peak_rss_gb"] > 0
    stored = json.loads((out / f"{result['device']}.json").read_text())
    assert stored["parts"]["tests"]["passed"] == 1
    table = (out / f"{result['device']}.txt").read_text()
    assert "1 passed, 1 failed, 0 errors" in table


def test_tests_stopped_at_the_timeout_count_what_ran_and_kill_the_child(tmp_path, monkeypatch):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_slow.py").write_text(
        "import time\n\n\ndef test_quick():\n    pass\n\n\ndef test_slow():\n    time.sleep(600)\n"
    )
    started = time.perf_counter()
    part = device_check.tests([str(suite / "test_slow.py")], timeout=8.0)
    assert time.perf_counter() - started < 60  # the sleeping test was killed, not waited for
    assert part["stopped"] and part["returncode"] is None
    assert (part["passed"], part["failed"], part["errors"]) == (1, 0, 0)


def test_a_failing_part_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    def broken(quick):
        raise RuntimeError("no such backend feature")

    monkeypatch.setattr(device_check, "linear", broken)
    result = device_check.main(["--quick", "--parts", "linear", "memory", "--out", str(tmp_path)])
    assert result["parts"]["linear"]["error"] == "RuntimeError: no such backend feature"
    assert "process_peak_rss_gb" in result["parts"]["memory"]
    assert "FAILED: RuntimeError: no such backend feature" in device_check.table(result)


def test_parts_past_the_deadline_are_skipped_and_said(tmp_path):
    result = device_check.main(["--quick", "--parts", "backend", "linear", "memory",
                                "--deadline", "1e-9", "--out", str(tmp_path)])  # fmt: skip
    for name in ("backend", "linear"):
        assert result["parts"][name]["not_started"].startswith("not started")
    assert "process_peak_rss_gb" in result["parts"]["memory"]  # memory is always read


def test_the_table_has_a_line_per_part():
    result = {
        "device": "nvidia_h200-x1",
        "wall_seconds": 300.0,
        "parts": {
            "backend": {
                "backend": "gpu",
                "device_kind": "NVIDIA H200",
                "devices": ["cuda:0"],
                "jax": "0.11.2",
                "flax": "0.12.8",
            },  # fmt: skip
            "linear": {
                "train_steps": 3000,
                "seconds": 20.0,
                "train_steps_per_second": 400.0,
                "loss_ratio": 1.0001,
                "step_at_gd_level": 500,
                "seconds_to_gd_level": 4.5,
            },  # fmt: skip
            "tests": {
                "passed": 320,
                "failed": 1,
                "errors": 0,
                "stopped": True,
                "failures": ["tests/test_x.py::test_y"],
                "seconds": 240.0,
            },  # fmt: skip
            "bench-float32": {
                "throughput": [
                    {
                        "mixer": "gril",
                        "length": 4096,
                        "program": "forward+backward",
                        "tokens_per_second": 2e6,
                    },
                    {
                        "mixer": "gril",
                        "length": 16384,
                        "program": "forward+backward",
                        "tokens_per_second": 3e6,
                    },
                    {
                        "mixer": "attention",
                        "length": 16384,
                        "program": "forward+backward",
                        "failed": "XlaRuntimeError: out of memory",
                    },
                ]
            },  # fmt: skip
            "bench-bfloat16": {"not_started": "not started: 460 s > --deadline"},
            "memory": {"device_peak_gb": 12.5, "process_peak_rss_gb": 3.0},
        },
    }
    lines = device_check.table(result).splitlines()
    assert lines[0] == "device check on nvidia_h200-x1 (300 s)"
    assert lines[2].startswith("backend") and "gpu · NVIDIA H200 × 1" in lines[2]
    assert "GD level (≤ 1.01) at step 500, 4.5 s" in lines[3]
    assert lines[4].startswith("tests            320 passed, 1 failed, 0 errors in 240 s (stopped")
    assert lines[4].endswith("; failed: tests/test_x.py::test_y")
    assert "L=16384: gril 3.00M; 1 programs failed" in lines[5]
    assert lines[6].endswith("not started: 460 s > --deadline")
    assert "device peak 12.50 GB" in lines[7]
