"""``make reproduce QUICK=1``: every experiment at smoke size, then the report."""

import json

import pytest

from experiments import reproduce


def test_quick_reproduce_writes_every_experiment_and_the_report(tmp_path):
    seconds = reproduce.main(["--quick", "--results", str(tmp_path)])
    assert list(seconds) == list(reproduce.EXPERIMENTS)
    text = (tmp_path / "REPORT.md").read_text()
    for name in reproduce.EXPERIMENTS:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary, name
        for figure in (tmp_path / name).glob("*.png"):
            assert f"({name}/{figure.name})" in text, f"{name}/{figure.name} missing from REPORT.md"
    # Each section of the report is filled from its experiment's summary.
    for heading in ("Linear regression", "plateau", "Multi-step", "Out of distribution",
                    "Size sweep", "Non-linear", "construction equals"):  # fmt: skip
        assert heading in text
    # A quick run still learns: the default linear run is near GD after 300 steps.
    linear = json.loads((tmp_path / "linear" / "summary.json").read_text())
    assert linear["val_loss"] / linear["gd_loss"] < 1.05 and linear["model_cos"] > 0.99


def test_unknown_experiment_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--only: unknown experiment"):
        reproduce.main(["--only", "linear", "lienar", "--results", str(tmp_path)])
