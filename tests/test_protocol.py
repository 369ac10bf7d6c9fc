"""The comparison protocol (experiments/protocol.py): its checks, the sweep's budget, the ranking
of rates, and how a stopped call continues (finished runs read back, a started run resumed)."""

import dataclasses
import json
import math

import pytest

from experiments import protocol
from ssm_gd.trainer import TrainingDiverged


@dataclasses.dataclass(frozen=True)
class Settings:
    mixer: str = "ssm"
    lr: float = 1e-3
    seed: int = 0
    train_steps: int = 100
    eval_every: int = 40


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(lrs=()), "lrs must hold at least one"),
        (dict(lrs=(1e-3, -1.0)), "lrs must be a positive"),
        (dict(lrs=(1e-3, 1e-3)), "lrs must be distinct"),
        (dict(seeds=()), "seeds must be one or more distinct"),
        (dict(seeds=(-1,)), "seeds must be a non-negative"),
        (dict(sweep_fraction=0.0), "sweep_fraction must be a positive"),
        (dict(sweep_fraction=1.5), "sweep_fraction must be in"),
    ],
)
def test_a_bad_protocol_is_refused_with_the_field_named(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        protocol.Protocol("accuracy", True, **fields)


def test_the_sweep_budget_and_the_ranking_of_rates():
    p = protocol.Protocol("accuracy", True, tiebreak="val_loss")
    assert p.lrs == (3e-4, 1e-3, 3e-3, 1e-2) and math.log10(p.lrs[-1] / p.lrs[0]) >= 1.5
    assert p.sweep_steps(1000, 100) == (250, 100) and p.sweep_steps(10, 50) == (3, 3)
    assert protocol.Protocol("bpc", False, sweep_fraction=0.07).sweep_steps(100, 10) == (7, 7)
    better, worse = {"accuracy": 0.9, "val_loss": 2.0}, {"accuracy": 0.8, "val_loss": 0.1}
    assert sorted([worse, better], key=p.rank) == [better, worse]
    tie = {"accuracy": 0.9, "val_loss": 1.0}  # equal accuracy: the lower loss first
    assert sorted([better, tie], key=p.rank) == [tie, better]
    for failed in ({"diverged": "nan at step 3"}, {"accuracy": math.nan}):
        assert sorted([failed, worse], key=p.rank) == [worse, failed]
    bpc = protocol.Protocol("bpc", False)
    assert sorted([{"bpc": 2.5}, {"bpc": 2.0}], key=bpc.rank) == [{"bpc": 2.0}, {"bpc": 2.5}]
    assert protocol.lr_folder(3e-4) == "lr-0.0003" and protocol.lr_folder(1e-2) == "lr-0.01"


def test_spread_and_the_table_cells():
    assert protocol.spread([0.8, 0.9]) == (pytest.approx(0.85), pytest.approx(0.05))
    assert all(math.isnan(x) for x in protocol.spread([0.8, None]))
    result = {"lr": 1e-3, "runs": [{"test_accuracy": 0.8, "settings": {"seed": 0}},
                                   {"test_accuracy": 0.9, "settings": {"seed": 1}}],
              "sweep": [{"accuracy": 0.5, "settings": {"lr": 1e-3}},
                        {"settings": {"lr": 1e-2}, "diverged": "nan"}]}  # fmt: skip
    assert protocol.cell(result, "accuracy", "{:.2f}".format) == "0.85 ± 0.05"
    assert protocol.sweep_cell(result, "accuracy", "{:.2f}".format) == (
        "0.001: **0.50**, 0.01: div. (best at an end of the range)"
    )
    middle = {"lr": 1e-3, "sweep": [{"accuracy": a, "settings": {"lr": lr}}
                                    for lr, a in ((3e-4, 0.4), (1e-3, 0.6), (3e-3, 0.5))]}  # fmt: skip
    assert protocol.sweep_cell(middle, "accuracy", "{:.1f}".format) == (
        "0.0003: 0.4, 0.001: **0.6**, 0.003: 0.5"
    )
    result["runs"][1] = {"settings": {"seed": 1}, "diverged": "nan"}
    assert protocol.cell(result, "accuracy", "{:.2f}".format) == "diverged (seed 1)"
    assert protocol.cell({"lr": None, "runs": []}, "accuracy", str) == "every lr diverged"


def test_tune_sweeps_chooses_on_validation_then_runs_the_seeds(tmp_path):
    calls = []

    def train(settings, folder, test, resume):
        calls.append((settings.lr, settings.seed, settings.train_steps, settings.eval_every, test))
        value = {1e-3: 0.5, 1e-2: 0.7}[settings.lr]
        return {"mixer": settings.mixer, "accuracy": value, "settings": dataclasses.asdict(settings),
                **({"test_accuracy": value - 0.1 * settings.seed} if test else {})}  # fmt: skip

    p = protocol.Protocol("accuracy", True, lrs=(1e-3, 1e-2), seeds=(3, 4))
    result = protocol.tune(Settings(), tmp_path, train, p, say=lambda line: None)
    assert calls == [(1e-3, 3, 25, 25, False), (1e-2, 3, 25, 25, False),
                     (1e-2, 3, 100, 40, True), (1e-2, 4, 100, 40, True)]  # fmt: skip
    assert result["lr"] == 1e-2 and result["settings"] == dataclasses.asdict(Settings())
    assert [r["role"] for r in result["sweep"] + result["runs"]] == ["sweep"] * 2 + ["test"] * 2
    stored = json.loads((tmp_path / "seed-4" / "summary.json").read_text())
    assert stored["test_accuracy"] == pytest.approx(0.3) and stored["settings"]["seed"] == 4
    again = protocol.tune(Settings(), tmp_path, train, p, say=lambda line: None)
    assert len(calls) == 4 and all(r["read_back"] for r in again["sweep"] + again["runs"])
    # another role in the same folder is not read back: a run never mixes with another
    summary = json.loads((tmp_path / "seed-3" / "summary.json").read_text())
    (tmp_path / "seed-3" / "summary.json").write_text(json.dumps({**summary, "role": "sweep"}))
    protocol.tune(Settings(), tmp_path, train, p, say=lambda line: None)
    assert calls[4:] == [(1e-2, 3, 100, 40, True)]


def test_a_run_stopped_part_way_is_trained_again_from_its_start(tmp_path):
    resumes = []

    def train(settings, folder, test, resume):
        resumes.append(resume)
        return {"mixer": "ssm", "accuracy": 0.5, "settings": dataclasses.asdict(settings),
                **({"test_accuracy": 0.5} if test else {})}  # fmt: skip

    p = protocol.Protocol("accuracy", True, lrs=(1e-3,), seeds=(0,))
    (tmp_path / "seed-0" / "checkpoints").mkdir(parents=True)  # started, never finished
    (tmp_path / "seed-0" / "config.json").write_text("{}")
    result = protocol.tune(Settings(), tmp_path, train, p, say=lambda line: None)
    assert resumes == [False, False] and not result["runs"][0]["read_back"]


def test_every_rate_diverging_is_said_and_no_seed_runs(tmp_path):
    def train(settings, folder, test, resume):
        raise TrainingDiverged("training loss became nan at step 2")

    lines = []
    p = protocol.Protocol("accuracy", True, lrs=(1e-3, 1e-2))
    result = protocol.tune(Settings(), tmp_path, train, p, say=lines.append)
    assert result["lr"] is None and result["runs"] == []
    assert all("nan at step 2" in r["diverged"] for r in result["sweep"])
    assert "every rate diverged" in lines[-1]


def test_optim_adamw_takes_the_steps_of_optax_adamw():
    # The peak rate moved into the optimiser's state (one compiled step for every rate): the
    # updates are optax.adamw's on the same schedule, to float32 rounding of the schedule's value
    # (the rate is now multiplied after the unit schedule instead of inside it).
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from ssm_gd import optim

    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}
    ours = optim.adamw(3e-3, 40, warmup=5, weight_decay=0.1, final_fraction=0.1)
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optim.schedule(3e-3, 40, 5, 0.1), weight_decay=0.1),
    )
    a_state, b_state, a = ours.init(params), reference.init(params), params
    for t in range(40):
        grads = jax.tree.map(lambda x, t=t: jnp.sin(3.0 * x + t), a)  # the same for both
        a_up, a_state = ours.update(grads, a_state, a)
        b_up, b_state = reference.update(grads, b_state, a)
        np.testing.assert_allclose(a_up["w"], b_up["w"], rtol=1e-6, atol=1e-12)
        a = optax.apply_updates(a, a_up)
    lr = a_state[1][3].hyperparams["step_size"]  # the rate is a value of the state
    assert float(lr) == -3e-3
