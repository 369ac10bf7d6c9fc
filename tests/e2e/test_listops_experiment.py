"""The ListOps experiment (experiments/listops.py): its three splits, one short run, its flags,
and the sweep's protocol (rates on validation, seeds at the chosen rate, continuation, table)."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import listops as experiment
from ssm_gd.seq import listops, mixers
from ssm_gd.trainer import TrainingDiverged


def test_the_splits_differ_and_depend_on_the_data_seed_only():
    s = experiment.Settings(max_depth=3, max_args=4, min_length=8, max_length=40, n_train=60,
                            n_val=30, n_test=20)  # fmt: skip
    train, val, test = experiment.draw(s)
    assert (len(train.labels), len(val.labels), len(test.labels)) == (60, 30, 20)
    for a, b in ((train, val), (train, test), (val, test)):  # three streams
        assert not np.array_equal(a.tokens[:20], b.tokens[:20])
    # train and test as ssm_gd.seq.listops.splits draws them; validation from a third stream
    kwargs = dict(max_depth=3, max_args=4, min_length=8, max_length=40)
    old_train, old_test = listops.splits(60, 20, seed=0, **kwargs)
    np.testing.assert_array_equal(train.tokens, old_train.tokens)
    np.testing.assert_array_equal(test.tokens, old_test.tokens)
    assert experiment.validation_seed(0) not in listops.split_seeds(0)
    for other in (dataclasses.replace(s, seed=3), dataclasses.replace(s, mixer="attention")):
        for a, b in zip(experiment.draw(other), (train, val, test), strict=True):  # the same data
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
    for a, b in zip(experiment.draw(dataclasses.replace(s, data_seed=1)), (train, val, test),
                    strict=True):  # fmt: skip
        assert not np.array_equal(a.tokens, b.tokens)


def test_a_short_listops_run_writes_its_summary(tmp_path):
    summary = experiment.main(["--quick", "--mixer", "ssm", "--steps", "10", "--eval-every", "5",
                               "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["params"] == summary["params"] > 0 and written["quick"] is True
    for key in ("accuracy", "test_accuracy", "train_accuracy"):
        assert 0 <= written[key] <= 1
    assert [r["step"] for r in written["history"]] == [0, 5, 10]
    assert written["accuracy"] == written["history"][-1]["accuracy"]
    assert written["chance"] == 0.1 and 0 < written["majority"] < 1
    assert (tmp_path / "accuracy.png").exists()
    # validation through training, the test set once at the end: multiples of 1 / their sizes
    s = written["settings"]
    assert (s["n_val"], s["n_test"], s["data_seed"]) == (100, 100, 0)
    for key, n in (("accuracy", s["n_val"]), ("test_accuracy", s["n_test"])):
        assert abs(written[key] * n - round(written[key] * n)) < 1e-9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-depth", "2", "--max-args", "2", "--min-length", "30"], "no expression has"),
        (["--min-length", "50", "--max-length", "40"], "--min-length must be <= --max-length"),
        (["--quick", "--lra"], "--quick and --lra are two sizes"),
        (["--params", "0"], "--params must be a positive integer"),
        (["--steps", "0"], "--train-steps must be a positive integer"),
        (["--n-val", "0"], "--n-val must be a positive integer"),
        (["--data-seed", "-1"], "--data-seed must be a non-negative integer"),
        (["--mixer", "mamba"], "invalid choice"),
    ],
)
def test_bad_listops_flags_exit_2_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrs", "0"], "--lrs must be a positive"),
        (["--lrs", "1e-3", "1e-3"], "--lrs must be distinct"),
        (["--sweep-fraction", "2"], "--sweep-fraction must be in (0, 1]"),
        (["--seeds", "-1"], "--seeds must be a non-negative integer"),
    ],
)
def test_bad_protocol_flags_exit_2_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(experiment, "run", no_work)
    monkeypatch.setattr(experiment, "draw", no_work)
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["--sweep", "--quick", *argv, "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_listops_sweep_tunes_every_mixer_continues_and_tabulates(tmp_path, monkeypatch):
    calls, drawn = [], []
    names = list(mixers.MIXERS)
    best = {m: (1e-2 if i % 2 else 1e-3) for i, m in enumerate(names)}  # each mixer's better lr
    real_draw = experiment.draw

    def draw(settings):
        drawn.append(settings)
        return real_draw(settings)

    def fake_run(settings, out, progress=True, data=None, resume=False, test=True):
        # the sweep's bookkeeping only: validation accuracy by lr, test accuracy by seed
        s = settings
        calls.append((s.mixer, s.lr, s.seed, s.train_steps, test))
        assert [len(d.labels) for d in data] == [s.n_train, s.n_val, s.n_test]
        if s.mixer == "ssm" and s.lr == 1e-2:
            raise TrainingDiverged("non-finite training loss at step 3")
        acc = 0.5 + 0.1 * (s.lr == best[s.mixer])
        out.mkdir(parents=True, exist_ok=True)
        result = {"mixer": s.mixer, "accuracy": acc, "train_accuracy": 0.6 + 0.1 * s.seed,
                  "chance": 0.1, "majority": 0.15, "mean_length": 20.0, "params": 100,
                  "d_model": 8, "steps_per_second": 1.0 + s.seed, "wall_seconds": 1.0,
                  "settings": dataclasses.asdict(s),
                  "history": [{"step": 0, "accuracy": 0.0}, {"step": s.train_steps,
                                                             "accuracy": acc}]}  # fmt: skip
        if test:
            result["test_accuracy"] = 0.3 + 0.01 * s.seed
        return result

    monkeypatch.setattr(experiment, "run", fake_run)
    monkeypatch.setattr(experiment, "draw", draw)
    argv = ["--sweep", "--quick", "--lrs", "1e-3", "1e-2", "--out", str(tmp_path), "--no-progress"]
    summary = experiment.main(argv)
    short = 8  # ceil(0.25 · 30 quick steps)
    assert experiment.QUICK["train_steps"] == 30 and summary["protocol"]["sweep_fraction"] == 0.25
    chosen = {**best, "ssm": 1e-3}  # ssm diverged at 1e-2: the other rate
    expected = []
    for m in names:  # the rates on validation at the short budget, then the seeds at the best
        expected += [(m, 1e-3, 0, short, False), (m, 1e-2, 0, short, False)]
        expected += [(m, chosen[m], 0, 30, True), (m, chosen[m], 1, 30, True)]
    assert calls == expected and len(drawn) == 1  # the data drawn once, for every run
    assert [r["mixer"] for r in summary["runs"]] == names
    assert [r["lr"] for r in summary["runs"]] == [chosen[m] for m in names]
    for m in names:
        assert (tmp_path / m / "lr-0.001" / "summary.json").exists()
        assert (tmp_path / m / "seed-1" / "summary.json").exists()
    table = (tmp_path / "table.md").read_text()
    # test accuracy 30% and 31%: mean ± half the range, the chosen lr, train accuracy 60%/70%
    gril = "| gril | 30.5% ± 0.5% | 0.001 | 65.0% | 100 | 8 | 1.5 | 0.001: **60.0%**, 0.01: 50.0% (best at an end of the range) |"
    assert gril in table
    assert f"| {names[1]} | 30.5% ± 0.5% | 0.01 |" in table
    assert "0.001: **50.0%**, 0.01: div." in table  # ssm's sweep
    assert "lr chosen among 0.001, 0.01 on validation accuracy after 8 steps" in table
    assert "test set evaluated once per seed run" in table
    assert "Chance 10.0%, the majority class 15.0%" in table
    assert "300 training, 100 validation and 100 test expressions" in table
    for name, accuracy in experiment.ANCHORS:  # the published numbers, with their settings
        assert f"| {name} | {accuracy:.1%} |" in table
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["figures"] == ["accuracy.png", "lrs.png"] and written["quick"] is True
    assert written["protocol"]["lrs"] == [1e-3, 1e-2] and written["anchors"]
    for figure in written["figures"]:
        assert (tmp_path / figure).exists()
    n = len(calls)
    again = experiment.main(argv)  # every run finished (or diverged): read back, none trained
    assert len(calls) == n and len(drawn) == 1
    assert all(x["read_back"] for r in again["runs"] for x in r["sweep"] + r["runs"])
    assert (tmp_path / "table.md").read_text() == table
    experiment.main([*argv, "--steps", "20"])  # new settings: every run trained again
    assert [c[3] for c in calls[n:]] == [5, 5, 20, 20] * len(names)
    assert len(drawn) == 2
