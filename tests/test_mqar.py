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
from ssm_gd import trainer
from ssm_gd.seq import mqar


def test_mqar_sequences_pair_keys_with_values_and_ask_each_key_once():
    seq_len, n_kv, vocab = 24, 5, 40
    t = mqar.mqar(jax.random.key(0), batch=16, seq_len=seq_len, n_kv=n_kv, vocab=vocab)
    tokens, targets = np.asarray(t.tokens), np.asarray(t.targets)
    assert tokens.shape == targets.shape == (16, seq_len)
    fillers = []
    for seq, tgt in zip(tokens, targets, strict=True):
        keys, values = seq[: 2 * n_kv : 2], seq[1 : 2 * n_kv : 2]
        assert len(set(keys)) == n_kv and keys.min() >= 1 and keys.max() < vocab // 2
        assert values.min() >= vocab // 2 and values.max() < vocab
        assert (tgt[: 2 * n_kv] == -1).all()
        asked = np.flatnonzero(tgt >= 0)
        assert sorted(seq[asked]) == sorted(keys)  # every key asked exactly once
        pairs = dict(zip(keys, values, strict=True))
        assert all(tgt[p] == pairs[seq[p]] for p in asked)  # the answer is the key's value
        rest = seq[np.setdiff1d(np.arange(2 * n_kv, seq_len), asked)]
        assert not np.isin(rest, keys).any()  # fillers elsewhere: never one of the keys
        fillers.append(rest)
    # 16 × 9 fillers over the 40 - 5 allowed tokens: random, not one filler token (each token
    # missing with probability (34/35)^144 < 2%: fewer than 30 distinct, under 1e-4)
    assert len(np.unique(np.concatenate(fillers))) >= 30
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


def test_sweep_tunes_each_mixer_runs_the_seeds_continues_and_tabulates(tmp_path, monkeypatch):
    calls = []
    # validation accuracy by lr: attention best at 1e-2, linear attention at 1e-3
    best = {"attention": 1e-2, "linear_attention": 1e-3}

    def fake_run(settings, out, progress=True, resume=False, test=True):
        calls.append((settings.mixer, settings.d_model, settings.lr, settings.seed,
                      settings.train_steps, test, resume, out.name))  # fmt: skip
        acc = 0.9 if settings.lr == best[settings.mixer] else 0.5
        result = {"mixer": settings.mixer, "accuracy": acc, "val_loss": 1.0,
                  "params": 100 * settings.d_model, "steps_per_second": 2.0 + settings.seed,
                  "wall_seconds": 1.0, "settings": dataclasses.asdict(settings),
                  "history": [{"step": 0, "accuracy": 0.0}, {"step": 100, "accuracy": acc}]}  # fmt: skip
        if test:
            result["test_accuracy"] = acc - 0.1 * settings.seed
        return result

    monkeypatch.setattr(experiment, "run", fake_run)
    argv = ["--sweep", "--quick", "--out", str(tmp_path), "--no-progress", "--lrs", "1e-3", "1e-2",
            "--mixers", "linear_attention", "attention"]  # fmt: skip
    summary = experiment.main(argv)
    expected = []
    for d in (16, 32):
        for mixer in ("linear_attention", "attention"):
            # the sweep at the full budget (100 steps); the first seed's run is the chosen
            # rate's sweep run, resumed to read the test sequences
            expected += [(mixer, d, lr, 0, 100, False, False, f"lr-{lr!r}") for lr in (1e-3, 1e-2)]
            expected += [(mixer, d, best[mixer], 0, 100, True, True, f"lr-{best[mixer]!r}"),
                         (mixer, d, best[mixer], 1, 100, True, False, "seed-1")]  # fmt: skip
    assert calls == expected
    assert [r["lr"] for r in summary["runs"]] == [1e-3, 1e-2, 1e-3, 1e-2]
    reused = json.loads(
        (tmp_path / "L32-kv2-d16" / "attention" / "seed-0" / "summary.json").read_text()
    )
    assert reused["trained_in"] == "lr-0.01" and reused["test_accuracy"] == 0.9
    table = (tmp_path / "table.md").read_text()
    # test accuracy 0.9 and 0.8 over the two seeds: mean 0.85, half the range 0.05
    assert "| 32 | 2 | 16 | 0.850 ± 0.050 (0.001) | 0.850 ± 0.050 (0.01) |" in table
    assert "| 32 | 2 | 32 | 3,200, 2.5 steps/s | 3,200, 2.5 steps/s |" in table
    assert "0.001: **0.900**, 0.01: 0.500" in table and "0.001: 0.500, 0.01: **0.900**" in table
    for figure in summary["figures"]:
        assert (tmp_path / figure).exists()
    experiment.main(argv)  # every run finished: read back, none trained again
    assert len(calls) == len(expected)
    experiment.main([*argv, "--train-steps", "40", "--d-model", "16"])  # new settings: trained
    assert [c[:2] for c in calls[len(expected) :]] == [("linear_attention", 16)] * 4 + [
        ("attention", 16)
    ] * 4


