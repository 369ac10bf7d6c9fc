"""``python -m experiments.reproduce --smoke``: every experiment's code path at a handful of steps,
then the report. The plumbing is checked here (every file, every section, every row, the references,
which do not depend on training); the science is checked by the experiments at their own sizes and
by the committed reports."""

import json

import numpy as np
import pytest

from experiments import cli, reproduce

# The smoke run in two halves, one a worker (tests/e2e/ is collected first, so both start at once).
HALVES = {
    "linear, plateau, construction, multistep, nonlinear, ood": (
        ("Linear regression", "plateau", "construction equals", "Multi-step", "Non-linear",
         "Out of distribution"),
        ("multistep", "ood", "nonlinear"),
    ),
    "sweep, neighbours, classification, minibatch": (
        ("Size sweep", "The neighbours", "In-context classification", "Minibatch windows"),
        ("sweep", "neighbours", "classification", "minibatch"),
    ),
}  # fmt: skip


def test_the_halves_cover_every_experiment_of_the_smoke_run():
    names = [n for half in HALVES for n in half.split(", ")]
    assert sorted(names) == sorted(reproduce.SMOKE) and set(names) <= set(reproduce.EXPERIMENTS)


@pytest.mark.parametrize("half", list(HALVES))
def test_smoke_reproduce_writes_every_experiment_and_the_report(half, tmp_path):
    names = half.split(", ")
    seconds = reproduce.main(["--smoke", "--results", str(tmp_path), "--only", *names])
    assert list(seconds) == names
    text = (tmp_path / "REPORT.md").read_text()
    assert text.startswith(cli.SMALL_MARK)  # a small run's report says so
    for name in names:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary, name
        for figure in (tmp_path / name).glob("*.png"):
            assert f"({name}/{figure.name})" in text, f"{name}/{figure.name} missing from REPORT.md"
    headings, checked = HALVES[half]
    for heading in headings:  # each section of the report is filled from its summary
        assert heading in text
    if "linear" in names:
        linear = _summary(tmp_path, "linear")
        assert linear["train_steps"] == 4 and np.isfinite(linear["val_loss"])
    for name in checked:  # each experiment's own checks
        CHECKS[name](tmp_path)


def _summary(results, name):
    return json.loads((results / name / "summary.json").read_text())


def check_multistep_runs_each_k(quick):
    summary = _summary(quick, "multistep")
    assert [r["n_steps"] for r in summary["rows"]] == [1, 2]
    for r in summary["rows"]:
        assert r["gd_loss"] > 0 and r["val_loss"] > 0 and -1 <= r["model_cos"] <= 1
    history = (quick / "multistep" / "history.jsonl").read_text().splitlines()
    assert {json.loads(line)["n_steps"] for line in history} == {1, 2}


def check_ood_evaluates_every_shift(quick):
    from experiments import ood

    summary = _summary(quick, "ood")
    assert [r["x_scale"] for r in summary["x_stretch"]] == list(ood.X_STRETCH)
    assert [r["w_scale"] for r in summary["w_stretch"]] == list(ood.W_STRETCH)
    assert [r["dist"] for r in summary["distribution"]] == ["uniform", "normal", "laplace",
                                                            "exponential"]  # fmt: skip
    # Every shift reuses one key, so a stretched map is the same map scaled: GD is linear in y,
    # its loss exactly quadratic in the scale (float32 sums of 4096 terms: ~1e-6 relative).
    w = {r["w_scale"]: r["gd_loss"] for r in summary["w_stretch"]}
    np.testing.assert_allclose(w[5.0] / w[1.0], 25.0, rtol=1e-4)


def check_sweep_runs_each_size(quick):
    summary = _summary(quick, "sweep")
    assert [(r["d"], r["n_context"]) for r in summary["rows"]] == [(5, 5), (5, 10)]  # fmt: skip
    for r in summary["rows"]:
        assert r["gd_loss"] > 0 and r["lsq_loss"] >= 0 and -1 <= r["model_cos"] <= 1


