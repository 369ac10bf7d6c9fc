"""What "the trained model does gradient descent" means, in numbers (docs/design.md §7).

* :func:`preds_diff`: mean distance between two predictors' query predictions.
* :func:`sensitivity`: a predictor's implicit linear model ``∂ŷ/∂x_q`` ``(B, d_out, d_in)``, in
  reverse mode (one pullback per output dimension); GD's is its weights ``W_K``.
* :func:`alignment`: ``model_diff`` (mean Frobenius distance of two sensitivities) and
  ``model_cos`` (mean cosine between them, flattened per task).
* :func:`gd_loss`: GD's loss at its best step size on a task batch.
* :func:`param_match_error`: trained against constructed parameters, per block and as one scalar,
  after removing the model's exact symmetries.
* :func:`evaluate`: all of the above for a model on a task batch, against GD at a given η.
* :func:`evaluate_classification`: the same for in-context classification (docs/design.md §11):
  the cross-entropy and accuracy against cross-entropy GD, and the alignment of the *centred*
  logits' sensitivities (each logit minus the classes' mean: the shift a softmax ignores).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ssm_gd import gd, tasks, validate
from ssm_gd.gd import check_context
from ssm_gd.layers import GDSSM
from ssm_gd.tokens import check_task

__all__ = [
    "alignment",
    "centred",
    "evaluate",
    "evaluate_classification",
    "gd_loss",
    "loss",
    "param_match_error",
    "parameter_blocks",
    "preds_diff",
    "query_predictor",
    "sensitivity",
]

Array = jax.Array
loss = gd.loss


def preds_diff(pred: Array, ref: Array) -> Array:
    """Mean over tasks of ``‖ŷ − ŷ_ref‖₂`` for query predictions ``(B, d_out)`` (one shape)."""
    validate.same_shape("pred", pred, "ref", ref)
    return jnp.mean(jnp.linalg.norm(pred - ref, axis=-1))


def sensitivity(predict_query, x_query: Array) -> Array:
    """``∂ŷ/∂x_q`` ``(B, d_out, d_in)`` of ``predict_query: (B, d_in) → (B, d_out)``.

    Reverse mode: one linearisation, then one pullback per output direction ``e_o``, broadcast
    over the batch (each task's prediction depends on its own query only), mapped over the
    ``d_out`` directions. (Reverse, not forward, mode: ``d_out`` is 1 in the paper's tasks, and the
    GD-SSM's weighted readout defines its gradient by hand, :func:`ssm_gd.readout.last_state_readout`.)
    """
    prediction, pullback = jax.vjp(predict_query, x_query)

    def row(direction):
        cotangent = jnp.broadcast_to(direction, prediction.shape).astype(prediction.dtype)
        return pullback(cotangent)[0]

    # One direction at a time (lax.map): the memory of one backward pass, not d_out of them.
    per_output = jax.lax.map(row, jnp.eye(prediction.shape[-1], dtype=prediction.dtype))
    return jnp.moveaxis(per_output, 0, 1)  # (d_out, B, d_in) → (B, d_out, d_in)


def query_predictor(model, task, layout: str):
    """``x_q ↦ model.predict_query(tokens(task with x_q))`` ``(B, d_out)``: the query prediction
    (``model(tokens)[:, -1]``, computed without the other windows) as a function of ``x_q``."""

    def predict_query(x_query):
        return model.predict_query(tasks.tokens(task._replace(x_query=x_query), layout))

    return predict_query


def alignment(sens: Array, ref: Array) -> dict[str, Array]:
    """``model_diff`` = mean ``‖S − S_ref‖_F`` and ``model_cos`` = mean cosine, over tasks.

    ``sens`` and ``ref``: ``(B, d_out, d_in)``, one shape.
    """
    validate.same_shape("sens", sens, "ref", ref)
    a = sens.reshape(sens.shape[0], -1)
    b = ref.reshape(ref.shape[0], -1)
    na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
    tiny = jnp.finfo(a.dtype).tiny
    cos = jnp.sum(a * b, axis=-1) / jnp.maximum(na * nb, tiny)
    return {"model_diff": jnp.mean(jnp.linalg.norm(a - b, axis=-1)), "model_cos": jnp.mean(cos)}


def gd_loss(task, *, steps: int = 1):
    """``(η*, loss)`` of K-step GD at its best step size on ``task`` (:func:`ssm_gd.gd.best_lr`)."""
    return gd.best_lr(task.x, task.y, task.x_query, task.y_query, steps=steps)


def evaluate(
    model,
    task,
    *,
    layout: str,
    gd_lr,
    steps: int = 1,
    sens_size: int | None = None,
    max_batch: int | None = None,
    other_refs=None,
) -> dict[str, Array]:
    """Every metric of ``model`` on ``task`` against K-step GD with step size ``gd_lr``.

    Returns ``loss`` (the model's query loss), ``gd_loss``, ``preds_diff`` (all on the whole
    batch), ``model_diff`` and ``model_cos`` (on the first ``sens_size`` tasks, all when ``None``:
    a sensitivity costs ``d_in`` forward passes). ``max_batch`` bounds memory on large sets: the
    model runs on at most that many tasks at a time (``lax.map``; the largest divisor of the batch,
    and of ``sens_size``, up to ``max_batch``: sizes with large power-of-two factors run fastest).
    ``other_refs`` (``{name: W}``, each ``(sens_size, d_out, d_in)``): the implicit models of other
    references on the same first tasks (e.g. preconditioned GD); the model's sensitivities, computed
    once, are compared with each too, as ``model_diff_<name>`` and ``model_cos_<name>``.
    Jit-able (``layout``, ``steps``, ``sens_size``, ``max_batch`` static).
    """
    layout = validate.one_of("layout", layout, tasks.ALL_LAYOUTS)
    steps, gd_lr, sens_size, max_batch = _check(task, steps, gd_lr, sens_size, max_batch)
    pred, model_sens, sub = _query_and_sensitivity(model, task, layout, sens_size, max_batch)
    ref = gd.predict(task.x, task.y, task.x_query, lr=gd_lr, steps=steps)
    ref_sens = gd.weights(sub.x, sub.y, lr=gd_lr, steps=steps)
    out = {
        "loss": loss(pred, task.y_query),
        "gd_loss": loss(ref, task.y_query),
        "preds_diff": preds_diff(pred, ref),
        **alignment(model_sens, ref_sens),
    }
    for name, other in (other_refs or {}).items():
        out.update({f"{k}_{name}": v for k, v in alignment(model_sens, other).items()})
    return out


def _check(task, steps, gd_lr, sens_size, max_batch) -> tuple:
    """The checked arguments of :func:`evaluate` and :func:`evaluate_classification`."""
    check_task(task)
    check_context(task.x, task.y, task.x_query, task.y_query)
    optional = (None if v is None else validate.positive_int(k, v)
                for k, v in (("sens_size", sens_size), ("max_batch", max_batch)))  # fmt: skip
    return (validate.positive_int("steps", steps), validate.positive_number("gd_lr", gd_lr),
            *optional)  # fmt: skip


def _query_and_sensitivity(model, task, layout, sens_size, max_batch, transform=None):
    """The model's query predictions on ``task`` and the sensitivities of ``transform`` of them
    (default: the predictions) on the first ``sens_size`` tasks, at most ``max_batch`` tasks at a
    time (``lax.map`` over the largest divisor of the batch up to ``max_batch``)."""
    batch = task.x.shape[0]
    sens_size = batch if sens_size is None else min(sens_size, batch)
    transform = transform or (lambda v: v)

    def mapped(fn, t, n):
        size = max(d for d in range(1, min(max_batch or n, n) + 1) if n % d == 0)

        def reshape(v):
            return v.reshape((v.shape[0] // size, size) + v.shape[1:])

        out = jax.lax.map(fn, jax.tree.map(reshape, t))
        return out.reshape((-1,) + out.shape[2:])

    def predict(t):
        return query_predictor(model, t, layout)(t.x_query)

    def sens(t):
        predictor = query_predictor(model, t, layout)
        return sensitivity(lambda xq: transform(predictor(xq)), t.x_query)

    sub = jax.tree.map(lambda v: v[:sens_size], task)
    return mapped(predict, task, batch), mapped(sens, sub, sens_size), sub


def centred(logits: Array) -> Array:
    """``logits`` minus their mean over the last (class) axis: what a softmax depends on."""
    return logits - jnp.mean(logits, axis=-1, keepdims=True)


def evaluate_classification(
    model,
    task,
    *,
    gd_lr,
    steps: int = 1,
    sens_size: int | None = None,
    max_batch: int | None = None,
) -> dict[str, Array]:
    """Every metric of ``model`` on a batch of classification tasks (one-hot ``y``, interleaved
    tokens) against K-step cross-entropy GD with step size ``gd_lr`` (docs/design.md §11).

    Returns ``loss`` and ``accuracy`` (the model's query logits), ``gd_loss`` and ``gd_accuracy``
    (:func:`ssm_gd.gd.cross_entropy_predict`), ``preds_diff`` (of the centred logits), and
    ``model_diff``/``model_cos`` between the sensitivities ``∂ centred(logits)/∂x_q``
    ``(K, d_in)`` and GD's ``W_K`` (whose columns sum to zero over the classes, as every
    cross-entropy gradient's do) on the first ``sens_size`` tasks. ``max_batch`` as in
    :func:`evaluate`. Jit-able (``steps``, ``sens_size``, ``max_batch`` static).
    """
    steps, gd_lr, sens_size, max_batch = _check(task, steps, gd_lr, sens_size, max_batch)
    logits, model_sens, sub = _query_and_sensitivity(
        model, task, "interleaved", sens_size, max_batch, transform=centred
    )
    ref = gd.cross_entropy_predict(task.x, task.y, task.x_query, lr=gd_lr, steps=steps)
    ref_sens = gd.cross_entropy_weights(sub.x, sub.y, lr=gd_lr, steps=steps)
    return {
        "loss": gd.cross_entropy(logits, task.y_query),
        "accuracy": gd.accuracy(logits, task.y_query),
        "gd_loss": gd.cross_entropy(ref, task.y_query),
        "gd_accuracy": gd.accuracy(ref, task.y_query),
        "preds_diff": preds_diff(centred(logits), centred(ref)),
        **alignment(model_sens, ref_sens),
    }


# --------------------------------------------------------------------------- parameter match


def parameter_blocks(model: GDSSM) -> dict[str, np.ndarray]:
    """A GD-SSM's parameters by block, float64 numpy: ``Q_y`` (or the constructed layout's
    ``P_y``), ``C_y``, ``D``, ``lambda_y`` (``Λ_y``), and with ``n_steps > 1`` ``Q_x``, ``C_x``,
    ``lambda_x`` — the blocks :func:`param_match_error` compares."""
    b = {
        "Q_y": model.yx_attention.q[...] if hasattr(model.yx_attention, "q") else None,
        "C_y": model.c_y[...],
        "D": model.d[...],
        "lambda_y": model.yx_recurrence.lam,
    }
    if b["Q_y"] is None:
        b["Q_y"] = model.yx_attention.p[...]
    if model.n_steps > 1:
        b.update(
            Q_x=model.xx_attention.q[...], C_x=model.c_x[...], lambda_x=model.xx_recurrence.lam
        )
    return {k: np.asarray(v, np.float64) for k, v in b.items()}


def _unit(v):
    return v / np.linalg.norm(v)


def _scaled_group(trained, constructed, names):
    """Errors of a group of blocks whose product is the only thing the output sees.

    ``(B_1, …, B_m) → (α_1 B_1, …, α_m B_m)`` with ``Π α_i = 1`` leaves the model unchanged, so
    each block is compared by direction (unit Frobenius norm) and the group by the product of
    norms. Signs may flip in pairs (``Π sign(α_i) = +1``): the best admissible sign pattern is used.
    """
    t = [_unit(trained[n]) for n in names]
    c = [_unit(constructed[n]) for n in names]
    best = None
    for signs in itertools.product((1.0, -1.0), repeat=len(names)):
        if np.prod(signs) < 0:
            continue
        errs = [float(np.linalg.norm(ti - s * ci)) for ti, ci, s in zip(t, c, signs, strict=True)]
        if best is None or max(errs) < max(best):
            best = errs
    norm_t = np.prod([np.linalg.norm(trained[n]) for n in names])
    norm_c = np.prod([np.linalg.norm(constructed[n]) for n in names])
    return dict(zip(names, best, strict=True)), abs(norm_t / norm_c - 1.0)


def param_match_error(
    trained: GDSSM, constructed: GDSSM, *, classes: bool = False
) -> dict[str, float]:
    """How far ``trained``'s parameters are from ``constructed``'s, up to exact symmetries.

    Symmetries removed (each leaves every prediction unchanged):

    * ``(Q_y, C_y, D) → (α Q_y, β C_y, γ D)`` with ``αβγ = 1``, signs included: the y-branch
      output is linear in each of the three;
    * ``(Q_x, C_x) → (α Q_x, C_x / α)`` (``n_steps > 1``): only ``C_x S^x`` reaches the readout;
    * entries of ``Λ`` whose state never reaches the output under the construction (rows of
      ``S^y`` beyond ``d_out``, columns beyond ``d_in``: zero padding) are not compared;
    * likewise the entries of ``C`` that only ever meet that zero padding (interleaved layout):
      columns of ``C_y`` beyond ``d_out`` (the zero rows of ``S^y``), and rows and columns of
      ``C_x`` beyond ``d_in``. They are set to zero in both models before comparing;
    * ``classes=True`` (the outputs are logits of a softmax): ``C_y → C_y + 1 vᵀ`` moves every
      logit by the same amount, so ``C_y``'s mean over the classes (its rows) is removed in both.

    Returns per-block errors — ``Q_y``, ``C_y``, ``D`` (and ``Q_x``, ``C_x``): the Frobenius
    distance between unit-normalised blocks (0 … 2); ``scale_y`` (and ``scale_x``): the relative
    error ``|Π‖B_t‖ / Π‖B_c‖ − 1|`` of the group's overall scale (the effective step size);
    ``lambda_y`` (and ``lambda_x``): the root-mean-square ``Λ`` difference over reachable entries — and
    ``total``, their maximum. Zero for any symmetry-transformed construction; linear in a small
    perturbation.
    """
    if not isinstance(trained, GDSSM) or not isinstance(constructed, GDSSM):
        raise TypeError("param_match_error compares two GDSSM models")
    same = (trained.d_in, trained.d_out, trained.n_steps, trained.layout)
    if same != (constructed.d_in, constructed.d_out, constructed.n_steps, constructed.layout):
        raise ValueError(
            "trained and constructed models must share d_in, d_out, n_steps and layout; got "
            f"{same} and {(constructed.d_in, constructed.d_out, constructed.n_steps, constructed.layout)}"
        )
    t, c = parameter_blocks(trained), parameter_blocks(constructed)
    # C_y's columns past d_out read rows of S^y = Σ y x^T that are zero padding under the
    # construction; C_x's rows and columns past d_in meet only the zero padding of x (S^x, the
    # query, and the columns of S^y).
    live_y = np.arange(c["C_y"].shape[1]) < trained.d_out
    t["C_y"], c["C_y"] = t["C_y"] * live_y, c["C_y"] * live_y
    if classes:
        t["C_y"], c["C_y"] = (centred(b.T).T * live_y for b in (t["C_y"], c["C_y"]))
    if trained.n_steps > 1:
        live_x = np.arange(c["C_x"].shape[0]) < trained.d_in
        keep = live_x[:, None] & live_x[None, :]
        t["C_x"], c["C_x"] = t["C_x"] * keep, c["C_x"] * keep
    out, scale = _scaled_group(t, c, ["Q_y", "C_y", "D"])
    out["scale_y"] = scale
    # Reachable Λ_y entries: rows of S^y that C_y reads, columns that meet the query x_{t+1}.
    rows = np.any(c["C_y"] != 0, axis=0)
    cols = np.arange(c["lambda_y"].shape[1]) < trained.d_in
    mask = rows[:, None] & cols[None, :]
    out["lambda_y"] = float(np.sqrt(np.mean((t["lambda_y"] - c["lambda_y"])[mask] ** 2)))
    if trained.n_steps > 1:
        group, scale = _scaled_group(t, c, ["Q_x", "C_x"])
        out.update(group, scale_x=scale)
        live = np.arange(c["lambda_x"].shape[0]) < trained.d_in
        mask = live[:, None] & live[None, :]
        out["lambda_x"] = float(np.sqrt(np.mean((t["lambda_x"] - c["lambda_x"])[mask] ** 2)))
    out = {k: float(v) for k, v in out.items()}
    out["total"] = max(out.values())
    return out
