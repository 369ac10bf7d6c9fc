"""Character-level language modelling: one short run, the corpus and flag errors (from parse,
before any model), the budget's steps, and the sweep's continuation, table and samples."""

import dataclasses
import json
import math

import pytest

from experiments import lm as experiment


def test_a_short_run_writes_its_summary_sample_and_curve(tmp_path):
    summary = experiment.main(["--quick", "--mixer", "attention", "--n-layers", "1", "--sample-chars", "37",
                               "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["params"] == summary["params"] > 0 and written["mixer"] == "attention"
    assert math.isfinite(written["bpc"]) and 0 < written["bpc"] < 10
    assert written["bpc"] == written["history"][-1]["val_bpc"]  # validation
    assert math.isfinite(written["test_bpc"]) and written["test_bpc"] != written["bpc"]  # test
    assert [r["tokens"] for r in written["history"]] == [0, 20 * 8 * 32, 40 * 8 * 32]
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
    assert "--context 256" in err and "--text" in err and "characters" in err
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


def test_settings_of_a_budget_and_of_the_sweep(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    s = experiment.parse(["--quick", "--budget", "2", *out])[2]
    assert (s.budget, s.train_steps) == (2.0, None)
    s = experiment.parse(["--quick", "--sweep", *out])[2]  # equal tokens: steps, no budget
    assert (s.budget, s.train_steps) == (None, experiment.QUICK["train_steps"])
    s = experiment.parse(["--quick", "--sweep", "--steps", "30", *out])[2]
    assert (s.budget, s.train_steps) == (None, 30)
    assert "--budget is for one run" in _error(capsys, ["--sweep", "--budget", "5", *out])
    assert experiment.budget_steps(10.0, 25.5, eval_every=100) == 200  # 255, a multiple of 100
    assert experiment.budget_steps(3.0, 25.5, eval_every=100) == 76
    assert experiment.budget_steps(0.01, 1.0, eval_every=100) == 1


def test_the_held_out_text_is_halved_into_validation_and_test(tmp_path, capsys):
    corpus = experiment.load_corpus(None, experiment.Settings(max_chars=50_000))
    validation, test = experiment.held_out_parts(corpus)
    assert len(validation) + len(test) == len(corpus.held_out)
    assert list(validation) + list(test) == list(corpus.held_out)
    path = tmp_path / "small.txt"
    path.write_text("x" * 2000)  # 100 held-out characters: halves of 50
    assert "halves (validation and test) hold 50" in _error(
        capsys, ["--text", str(path), "--context", "60", "--out", str(tmp_path / "o")]
    )


def _curve(bpc: float, seconds: float) -> list[dict]:
    return [{"step": 0, "train_loss": None, "val_bpc": 6.5, "train_seconds": 0.0, "tokens": 0},
            {"step": 40, "train_loss": bpc, "val_bpc": bpc, "train_seconds": seconds,
             "tokens": 40 * 8 * 32}]  # fmt: skip


def test_sweep_compares_at_equal_tokens_continues_and_tabulates(tmp_path, monkeypatch):
    calls = []
    seconds = {"attention": 4.0, "ssm": 2.0}  # ssm trains twice as fast

    def fake_run(settings, corpus, out, progress=True, resume=False, test=True):
        calls.append((settings.mixer, settings.lr, settings.seed, settings.train_steps, test))
        bpc = 2.0 + settings.lr * 100 + 0.1 * settings.seed  # the smaller rate is better
        time = seconds[settings.mixer] * settings.train_steps / 40
        r = {"mixer": settings.mixer, "bpc": bpc, "params": 20_000, "d_model": 28,
             "vocab": corpus.vocab, "train_steps": settings.train_steps,
             "tokens": settings.train_steps * 8 * 32,
             "steps_per_second": settings.train_steps / time, "train_seconds": time,
             "corpus": {"train_chars": len(corpus.train), "eval_chars": 512, "test_chars": 512},
             "settings": dataclasses.asdict(settings), "prompt": "def f(x):",
             "sample": "```\n    return x" if settings.mixer == "ssm" else "pass",
             "history": _curve(bpc, time)}  # fmt: skip
        if test:
            r["test_bpc"] = bpc + 0.5
        return r

    monkeypatch.setattr(experiment, "run", fake_run)
    argv = ["--sweep", "--quick", "--out", str(tmp_path), "--no-progress", "--lrs", "1e-3", "1e-2",
            "--mixers", "attention", "ssm"]  # fmt: skip
    summary = experiment.main(argv)
    expected = [("attention", lr, 0, 10, False) for lr in (1e-3, 1e-2)]
    expected += [("attention", 1e-3, seed, 40, True) for seed in (0, 1)]
    expected += [("ssm", lr, 0, 10, False) for lr in (1e-3, 1e-2)]
    expected += [("ssm", 1e-3, seed, 40, True) for seed in (0, 1)]
    assert calls == expected and [r["lr"] for r in summary["runs"]] == [1e-3, 1e-3]
    table = (tmp_path / "table.md").read_text()
    # test bpc 2.6 and 2.7 over the seeds: 2.650 ± 0.050; 40 steps × 8 × 32 = 10,240 tokens
    assert "| attention | 2.650 ± 0.050 | 0.001 | 20,000 | 28 | 10,240 | 10.00 | 4 |" in table
    assert "0.001: **2.100**, 0.01: 3.000" in table
    # equal time: at 2 s (ssm's whole run) attention is half-way along its 4-s curves
    assert "at 2 s" in table and "| ssm | 2.150 | 10,240 |" in table
    attention = (6.5 + 2.15) / 2  # the seeds' curves at 2 s: (6.5 + 2.1)/2 and (6.5 + 2.2)/2
    assert f"| attention | {attention:.3f} | 5,120 |" in table
    samples = (tmp_path / "samples.md").read_text()
    assert "## ssm" in samples and "````\n```\n    return x\n````" in samples
    for figure in summary["figures"]:
        assert (tmp_path / figure).exists()
    experiment.main(argv)  # every run finished: read back, none trained again
    assert len(calls) == len(expected)
    experiment.main([*argv, "--steps", "20"])  # new settings: trained again
    assert len(calls) == 2 * len(expected)


def test_bpc_at_interpolates_the_curve():
    history = [{"train_seconds": 0.0, "val_bpc": 6.0}, {"train_seconds": 2.0, "val_bpc": 4.0},
               {"train_seconds": 4.0, "val_bpc": 3.0}]  # fmt: skip
    assert experiment.bpc_at(history, 1.0) == 5.0 and experiment.bpc_at(history, 3.0) == 3.5
    assert experiment.bpc_at(history, 4.0) == 3.0 and experiment.bpc_at(history, 4.5) is None


@pytest.mark.parametrize("flag", ["--lr=inf", "--budget=nan", "--temperature=-1", "--steps=0"])
def test_numbers_out_of_range_are_refused_by_flag(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        experiment.main([flag, "--out", str(tmp_path)])
    assert info.value.code == 2
    assert f"error: {flag.split('=')[0]} must be" in capsys.readouterr().err
