"""sweep.results: statuses, metric summaries, typed atomic Parquet, the writer callback, and the
results/README.md examples."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fkd_core import metrics as M
from fkd_core.config import TrialConfig, config_fields
from sweep import results as R
from sweep import store as S
from sweep.spaces import data_key

README = Path(__file__).resolve().parents[1] / "results" / "README.md"


def row(epoch: int, rmse: float, diverged: bool = False) -> dict:
    return {M.EPOCH: epoch, M.TRAIN_LOSS: rmse ** 2, M.VAL_LOSS: rmse ** 2, M.VAL_RMSE: rmse,
            M.VAL_NME: rmse / 40, M.VAL_SHAPE: rmse / 2, M.LR: 1e-3, M.EPOCH_SECONDS: 1.0,
            M.IMAGES_PER_S: 500.0, M.DIVERGED: diverged}


@pytest.mark.parametrize("rows,kwargs,expected", [
    ([row(1, 3.0)], {"error": "RuntimeError: boom", "stopped_by_tune": False}, "error"),
    ([row(1, 3.0), row(2, math.inf, True)], {"error": None, "stopped_by_tune": True}, "diverged"),
    ([row(e, 3.0) for e in range(1, 5)], {"error": None, "stopped_by_tune": True}, "completed"),
    ([row(1, 3.0), row(2, 2.5)], {"error": None, "stopped_by_tune": True}, "asha_stopped"),
    ([row(1, 3.0), row(2, 2.5)], {"error": None, "stopped_by_tune": False}, "early_stopped"),
])
def test_trial_status(rows, kwargs, expected):
    assert R.trial_status(rows, max_epochs=4, **kwargs) == expected


def test_metric_summary_takes_every_best_metric_at_the_best_epoch():
    rows = [row(1, 5.0), row(2, 2.0), row(3, 4.0)]
    rows[2][M.VAL_SHAPE] = 0.1          # a better shape error elsewhere is not the best epoch's
    s = R.metric_summary(rows)
    assert (s["best_epoch"], s["best_val_rmse_px"], s["best_val_shape_err_px"]) == (2, 2.0, 1.0)
    assert s["best_val_nme"] == pytest.approx(2.0 / 40)
    assert (s["final_val_rmse_px"], s["final_val_shape_err_px"], s["epochs"]) == (4.0, 0.1, 3)


def test_test_metrics_are_taken_at_the_epoch_chosen_on_validation():
    rows = [row(1, 5.0), row(2, 2.0), row(3, 4.0)]
    for r, test in zip(rows, (3.0, 2.5, 1.0)):   # test is best at epoch 3: never looked at
        r.update({M.TEST_RMSE: test, M.TEST_NME: test / 40, M.TEST_SHAPE: test / 2})
    s = R.metric_summary(rows)
    assert (s["best_epoch"], s[f"best_{M.TEST_RMSE}"], s[f"best_{M.TEST_SHAPE}"]) == (2, 2.5, 1.25)
    search = R.metric_summary([row(1, 5.0)])                    # no test keys: a search trial
    assert math.isnan(search[f"best_{M.TEST_RMSE}"])


def test_confirm_trials_carry_phase_replicate_and_cell(tmp_path):
    rec = record(phase="confirm", replicate=2, cell="none")
    assert (rec["phase"], rec["replicate"], rec["cell"]) == ("confirm", 2, "none")
    assert (record()["phase"], record()["replicate"]) == ("search", None)
    R.write_atomic(R.to_table([rec, record("t2")], R.trial_schema()), str(tmp_path / "t.parquet"))
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back["phase"]) == ["confirm", "search"] and back["replicate"].iloc[0] == 2
    rows = [{"trial_id": "t1", **row(1, 2.0), M.TEST_RMSE: 1.5}, {"trial_id": "t2", **row(1, 2.0)}]
    R.write_atomic(R.to_table(rows, R.epoch_schema()), str(tmp_path / "e.parquet"))
    epochs = pd.read_parquet(tmp_path / "e.parquet")
    assert epochs[M.TEST_RMSE].iloc[0] == 1.5 and pd.isna(epochs[M.TEST_RMSE].iloc[1])


def _scored_rows() -> list[dict]:
    """Three test-scored epochs; validation is best at epoch 2, the last epoch is 3."""
    rows = [row(1, 5.0), row(2, 2.0), row(3, 4.0)]
    groups = (([9.0, 16.0], [2, 4]), ([4.0, 8.0], [2, 4]), ([1.0, 2.0], [2, 4]))
    for r, (sse, count) in zip(rows, groups):
        rmse = math.sqrt(sum(sse) / sum(count))
        r.update({M.TEST_RMSE: rmse, M.TEST_NME: rmse / 40, M.TEST_SHAPE: rmse / 2, M.SHAPE_SHARE: 0.25,
                  M.TEST_GROUP_IDS: ["p1", "p2"], M.TEST_GROUP_SSE: sse, M.TEST_GROUP_COUNT: count})
    return rows


@pytest.mark.parametrize("scored,epoch", [("final", 3), ("best_val", 2)])
def test_scored_columns_come_from_the_scored_epoch_and_their_groups_add_up(scored, epoch, tmp_path):
    rows = _scored_rows()
    cfg = TrialConfig(shape="cgd", alpha=0.01, max_epochs=3, score_test=True, scored=scored)
    rec = record(cfg=cfg, rows=rows, phase="confirm", replicate=0, cell="all", arm="cgd@0.01")
    assert rec["scored_test_rmse_px"] == rows[epoch - 1][M.TEST_RMSE]
    assert rec[f"best_{M.TEST_RMSE}"] == rows[1][M.TEST_RMSE]          # best_* stays the val-chosen epoch
    assert rec[M.SHAPE_SHARE] == 0.25 and rec["arm"] == "cgd@0.01" and rec["scored"] == scored
    R.write_atomic(R.to_table([rec, record("t2")], R.trial_schema()), str(tmp_path / "t.parquet"))
    back = pd.read_parquet(tmp_path / "t.parquet")
    got = back.iloc[0]
    assert list(got[M.TEST_GROUP_IDS]) == ["p1", "p2"]
    assert math.sqrt(sum(got[M.TEST_GROUP_SSE]) / sum(got[M.TEST_GROUP_COUNT])) == \
        pytest.approx(got["scored_test_rmse_px"], rel=1e-12)
    assert back[M.TEST_GROUP_SSE].iloc[1] is None and math.isnan(back["scored_test_rmse_px"].iloc[1])
    epochs = [{"trial_id": "t1", **r} for r in rows]
    R.write_atomic(R.to_table(epochs, R.epoch_schema()), str(tmp_path / "e.parquet"))
    assert list(pd.read_parquet(tmp_path / "e.parquet")[M.TEST_GROUP_COUNT].iloc[2]) == [2, 4]


def test_metric_summary_of_a_trial_that_only_diverged():
    s = R.metric_summary([row(1, math.inf, True)])
    assert s["best_val_rmse_px"] == math.inf and s["best_epoch"] is None
    assert math.isnan(s["best_val_nme"]) and s["epochs"] == 1


def record(trial_id: str = "t1", cfg: TrialConfig | None = None, **kw) -> dict:
    cfg = cfg or TrialConfig(shape="cgd", alpha=0.01, max_epochs=2)
    base = dict(trial_id=trial_id, experiment="x", cfg=cfg, rows=[row(1, 3.0), row(2, 2.0)],
                status="completed", error=None, wall_seconds=1.5, node="n", device="cpu",
                device_name="x86_64", data=R.DataInfo("synthetic(n=2000)", "ab", True),
                best_checkpoint="", versions="{}", git_commit="abc")
    return R.trial_record(**{**base, **kw})


def test_trials_table_is_typed_and_rebuilds_the_trial_config(tmp_path):
    uri = str(tmp_path / "trials.parquet")
    R.write_atomic(R.to_table([record()], R.trial_schema()), uri)
    table = pq.read_table(uri)
    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    for name, kind in config_fields().items():
        assert table.schema.field(name).type == kinds[kind], name
    got = table.to_pylist()[0]
    cfg = TrialConfig(**{k: got[k] for k in config_fields()})
    assert cfg.loss_label == got["loss_label"] == "mse+0.01*cgd" and cfg.device == "cpu"
    assert got["best_val_rmse_px"] == 2.0 and got["best_epoch"] == 2
    assert list(tmp_path.iterdir()) == [tmp_path / "trials.parquet"]   # no temporary left


def test_atomic_write_replaces_through_a_filesystem_uri(tmp_path):
    uri = (tmp_path / "sub" / "epochs.parquet").as_uri()         # file:// takes the URI path
    for n in (3, 5):
        rows = [{"trial_id": "t", **row(e, 2.0)} for e in range(1, n + 1)]
        R.write_atomic(R.to_table(rows, R.epoch_schema()), uri)
        assert S.read_table(uri).num_rows == n
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["epochs.parquet"]


def fake_trial(trial_id: str, cfg: TrialConfig, ckpt_dir: Path | None, error_file: str = ""):
    import pyarrow.fs as pafs

    checkpoint = SimpleNamespace(path=str(ckpt_dir), filesystem=pafs.LocalFileSystem()) \
        if ckpt_dir else None
    return SimpleNamespace(trial_id=trial_id, config={"cfg": cfg.to_dict()}, checkpoint=checkpoint,
                           last_result={"time_total_s": 4.0, "hostname": "node-a"},
                           error_file=error_file)


def test_writer_records_trials_keeps_best_checkpoints_and_reloads(tmp_path):
    cfg = TrialConfig(max_epochs=3)
    info = {data_key(cfg): R.DataInfo("synthetic(n=2000)", "ab", True)}
    out = tmp_path / "res"
    writer = R.ResultsWriter(str(out), "x", info, log=None)
    writer.setup()
    for i in range(5):                                # 5 MSE trials: the 3 best keep best.pt
        ckpt = tmp_path / f"ck{i}"
        ckpt.mkdir()
        (ckpt / "best.pt").write_bytes(b"w")
        trial = fake_trial(f"t{i}", cfg.replace(seed=i), ckpt)
        for e in range(1, 4):
            writer.on_trial_result(0, [], trial, {**row(e, 10.0 - i - e), "done": False,
                                                  "device": "cpu", "device_name": "x86"})
        writer.on_trial_complete(0, [], trial)
    err = tmp_path / "error.txt"
    err.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    bad = fake_trial("t9", cfg, None, str(err))
    writer.on_trial_result(0, [], bad, {**row(1, 9.0), "done": False})
    writer.on_trial_error(0, [], bad)

    trials = S.read_results(str(out), S.TRIALS_FILE).to_pandas().set_index("trial_id")
    assert len(trials) == 6 and S.read_results(str(out), S.EPOCHS_FILE).num_rows == 16
    assert trials.loc["t9", "status"] == "error" and trials.loc["t9", "error"] == "RuntimeError: boom"
    assert set(trials.loc[["t0", "t1", "t2", "t3", "t4"], "status"]) == {"completed"}
    kept = trials[trials.best_checkpoint != ""].index
    assert sorted(kept) == ["t2", "t3", "t4"]         # the lowest val RMSE
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["t2", "t3", "t4"]
    assert trials.loc["t4", "node"] == "node-a" and trials.loc["t4", "wall_seconds"] == 4.0
    assert json.loads(trials.loc["t4", "versions"])["pyarrow"] == pa.__version__

    again = R.ResultsWriter(str(out), "x", info, log=None)
    again.setup()                                     # what --resume starts from
    assert sorted(again.recorded) == ["t0", "t1", "t2", "t3", "t4", "t9"]
    assert sorted(again.kept) == ["t2", "t3", "t4"]
    assert writer.rows == {} and again.rows == {}     # no recorded trial's epochs held


def test_stopped_by_tune_comes_from_the_done_flag_of_the_last_result(tmp_path):
    cfg = TrialConfig(max_epochs=8)
    writer = R.ResultsWriter(str(tmp_path), "x", {data_key(cfg): R.DataInfo("s", "h", True)},
                             log=None)
    for trial_id, done in (("asha", True), ("early", False)):
        trial = fake_trial(trial_id, cfg, None)
        writer.on_trial_result(0, [], trial, {**row(1, 3.0), "done": False})
        writer.on_trial_result(0, [], trial, {**row(2, 3.0), "done": done})
        writer.on_trial_complete(0, [], trial)
    status = S.read_results(str(tmp_path), S.TRIALS_FILE).to_pandas().set_index("trial_id").status
    assert (status["asha"], status["early"]) == ("asha_stopped", "early_stopped")


def _readme_block(lang: str) -> str:
    return re.search(rf"```{lang}\n(.*?)```", README.read_text(), re.S).group(1)


@pytest.fixture
def results_folder(tmp_path, monkeypatch):
    """results/quick-synthetic/ as the README's examples expect, under a temporary cwd."""
    folder = tmp_path / "results" / "quick-synthetic"
    recs = [record("a", TrialConfig(max_epochs=2)),
            record("b", TrialConfig(shape="cgd", alpha=0.1, max_epochs=2)),
            record("c", TrialConfig(shape="cgd", alpha=0.1, max_epochs=2), status="error")]
    R.write_atomic(R.to_table(recs, R.trial_schema()), str(folder / R.TRIALS_FILE))
    rows = [{"trial_id": t, **row(e, 3.0 - e)} for t in "abc" for e in (1, 2)]
    R.write_atomic(R.to_table(rows, R.epoch_schema()), str(folder / R.EPOCHS_FILE))
    monkeypatch.chdir(tmp_path)
    return folder


