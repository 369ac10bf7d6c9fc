"""In-context classification end to end (docs/design.md §11, §12), in float64 where exact.

* The construction of §4 on one-hot tokens is one cross-entropy GD step to every metric of
  :func:`ssm_gd.metrics.evaluate_classification` (its logits differ from CE GD's by one number per
  task, which a softmax cannot see), with stride-2 and minibatch windows; on centred tokens its
  logits are CE GD's themselves, on every prefix.
* ``param_match_error(..., classes=True)`` ignores ``C_y → C_y + 1 vᵀ`` and nothing else.
* The config refuses classification settings it cannot train, by field and by flag.
* A short training run (:mod:`ssm_gd.classify` through :func:`ssm_gd.train.train`), its resume,
  a minibatch regression run, and the references of :func:`ssm_gd.classify.references`.
* Every name in the table of docs/design.md §8 exists.
"""

import functools
import importlib
import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_gd import classify, construction, gd, metrics, tasks, train
from ssm_gd.layers import GDSSM

F64 = jnp.float64
LR = 2.0
N = 6  # even: minibatch=2 windows cover it
D_IN = 4
TOL = 1e-12  # float64 rounding of sums of ~N products of O(1) numbers

# The short classification run of the training test (float32, the Config default).
RUN = train.Config(
    task="classification",
    d_in=3,
    d_out=3,
    n_context=6,
    train_steps=40,
    batch_size=32,
    eval_every=20,
    eval_size=64,
    sens_size=16,
    warmup_steps=5,
)


