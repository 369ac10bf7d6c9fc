"""The general tasks' report: ``make reproduce-general QUICK=1`` (experiments/general.py) writing
REPORT-general.md. The ListOps experiment's own tests are in test_listops_experiment.py."""

import json

import pytest

from experiments import general
from experiments import listops as experiment


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
