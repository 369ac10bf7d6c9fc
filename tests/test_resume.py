"""``--resume`` continues a run exactly or refuses; checkpoints are checked; outputs are not stale.

Every test trains a tiny config (seconds): 4 steps, an evaluation and a checkpoint every 2, so a
finished run has ``checkpoints/2`` and ``checkpoints/4`` (orbax keeps two).
"""

import dataclasses
import json
import shutil
import warnings

import pytest

from experiments import linear
from ssm_gd import checkpoints, train, trainer

TINY = train.Config(
    n_context=4,
    d_in=2,
    d_out=1,
    train_steps=4,
    batch_size=8,
    eval_every=2,
    eval_size=16,
    sens_size=8,
    warmup_steps=1,
)

# Timings differ between runs; everything else must be equal, exactly.
TIMINGS = {
    "elapsed",
    "wall_seconds",
    "train_steps_per_second",
    "steps_per_second",
    "time_to_target",
}


def numbers(result):
    history = [{k: v for k, v in row.items() if k not in TIMINGS} for row in result.history]
    summary = {k: v for k, v in result.summary.items() if k not in TIMINGS}
    return history, summary


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (its folder and its result), to copy and damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = train.train(TINY, out, progress=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]
    return out, result


def copy_of(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def history_steps(out):
    return [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------ 3: another config


def test_a_fresh_run_stores_its_config(finished):
    out, _ = finished
    assert json.loads((out / "config.json").read_text()) == dataclasses.asdict(TINY)


def test_resume_with_another_config_is_refused_listing_every_difference(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = dataclasses.replace(TINY, lr=0.5, train_steps=8)
    with pytest.raises(ValueError, match="different config") as caught:
        train.train(other, out, resume=True, progress=False)
    message = str(caught.value)
    assert "lr 0.02 -> 0.5" in message and "steps 4 -> 8" in message
    assert str(out) in message and "without --resume" in message
    assert "seed" not in message  # only the fields that differ
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched


def test_every_config_field_must_match(finished):
    out, _ = finished
    assert train.RESUMABLE_CHANGES == frozenset()
    changed = {
        "eval_every": 1,
        "seed": 3,
        "train_steps": 6,
        "batch_size": 16,
        "warmup_steps": 2,
        "clip_norm": 2.0,
        "impl": "sequential",
        "dtype": "float64",
    }
    for name, value in changed.items():
        with pytest.raises(train.ResumeError, match=rf"\b{name} "):
            checkpoints.check_config(
                out, dataclasses.asdict(dataclasses.replace(TINY, **{name: value}))
            )
    checkpoints.check_config(out, dataclasses.asdict(TINY))  # the same config passes


def test_resuming_a_finished_run_returns_its_result_without_training(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    summary_before = json.loads((out / "summary.json").read_text())
    resumed = train.train(TINY, out, resume=True, progress=True)  # progress may differ
    assert numbers(resumed) == numbers(finished[1])
    assert history_steps(out) == [0, 2, 4]
    after = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    assert after == before  # nothing saved again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_seconds"] == summary_before["wall_seconds"]  # the run's own timing


# ---------------------------------------------------------------------- 4: nothing to resume


@pytest.mark.parametrize("kind", ["missing", "empty", "no checkpoints", "empty checkpoints"])
def test_resume_without_a_checkpoint_is_refused(finished, tmp_path, kind):
    out = tmp_path / "run"
    if kind != "missing":
        out.mkdir()
    if kind in ("no checkpoints", "empty checkpoints"):
        for name in ("config.json", "history.jsonl"):
            shutil.copy(finished[0] / name, out / name)
    if kind == "empty checkpoints":
        (out / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in") as caught:
        train.train(TINY, out, resume=True, progress=False)
    assert str(out / "checkpoints") in str(caught.value)
    assert isinstance(caught.value, train.ResumeError)
    assert out.exists() == (kind != "missing")  # a missing folder is not made


def test_the_command_line_says_it_in_one_line(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as caught:
        linear.main(["--out", str(out), "--resume", "--no-progress"])
    message = caught.value.code
    assert isinstance(message, str) and message.startswith("error: cannot resume")
    assert "\n" not in message and str(out / "checkpoints") in message


# -------------------------------------------------------------------- 5: broken checkpoints


def truncate(step_dir):
    for path in (step_dir / "default").rglob("d/*"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def zero(step_dir):
    for path in (step_dir / "default").rglob("d/*"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
        path.write_bytes(bytes(data))


def empty_metadata(step_dir):
    (step_dir / "default" / "_METADATA").write_text("")


def empty_checkpoint_metadata(step_dir):
    # orbax logs a parse error and restores the arrays anyway: the digest saved with them is gone.
    (step_dir / "_CHECKPOINT_METADATA").write_text("")


def other_arrays(step_dir):
    # Arrays that decode fine but are not the ones saved at this step: only the digest tells.
    shutil.rmtree(step_dir / "default")
    shutil.copytree(step_dir.parent / "2" / "default", step_dir / "default")


DAMAGE = [truncate, zero, empty_metadata, empty_checkpoint_metadata, other_arrays]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_a_broken_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, damage):
    out = copy_of(finished, tmp_path)
    damage(out / "checkpoints" / "4")
    with pytest.warns(UserWarning, match=r"checkpoint step 4 \(.*checkpoints/4\) is broken"):
        resumed = train.train(TINY, out, resume=True, progress=False)
    # Resumed from step 2, steps 3 and 4 replayed: the uninterrupted run's numbers, exactly.
    assert numbers(resumed) == numbers(finished[1])
    assert history_steps(out) == [0, 2, 4]
    # Step 4 was written anew, intact: resuming once more warns of nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = train.train(TINY, out, resume=True, progress=False)
    assert numbers(again) == numbers(finished[1])


def test_no_intact_checkpoint_is_one_clear_error(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    truncate(out / "checkpoints" / "4")
    empty_metadata(out / "checkpoints" / "2")
    with pytest.warns(UserWarning, match="checkpoint step"):
        with pytest.raises(train.ResumeError, match="no intact checkpoint") as caught:
            train.train(TINY, out, resume=True, progress=False)
    assert str(out / "checkpoints") in str(caught.value) and "[4, 2]" in str(caught.value)


def test_an_interrupted_save_is_never_read(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    checkpoints = out / "checkpoints"
    # The save of step 4 was interrupted: orbax's temporary folder, holding step 2's state (read
    # as step 4, it would make the result differ from the uninterrupted run's).
    shutil.rmtree(checkpoints / "4")
    shutil.copytree(checkpoints / "2", checkpoints / "4.orbax-checkpoint-tmp-1234567")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = train.train(TINY, out, resume=True, progress=False)
    assert numbers(resumed) == numbers(finished[1])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]  # and it is removed


# ---------------------------------------------------------------------------- 6: stale outputs


def test_a_fresh_run_removes_the_previous_runs_outputs_and_nothing_else(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "loss.png").write_bytes(b"a figure of the previous run")
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "figure.png").write_bytes(b"not the run's")
    diverging = dataclasses.replace(TINY, lr=1e30, warmup_steps=0)
    with pytest.raises(train.TrainingDiverged):
        train.train(diverging, out, progress=False)
    assert not (out / "summary.json").exists() and not (out / "loss.png").exists()
    assert history_steps(out) == [0]
    assert json.loads((out / "config.json").read_text()) == dataclasses.asdict(diverging)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["0"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "mine" / "figure.png").exists()


def test_resume_without_the_history_is_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "history.jsonl").unlink()
    with pytest.raises(train.ResumeError, match="history.jsonl is missing"):
        train.train(TINY, out, resume=True, progress=False)
    assert not (out / "history.jsonl").exists()


def test_resume_with_a_history_short_of_the_checkpoint_is_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    first = (out / "history.jsonl").read_text().splitlines()[0]
    (out / "history.jsonl").write_text(first + "\n")
    with pytest.raises(train.ResumeError, match=r"steps \[0\], expected \[0, 2, 4\]"):
        train.train(TINY, out, resume=True, progress=False)
    assert history_steps(out) == [0]  # left as it was


def test_a_resumed_run_that_fails_leaves_no_stale_summary(finished, tmp_path, monkeypatch):
    out = copy_of(finished, tmp_path)
    shutil.rmtree(out / "checkpoints" / "4")  # interrupted after step 2: training continues
    assert (out / "summary.json").exists()

    def failing_chunk(*args, **kwargs):
        def chunk(*a):
            raise RuntimeError("interrupted")

        return chunk

    monkeypatch.setattr(trainer, "_segment_program", failing_chunk)
    with pytest.raises(RuntimeError, match="interrupted"):
        train.train(TINY, out, resume=True, progress=False)
    assert not (out / "summary.json").exists()
    assert history_steps(out) == [0, 2]