def _task(n_classes, seed=0, batch=16, n=N, d_in=D_IN):
    """Classification tasks as :func:`ssm_gd.tasks.classification` samples them (``W* ~ N(0, 1)``,
    ``x ~ N(0, I)``, one-hot labels of the argmax class), made in numpy: no sampler to compile."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((batch, n_classes, d_in))
    x = rng.standard_normal((batch, n + 1, d_in))
    y = np.eye(n_classes)[np.argmax(np.einsum("bki,bni->bnk", w, x), axis=-1)]
    return tasks.LinearTask(
        *(jnp.asarray(v) for v in (x[:, :-1], y[:, :-1], x[:, -1], y[:, -1], w))
    )


def _run(model, what, task, **kwargs):
    """``model(tokens(task))`` (``what="call"``), ``model.predict_query(tokens(task))``
    (``"query"``), or :func:`ssm_gd.metrics.evaluate_classification` (keyword arguments passed
    on) and the query logits (``"evaluate"``), in one compiled program shared by the models of one
    structure: far quicker than the many small programs of an eager call."""
    graphdef, params = nnx.split(model, nnx.Param)
    return _compiled(graphdef, params, task, what, tuple(sorted(kwargs.items())))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _compiled(graphdef, params, task, what, kwargs):
    model = nnx.merge(graphdef, params)
    toks = tasks.tokens(task)
    if what == "call":
        return model(toks)
    logits = model.predict_query(toks)
    if what == "evaluate":
        return metrics.evaluate_classification(model, task, **dict(kwargs)), logits
    return logits


def _constructed(n_classes, minibatch=1, steps=1, d_in=D_IN):
    return construction.gd_ssm(
        d_in=d_in, d_out=n_classes, n_context=N, lr=LR, steps=steps, minibatch=minibatch, dtype=F64
    )


# ------------------------------------------------------------------------------ training runs
# The longest tests first: pytest-xdist hands them out in collection order.


def test_classification_run_trains_reports_and_resumes(tmp_path):
    result = train.train(RUN, tmp_path, progress=False)
    summary, history = result.summary, result.history
    for key in ("accuracy", "gd_accuracy", "logistic_accuracy", "sq_gd_accuracy",
                "chance_accuracy", "loss_ratio", "model_cos", "param_match_error", "val_loss",
                "gd_loss", "gd_lr", "chance_loss"):  # fmt: skip
        assert key in summary, key
        assert math.isfinite(summary[key]), (key, summary[key])
    assert summary["chance_accuracy"] == 1 / 3
    assert summary["chance_loss"] == pytest.approx(math.log(3), rel=1e-15)
    assert summary["train_steps"] == 40
    assert summary["loss_ratio"] == pytest.approx(summary["val_loss"] / summary["gd_loss"])
    assert [r["step"] for r in history] == [0, 20, 40]
    for row in history:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["gd_accuracy"] <= 1
    # Training lowered the loss: the training loss between segments, the evaluation loss from the
    # random start (step 0 has no training loss yet).
    assert history[0]["train_loss"] is None
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert result.constructed.d_out == 3 and result.constructed.minibatch == 1
    # What was written is what was returned.
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(history))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))

    # Resuming the finished run trains nothing and reports the same final numbers.
    again = train.train(RUN, tmp_path, resume=True, progress=False)

    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]

    assert numbers(again.history) == numbers(history)
    for key in ("val_loss", "accuracy", "gd_loss", "gd_accuracy", "loss_ratio", "model_cos",
                "model_diff", "preds_diff", "param_match_error", "gd_lr", "sq_gd_accuracy",
                "logistic_accuracy", "chance_accuracy", "train_steps"):  # fmt: skip
        assert again.summary[key] == summary[key], key


def test_minibatch_regression_run_trains_with_minibatch_windows(tmp_path):
    config = train.Config(
        n_context=4,
        d_in=2,
        d_out=1,
        minibatch=2,
        train_steps=20,
        batch_size=16,
        eval_every=10,
        eval_size=32,
        sens_size=8,
        warmup_steps=2,
    )
    result = train.train(config, tmp_path, progress=False)
    assert result.model.minibatch == 2 and result.constructed.minibatch == 2
    assert (result.model.window, result.model.stride) == (5, 4)
    first, last = result.history[0], result.history[-1]
    assert math.isfinite(last["val_loss"]) and last["val_loss"] < first["val_loss"]
    assert result.summary["train_steps"] == 20
    # The construction it is matched against is GD at the run's best step size.
    task = tasks.linear_regression(
        jax.random.key(3), batch=4, n_context=4, d_in=2, d_out=1, dtype=jnp.float32
    )
    want = gd.predict(task.x, task.y, task.x_query, lr=result.summary["gd_lr"])
    got = result.constructed.predict_query(tasks.tokens(task))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- the construction is one CE step


@pytest.mark.parametrize(("n_classes", "minibatch"), [(2, 1), (3, 1), (10, 1), (3, 2)])
def test_construction_is_one_cross_entropy_step_to_every_metric(n_classes, minibatch):
    task = _task(n_classes, seed=n_classes)
    model = _constructed(n_classes, minibatch)
    out, logits = _run(model, "evaluate", task, gd_lr=LR)
    out = {k: float(v) for k, v in out.items()}
    assert set(out) == {"loss", "accuracy", "gd_loss", "gd_accuracy", "preds_diff", "model_diff",
                        "model_cos"}  # fmt: skip
    # Same softmax, so the same cross-entropy and the same classes (docs/design.md §11).
    assert abs(out["loss"] - out["gd_loss"]) <= TOL, out
    assert out["accuracy"] == out["gd_accuracy"], out
    assert abs(out["model_cos"] - 1) <= TOL, out
    assert out["model_diff"] <= TOL and out["preds_diff"] <= TOL, out
    assert 0 < out["loss"] < math.log(n_classes)  # a real step: below chance, above zero
    # Not vacuous: the raw logits differ from CE GD's by (η/(NK)) Σ_i x_iᵀ x_q in every class.
    ce = gd.cross_entropy_predict(task.x, task.y, task.x_query, lr=LR)
    shift = LR / (N * n_classes) * np.einsum("bni,bi->b", task.x, task.x_query)
    np.testing.assert_allclose(logits - ce, np.repeat(shift[:, None], n_classes, 1), atol=TOL)
    assert np.max(np.abs(shift)) > 1e-2


@pytest.mark.parametrize(("n_classes", "minibatch"), [(2, 1), (3, 1), (10, 1), (3, 2)])
def test_construction_on_centred_tokens_gives_cross_entropy_logits(n_classes, minibatch):
    task = _task(n_classes, seed=10 + n_classes, batch=4)
    model = _constructed(n_classes, minibatch)
    centred = tasks.centred(task)
    ce = gd.cross_entropy_predict(task.x, task.y, task.x_query, lr=LR)
    np.testing.assert_allclose(_run(model, "query", centred), ce, rtol=0, atol=TOL)
    # Every window t: CE GD on the first t·m pairs with the normaliser N (the later pairs' x
    # zeroed, so they add nothing to the one step), at the next input x_{tm+1}.
    out = _run(model, "call", centred)
    assert out.shape == (4, N // minibatch, n_classes)
    x = np.asarray(task.x)
    inputs = np.concatenate([x[:, 1:], np.asarray(task.x_query)[:, None]], axis=1)
    for t in range(1, N // minibatch + 1):
        seen = t * minibatch
        prefix = np.where(np.arange(N)[None, :, None] < seen, x, 0.0)
        want = gd.cross_entropy_predict(prefix, task.y, inputs[:, seen - 1], lr=LR)
        np.testing.assert_allclose(out[:, t - 1], want, rtol=0, atol=TOL)
    np.testing.assert_allclose(out[:, -1], ce, rtol=0, atol=TOL)


# -------------------------------------------------------------------- parameter match, classes


def _from_values(n_classes, v, steps=1, d_in=D_IN):
    """A GDSSM with the given parameter values, built through the initializers."""
    init = construction.init_from_values(v)
    return GDSSM(d_in, n_classes, n_steps=steps, init=init, param_dtype=F64, rngs=nnx.Rngs(0))


def _values(n_classes, d_in=D_IN):
    return dict(construction.gd_ssm_values(d_in=d_in, d_out=n_classes, n_context=N, lr=LR))


# (d_in, K): padding columns in C_y (d_in > K: H = d_in), none, and a wider label (K > d_in).
SHAPES = [(4, 3), (4, 4), (3, 5)]


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize(("d_in", "n_classes"), SHAPES)
def test_param_match_classes_construction_against_itself(d_in, n_classes, steps):
    a = construction.gd_ssm(d_in=d_in, d_out=n_classes, n_context=N, lr=LR, steps=steps, dtype=F64)
    b = construction.gd_ssm(d_in=d_in, d_out=n_classes, n_context=N, lr=LR, steps=steps, dtype=F64)
    out = metrics.param_match_error(a, b, classes=True)
    blocks = {"Q_y", "C_y", "D", "scale_y", "lambda_y", "total"}
    if steps > 1:
        blocks |= {"Q_x", "C_x", "scale_x", "lambda_x"}
    assert set(out) == blocks
    assert out["total"] <= TOL, out


@pytest.mark.parametrize(("d_in", "n_classes"), SHAPES)
def test_param_match_classes_ignores_a_shift_of_every_logit(d_in, n_classes):
    constructed = _from_values(n_classes, _values(n_classes, d_in), d_in=d_in)
    v = _values(n_classes, d_in)
    h = v["c_y"].shape[1]
    shift = np.random.default_rng(n_classes).standard_normal(h)
    v["c_y"] = v["c_y"] + np.outer(np.ones(n_classes), shift)  # C_y + 1 vᵀ
    shifted = _from_values(n_classes, v, d_in=d_in)
    # It moves every logit of a window by one amount (vᵀ S_t v_t): nonzero, the same per class.
    task = _task(n_classes, seed=20, batch=4, d_in=d_in)
    diff = np.asarray(_run(shifted, "call", task) - _run(constructed, "call", task))
    np.testing.assert_allclose(diff, np.repeat(diff[..., :1], n_classes, -1), rtol=0, atol=TOL)
    assert np.max(np.abs(diff)) > 1e-2
    # So it is a symmetry of the softmax: zero with classes=True, a clear error without.
    assert metrics.param_match_error(shifted, constructed, classes=True)["total"] <= TOL
    plain = metrics.param_match_error(shifted, constructed)
    assert plain["C_y"] > 0.1 and plain["total"] > 0.1, plain


def test_param_match_classes_keeps_the_other_symmetries_and_errors():
    n_classes, alpha = 3, -2.0
    constructed = _from_values(n_classes, _values(n_classes))
    # (Q_y, C_y) → (α Q_y, C_y / α), with and without a shift of every logit: still zero.
    v = _values(n_classes)
    v.update(q_y=alpha * v["q_y"], c_y=v["c_y"] / alpha)
    scaled = _from_values(n_classes, v)
    assert metrics.param_match_error(scaled, constructed)["total"] <= TOL
    assert metrics.param_match_error(scaled, constructed, classes=True)["total"] <= TOL
    v["c_y"] = v["c_y"] + np.outer(np.ones(n_classes), np.arange(1.0, 5.0))
    both = _from_values(n_classes, v)
    assert metrics.param_match_error(both, constructed, classes=True)["total"] <= TOL
    # A permutation of the classes is no symmetry: a clear error, with classes=True too.
    v = _values(n_classes)
    v["c_y"] = v["c_y"][[1, 2, 0]]
    permuted = _from_values(n_classes, v)
    out = metrics.param_match_error(permuted, constructed, classes=True)
    assert out["C_y"] > 0.5 and out["total"] == out["C_y"], out
    # A step size twice the construction's is a scale error of 1, classes or not.
    v = _values(n_classes)
    v["c_y"] = 2 * v["c_y"]
    doubled = _from_values(n_classes, v)
    out = metrics.param_match_error(doubled, constructed, classes=True)
    assert out["scale_y"] == pytest.approx(1.0, abs=TOL) and out["C_y"] <= TOL


# ------------------------------------------------------------------------------------ config

BAD_CONFIGS = [
    (dict(task="classification", d_out=1), r"needs d_out >= 2 classes; got 1"),
    (dict(task="classification", model="h3", layout="pairs"), r"model='h3', layout='pairs'"),
    (dict(task="classification", loss_on="all"), r"got loss_on='all'"),
    (dict(task="classification", noise_std=0.1), r"noise_std=0.1"),
    (dict(temperature=0.5), r"^temperature is read by task='classification'"),
    (dict(minibatch=3, n_context=10), r"^n_context must be a multiple of minibatch"),
    (dict(minibatch=2, layout="constructed", d_out=1), r"^minibatch > 1 is a GD-SSM option"),
]


@pytest.mark.parametrize(("fields", "match"), BAD_CONFIGS)
def test_config_refuses_what_classification_and_minibatch_cannot_train(fields, match):
    with pytest.raises(ValueError, match=match):
        train.Config(**fields)


def test_config_accepts_classification_with_a_temperature_and_minibatch():
    config = train.Config(task="classification", d_out=3, temperature=0.5, minibatch=2)
    assert (config.temperature, config.minibatch) == (0.5, 2)
    assert train.config_from_args(["--task", "classification", "--d-out", "3"])[0] == (
        train.Config(task="classification", d_out=3)
    )


BAD_FLAGS = [
    (["--task", "classification", "--d-out", "1"], "--d-out"),
    (["--task", "classification", "--model", "h3", "--layout", "pairs"], "--model='h3'"),
    (["--task", "classification", "--loss-on", "all"], "--loss-on='all'"),
    (["--temperature", "0.5"], "--temperature is read by"),
    (["--minibatch", "3", "--n-context", "10"], "--n-context must be a multiple"),
    (["--minibatch", "2", "--layout", "constructed", "--d-out", "1"], "--minibatch > 1"),
]


def _exit(capsys, parse, argv):
    """``(exit status, stderr)`` of ``parse(argv)``, which must exit."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "flag"), BAD_FLAGS)
