"""Multi-query associative recall: the sampler's structure, the masked loss, one short run, the
sweep's grid, continuation and table."""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import mqar as experiment
from ssm_gd.seq import mixers, mqar


def test_mqar_sequences_pair_keys_with_values_and_ask_each_key_once():
    seq_len, n_kv, vocab = 24, 5, 40
    t = mqar.mqar(jax.random.key(0), batch=16, seq_len=seq_len, n_kv=n_kv, vocab=vocab)
    tokens, targets = np.asarray(t.tokens), np.asarray(t.targets)
    assert tokens.shape == targets.shape == (16, seq_len)
    for seq, tgt in zip(tokens, targets, strict=True):
        keys, values = seq[: 2 * n_kv : 2], seq[1 : 2 * n_kv : 2]
        assert len(set(keys)) == n_kv and keys.min() >= 1 and keys.max() < vocab // 2
        assert values.min() >= vocab // 2 and values.max() < vocab
        assert (tgt[: 2 * n_kv] == -1).all()
        asked = np.flatnonzero(tgt >= 0)
        assert sorted(seq[asked]) == sorted(keys)  # every key asked exactly once
        pairs = dict(zip(keys, values, strict=True))
        assert all(tgt[p] == pairs[seq[p]] for p in asked)  # the answer is the key's value
        rest = np.setdiff1d(np.arange(2 * n_kv, seq_len), asked)
        assert (seq[rest] == 0).all()  # fillers elsewhere
    again = mqar.mqar(jax.random.key(0), batch=16, seq_len=seq_len, n_kv=n_kv, vocab=vocab)
    np.testing.assert_array_equal(again.tokens, t.tokens)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(vocab=3), "vocab must be >= 4"),
        (dict(n_kv=20), "n_kv distinct keys"),
        (dict(seq_len=10), "seq_len must be at least 3 \\* n_kv = 12"),
        (dict(batch=0), "batch must be a positive integer"),
    ],
)
def test_mqar_bad_arguments_are_named(kwargs, message):
    args = dict(batch=2, seq_len=16, n_kv=4, vocab=32) | kwargs
    with pytest.raises(ValueError, match=message):
        mqar.mqar(jax.random.key(0), **args)


def test_recall_loss_counts_the_asked_positions_only():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    targets = jnp.array([[0, 1, -1]])
    loss, accuracy = mqar.recall_loss(logits, targets)
    np.testing.assert_allclose(loss, -(np.log(0.5) + np.log(0.1)) / 2, rtol=1e-6)
    assert float(accuracy) == 0.5


def test_a_short_run_writes_its_summary(tmp_path):
    summary = experiment.main(["--quick", "--mixer", "linear_attention", "--train-steps", "20",
                               "--eval-every", "10", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["params"] == summary["params"] > 0 and 0 <= written["accuracy"] <= 1
    assert [r["step"] for r in written["history"]] == [0, 10, 20]
    assert (tmp_path / "accuracy.png").exists()


def test_bad_flags_exit_2(capsys, tmp_path):
    for argv, message in ((["--seq-len", "5"], "--seq-len must be at least"),
                          (["--mixer", "mamba"], "invalid choice"),
                          (["--d-model", "30"], "--d-model must be a multiple of 2 × --n-heads")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            experiment.main([*argv, "--out", str(tmp_path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_sweep_runs_the_grid_continues_and_tabulates(tmp_path, monkeypatch):
    calls = []

    def fake_run(
        settings, out, progress=True, resume=False
    ):  # the sweep's bookkeeping, without training
        calls.append((settings.mixer, settings.seq_len, settings.d_model))
        acc = 0.1 * len(calls)
        return {"mixer": settings.mixer, "accuracy": acc, "val_loss": 1.0, "params": 100 * len(calls),
                "steps_per_second": 1.0, "wall_seconds": 1.0,
                "settings": dataclasses.asdict(settings),
                "history": [{"step": 0, "accuracy": 0.0}, {"step": 100, "accuracy": acc}]}  # fmt: skip

    monkeypatch.setattr(experiment, "run", fake_run)
    argv = ["--sweep", "--quick", "--out", str(tmp_path), "--no-progress"]
    summary = experiment.main(argv)
    grid = [(m, 32, d) for d in (16, 32) for m in mixers.MIXERS]
    assert calls == grid and len(summary["runs"]) == len(grid)
    assert all(r["settings"]["train_steps"] == 100 for r in summary["runs"])
    table = (tmp_path / "table.md").read_text()
    assert "| 32 | 16 | 0.100 (100) |" in table and "| 32 | 32 |" in table
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "curves.png").exists()
    experiment.main(argv)  # every run finished: read back, none trained again
    assert len(calls) == len(grid)
    experiment.main([*argv, "--train-steps", "50", "--d-model", "16"])  # new settings: trained
    assert calls[len(grid) :] == [(m, 32, 16) for m in mixers.MIXERS]


ARGV = ["--quick", "--mixer", "ssm", "--n-layers", "1", "--steps", "4", "--eval-every", "2",
        "--eval-size", "8", "--no-progress"]  # fmt: skip


def test_resume_continues_an_interrupted_run_exactly(tmp_path):
    full = experiment.main([*ARGV, "--out", str(tmp_path / "full")])
    # An interruption after the step-2 checkpoint: the step-4 checkpoint never got written.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "4")
    resumed = experiment.main([*ARGV, "--out", str(tmp_path / "cut"), "--resume"])

    def numbers(history):
        return [{k: v for k, v in r.items() if k != "elapsed"} for r in history]

    assert numbers(resumed["history"]) == numbers(full["history"])  # exactly


def test_resume_without_a_run_says_so(tmp_path):
    with pytest.raises(SystemExit, match="error: --resume: .*checkpoint"):
        experiment.main([*ARGV, "--out", str(tmp_path), "--resume"])


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1e-3"])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        experiment.main([f"--lr={value}", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "error: --lr must be a positive finite number" in capsys.readouterr().err


def test_quick_runs_write_apart_from_full_size_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, out, _ = experiment.parse(["--quick"])
    assert out == pathlib.Path("results/quick/mqar")
    assert experiment.parse([])[1] == pathlib.Path("results/mqar")
    full = tmp_path / "full"
    full.mkdir()
    (full / "summary.json").write_text(json.dumps({"accuracy": 0.9, "settings": {}}))
    with pytest.raises(SystemExit) as info:  # a full-size run's folder: refused, untouched
        experiment.parse(["--quick", "--out", str(full)])
    assert info.value.code == 2 and "holds full-size results" in capsys.readouterr().err
    assert json.loads((full / "summary.json").read_text())["accuracy"] == 0.9