def check_nonlinear_compares_every_baseline(quick):
    summary = _summary(quick, "nonlinear")
    losses = summary["losses"]
    assert set(losses) == {"trained", "gd_raw_input", "kernel_ridge_rbf", "gd_learned_features",
                           "zero_predictor"}  # fmt: skip
    # Tuned kernel ridge fits noise-free sines far better than predicting zero.
    assert losses["kernel_ridge_rbf"] < 0.1 * losses["zero_predictor"]
    assert len(summary["loss_vs_context"]["trained"]) == summary["config"]["n_context"]


def check_neighbours_runs_the_quick_grid(quick):
    from experiments import neighbours

    summary = _summary(quick, "neighbours")
    runs = [(r["task"], r["model"]) for r in summary["rows"]]
    assert runs == list(neighbours.QUICK_RUNS)  # every model, every task
    assert {m for _, m in runs} == set(neighbours.MODELS)
    assert {t for t, _ in runs} == set(neighbours.TASKS)
    assert set(summary["targets"]) == {"a_plain_ssm", "b_preconditioned", "c_weighted"}
    for r in summary["rows"]:
        # The GD variants on one set: the best weights never lose to λ = 1 (plain GD), and on
        # the Gaussian tasks the optimal Γ* beats plain GD (condition number 20: by ~9%).
        assert r["wgd_loss"] <= r["gd_loss"] * (1 + 1e-6)
        if r["task"] == "anisotropic":
            assert r["pgd_loss"] < 0.95 * r["gd_loss"]
        else:  # Γ* = η* I by symmetry: plain GD itself
            assert abs(r["pgd_loss"] / r["gd_loss"] - 1) < 1e-5
        assert -1 <= r["model_cos_pgd"] <= 1 and -1 <= r["model_cos_wgd"] <= 1
    for name in summary["runs"]:
        assert (quick / "neighbours" / "runs" / f"{name}.jsonl").exists()


def test_unknown_experiment_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        reproduce.main(["--only", "linear", "lienar", "--results", str(tmp_path)])
    assert info.value.code == 2
    assert "error: --only: unknown experiment" in capsys.readouterr().err


def check_classification_reports_every_reference(quick):
    from experiments import classification

    summary = _summary(quick, "classification")
    runs = classification.grid(True, 0, smoke=True)
    assert [(r["classes"], r["n_context"], r["n_steps"]) for r in summary["rows"]] == [
        run[:3] for run in runs
    ]
    for r in summary["rows"]:
        assert r["chance_accuracy"] == 1 / r["classes"]
        for key in ("accuracy", "gd_accuracy", "sq_gd_accuracy", "logistic_accuracy"):
            assert 0 <= r[key] <= 1, key
    curves = summary["accuracy_vs_examples"]
    n = summary["focus"]["n_context"]
    assert "GD-SSM (trained)" in curves and "logistic regression" in curves
    assert curves.pop("examples") == classification.prefixes(n)
    assert all(len(v) == len(classification.prefixes(n)) for v in curves.values())


def check_minibatch_runs_each_m(quick):
    from experiments import minibatch

    summary = _summary(quick, "minibatch")
    ms = [r["minibatch"] for r in summary["rows"]]
    assert ms == list(minibatch.SMOKE_MINIBATCHES) == [d["minibatch"] for d in summary["drift"]]
    for r in summary["rows"]:
        assert r["windows"] == summary["config"]["n_context"] // r["minibatch"]
        assert r["forward_seconds"]["query"] > 0 and r["forward_seconds"]["all_windows"] > 0
    assert summary["rows"][0]["forward_ratio_to_m1"] == {"query": 1.0, "all_windows": 1.0}
    for d in summary["drift"]:
        assert 0 < d["wgd_decay"] <= 1 and np.isfinite(d["learned_lambda"]["mean"])


CHECKS = {
    "multistep": check_multistep_runs_each_k,
    "ood": check_ood_evaluates_every_shift,
    "sweep": check_sweep_runs_each_size,
    "nonlinear": check_nonlinear_compares_every_baseline,
    "neighbours": check_neighbours_runs_the_quick_grid,
    "classification": check_classification_reports_every_reference,
    "minibatch": check_minibatch_runs_each_m,
}
