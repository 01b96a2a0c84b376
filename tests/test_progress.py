"""sweep.progress: the live status line, from Tune's trial list, on a terminal and in a log."""
from __future__ import annotations

import io
import math
import pickle
from types import SimpleNamespace

import pytest

from sweep.progress import Progress, arm, duration, estimate_left


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def trial(tid: str, status: str, shape: str = "none", alpha: float = 0.0, best: float | None = None,
          epoch: int = 0, max_epochs: int = 4) -> SimpleNamespace:
    cfg = {"shape": shape, "alpha": alpha, "max_epochs": max_epochs}
    return SimpleNamespace(trial_id=tid, status=status, config={"cfg": cfg},
                           metric_analysis={"val_rmse_px": {"min": best}} if best is not None else {},
                           last_result={"epoch": epoch} if epoch else {})


TRIALS = [trial("a", "TERMINATED", best=3.5, epoch=4),
          trial("b", "TERMINATED", "cgd", 0.1, best=3.25, epoch=2),
          trial("c", "RUNNING", "cgd", 0.5, best=3.75, epoch=2),     # half its epochs done
          trial("d", "RUNNING", best=math.inf, epoch=1),             # diverged stand-in: no best
          trial("e", "PENDING"),
          trial("f", "ERROR", "cgd", 0.0)]                            # alpha 0: the base arm


def test_arm_duration_and_estimate():
    assert arm({"shape": "cgd", "alpha": 0.01}) == "mse+cgd"
    assert arm({"shape": "cgd", "alpha": 0.0}) == "mse" and arm({"loss": "wing"}) == "wing"
    assert [duration(s) for s in (0.4, 59, 61, 3725)] == ["0 s", "59 s", "1 min 01 s", "1 h 02 min"]
    assert estimate_left(100.0, 2.0, 10) == 400.0       # 8 trials left at 50 s each
    assert estimate_left(0.0, 0.0, 10) is None and estimate_left(10.0, 0.0, 10) is None


def test_status_counts_best_per_arm_and_time_left():
    p = Progress(total=6, stream=io.StringIO(), clock=lambda: 0.0)
    # finished a, b, f = 3; running c, d; done = 3 + 2/4 + 1/4 = 3.75 -> left 2.25 x 120/3.75 = 72 s
    assert p.status(TRIALS, 120.0) == ("[3/6 finished, 2 running, 2 min 00 s elapsed, ~1 min 12 s left] "
                                       "best val RMSE px so far (search): mse 3.500, mse+cgd 3.250")
    assert p.status([trial("x", "PENDING")], 5.0) == \
        "[0/6 finished, 0 running, 5 s elapsed, estimating time left] best val RMSE px so far (search): -"


def test_a_completing_trial_counts_as_finished_before_tune_marks_it():
    p = Progress(total=6, stream=io.StringIO(), clock=lambda: 0.0)
    p.on_trial_complete(0, TRIALS, TRIALS[2])          # c is still RUNNING in Tune's list
    assert p.status(TRIALS, 60.0).startswith("[4/6 finished, 1 running, 1 min 00 s elapsed")


def test_terminal_redraws_one_line_and_lets_sweep_lines_pass_above():
    now = [0.0]
    p = Progress(total=6, stream=_Terminal(), every=1.0, clock=lambda: now[0])
    p.setup()
    p.on_step_end(0, TRIALS)                  # drawn
    now[0] = 0.5
    p.on_step_end(0, TRIALS)                  # throttled
    p.print("[  4/6] c finished")             # clears the status, prints, redraws at the next tick
    now[0] = 0.6
    p.on_step_end(0, TRIALS)
    p.on_experiment_end(TRIALS)
    text = p.stream.getvalue()
    assert text.count("finished, 2 running,") == 2
    assert "\r\033[K[  4/6] c finished\n\r[3/6 finished" in text
    assert text.endswith("\r\033[K") and "\n" not in text.replace("c finished\n", "")


