"""The general tasks' experiments: ListOps (one short run, its flags, the sweep's bookkeeping) and
``make reproduce-general QUICK=1`` (experiments/general.py) writing REPORT-general.md."""

import dataclasses
import json

import pytest

from experiments import general
from experiments import listops as experiment
from ssm_gd.seq import mixers


def test_a_short_listops_run_writes_its_summary(tmp_path):
    summary = experiment.main(["--quick", "--mixer", "ssm", "--steps", "10", "--eval-every", "5",
                               "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["params"] == summary["params"] > 0
    assert 0 <= written["accuracy"] <= 1 and 0 <= written["train_accuracy"] <= 1
    assert [r["step"] for r in written["history"]] == [0, 5, 10]
    assert written["chance"] == 0.1 and 0 < written["majority"] < 1
    assert (tmp_path / "accuracy.png").exists()
    # the test set's size and accuracy: a multiple of 1 / n_test
    n_test = written["settings"]["n_test"]
    assert abs(written["accuracy"] * n_test - round(written["accuracy"] * n_test)) < 1e-9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-depth", "2", "--max-args", "2", "--min-length", "30"], "no expression has"),
        (["--min-length", "50", "--max-length", "40"], "--min-length must be <= --max-length"),
        (["--quick", "--lra"], "--quick and --lra are two sizes"),
        (["--params", "0"], "--params must be a positive integer"),
        (["--steps", "0"], "--train-steps must be a positive integer"),
        (["--mixer", "mamba"], "invalid choice"),
    ],
)
def test_bad_listops_flags_exit_2_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_listops_sweep_trains_every_mixer_continues_and_tabulates(tmp_path, monkeypatch):
    calls = []

    def fake_run(
        settings, out, progress=True, data=None, resume=False
    ):  # the sweep's bookkeeping only
        calls.append(settings.mixer)
        acc = 0.1 * len(calls)
        out.mkdir(parents=True, exist_ok=True)
        return {"mixer": settings.mixer, "accuracy": acc, "train_accuracy": acc, "chance": 0.1,
                "majority": 0.15, "mean_length": 20.0, "params": 100 * len(calls), "d_model": 8,
                "steps_per_second": 1.0, "wall_seconds": 1.0,
                "settings": dataclasses.asdict(settings),
                "history": [{"step": 0, "accuracy": 0.0}, {"step": 30, "accuracy": acc}]}  # fmt: skip

    monkeypatch.setattr(experiment, "run", fake_run)
    argv = ["--sweep", "--quick", "--out", str(tmp_path), "--no-progress"]
    summary = experiment.main(argv)
    assert calls == list(mixers.MIXERS) and len(summary["runs"]) == len(mixers.MIXERS)
    table = (tmp_path / "table.md").read_text()
    assert "| gril | 10.0% | 10.0% | 100 | 8 |" in table and "| griffin | 50.0% |" in table
    assert "Chance 10.0%, the majority class 15.0%" in table
    for name, accuracy in experiment.ANCHORS:  # the published numbers, with their settings
        assert f"| {name} | {accuracy:.1%} |" in table
    experiment.main(argv)  # every run finished: read back, none trained again
    assert len(calls) == len(mixers.MIXERS)
    experiment.main([*argv, "--steps", "20"])  # new settings: trained again
    assert calls[len(mixers.MIXERS) :] == list(mixers.MIXERS)


def test_report_says_what_did_not_run(tmp_path):
    path = general.build(tmp_path, {}, "CPU")
    text = path.read_text()
    for name, title in general.TITLES.items():
        assert f"## {title}" in text
        assert f"_not run (`{general.command(name, 'CPU', tmp_path)}`)_" in text
    assert "--d-model 64 --out" in general.command("mqar", "CPU", tmp_path)


def test_smoke_reproduce_general_writes_every_sweep_and_the_report(tmp_path):
    # The code path of `make reproduce-general` at the test suite's size: two mixers, a few steps.
    seconds = general.main(["--smoke", "--results", str(tmp_path)])
    assert list(seconds) == list(general.EXPERIMENTS)
    report = (tmp_path / "REPORT-general.md").read_text()
    assert "(smoke sizes)" in report
    for name, title in general.TITLES.items():
        folder = general.FOLDERS[name]
        summary = json.loads((tmp_path / folder / "summary.json").read_text())
        assert [r["mixer"] for r in summary["runs"]] == list(general.SMOKE_MIXERS)
        assert f"## {title}" in report
        assert (tmp_path / folder / "table.md").read_text().strip() in report
        for figure in summary["figures"]:
            assert (tmp_path / folder / figure).exists() and f"({folder}/{figure})" in report
    for anchor, accuracy in experiment.ANCHORS:  # LRA's published numbers beside ours
        assert f"| {anchor} | {accuracy:.1%} |" in report
    lm = json.loads((tmp_path / "lm" / "summary.json").read_text())
    for r in lm["runs"]:  # every mixer's sample, generated with the recurrent form
        assert len(r["sample"]) == r["settings"]["sample_chars"] and r["sample"] in report
        assert f"| {r['train_seconds']:.1f} |" in report  # the seconds each mixer trained


def test_general_checks_its_own_results_folder_first(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(SystemExit) as info:
        general.main(["--results", str(not_a_folder)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --results" in err and "is not a folder" in err and "mqar" not in err


def test_a_small_call_never_writes_over_full_size_results(tmp_path, capsys):
    full, small = tmp_path / "full", tmp_path / "small"
    full.mkdir()
    small.mkdir()
    general.build(full, {}, "CPU")  # a full-size report, as `make reproduce-general` writes
    before = (full / "REPORT-general.md").read_text()
    for argv in (["--quick", "--only", "listops"], ["--smoke"]):
        with pytest.raises(SystemExit) as info:
            general.main([*argv, "--results", str(full)])
        assert info.value.code == 2
        assert "holds a full-size REPORT-general.md" in capsys.readouterr().err
    assert (full / "REPORT-general.md").read_text() == before
    general.build(small, {}, "quick")
    with pytest.raises(SystemExit):  # nor a full-size call over a small one
        general.main(["--only", "listops", "--results", str(small)])
    assert "holds a small-size REPORT-general.md" in capsys.readouterr().err
