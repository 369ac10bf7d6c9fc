"""experiments.ablation: its table from the sweeps' summaries (the baselines only where they ran at
the same settings), and its code path at the smoke size."""

import pytest

from experiments import ablation, cli
from ssm_gd.seq import mixers

SETTINGS = {"params": 1000, "context": 32, "train_steps": 10, "seed": 0, "lr": 0.001}


def _tuned(mixer, values, lr=0.003, **settings):
    runs = [{"test_bpc": v, "params": 1234, "settings": {**SETTINGS, "seed": i}}
            for i, v in enumerate(values)]  # fmt: skip
    return {"mixer": mixer, "lr": lr, "settings": {**SETTINGS, "mixer": mixer, **settings},
            "runs": runs, "sweep": []}  # fmt: skip


def test_table_marks_the_ingredients_and_adds_only_the_baselines_run_alike():
    summary = {"runs": [_tuned("gril", [2.0, 2.2]), _tuned("gril_gated-data", [1.9, 1.95])]}
    general = {"runs": [_tuned("attention", [1.8, 1.8]),
                        _tuned("griffin", [1.7, 1.7], context=64),  # other settings: left out
                        _tuned("ssm", [1.9, 1.9])]}  # not a baseline  # fmt: skip
    by_task = {"lm": ablation.tuned(summary, general)}
    assert list(by_task["lm"]) == ["gril", "gril_gated-data", "attention"]
    lines = ablation.table(by_task).splitlines()
    assert lines[2] == "| gril |  |  |  |  | 2.100 ± 0.100 | 0.003 | 1,234 |"
    assert lines[3] == "| gril_gated-data | ✓ |  | ✓ | ✓ | 1.925 ± 0.025 | 0.003 | 1,234 |"
    assert lines[4] == "| *attention* | – | – | – | – | 1.800 ± 0.000 | 0.003 | 1,234 |"
    assert ablation._ingredients("gril_gated") == list(mixers.INGREDIENTS)
    assert ablation._ingredients("gril+ms") == ["ms"]


def test_the_best_variant_is_chosen_on_validation_never_on_test():
    rows = {"gril+ms": _tuned("gril+ms", [2.0, 2.0]), "gril_gated": _tuned("gril_gated", [1.9, 1.9]),
            "attention": _tuned("attention", [1.0, 1.0])}  # fmt: skip
    for name, validation in (("gril+ms", 1.7), ("gril_gated", 1.8), ("attention", 0.5)):
        for run in rows[name]["runs"]:
            run["bpc"] = validation  # gril+ms: worse on test, better on validation
    assert ablation.best(rows, "lm") == "gril+ms"  # a baseline is never the best GRIL
    rows["gril+ms"]["runs"][1]["bpc"] = None  # a seed that did not finish: no mean
    assert ablation.best(rows, "lm") == "gril_gated"
    assert ablation.best({"attention": rows["attention"]}, "lm") is None


def test_smoke_run_writes_the_table_and_the_figure(tmp_path):
    ablation.main(["--smoke", "--results", str(tmp_path), "--only", "lm", "--rows", "gril_gated"])
    text = (tmp_path / "ablation" / "table.md").read_text()
    assert text.startswith(cli.SMALL_MARK)
    row = next(line for line in text.splitlines() if line.startswith("| gril_gated |"))
    assert "✓ | ✓ | ✓ | ✓" in row and "not run" not in row
    assert "The best GRIL by validation" in text and "lm: **gril_gated**" in text
    assert (tmp_path / "ablation" / "ablation.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "gril_fast"], "--rows: unknown variant"),
        (["--only", "listops"], "--only: unknown"),
    ],
)
def test_bad_flags_are_named(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        ablation.main(["--smoke", "--results", str(tmp_path), *argv])
    assert message in capsys.readouterr().err
