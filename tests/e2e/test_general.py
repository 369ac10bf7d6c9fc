"""The general tasks' report: ``make reproduce-general QUICK=1`` (experiments/general.py) writing
REPORT-general.md. The ListOps experiment's own tests are in test_listops_experiment.py."""

import json

import pytest

from experiments import cli, general
from experiments import listops as experiment


def test_report_says_what_did_not_run(tmp_path):
    path = general.build(tmp_path, {}, "CPU")
    text = path.read_text()
    for name, title in general.TITLES.items():
        assert f"## {title}" in text
        assert f"_not run (`{general.command(name, 'CPU', tmp_path)}`)_" in text
    assert general.command("mqar", "CPU", tmp_path).startswith(
        "python -m experiments.mqar --sweep --out"
    )
    assert "## GRIL's ingredients, ablated\n\n_not run (`python -m experiments.ablation`)_" in text


def _lm(mixer, values, context=32):
    settings = {"mixer": mixer, "context": context, "train_steps": 8, "lr": 1e-2, "seed": 0}
    sweep = [{"settings": {**settings, "lr": lr}} for lr in (1e-3, 1e-2)]
    return {"mixer": mixer, "lr": 1e-2, "settings": settings, "sweep": sweep,
            "runs": [{"test_bpc": v, "bpc": v - 0.1} for v in values]}  # fmt: skip


def test_the_report_takes_the_ablation_and_its_full_variant_where_it_ran_alike(tmp_path):
    for folder, runs in [("lm", [_lm("gril", [2.0, 2.1]), _lm("attention", [1.9, 1.95])]),
                         ("ablation/lm", [_lm("gril_gated", [1.8, 1.85]),
                                          _lm("gril+ms", [1.95, 1.96])]),
                         ("ablation/mqar", [_lm("gril_gated", [0.5, 0.6])])]:  # fmt: skip
        (tmp_path / folder).mkdir(parents=True)
        summary = {"runs": runs, "wall_seconds": 1.0, "table": "table.md"}
        (tmp_path / folder / "summary.json").write_text(json.dumps(summary))
        (tmp_path / folder / "table.md").write_text(f"| {folder} |\n")
    (tmp_path / "ablation" / "table.md").write_text(
        "# GRIL's ingredients, ablated\n\n| gril_gated |\n"
    )
    report = general.build(tmp_path, {}, "CPU").read_text()
    assert "`python -m experiments.ablation`:\n\n| gril_gated |\n" in report
    lm = next(line for line in report.splitlines() if line.startswith("- Character-level"))
    assert lm.endswith("gril loses against attention (+0.125); loses against gril_gated (+0.225).")
    # the best by validation is compared (gril+ms is not)
    gated = "gril_gated wins against attention (−0.100)."
    assert (
        f"- Character-level language modelling, test bits per character, equal tokens: {gated}"
        in report
    )
    assert "gril+ms" not in report.split("## Multi-query")[0]
    # run at other settings than the general sweep's (or with other rates): not compared
    runs = [_lm("gril_gated", [1.0, 1.0], context=64)]
    (tmp_path / "ablation" / "lm" / "summary.json").write_text(json.dumps({"runs": runs}))
    assert "gril_gated wins" not in general.build(tmp_path, {}, "CPU").read_text()
    # a small-size ablation table is not shown in a full-size report
    (tmp_path / "ablation" / "table.md").write_text(f"{cli.SMALL_MARK}\n\n| gril_gated |\n")
    report = general.build(tmp_path, {}, "CPU").read_text()
    assert "_not run at this report's size (`python -m experiments.ablation`)_" in report


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
    for tuned in lm["runs"]:  # the protocol: the rate at half the steps, then the seed
        assert [r["settings"]["lr"] for r in tuned["sweep"]] == [1e-3]
        assert [r["settings"]["train_steps"] for r in tuned["sweep"]] == [2]
        assert [r["settings"]["seed"] for r in tuned["runs"]] == [0]
        assert all(r["settings"]["lr"] == tuned["lr"] for r in tuned["runs"])
        first = tuned["runs"][0]  # its sample, generated with the recurrent form
        assert (
            len(first["sample"]) == first["settings"]["sample_chars"] and first["sample"] in report
        )
        assert "test_bpc" in first and "test_bpc" not in tuned["sweep"][0]
    assert "Equal training time" in report and "## GRIL against each mixer" in report