def test_bad_classification_flags_exit_2_naming_the_flag(capsys, argv, flag):
    code, err = _exit(capsys, train.config_from_args, argv)
    assert code == 2
    assert "Traceback" not in err
    error_line = err.strip().splitlines()[-1]
    assert error_line.count("error:") == 1 and flag in error_line, error_line


# -------------------------------------------------------------------------------- references


def test_references_on_a_float64_eval_task():
    config = train.Config(task="classification", d_in=3, d_out=3, n_context=6, dtype="float64")
    task = classify.sample(config, jax.random.key(4), 64)
    assert task.x.dtype == F64 and task.y.shape == (64, 6, 3)
    refs = classify.references(config, task)
    assert all(math.isfinite(v) for v in refs.values())
    assert "gd1_lr" not in refs  # one step: no separate one-step reference
    assert refs["chance_loss"] == pytest.approx(math.log(3), rel=1e-15)
    assert refs["chance_accuracy"] == 1 / 3
    # One step: CE GD's and squared-loss GD's logits differ by one number per task (the shift),
    # so both classify alike at any η > 0, as argmax_k (S_y x_q)_k does.
    assert refs["sq_gd_accuracy"] == refs["gd_accuracy"]
    scores = np.einsum("bnk,bni,bi->bk", task.y, task.x, task.x_query)
    hits = np.argmax(scores, -1) == np.argmax(np.asarray(task.y_query), -1)
    assert refs["gd_accuracy"] == pytest.approx(np.mean(hits), abs=1e-15)
    # Same softmax at the same η: the squared-loss logits' best cross-entropy is CE GD's best
    # (found on a refined grid, so at most a rounding-size amount above the exact minimum).
    assert refs["gd_loss"] - 1e-12 <= refs["sq_gd_loss"] <= refs["gd_loss"] + 1e-9
    assert refs["sq_gd_lr"] == pytest.approx(refs["gd_lr"], rel=1e-3)
    assert refs["gd_loss"] < refs["chance_loss"]
    assert refs["logistic_reg"] in [float(r) for r in gd.DEFAULT_REG_GRID]
    for key in ("gd_accuracy", "logistic_accuracy", "majority_accuracy"):
        assert 0 <= refs[key] <= 1 and refs[key] * 64 == round(refs[key] * 64), key