def test_readme_duckdb_example_runs(results_folder):
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(_readme_block("sql")).fetchall()
    # small_cnn without and with a shape term; the errored trial is left out.
    assert got == [("small_cnn", False, 1, 2.0, 1.0, 2), ("small_cnn", True, 1, 2.0, 1.0, 2)]


def test_readme_pandas_example_runs(results_folder, capsys):
    namespace: dict = {}
    exec(_readme_block("python"), namespace)
    assert len(namespace["curve"]) == 6 and len(namespace["ok"]) == 2


# --- a damaged trials.parquet (issue 13, item 3) ----------------------------------------------

def _truncated(tmp_path: Path) -> Path:
    folder = tmp_path / "my-sweep"
    R.write_atomic(R.to_table([record("t1"), record("t2")], R.trial_schema()), str(folder / R.TRIALS_FILE))
    data = (folder / R.TRIALS_FILE).read_bytes()
    (folder / R.TRIALS_FILE).write_bytes(data[: len(data) // 2])    # a copy cut short
    return folder


def test_damaged_parquet_is_one_line_naming_the_file_and_the_fix(tmp_path):
    folder = _truncated(tmp_path)
    with pytest.raises(S.DamagedResults) as err:
        S.read_results(str(folder), S.TRIALS_FILE)
    message = str(err.value)
    assert message.startswith(f"{folder / R.TRIALS_FILE}: damaged Parquet file (")
    assert f"-m sweep.run --name my-sweep --results-dir {folder.parent} --resume rebuilds it" in message and "\n" not in message
    assert S.read_results(str(folder), "absent.parquet") is None


def test_analyze_on_a_damaged_file_exits_2_with_one_line(tmp_path, capsys):
    from sweep import analyze

    folder = _truncated(tmp_path)
    assert analyze.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged Parquet file" in err and "Traceback" not in err
    assert str(folder / R.TRIALS_FILE) in err


# --- recording that scales (issue 20, item 4) -------------------------------------------------

def run_trials(writer, cfg: TrialConfig, ids, epochs: int = 3, rmse: float = 5.0) -> None:
    for trial_id in ids:
        trial = fake_trial(trial_id, cfg, None)
        for e in range(1, epochs + 1):
            writer.on_trial_result(0, [], trial, {**row(e, rmse - e / 10), "done": False})
        writer.on_trial_complete(0, [], trial)


def test_a_record_writes_two_parts_and_holds_nothing_of_recorded_trials(tmp_path):
    cfg = TrialConfig(max_epochs=3)
    writer = R.ResultsWriter(str(tmp_path), "x", {data_key(cfg): R.DataInfo("s", "h", True)},
                             log=None)
    writer.setup()
    run_trials(writer, cfg, [f"t{i}" for i in range(4)])
    assert len(S.list_parts(str(tmp_path), S.TRIALS_FILE)) == 4
    assert len(S.list_parts(str(tmp_path), S.EPOCHS_FILE)) == 4
    assert writer.rows == {} and writer.recorded == {f"t{i}": 3 for i in range(4)}
    assert not (tmp_path / S.TRIALS_FILE).exists()              # compacted when the run ends
    writer.on_experiment_end([])
    assert len(pd.read_parquet(tmp_path / S.TRIALS_FILE)) == 4
    assert len(pd.read_parquet(tmp_path / S.EPOCHS_FILE)) == 12
    assert S.list_parts(str(tmp_path), S.TRIALS_FILE) == []


def test_a_second_run_keeps_the_first_and_a_retried_trial_reads_once(tmp_path):
    cfg = TrialConfig(max_epochs=3)
    info = {data_key(cfg): R.DataInfo("s", "h", True)}
    first = R.ResultsWriter(str(tmp_path), "x", info, log=None)
    first.setup()
    run_trials(first, cfg, ["a", "b"])
    first.on_experiment_end([])
    second = R.ResultsWriter(str(tmp_path), "x", info, log=None)
    second.setup()
    assert second.recorded == {"a": 3, "b": 3}
    run_trials(second, cfg, ["c"])
    run_trials(second, cfg, ["b"], rmse=2.0)     # b retried and recorded again
    trials = S.read_results(str(tmp_path), S.TRIALS_FILE).to_pandas().set_index("trial_id")
    assert sorted(trials.index) == ["a", "b", "c"]
    assert trials.loc["b", "best_val_rmse_px"] == pytest.approx(1.7)
    epochs = S.read_results(str(tmp_path), S.EPOCHS_FILE).to_pandas()
    assert len(epochs) == 9 and not epochs.duplicated(["trial_id", "epoch"]).any()
    second.on_experiment_end([])
    assert len(pd.read_parquet(tmp_path / S.EPOCHS_FILE)) == 9


def test_unfinished_trials_rows_survive_for_the_next_writer(tmp_path):
    """A resume keeps the epochs of a trial that had not ended; its record later holds them all."""
    cfg = TrialConfig(max_epochs=4)
    info = {data_key(cfg): R.DataInfo("s", "h", True)}
    writer = R.ResultsWriter(str(tmp_path), "x", info, log=None)
    writer.setup()
    writer.merge_rows("u", [row(1, 4.0), row(2, 3.0)])
    writer.write_unfinished()
    writer.write_unfinished()                      # again: still one part for the trial
    assert len(S.list_parts(str(tmp_path), S.UNFINISHED)) == 1
    assert S.read_results(str(tmp_path), S.EPOCHS_FILE) is None   # never read as results
    later = R.ResultsWriter(str(tmp_path), "x", info, log=None)
    later.setup()
    assert sorted(later.rows["u"]) == [1, 2]
    trial = fake_trial("u", cfg, None)
    for e in (3, 4):
        later.on_trial_result(0, [], trial, {**row(e, 2.0), "done": False})
    later.on_trial_complete(0, [], trial)
    trials = S.read_results(str(tmp_path), S.TRIALS_FILE).to_pylist()
    assert [(t["epochs"], t["best_epoch"], t["status"]) for t in trials] == [(4, 3, "completed")]
    assert S.read_results(str(tmp_path), S.EPOCHS_FILE).num_rows == 4
    assert S.list_parts(str(tmp_path), S.UNFINISHED) == []


def test_amend_records_a_trial_again_with_the_rows_tune_kept(tmp_path):
    cfg = TrialConfig(max_epochs=4)
    info = {data_key(cfg): R.DataInfo("s", "h", True)}
    writer = R.ResultsWriter(str(tmp_path), "x", info, log=None)
    writer.setup()
    run_trials(writer, cfg, ["a"], epochs=2)       # the callback saw epochs 1-2 only
    writer.on_experiment_end([])
    final = R.ResultsWriter(str(tmp_path), "x", info, log=None)
    final.setup()
    final.amend("a", [row(1, 4.9), row(2, 4.8)])   # nothing new: nothing written
    assert S.list_parts(str(tmp_path), S.TRIALS_FILE) == []
    final.amend("a", [row(e, 6.0 - e) for e in range(1, 5)])
    rec = S.read_results(str(tmp_path), S.TRIALS_FILE).to_pylist()[0]
    assert (rec["epochs"], rec["best_epoch"], rec["best_val_rmse_px"]) == (4, 4, 2.0)
    epochs = S.read_results(str(tmp_path), S.EPOCHS_FILE).to_pandas()
    assert list(epochs.epoch) == [1, 2, 3, 4]
    assert list(epochs[M.VAL_RMSE]) == pytest.approx([4.9, 4.8, 3.0, 2.0])   # recorded rows win


def test_a_pruned_checkpoint_is_recorded_in_a_newer_part(tmp_path):
    cfg = TrialConfig(max_epochs=1)
    writer = R.ResultsWriter(str(tmp_path / "res"), "x", {data_key(cfg): R.DataInfo("s", "h", True)},
                             log=None)
    writer.setup()
    for i in range(5):                             # each trial better than the last
        ckpt = tmp_path / f"ck{i}"
        ckpt.mkdir()
        (ckpt / "best.pt").write_bytes(b"w")
        trial = fake_trial(f"t{i}", cfg.replace(seed=i), ckpt)
        writer.on_trial_result(0, [], trial, {**row(1, 10.0 - i), "done": False})
        writer.on_trial_complete(0, [], trial)
    assert len(S.list_parts(str(tmp_path / "res"), S.TRIALS_FILE)) == 5 + 2   # t0, t1 again
    trials = S.read_results(str(tmp_path / "res"), S.TRIALS_FILE).to_pandas().set_index("trial_id")
    assert sorted(trials.index[trials.best_checkpoint != ""]) == ["t2", "t3", "t4"]
    assert sorted(writer.kept) == ["t2", "t3", "t4"]