def _tuned(mixer, values, **settings):
    return {"mixer": mixer, "lr": 1e-3, "settings": {"mixer": mixer, **settings}, "sweep": [{}],
            "runs": [{"test_accuracy": v} for v in values]}  # fmt: skip


def test_the_verdict_separates_wins_ties_and_losses_by_the_seed_spread(tmp_path):
    assert general.compare(_tuned("gril", [0.8, 0.9]), _tuned("ssm", [0.5, 0.7]), "accuracy",
                           True) == ("wins", pytest.approx(0.25))  # fmt: skip
    assert general.compare(_tuned("gril", [0.6, 0.9]), _tuned("ssm", [0.5, 0.7]), "accuracy",
                           True)[0] == "ties"  # fmt: skip
    assert general.compare(_tuned("gril", [0.1, 0.2]), _tuned("ssm", [0.5, 0.7]), "accuracy",
                           True)[0] == "loses"  # fmt: skip
    bpc = [{"test_bpc": 2.0}, {"test_bpc": 2.1}]  # lower is better: 2.0–2.1 beats 2.2–2.3
    ours, other = {"runs": bpc}, {"runs": [{"test_bpc": 2.2}, {"test_bpc": 2.3}]}
    assert general.compare(ours, other, "bpc", False) == ("wins", pytest.approx(-0.2))
    assert general.compare(ours, {"runs": []}, "bpc", False) == ("–", None)
    point = dict(seq_len=64, n_kv=4, d_model=64)
    runs = [_tuned("gril", [0.8, 0.9], **point), _tuned("gril_scalar", [0.6, 0.7], **point),
            _tuned("attention", [0.95, 1.0], **point)]  # fmt: skip
    (tmp_path / "mqar-general").mkdir()
    (tmp_path / "mqar-general" / "summary.json").write_text(json.dumps({"runs": runs}))
    lines = general.verdict(tmp_path)
    assert ("- Multi-query associative recall, L 64, 4 pairs, d_model 64: gril loses against "
            "gril_scalar" not in "\n".join(lines))  # fmt: skip
    assert (
        "- Multi-query associative recall, L 64, 4 pairs, d_model 64: gril wins against "
        "gril_scalar (+0.200); loses against attention (−0.125)."
    ) in lines
    assert (
        "- Multi-query associative recall, L 64, 4 pairs, d_model 64: gril_scalar loses "
        "against attention (−0.325)."
    ) in lines


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


def test_a_table_from_before_the_protocol_is_marked_as_such(tmp_path):
    folder = tmp_path / "listops"
    folder.mkdir()
    (folder / "table.md").write_text("| gril | 39.7% |\n")
    (folder / "summary.json").write_text(
        json.dumps({"runs": [{"mixer": "gril"}], "table": "table.md"})
    )
    report = general.build(tmp_path, {}, "CPU").read_text()
    assert "_Not yet run under the protocol (`python -m experiments.listops --sweep" in report
    assert "| gril | 39.7% |" in report


def test_a_seed_run_read_off_the_sweep_is_counted_once():
    """MQAR's first seed is its sweep's run at the chosen rate (``trained_in``): the report counts
    it, and its training time, once."""
    from experiments import general

    summary = {"runs": [{"sweep": [{"wall_seconds": 10.0}, {"wall_seconds": 20.0}],
                         "runs": [{"wall_seconds": 20.0, "trained_in": "lr-0.003"},
                                  {"wall_seconds": 15.0}]}]}  # fmt: skip
    assert general._count(summary) == 3 and general._trained(summary) == 45.0