# ------------------------------------------------------------------------- docs/design.md §8


def test_every_name_in_the_design_table_exists():
    text = (pathlib.Path(__file__).parents[1] / "docs" / "design.md").read_text()
    table = text.split("## 8.", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`(ssm_gd(?:\.\w+)+)`", table)
    assert len(names) > 50
    for name in names:
        parts = name.split(".")
        # The longest importable module prefix, then attributes.
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{name}: no {attr!r} in {obj!r}"
            obj = getattr(obj, attr)


def test_every_new_name_is_in_the_design_table():
    text = (pathlib.Path(__file__).parents[1] / "docs" / "design.md").read_text()
    table = text.split("## 8.", 1)[1].split("\n## ", 1)[0]
    for name in ("tasks.classification", "tasks.centred", "gd.cross_entropy", "gd.accuracy",
                 "gd.cross_entropy_weights", "gd.cross_entropy_predict",
                 "gd.cross_entropy_best_lr", "gd.cross_entropy_lr_losses",
                 "gd.logistic_regression", "gd.logistic_regression_fit", "gd.logistic_best_reg",
                 "metrics.evaluate_classification", "metrics.centred",
                 "classify.classification_task", "layers.GDSSM", "construction.gd_ssm_values"):  # fmt: skip
        assert f"`ssm_gd.{name}`" in table, name
    assert "classify.py" in text.split("## 9.", 1)[1].split("\n## ", 1)[0]
