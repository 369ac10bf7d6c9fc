"""The experiment entry points run end to end and write what they promise."""

import json

import numpy as np
import pytest

from experiments import construction, linear, report

TINY = ["--n-context", "6", "--d-in", "3", "--d-out", "1", "--train-steps", "60", "--eval-every", "30",
        "--batch-size", "64", "--warmup-steps", "5", "--eval-size", "256", "--sens-size", "64",
        "--no-progress"]  # fmt: skip


def test_linear_writes_summary_history_and_figures(tmp_path):
    summary = linear.main(TINY + ["--out", str(tmp_path / "linear")])
    out = tmp_path / "linear"
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in ("val_loss", "gd_loss", "gd_lr", "model_cos", "model_diff", "preds_diff",
                "param_match_error", "train_steps", "batch_size", "seed", "wall_seconds", "devices",
                "config", "icl_curve", "train_steps_per_second"):  # fmt: skip
        assert key in written
    assert written["train_steps"] == 60 and written["config"]["d_in"] == 3
    assert len((out / "history.jsonl").read_text().splitlines()) == 3  # steps 0, 30, 60
    for name in written["figures"]:
        assert (out / name).stat().st_size > 1000
    # The in-context curve has one point per prefix; least squares is exact from d_in = 3 on.
    curve = written["icl_curve"]["least squares"]
    assert len(curve) == 6 and max(curve[3:]) < 1e-8

    construction.main(["--out", str(tmp_path / "construction"), "--max-steps", "2", "--batch", "16",
                       "--n-context", "5", "--d-in", "3"])  # fmt: skip
    rows = json.loads((tmp_path / "construction" / "summary.json").read_text())["rows"]
    assert len(rows) == 4 and max(r["max_abs_err_float64"] for r in rows) < 1e-12
    text = report.build(tmp_path).read_text()
    assert "| model_cos |" in text and "linear/loss.png" in text and "| constructed | 2 |" in text


def test_quick_sets_defaults_and_flags_override(tmp_path):
    config, args = linear.parse(["--quick", "--train-steps", "80", "--out", str(tmp_path)])
    assert args.quick and config.train_steps == 80 and config.eval_size == linear.QUICK["eval_size"]


def test_bad_flag_value_is_rejected_before_training(capsys):
    with pytest.raises(SystemExit) as info:  # as argparse does: status 2, the flag named
        linear.parse(["--batch-size", "0"])
    assert info.value.code == 2
    assert "error: --batch-size must be a positive integer" in capsys.readouterr().err


def test_ood_inputs_have_the_training_variance():
    import jax

    from experiments import ood
    from ssm_gd import train

    config = train.Config(d_in=4, d_out=1, n_context=50)
    for dist in ("uniform", "normal", "laplace", "exponential"):
        t = ood.shifted_tasks(config, jax.random.key(0), 2000, dist=dist)
        x = np.asarray(t.x).ravel()
        # 4e5 samples: the standard errors of the mean and std are below 1e-3 (std = 0.2887).
        assert abs(x.mean()) < 3e-3 and abs(x.std() - 12**-0.5) < 3e-3, dist


def test_sweep_rejects_bad_sizes(tmp_path, capsys):
    from experiments import sweep

    with pytest.raises(SystemExit) as info:
        sweep.main(["--dims", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "error: --dims must be positive" in capsys.readouterr().err


def test_kernel_ridge_matches_a_direct_solve():
    import jax

    from experiments import nonlinear
    from ssm_gd import tasks

    t = tasks.sine_regression(jax.random.key(0), batch=3, n_context=7)
    got = np.asarray(nonlinear.kernel_ridge(t.x, t.y, t.x_query, bandwidth=0.7, reg=1e-3))
    for b in range(3):
        x, y, q = np.asarray(t.x[b, :, 0]), np.asarray(t.y[b]), float(t.x_query[b, 0])
        k = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * 0.7**2)) + 1e-3 * np.eye(7)
        kq = np.exp(-((q - x) ** 2) / (2 * 0.7**2))
        np.testing.assert_allclose(got[b], kq @ np.linalg.solve(k, y), rtol=1e-9)
    # A mask keeping the first 4 points is kernel ridge on those 4 alone.
    mask = np.arange(7)[None, :] < np.array([[4]] * 3)
    masked = nonlinear.kernel_ridge(t.x, t.y, t.x_query, bandwidth=0.7, reg=1e-3, mask=mask)
    first = nonlinear.kernel_ridge(t.x[:, :4], t.y[:, :4], t.x_query, bandwidth=0.7, reg=1e-3)
    np.testing.assert_allclose(masked, first, rtol=1e-9)