def test_a_diverged_rate_ranks_last_and_is_not_retried(tmp_path, monkeypatch):
    calls = []

    def fake_run(settings, out, progress=True, resume=False, test=True):
        calls.append(settings.lr)
        if settings.lr == 1e-2:
            raise trainer.TrainingDiverged("training loss became nan at step 3")
        return {"mixer": settings.mixer, "accuracy": 0.4, "params": 1, "steps_per_second": 1.0,
                "settings": dataclasses.asdict(settings), "history": [],
                **({"test_accuracy": 0.3} if test else {})}  # fmt: skip

    monkeypatch.setattr(experiment, "run", fake_run)
    argv = ["--sweep", "--quick", "--d-model", "16", "--out", str(tmp_path), "--no-progress",
            "--lrs", "1e-2", "1e-3", "--mixers", "ssm"]  # fmt: skip
    summary = experiment.main(argv)
    assert calls == [1e-2, 1e-3, 1e-3, 1e-3] and summary["runs"][0]["lr"] == 1e-3
    assert "0.01: div., 0.001: **0.400**" in (tmp_path / "table.md").read_text()
    stored = json.loads((tmp_path / "L32-kv2-d16" / "ssm" / "lr-0.01" / "summary.json").read_text())
    assert "nan at step 3" in stored["diverged"]
    experiment.main(argv)
    assert len(calls) == 4  # the diverged run too is read back


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrs", "0"], "--lrs must be a positive"),
        (["--lrs", "1e-3", "1e-3"], "--lrs must be distinct"),
        (["--seeds", "0", "0"], "--seeds must be one or more distinct"),
        (["--sweep-fraction", "1.5"], "--sweep-fraction must be in (0, 1]"),
    ],
)
def test_bad_protocol_flags_exit_2_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        experiment.main(["--sweep", "--quick", *argv, "--out", str(tmp_path)])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrs", "1e-3"], "--lrs is for a --sweep"),
        (["--seeds", "0", "1"], "--seeds is for a --sweep"),
        (["--sweep", "--lr", "1e-3"], "--lr is for one run"),
        (["--sweep", "--seed", "2"], "--seed is for one run"),
        (["--sweep", "--resume"], "--resume is for one run"),
    ],
)
def test_flags_a_mode_would_ignore_are_refused(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        experiment.main(["--quick", *argv, "--out", str(tmp_path)])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_the_first_seed_reads_the_test_split_off_the_sweep_run_it_equals(tmp_path):
    """MQAR's sweep runs at the full budget: the chosen rate's run is the first seed's, resumed at
    its last step (nothing trained) to read the test sequences, exactly as a fresh run reads them."""
    one = ["--quick", "--mixer", "ssm", "--n-layers", "1", "--steps", "4", "--eval-every", "2",
           "--eval-size", "8", "--d-model", "16", "--no-progress"]  # fmt: skip
    fresh = experiment.main([*one, "--lr", "0.003", "--out", str(tmp_path / "fresh")])
    argv = [a for a in one if a not in ("--mixer", "ssm")]
    experiment.main(["--sweep", *argv, "--mixers", "ssm", "--lrs", "0.003", "--seeds", "0",
                     "--seq-len", "32", "--n-kv", "2", "--out", str(tmp_path / "sweep")])  # fmt: skip
    folder = tmp_path / "sweep" / "L32-kv2-d16" / "ssm"
    swept = json.loads((folder / "lr-0.003" / "summary.json").read_text())
    reused = json.loads((folder / "seed-0" / "summary.json").read_text())
    assert reused["settings"] == fresh["settings"] and reused["trained_in"] == "lr-0.003"
    assert reused["test_accuracy"] == fresh["test_accuracy"]
    assert reused["test_loss"] == fresh["test_loss"]
    assert reused["steps_per_second"] == swept["steps_per_second"] > 0  # its training's rate
    assert not (folder / "seed-0" / "checkpoints").exists()  # nothing trained there
