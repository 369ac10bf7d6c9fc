"""Figures for the experiments (matplotlib, written as PNG; no display needed)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["alignment_curves", "icl_curve", "loss_curve", "parameters", "save"]


def save(fig, path):
    """Lay out, write ``path`` (PNG, 120 dpi; its folder made) and close ``fig``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curve(history, path, *, gd_loss: float, lsq_loss: float | None = None, title=""):
    """Validation (and training) loss against steps, with GD at its best η as a line."""
    rows = [r for r in history if r["step"] > 0] or history
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(steps, [r["val_loss"] for r in rows], "o-", label="GD-SSM (validation)")
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), ".--", alpha=0.6, label="GD-SSM (training batches)")
    ax.axhline(gd_loss, color="k", lw=1, label=f"GD, best η ({gd_loss:.4f})")
    if lsq_loss is not None:
        ax.axhline(lsq_loss, color="gray", ls=":", lw=1, label=f"least squares ({lsq_loss:.3f})")
    ax.set(xlabel="training step", ylabel="query loss", title=title)
    ax.legend(fontsize=8)
    return save(fig, path)


def alignment_curves(history, path, *, title=""):
    """``1 − model_cos``, ``model_diff``, ``preds_diff`` and ``param_match_error`` against steps."""
    rows = history
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    series = {
        "1 − model_cos": [1 - r["model_cos"] for r in rows],
        "model_diff": [r["model_diff"] for r in rows],
        "preds_diff": [r["preds_diff"] for r in rows],
        "param_match_error": [r["param_match_error"] for r in rows],
    }
    for name, values in series.items():
        ax.semilogy(steps, np.maximum(values, 1e-12), "o-", label=name)
    ax.set(xlabel="training step", ylabel="distance to GD", title=title)
    ax.legend(fontsize=8)
    return save(fig, path)


def parameters(trained: dict, constructed: dict, path, *, title=""):
    """Heatmaps of each block (``{name: 2-D array}``), trained above constructed."""
    names = list(trained)
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.2), squeeze=False)
    for j, name in enumerate(names):
        for i, (label, block) in enumerate((("trained", trained), ("constructed", constructed))):
            value = np.atleast_2d(np.asarray(block[name], np.float64))
            limit = np.abs(value).max() or 1.0
            im = axes[i, j].imshow(value, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[i, j].set_title(f"{name} ({label})", fontsize=9)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            fig.colorbar(im, ax=axes[i, j], fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def icl_curve(curves: dict[str, np.ndarray], path, *, title=""):
    """Loss against the number of in-context examples, one line per predictor."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, values in curves.items():
        ax.semilogy(np.arange(1, len(values) + 1), values, "o-", ms=3, label=name)
    ax.set(xlabel="in-context examples", ylabel="loss of the next prediction", title=title)
    ax.legend(fontsize=8)
    return save(fig, path)