def test_bench_baseline_computes_the_same_model():
    import jax
    import jax.numpy as jnp

    from experiments import bench

    model = bench._model(4, "associative", 32)
    from ssm_gd.tokens import Tokens

    tokens = jax.random.uniform(jax.random.key(0), (3, 2 * 9 + 1, 4), jnp.float32, -0.5, 0.5)
    wrapped = Tokens(tokens, layout="interleaved", d_in=4, d_out=4)
    want = model(wrapped)
    np.testing.assert_allclose(bench.loop_per_dimension(model, tokens), want, rtol=2e-5, atol=2e-6)
    chunked = bench._model(4, "chunked", 4)
    np.testing.assert_allclose(chunked(wrapped), want, rtol=2e-5, atol=2e-6)


def test_bench_counts_the_kernels_of_the_entry_computation():
    import jax
    import jax.numpy as jnp

    from experiments import bench

    hlo = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  ROOT %t = (s32[], f32[4]{0}) tuple(%a, %b)
}

ENTRY %main.1 (x: f32[4], y: f32[4,4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %y = f32[4,4]{1,0} parameter(1)
  %c = f32[] constant(1)
  %fusion = f32[4]{0} fusion(%x, %c), kind=kLoop, calls=%fused_computation
  %dot.1 = f32[4]{0} dot(%y, %fusion), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %tuple.2 = (s32[], f32[4]{0}, /*index=2*/f32[4]{0}) tuple(%c, %dot.1, %x)
  %while.3 = (s32[], f32[4]{0}, /*index=2*/f32[4]{0}) while(%tuple.2), condition=%cond, body=%body
  %gte = f32[4]{0} get-tuple-element(%while.3), index=1
  %b = f32[2,2]{1,0} bitcast(%gte)
  ROOT %copy.4 = f32[4]{0} copy(%gte)
}
"""
    # fusion, dot, while (once, its body not counted) and copy
    assert bench.count_kernels(hlo) == 4
    compiled = jax.jit(lambda x: jnp.tanh(x @ x) @ x).lower(jnp.ones((4, 4))).compile()
    assert bench.count_kernels(compiled.as_text()) >= 2  # two matrix products at least


def test_bench_mixers_times_side_by_side_and_skips_what_passes_the_memory_limit(tmp_path):
    from experiments import bench_mixers

    chosen = ("ssm", "attention", "gril_scalar")
    argv = ["--quick", "--mixers", *chosen, "--lengths", "16", "--positions", "8",
            "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    result = bench_mixers.main([*argv, "--forms", "gril:every_state:", "gril_scalar::4"])
    rows = result["throughput"]
    assert {(r["mixer"], r["program"]) for r in rows} == {
        (m, p)
        for m in (*chosen, "gril:every_state:", "gril_scalar::4")
        for p in ("forward", "forward+backward")
    }
    assert {r["impl"] for r in rows if r["mixer"] == "gril:every_state:"} == {"every_state"}
    assert {r["chunk"] for r in rows if r["mixer"] == "gril_scalar::4"} == {4}
    for r in rows:
        assert r["tokens_per_second"] == pytest.approx(4 * 16 / r["seconds"]) and r["memory_gb"] > 0
    gril = [r for r in rows if r["mixer"] == "gril_scalar"]
    # --quick: d_model 32, 2 heads of 16 channels: default_chunk's 16
    assert all((r["decay"], r["impl"], r["chunk"]) == ("scalar", "chunked", 16) for r in gril)
    assert [g["mixer"] for g in result["generation"]] == list(chosen)
    assert all(g["seconds_per_token"] > 0 for g in result["generation"])
    assert "key-value cache of 40 positions" in result["generation"][1]["method"]  # 8 + 32
    assert len(result["load_before"]) == len(result["load_after"]) == 3
    assert (tmp_path / f"mixers-{result['device']}.png").exists()
    tiny = bench_mixers.main([*argv, "--mixers", "ssm", "--max-gb", "1e-9"])  # 1 byte
    assert all(
        "skipped" in r and "seconds" not in r for r in tiny["throughput"] + tiny["generation"]
    )


def test_quick_runs_of_the_paper_write_apart_from_the_committed_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert linear.parse(["--quick"])[1].out == "results/quick/linear"
    assert linear.parse([])[1].out == "results/linear"
    assert linear.parse(["--quick", "--out", "mine"])[1].out == "mine"  # a folder given: used
