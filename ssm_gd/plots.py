"""Figures for the experiments (matplotlib, written as PNG; no display needed).

The figures are :class:`matplotlib.figure.Figure` objects drawn without pyplot, so importing this
module chooses no backend and leaves the caller's (a notebook's inline one, say) alone. Each
function writes its PNG and returns the figure.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from matplotlib.figure import Figure

__all__ = ["alignment_curves", "icl_curve", "loss_curve", "parameters", "save"]


def save(fig, path):
    """Lay out, write ``path`` (PNG, 120 dpi; its folder made) and release ``fig`` from pyplot
    if pyplot made it (a plain :class:`~matplotlib.figure.Figure` needs no closing)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return path


def loss_curve(history, path, *, gd_loss: float, lsq_loss: float | None = None, title="") -> Figure:
    """Validation and training loss against steps (log loss axis, step 0 included), with GD at
    its best η and least squares as lines; beside it, the validation loss's excess over GD's.

    Step 0 (random initialisation) has a validation loss and no training loss. A least-squares
    loss more than a decade below every curve is named in the legend, not drawn: it would squash
    the curves into a band at the top of the axis.
    """
    steps = np.array([r["step"] for r in history])
    val = np.array([r["val_loss"] for r in history], np.float64)
    fig = Figure(figsize=(10, 3.8))
    ax, gap = fig.subplots(1, 2)
    ax.plot(steps, val, "o-", zorder=3, label="validation (fixed tasks)")
    train = [(r["step"], r["train_loss"]) for r in history if r.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), "s--", ms=4, alpha=0.7, zorder=2,
                label="training batches (mean of the last steps)")  # fmt: skip
    shown = np.concatenate([val, [t for _, t in train], [gd_loss]])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    low, high = shown.min(), shown.max()
    ax.axhline(gd_loss, color="k", lw=1, zorder=1, label=f"GD, best η ({gd_loss:.4g})")
    if lsq_loss is not None:
        if lsq_loss >= low / 10:
            low = min(low, lsq_loss)
            ax.axhline(
                lsq_loss, color="gray", ls=":", lw=1, label=f"least squares ({lsq_loss:.3g})"
            )
        else:  # an entry in the legend only
            ax.plot([], [], color="gray", ls=":", lw=1,
                    label=f"least squares ({lsq_loss:.2g}, below the axis)")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylim(low / 1.25, high * 1.25)
    ax.set(xlabel="training step", ylabel="query loss", title=title)
    ax.legend(fontsize=8)

    excess = val / gd_loss - 1
    gap.plot(steps, excess, "o-", label="validation loss / GD's − 1")
    if np.all(excess[np.isfinite(excess)] > 0):
        gap.set_yscale("log")
    else:  # below GD somewhere: a scale that shows both signs
        gap.axhline(0, color="k", lw=1)
        gap.set_yscale("symlog", linthresh=1e-4)
    gap.set(xlabel="training step", ylabel="excess loss over GD (relative)", title="gap to GD")
    gap.legend(fontsize=8)
    save(fig, path)
    return fig


def alignment_curves(history, path, *, title="") -> Figure:
    """``1 − model_cos``, ``model_diff``, ``preds_diff`` and ``param_match_error`` against steps."""
    rows = history
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    series = {
        "1 − model_cos": [1 - r["model_cos"] for r in rows],
        "model_diff": [r["model_diff"] for r in rows],
        "preds_diff": [r["preds_diff"] for r in rows],
        "param_match_error": [r["param_match_error"] for r in rows],
    }
    for name, values in series.items():
        if any(v is None for v in values):  # no parameter match for the neighbour models
            continue
        ax.semilogy(steps, np.maximum(values, 1e-12), "o-", label=name)
    ax.set(xlabel="training step", ylabel="distance to GD", title=title)
    ax.legend(fontsize=8)
    save(fig, path)
    return fig


def parameters(trained: dict, constructed: dict, path, *, title="") -> Figure:
    """Heatmaps of each block (``{name: 2-D array}``), trained above constructed."""
    names = list(trained)
    fig = Figure(figsize=(2.6 * len(names), 5.2))
    axes = fig.subplots(2, len(names), squeeze=False)
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
    save(fig, path)
    return fig


# The predictors of icl_curve in turn: a wide pale line under a dashed line with open markers,
# then a dotted one, so that each stays visible where they coincide.
_ICL_STYLES = (
    dict(ls="-", lw=4, alpha=0.45, zorder=2),
    dict(ls="--", lw=1.3, marker="o", ms=5, mfc="none", zorder=3),
    dict(ls=":", lw=1.3, marker="s", ms=3, zorder=4),
)


def icl_curve(curves: dict[str, np.ndarray], path, *, title="") -> Figure:
    """Loss against the number of in-context examples, one line per predictor (log loss axis).

    The first predictor (the trained model) is a wide pale line, the second (GD) a dashed line
    with open markers on top of it: where the two coincide both stay visible. The axis shows at
    most three decades below the highest loss (an exact fit leaves it downward).
    """
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for i, (name, values) in enumerate(curves.items()):
        style = _ICL_STYLES[i % len(_ICL_STYLES)]
        ax.semilogy(np.arange(1, len(values) + 1), values, label=name, **style)
    # At most three decades: an exact fit (least squares with N >= d) would squash the rest.
    values = np.concatenate([np.ravel(v) for v in curves.values()]).astype(np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        ax.set_ylim(max(values.min(), values.max() * 1e-3) / 1.5, values.max() * 1.5)
    ax.set(xlabel="in-context examples", ylabel="loss of the next prediction", title=title)
    ax.legend(fontsize=8)
    save(fig, path)
    return fig
