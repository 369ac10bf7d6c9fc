"""Character-level language modelling: one short run, the corpus and flag errors (from parse,
before any model), the budget's steps, and the sweep's continuation, table and samples."""

import dataclasses
import json
import math

import pytest

from experiments import lm as experiment
from ssm_gd.seq import mixers


def test_a_short_run_writes_its_summary_sample_and_curve(tmp_path):
    summary = experiment.main(["--quick", "--mixer", "attention", "--n-layers", "1", "--sample-chars", "37",
                               "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["params"] == summary["params"] > 0 and written["mixer"] == "attention"
    assert math.isfinite(written["bpc"]) and 0 < written["bpc"] < 10
    assert written["bpc"] == written["history"][-1]["val_bpc"]
    assert [r["step"] for r in written["history"]] == [0, 20, 40] == [0, 20, written["train_steps"]]
    assert written["history"][1]["train_loss"] > 0 and written["history"][2]["train_seconds"] > 0
    assert isinstance(written["sample"], str) and len(written["sample"]) == 37
    assert len(written["prompt"]) == 16  # half the quick context
    assert written["sample"] in (tmp_path / "samples.txt").read_text()
    assert (tmp_path / "curve.png").exists()


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        experiment.parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_data_errors_name_the_flag_before_any_model(capsys, tmp_path):
    out = ["--out", str(tmp_path / "out")]
    empty, binary, short = tmp_path / "empty.txt", tmp_path / "binary.bin", tmp_path / "short.txt"
    empty.write_text("")
    binary.write_bytes(b"abc\xff\xfe\x00def" * 10)
    short.write_text("a few characters, fewer than the context needs\n")
    for path, message in ((tmp_path / "missing.txt", "does not exist"), (empty, "is empty"),
                          (binary, "is not UTF-8"), (tmp_path, "is a directory")):  # fmt: skip
        err = _error(capsys, ["--text", str(path), *out])
        assert "--text" in err and message in err
    err = _error(capsys, ["--text", str(short), *out])
    assert "--context 128" in err and "--text" in err and "characters" in err
    err = _error(capsys, ["--quick", "--context", "60000", *out])  # the 50,000-character parts
    assert "--context 60000 does not fit the standard library corpus" in err


def test_bad_flags_exit_2(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    for argv, message in ((["--steps", "10", "--budget", "5"], "--steps and --budget"),
                          (["--budget", "0"], "--budget must be a positive finite number"),
                          (["--lr", "nan"], "--lr must be a positive finite number"),
                          (["--steps", "0"], "--steps must be a positive integer"),
                          (["--context", "-1"], "--context must be a positive integer"),
                          (["--temperature", "-1"], "--temperature"),
                          (["--text", "x.txt", "--max-chars", "10"], "--max-chars"),
                          (["--mixer", "mamba"], "invalid choice")):  # fmt: skip
        assert message in _error(capsys, [*argv, *out])


def test_settings_of_a_budget_and_of_the_sweep(tmp_path):
    out = ["--out", str(tmp_path)]
    s = experiment.parse(["--quick", "--budget", "2", *out])[2]
    assert (s.budget, s.train_steps) == (2.0, None)
    s = experiment.parse(["--quick", "--sweep", *out])[2]
    assert (s.budget, s.train_steps) == (experiment.QUICK_SWEEP["budget"], None)
    s = experiment.parse(["--quick", "--sweep", "--steps", "30", *out])[2]
    assert (s.budget, s.train_steps) == (None, 30)
    assert experiment.budget_steps(10.0, 25.5, eval_every=100) == 200  # 255, a multiple of 100
    assert experiment.budget_steps(3.0, 25.5, eval_every=100) == 76
    assert experiment.budget_steps(0.01, 1.0, eval_every=100) == 1


def test_sweep_runs_every_mixer_continues_and_tabulates(tmp_path, monkeypatch):
    calls = []

    def fake_run(
        settings, corpus, out, progress=True, resume=False
    ):  # the sweep's bookkeeping, no training
        calls.append(settings.mixer)
        bpc = 2.0 + 0.1 * len(calls)
        return {"mixer": settings.mixer, "bpc": bpc, "params": 20_000 + len(calls), "d_model": 28,
                "vocab": corpus.vocab, "train_steps": 300, "steps_per_second": 100.0,
                "train_seconds": 3.0, "calibrated_steps_per_second": 110.0,
                "corpus": {"train_chars": len(corpus.train), "eval_chars": 512},
                "settings": dataclasses.asdict(settings), "prompt": "def f(x):",
                "sample": "```\n    return x" if settings.mixer == "ssm" else "pass",
                "history": [{"step": 0, "train_loss": None, "val_bpc": 6.5, "train_seconds": 0.0},
                            {"step": 300, "train_loss": bpc, "val_bpc": bpc,
                             "train_seconds": 3.0}]}  # fmt: skip

    monkeypatch.setattr(experiment, "run", fake_run)
    argv = ["--sweep", "--quick", "--out", str(tmp_path), "--no-progress"]
    summary = experiment.main(argv)
    assert calls == list(mixers.MIXERS) and len(summary["runs"]) == len(mixers.MIXERS)
    assert all(r["settings"]["budget"] == experiment.QUICK_SWEEP["budget"] for r in summary["runs"])
    table = (tmp_path / "table.md").read_text()
    # the seconds each mixer trained, its rate in training and the timed rate that set its steps
    assert "| gril | 2.100 | 20,001 | 28 | 300 | 3.0 | 100.00 | 110.00 |" in table
    assert "a budget of 3 seconds of training for every mixer" in table
    samples = (tmp_path / "samples.md").read_text()
    assert "## griffin" in samples and "````\n```\n    return x\n````" in samples
    assert (tmp_path / "curves.png").exists()
    experiment.main(argv)  # every run finished: read back, none trained again
    assert len(calls) == len(mixers.MIXERS)
    experiment.main([*argv, "--steps", "30"])  # new settings: trained again
    assert calls[len(mixers.MIXERS) :] == list(mixers.MIXERS)


@pytest.mark.parametrize("flag", ["--lr=inf", "--budget=nan", "--temperature=-1", "--steps=0"])
def test_numbers_out_of_range_are_refused_by_flag(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        experiment.main([flag, "--out", str(tmp_path)])
    assert info.value.code == 2
    assert f"error: {flag.split('=')[0]} must be" in capsys.readouterr().err
