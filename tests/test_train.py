"""The trainer: it learns GD, resumes exactly, stops on NaN, rejects bad configs, runs sharded."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ssm_gd import train

# Small enough to train in seconds on 2 cores: N = 8 pairs, d_in = 4, scalar labels.
SMALL = train.Config(
    n_context=8,
    d_in=4,
    d_out=1,
    train_steps=300,
    batch_size=128,
    warmup_steps=20,
    eval_every=100,
    eval_size=1024,
    sens_size=256,
)


def test_training_moves_toward_gd(tmp_path):
    result = train.train(SMALL, tmp_path, progress=False)
    first, last = result.history[0], result.history[-1]
    assert [r["step"] for r in result.history] == [0, 100, 200, 300]
    # From random parameters the model is far from GD; after 300 steps it is close to it.
    assert first["loss_ratio"] > 1.5 and first["model_cos"] < 0.9
    assert last["val_loss"] < first["val_loss"]
    assert last["loss_ratio"] < 1.05
    assert last["model_cos"] > 0.99 > first["model_cos"]
    assert last["param_match_error"] < first["param_match_error"]
    # What was written matches what was returned.
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(result.history))
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("val_loss", "gd_loss", "gd_lr", "model_cos", "model_diff", "preds_diff",
                "param_match_error", "train_steps", "batch_size", "seed", "wall_seconds", "devices",
                "config"):  # fmt: skip
        assert key in summary
    assert summary["config"] == dataclasses.asdict(SMALL)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = dataclasses.replace(SMALL, train_steps=200)
    full = train.train(config, tmp_path / "full", progress=False)
    # An interruption after the step-100 checkpoint: the step-200 checkpoint never got written.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "200")
    resumed = train.train(config, tmp_path / "cut", resume=True, progress=False)

    def numbers(history):
        return [{k: v for k, v in r.items() if k != "elapsed"} for r in history]

    assert numbers(resumed.history) == numbers(full.history)  # exactly, not approximately
    lines = (tmp_path / "cut" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 100, 200]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # A step size of 1e30 sends the parameters to ~1e30 after one Adam step: the loss overflows.
    config = dataclasses.replace(SMALL, lr=1e30, warmup_steps=0)
    with pytest.raises(train.TrainingDiverged, match=r"non-finite training loss at step 1\b"):
        train.train(config, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["0"]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n_context", 0, "n_context must be a positive integer"),
        ("d_in", -1, "d_in must be a positive integer"),
        ("train_steps", 2.5, "train_steps must be a positive integer"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("lr", 0.0, "lr must be a positive finite number"),
        ("lr", float("nan"), "lr must be a positive finite number"),
        ("weight_decay", -1.0, "weight_decay must be a non-negative"),
        ("layout", "grid", "layout must be one of"),
        ("init", "zeros", "init must be one of"),
        ("loss_on", "middle", "loss_on must be one of"),
        ("impl", "fft", "impl must be one of"),
        ("dtype", "int32", "dtype must be one of"),
        ("warmup_steps", 5000, "warmup_steps must be smaller than train_steps"),
    ],
)
def test_invalid_config_is_rejected(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **{field: value})


def test_constructed_layout_needs_scalar_labels():
    with pytest.raises(ValueError, match="d_out=1"):
        train.Config(layout="constructed", d_out=10)


def test_config_from_args():
    config, args = train.config_from_args(
        ["--n-context", "5", "--layout", "constructed", "--d-out", "1", "--lr", "0.02"]
    )
    assert config == train.Config(n_context=5, layout="constructed", d_out=1, lr=0.02)
    with pytest.raises(SystemExit):  # a command-line error (tests/test_cli.py)
        train.config_from_args(["--layout", "constructed"])


def test_loss_on_every_position_trains(tmp_path):
    config = dataclasses.replace(SMALL, loss_on="all", train_steps=100)
    result = train.train(config, None, progress=False)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from ssm_gd import train
    config = train.Config(n_context=6, d_in=3, d_out=2, train_steps=40, batch_size=64, warmup_steps=5,
                          eval_every=20, eval_size=256, sens_size=64, dtype="float64")
    result = train.train(config, None, progress=False)
    print(json.dumps({"devices": jax.device_count(), "history": result.history}))
    """
)


def _run_on(devices: int):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_give_the_numbers_of_one():
    one, eight = _run_on(1), _run_on(8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    keys = ["train_loss", "val_loss", "gd_loss", "preds_diff", "model_diff", "model_cos",
            "param_match_error"]  # fmt: skip
    for a, b in zip(one["history"], eight["history"], strict=True):
        for key in keys:
            if a[key] is None:
                assert b[key] is None
                continue
            # float64: only the order of the cross-device sums differs (rounding ~1e-16), and
            # 40 Adam steps amplify it mildly.
            np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-12, err_msg=key)