def test_plain_output_is_one_line_per_interval_and_survives_pickling():
    now = [0.0]
    p = Progress(total=6, stream=io.StringIO(), plain_every=60.0, clock=lambda: now[0])
    for t in (0.0, 30.0, 59.0, 61.0, 100.0):
        now[0] = t
        p.on_step_end(0, TRIALS)
    p.print("[  4/6] c finished")             # not on a terminal: no redraw forced
    now[0] = 110.0
    p.on_step_end(0, TRIALS)
    lines = p.stream.getvalue().splitlines()
    assert [line.split(", ")[2] for line in lines if "elapsed" in line] == ["0 s elapsed", "1 min 01 s elapsed"]
    assert lines[-1] == "[  4/6] c finished" and "\r" not in p.stream.getvalue()
    live = Progress(total=6, stream=_Terminal())
    live.on_step_end(0, TRIALS)
    again = pickle.loads(pickle.dumps(live))  # Tune may pickle callbacks with the experiment
    assert again.stream is None and again.total == 6 and not again.drawn


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()])
def test_no_output_before_the_first_step(stream):
    Progress(total=2, stream=stream).setup()
    assert stream.getvalue() == ""


def test_a_resumed_sweeps_count_goes_on_from_the_trials_it_already_has(tmp_path):
    """Phase B of a --resume runs only the trials not yet proposed: with 4 of 6 done before, its
    Tuner's 2 trials read [5/6] and [6/6], never [3/2]; the time left counts its 2 trials."""
    from sweep import search, settings
    from sweep.spaces import from_dict

    space = from_dict({"grid": True, "seeds": 1, "num_samples": 2, "max_epochs": 4, "asha": None,
                       "fixed": {"backbone": "small_cnn", "synth_n": 60}, "axes": {}})
    s = settings.local_settings(space, str(tmp_path), "rs", max_concurrent=1)
    p = Progress(total=6, stream=io.StringIO(), clock=lambda: 0.0)
    tuner, guard = search._new_tuner(s, lambda config: None, {}, [p], None, total=6)
    assert (p.total, p.before) == (6, 4)
    assert guard in tuner._local_tuner._run_config.callbacks and guard.writer.total == 6
    trials = [trial("a", "TERMINATED", best=3.0, epoch=4), trial("b", "RUNNING", best=3.5, epoch=2)]
    # this run: 1 + 2/4 of its 2 trials in 60 s -> 0.5 left x 40 s
    assert p.status(trials, 60.0).startswith("[5/6 finished, 1 running, 1 min 00 s elapsed, ~20 s left]")


def test_a_write_error_stops_tune_as_ctrl_c_and_is_raised_after_fit(monkeypatch):
    """sweep.guard (issue 21, item 8): the writer's first OSError is kept, Tune is interrupted
    through its SIGINT handler, the writer is not called again, and the error comes back after."""
    import errno
    import signal

    from ray.tune import Callback

    from sweep.guard import WriteGuard

    class Full(Callback):
        calls = 0

        def on_trial_result(self, **info):
            Full.calls += 1
            raise OSError(errno.ENOSPC, "No space left on device", "/r/trials.parquet.tmp-1")

    interrupted = []
    monkeypatch.setattr(signal, "getsignal", lambda sig: lambda s, f: interrupted.append(s))
    guard = WriteGuard(Full())
    guard.on_trial_result(iteration=1, trials=[], trial=None, result={})
    guard.on_trial_result(iteration=2, trials=[], trial=None, result={})
    guard.on_experiment_end(trials=[])
    assert Full.calls == 1 and interrupted == [signal.SIGINT]
    with pytest.raises(OSError) as err:
        guard.raise_if_failed()
    assert err.value.errno == errno.ENOSPC and err.value.filename == "/r/trials.parquet.tmp-1"
    assert WriteGuard(Full()).raise_if_failed() is None
