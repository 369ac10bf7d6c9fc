"""The command line: help, errors that name the flag, defaults that scale, float64, --out, the
progress messages, and the figures."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import linear
from ssm_gd import plots, train, trainer


def _exit(capsys, parse, argv):
    """``(exit status, stderr)`` of ``parse(argv)``, which must exit."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    return info.value.code, capsys.readouterr().err


# ----------------------------------------------------------------------------------------- help


def test_help_describes_the_program_and_every_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as info:
        linear.parse(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert linear.__doc__.splitlines()[0] in text
    assert set(train.HELP) == {f.name for f in dataclasses.fields(train.Config)}
    # Each flag's entry: from its line to the next flag's, whitespace collapsed.
    entries = {}
    for entry in re.split(r"\n(?=  -)", text):
        words = entry.split()
        entries[words[0].rstrip(",")] = " ".join(words)
    for name, help_text in train.HELP.items():
        flag = "--" + name.replace("_", "-")
        assert help_text in entries[flag], flag
        if name in train.CHOICES:
            assert "{" + ",".join(train.CHOICES[name]) + "}" in entries[flag], flag
        elif name != "warmup_steps":
            assert "(default: " in entries[flag], flag
    for flag in ("--out", "--quick", "--resume", "--no-progress"):
        assert len(entries[flag].split()) > 2, flag  # a help text after the flag


def test_choices_are_the_library_sets():
    from ssm_gd import layers, neighbours, tasks

    assert train.CHOICES["layout"] == tasks.ALL_LAYOUTS
    assert train.CHOICES["impl"] == layers.IMPLS
    assert train.CHOICES["query_map"] == layers.QUERY_MAPS
    assert train.CHOICES["parametrization"] == layers.PARAMETRIZATIONS
    assert set(neighbours.MODELS) < set(train.CHOICES["model"])


# --------------------------------------------------------------------------------- bad values

BAD = [
    (["--train-steps", "-1"], "error: --train-steps must be a positive integer; got -1"),
    (["--train-steps", "0"], "error: --train-steps must be a positive integer; got 0"),
    (["--train-steps", "2.5"], "--train-steps/--steps: invalid int value"),
    (["--train-steps", "many"], "--train-steps/--steps: invalid int value"),
    (["--n-context", "0"], "error: --n-context must be a positive integer"),
    (["--d-in", "-3"], "error: --d-in must be a positive integer"),
    (["--batch-size", "0"], "error: --batch-size must be a positive integer"),
    (["--eval-every", "0"], "error: --eval-every must be a positive integer"),
    (["--seed", "-1"], "error: --seed must be a non-negative integer"),
    (["--lr", "nan"], "error: --lr must be a positive finite number; got nan"),
    (["--lr", "inf"], "error: --lr must be a positive finite number; got inf"),
    (["--lr", "-0.1"], "error: --lr must be a positive finite number"),
    (["--recurrence-lr", "0"], "error: --recurrence-lr must be a positive finite number"),
    (["--weight-decay", "-1"], "error: --weight-decay must be a non-negative finite number"),
    (["--x-range", "inf"], "error: --x-range must be a positive finite number"),
    (["--noise-std", "nan"], "error: --noise-std must be a non-negative finite number"),
    (["--condition", "0.5"], "error: --condition must be"),
    (["--layout", "grid"], "--layout: invalid choice: 'grid'"),
    (["--model", "mamba"], "--model: invalid choice"),
    (["--dtype", "int32"], "--dtype: invalid choice"),
    (["--task", "nonlinear"], "--task: invalid choice"),
    (["--impl", "fft"], "--impl: invalid choice"),
    (["--loss-on", "middle"], "--loss-on: invalid choice"),
    (["--warmup-steps", "20", "--train-steps", "10"],
     "error: --warmup-steps must be smaller than --train-steps; got 20 >= 10"),
    (["--switch-at", "50"], "error: --switch-at must be in [0, --n-context=10]"),
    (["--layout", "constructed"], "error: --layout="),
    (["--model", "h3"], "error: --model="),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_exits_2_naming_the_flag(capsys, argv, message):
    code, err = _exit(capsys, train.config_from_args, argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    error_line = err.strip().splitlines()[-1]
    assert error_line.count("error:") == 1 and argv[0] in error_line


def test_bad_value_through_an_experiment(capsys, tmp_path):
    code, err = _exit(capsys, linear.main, ["--train-steps", "-1", "--out", str(tmp_path / "x")])
    assert code == 2 and "error: --train-steps must be a positive integer; got -1" in err


def test_old_steps_flag_is_an_alias_of_train_steps():
    config, _ = train.config_from_args(["--steps", "7"])
    assert config.train_steps == 7 and config == train.Config(train_steps=7)
    assert "--steps" in train.ALIASES["train_steps"]


def test_field_names_become_flags_only_where_they_are_names():
    say = train._with_flags
    assert say("train_steps must be positive") == "--train-steps must be positive"
    assert say("task must be one of") == "--task must be one of"
    assert say("n_context must be 3") == "--n-context must be 3"
    assert say("got model='h3' in one task") == "got --model='h3' in one task"
    assert say("the model has a task") == "the model has a task"  # plain words stay
    assert say("needs jax_enable_x64") == "needs jax_enable_x64"


# ------------------------------------------------------------------------- defaults that scale


def test_warmup_default_scales_with_short_runs(capsys, tmp_path):
    config, _ = linear.parse(["--quick", "--train-steps", "10", "--out", str(tmp_path)])
    assert config.train_steps == 10 and config.warmup_steps is None
    assert config.resolved_warmup_steps == 2  # min(50, 10 // 4)
    config, _ = train.config_from_args(["--train-steps", "3"])
    assert config.resolved_warmup_steps == 0
    config, _ = train.config_from_args(["--train-steps", "10", "--warmup-steps", "3"])
    assert config.resolved_warmup_steps == 3
    train.make_optimizer(config, {"w": np.zeros(2)})


def test_warmup_default_keeps_every_existing_default_run():
    assert train.Config().resolved_warmup_steps == 50  # 3000 steps
    quick = dataclasses.replace(train.Config(), **linear.QUICK)  # 300 steps
    assert quick.resolved_warmup_steps == 50
    for steps in (200, 1500, 2000):  # plateau (quick and full), neighbours
        assert train.Config(train_steps=steps).resolved_warmup_steps == 50
    # Defaults computed from a resolved Config follow its steps, not a stale 50.
    assert dataclasses.replace(train.Config(), train_steps=20).resolved_warmup_steps == 5


# ------------------------------------------------------------------------------- float64, --out


def test_dtype_float64_turns_on_x64():
    before = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        config, _ = train.config_from_args(["--dtype", "float64"])
        assert config.dtype == "float64" and jax.config.jax_enable_x64
        assert train._dtype(config) == np.float64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_out_is_checked_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = _exit(capsys, linear.main, ["--out", str(blocker / "sub")])
    assert code == 2 and "error: --out" in err and "not a writable folder" in err
    config, args = linear.parse(["--out", str(tmp_path / "new" / "folder")])
    assert (tmp_path / "new" / "folder").is_dir()
    assert list((tmp_path / "new" / "folder").iterdir()) == []  # the probe is gone


def test_command_line_float64_run_says_what_it_does(tmp_path):
    """The real command, in its own process: x64 from --dtype alone, and a line per phase."""
    out = tmp_path / "run"
    flags = ["--n-context", "4", "--d-in", "2", "--d-out", "1", "--train-steps", "8", "--eval-every",
             "4", "--batch-size", "16", "--eval-size", "64", "--sens-size", "16",
             "--dtype", "float64", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.linear", *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["dtype"] == "float64"
    for phase in ("sampling the evaluation set (64 tasks)", "GD at its best step size: η = ",
                  "compiling the training step", "drawing the figures"):  # fmt: skip
        assert phase in done.stderr, phase
    assert "train=" in done.stderr and "steps/s" in done.stderr  # the bar's labelled rate
    assert "train steps/s" in done.stdout and summary["train_steps_per_second"] > 0


def test_say_is_quiet_without_progress(capsys):
    trainer.say(False, "hidden")
    trainer.say(True, "shown")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "shown\n"


# ------------------------------------------------------------------------------------- figures

HISTORY = [
    {"step": 0, "train_loss": None, "val_loss": 0.45, "model_cos": 0.2, "model_diff": 1.0,
     "preds_diff": 1.0, "param_match_error": 1.0},
    {"step": 10, "train_loss": 0.25, "val_loss": 0.21, "model_cos": 0.99, "model_diff": 0.3,
     "preds_diff": 0.1, "param_match_error": 0.1},
    {"step": 20, "train_loss": 0.2, "val_loss": 0.207, "model_cos": 0.999, "model_diff": 0.2,
     "preds_diff": 0.05, "param_match_error": 0.05},
]  # fmt: skip


def test_loss_curve_has_step_0_and_a_log_axis(tmp_path):
    fig = plots.loss_curve(HISTORY, tmp_path / "loss.png", gd_loss=0.2065, lsq_loss=1e-5)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    lines = {line.get_label(): line for line in ax.get_lines()}
    val = lines["validation (fixed tasks)"]
    assert list(val.get_xdata()) == [0, 10, 20] and val.get_ydata()[0] == 0.45
    train_line = next(line for label, line in lines.items() if label.startswith("training"))
    assert list(train_line.get_xdata()) == [10, 20]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("GD, best η") for label in labels)
    assert any("least squares" in label for label in labels)
    low, high = ax.get_ylim()
    assert low > 0.1 and high > 0.45  # the far-away least-squares loss does not squash the axis


def test_icl_curve_keeps_coinciding_lines_visible(tmp_path):
    same = np.linspace(0.4, 0.2, 6)
    curves = {"trained": same, "GD": same, "least squares": np.linspace(0.4, 0.0, 6)}
    fig = plots.icl_curve(curves, tmp_path / "icl.png")
    assert (tmp_path / "icl.png").stat().st_size > 1000
    trained, gd_line, _ = fig.axes[0].get_lines()
    assert gd_line.get_zorder() > trained.get_zorder()
    assert gd_line.get_linestyle() != trained.get_linestyle()
    assert gd_line.get_marker() not in (None, "None", "")
    assert trained.get_linewidth() > gd_line.get_linewidth()
    assert fig.axes[0].get_yscale() == "log"


def test_plots_import_chooses_no_backend():
    code = "import sys, ssm_gd.plots; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "spec", ["ssm::", "gril:fast:", "gril::0", "gril:scan", "linear_attention:scan:x"]
)
def test_bench_mixers_forms_flag_names_what_it_takes(capsys, spec):
    from experiments import bench_mixers

    with pytest.raises(SystemExit) as exit_info:
        bench_mixers.parse(["--forms", spec])
    assert exit_info.value.code == 2
    assert f"--forms {spec!r}: MIXER:IMPL:CHUNK" in capsys.readouterr().err
