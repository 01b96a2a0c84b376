"""sweep.scheduler: ASHA ranks a trial only against trials of its own cell x arm."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from fkd_core import metrics as M
from sweep.scheduler import CellArmASHA, CellArmKey, arm_of_fields, scheduler_for
from sweep.spaces import get_space

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


@dataclass
class FakeTrial:
    """What the schedulers read of a Tune trial: its id and config."""

    trial_id: str
    config: dict = field(default_factory=dict)


def trial(i: int, augment: str, shape: str = "none", alpha: float = 0.0) -> FakeTrial:
    return FakeTrial(f"t{i}", {"cfg": {"augment": augment, "shape": shape, "alpha": alpha,
                                       "lr": 1e-3 * (i + 1)}})


def asha_args() -> dict:
    return {"time_attr": M.EPOCH, "max_t": 8, "grace_period": 2, "reduction_factor": 2}


def feed(scheduler, results: list[tuple[FakeTrial, float]]) -> dict[str, str]:
    """Each trial reports its val RMSE at the grace epoch, in the given order."""
    scheduler.set_search_properties(M.OBJECTIVE, "min")
    for t, _ in results:
        scheduler.on_trial_add(None, t)
    return {t.trial_id: scheduler.on_trial_result(None, t, {M.EPOCH: 2, M.OBJECTIVE: v})
            for t, v in results}


def constructed_case() -> list[tuple[FakeTrial, float]]:
    """Cell "none" learns fast; cell "study" is 10x worse at the grace epoch, and its best trial
    (t7, 9.0 px) reports last."""
    fast = [(trial(i, "none"), 1.0 + 0.1 * i) for i in range(4)]
    slow = [(trial(4, "study"), 10.0), (trial(5, "study"), 11.0), (trial(6, "study"), 12.0),
            (trial(7, "study"), 9.0)]
    return [fast[0], slow[0], fast[1], slow[1], fast[2], slow[2], fast[3], slow[3]]


def test_a_cell_10x_worse_at_the_grace_epoch_still_promotes_its_best_trial():
    key = CellArmKey(get_space("quick"))
    decisions = feed(CellArmASHA(key, **asha_args()), constructed_case())
    assert decisions["t7"] == CONTINUE and decisions["t4"] == CONTINUE   # first at its rung
    assert decisions["t6"] == STOP and decisions["t5"] == STOP            # worse than its peers
    assert decisions["t0"] == CONTINUE


def test_one_asha_over_every_cell_would_stop_that_trial():
    """The same results through Ray's single ASHA: the slow cell's best trial is cut."""
    decisions = feed(AsyncHyperBandScheduler(**asha_args()), constructed_case())
    assert decisions["t7"] == STOP


def test_arms_of_one_cell_have_separate_rungs():
    key = CellArmKey(get_space("quick"))
    base = [(trial(i, "none"), 1.0 + 0.1 * i) for i in range(3)]
    shaped = [(trial(10, "none", "cgd", 0.1), 5.0), (trial(11, "none", "cgd", 0.2), 6.0)]
    decisions = feed(CellArmASHA(key, **asha_args()), base + shaped)
    assert decisions["t10"] == CONTINUE          # first of its own arm, however bad vs base
    assert decisions["t11"] == STOP
    assert decisions["t2"] == STOP               # worst of the base arm at the rung


@pytest.mark.parametrize("cfg,expected", [
    ({"augment": "none", "shape": "none", "alpha": 0.0, "lr": 1e-3}, "augment=none | base"),
    ({"augment": "study", "shape": "cgd", "alpha": 0.05, "lr": 2e-3}, "augment=study | cgd"),
    ({"augment": "study", "shape": "cgd", "alpha": 0.0}, "augment=study | base"),   # α 0: no term
])
def test_cell_arm_key_ignores_searched_parameters(cfg, expected):
    assert CellArmKey(get_space("quick"))(cfg) == expected
    assert arm_of_fields(cfg) == expected.split(" | ")[1]


def test_bundle_axes_set_the_cell_and_the_arm():
    key = CellArmKey(get_space("reproduce"))
    assert key.cell_fields == ("augment", "missing", "split")
    assert key({"augment": "study", "missing": "mask", "split": "shuffle", "shape": "cgd",
                "alpha": 0.1}).endswith("| cgd")


def test_state_survives_save_and_restore(tmp_path):
    sched = CellArmASHA(CellArmKey(get_space("quick")), **asha_args())
    case = constructed_case()
    feed(sched, case[:4])
    sched.save(str(tmp_path / "s.json"))
    again = CellArmASHA(CellArmKey(get_space("quick")), **asha_args())
    again.set_search_properties(M.OBJECTIVE, "min")
    again.restore(str(tmp_path / "s.json"))
    assert set(again.by_key) == set(sched.by_key) and again.trial_key == sched.trial_key
    assert again.state() == sched.state()
    # The rest of the case gets the same decisions from the restored rungs as from the live ones.
    restored, live = feed(again, case[4:]), feed(sched, case[4:])
    assert restored == live and STOP in restored.values()


class _Planted:
    """A pickle payload that, once unpickled, leaves a marker file (issue 21, item 1)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_restore_never_unpickles_a_planted_state(tmp_path):
    import pickle

    marker = tmp_path / "marker"
    (tmp_path / "s.pkl").write_bytes(pickle.dumps({"by_key": _Planted(marker)}))
    sched = CellArmASHA(CellArmKey(get_space("quick")), **asha_args())
    with pytest.raises(ValueError) as err:
        sched.restore(str(tmp_path / "s.pkl"))
    assert not marker.exists()
    assert str(err.value) == (f"{tmp_path / 's.pkl'}: not an ASHA state written by CellArmASHA.save "
                              "(JSON of trial_key and cells; UnicodeDecodeError)")
    assert sched.by_key == {}


def test_spaces_without_asha_get_fifo():
    assert type(scheduler_for(get_space("rigidity"))).__name__ == "FIFOScheduler"
    assert isinstance(scheduler_for(get_space("quick")), CellArmASHA)


def test_a_budget_below_the_grace_period_runs_every_trial_to_the_budget():
    """--smoke-test (2 epochs) on a space whose grace period is 3: Ray's ASHA asserts
    max_t >= grace_period; here the grace shrinks to the budget and nothing is stopped early."""
    key = CellArmKey(get_space("quick"))
    sched = CellArmASHA(key, **{**asha_args(), "max_t": 2, "grace_period": 3})
    decisions = feed(sched, constructed_case())
    assert sched.asha_args["grace_period"] == 2
    # epoch 2 is the whole budget: every trial ends there (max_t), none was cut at a rung before
    assert set(decisions.values()) == {TrialScheduler.STOP}
