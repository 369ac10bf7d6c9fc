"""Run folders and checkpoints: what a run writes, how it is saved, and how it is resumed exactly.

A run folder holds ``config.json`` (the run's config, as a JSON object), ``history.jsonl`` (one
line per evaluation), ``summary.json``, ``checkpoints/<step>/`` (orbax, each saved with a SHA-256
digest of its arrays) and figures. :func:`clear_outputs` empties it for a fresh run;
:func:`check_resumable`, :func:`restore_latest` and :func:`read_history` make a resume continue
the run exactly or refuse with one message that says why. Nothing here knows what is trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RUN_FIGURES",
    "RUN_FILES",
    "RUN_FOLDERS",
    "NoCheckpoint",
    "ResumeError",
    "check_config",
    "check_resumable",
    "clear_outputs",
    "open_manager",
    "read_history",
    "restore",
    "restore_latest",
    "save",
    "state_digest",
    "write_config",
    "write_history",
]

# What a run writes at the top level of ``out``, in one place: a fresh run (not ``resume``)
# removes these first, so nothing of an earlier run in the same folder survives beside the new
# one (a summary or figures next to a history they do not describe). ``*.png``: the experiments'
# figures (:mod:`experiments.linear` writes them beside the run's files). Nothing else in ``out``
# (other files, other subfolders) is touched.
RUN_FILES = ("history.jsonl", "summary.json", "config.json")
RUN_FOLDERS = ("checkpoints",)
RUN_FIGURES = "*.png"


class ResumeError(ValueError):
    """``resume=True`` cannot continue the run in ``out`` exactly (another config, no intact
    checkpoint, a history that does not reach the checkpoint); the message says why."""


class NoCheckpoint(ResumeError, FileNotFoundError):
    """``resume=True`` on a folder without a checkpoint (or without the folder)."""


def clear_outputs(out: str | pathlib.Path) -> None:
    """Remove what a run writes in ``out`` (:data:`RUN_FILES`, :data:`RUN_FOLDERS`, top-level
    ``*.png``); leave everything else. A fresh run calls it first."""
    out = pathlib.Path(out)
    if not out.is_dir():
        return
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for figure in out.glob(RUN_FIGURES):
        if figure.is_file():
            figure.unlink()


def check_resumable(out, config: dict, may_differ=frozenset()) -> None:
    """Refuse to resume a folder without a checkpoint, or with another config (a JSON-able dict;
    the fields named in ``may_differ`` may change)."""
    out = pathlib.Path(out)
    folder = out / "checkpoints"
    if not folder.is_dir():
        raise NoCheckpoint(f"cannot resume {out}: no checkpoint in {folder} (no such folder)")
    saved = open_manager(folder)
    try:
        if not saved.all_steps():
            raise NoCheckpoint(f"cannot resume {out}: no checkpoint in {folder}")
    finally:
        saved.close()
    check_config(out, config, may_differ)


def write_config(out, config: dict) -> None:
    """Store the run's config (a JSON-able dict) as ``config.json`` in ``out``."""
    (pathlib.Path(out) / "config.json").write_text(json.dumps(config, indent=2))


def check_config(out, config: dict, may_differ=frozenset()) -> None:
    """Refuse to resume with a config that differs from the one the run started with: every
    differing field is listed with its old and new value (those in ``may_differ`` excepted)."""
    out = pathlib.Path(out)
    path = out / "config.json"
    if not path.exists():
        raise ResumeError(
            f"cannot resume {out}: {path} is missing, so the config the run started with is "
            "unknown; start a fresh run (without --resume) or use another --out"
        )
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResumeError(f"cannot resume {out}: {path} is unreadable ({e})") from e
    new = json.loads(json.dumps(config))  # as stored: tuples become lists
    missing = object()
    changes = [
        f"{name} {'(not recorded)' if old is missing else repr(old)} -> "
        f"{'(not set)' if value is missing else repr(value)}"
        for name in [*new, *(n for n in stored if n not in new)]
        if name not in may_differ
        for old, value in [(stored.get(name, missing), new.get(name, missing))]
        if old is missing or value is missing or old != value
    ]
    if changes:
        raise ResumeError(
            f"cannot resume {out}: the run was started with a different config: "
            f"{', '.join(changes)}; start a fresh run (without --resume) or use another --out"
        )


def open_manager(path: pathlib.Path):
    """An orbax ``CheckpointManager`` on ``path``: two steps kept, synchronous saves."""
    import orbax.checkpoint as ocp

    # cleanup_tmp_directories: an interrupted save's ``<step>.orbax-checkpoint-tmp-*`` folder is
    # never read as a step; this removes it too, rather than leaving it beside the steps.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    # The handler named up front: reading a step's metadata then needs no restore first.
    return ocp.CheckpointManager(
        path.absolute(), options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def state_digest(state) -> str:
    """A SHA-256 of every array's dtype, shape and bytes: saved with the checkpoint and checked
    on restore, so damage that still decodes (zeroed bytes, say) is caught."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.asarray(jax.device_get(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save(manager, step, params, opt_state):
    """Save ``params`` and ``opt_state`` at ``step``, with their digest; wait until written."""
    import orbax.checkpoint as ocp

    state = {"params": params, "opt_state": opt_state}
    manager.save(
        step,
        args=ocp.args.StandardSave(state),
        custom_metadata={"digest": state_digest(state)},
    )
    manager.wait_until_finished()


def restore(manager, step, params, opt_state):
    """The state saved at ``step``, checked against its digest; raises if it is not intact."""
    import orbax.checkpoint as ocp

    like = {"params": params, "opt_state": opt_state}
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
    )
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    got, want = jax.tree.structure(restored), jax.tree.structure(target)
    if got != want:
        raise ValueError(f"its tree is {got}, expected {want}")
    for path, a, t in zip(
        jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(restored),
        jax.tree.leaves(target), strict=True,
    ):  # fmt: skip
        name = jax.tree_util.keystr(path[0])
        if a.shape != t.shape or a.dtype != t.dtype:
            raise ValueError(f"{name} is {a.dtype}{a.shape}, expected {t.dtype}{t.shape}")
        if jnp.issubdtype(a.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(a))):
            raise ValueError(f"{name} has non-finite values")
    saved = (manager.metadata(step).custom_metadata or {}).get("digest")
    if saved is None:
        raise ValueError("no digest in its _CHECKPOINT_METADATA (missing or unreadable)")
    if state_digest(restored) != saved:
        raise ValueError("its arrays do not match the digest saved with them")
    return restored["params"], restored["opt_state"]


def restore_latest(manager, folder: pathlib.Path, params, opt_state):
    """The newest intact checkpoint: ``(step, params, opt_state)``. A broken newer step is
    reported (``warnings.warn``) and deleted, as resuming from an earlier step writes it anew."""
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise NoCheckpoint(f"cannot resume: no checkpoint in {folder}")
    broken = []
    for step in steps:
        try:
            params_, opt_state_ = restore(manager, step, params, opt_state)
        except Exception as e:  # orbax and tensorstore raise many kinds (ValueError, JSON, OS)
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            broken.append(step)
            warnings.warn(
                f"checkpoint step {step} ({folder / str(step)}) is broken and is skipped: {reason}",
                stacklevel=3,
            )
            continue
        for bad in broken:  # newer than the step resumed from: the replay saves them again
            manager.delete(bad)
        return step, params_, opt_state_
    raise ResumeError(
        f"cannot resume: no intact checkpoint in {folder} (tried steps {steps}, all broken); "
        "start a fresh run (without --resume)"
    )


def read_history(path: pathlib.Path, up_to: int, eval_every: int, *, write: bool = True):
    """The history up to the restored step, checked to lead to it; the file is cut there
    (``write``; the processes other than the writer of a run over several only read it)."""
    if not path.exists():
        raise ResumeError(
            f"cannot resume: {path} is missing, so the evaluations before the checkpoint (step "
            f"{up_to}) are lost; start a fresh run (without --resume)"
        )
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ResumeError(f"cannot resume: {path} line {number} is unreadable ({e})") from e
    records = [r for r in records if r.get("step", math.inf) <= up_to]
    expected = sorted({*range(0, up_to, eval_every), up_to})
    got = [r.get("step") for r in records]
    if got != expected:
        raise ResumeError(
            f"cannot resume: {path} does not match the checkpoint at step {up_to}: it has the "
            f"evaluations at steps {got}, expected {expected}; start a fresh run (without --resume)"
        )
    if write:
        write_history(path, records)
    return records


def write_history(path: pathlib.Path, records) -> None:
    """``history.jsonl``: one JSON line per record."""
    pathlib.Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))
