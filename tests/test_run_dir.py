"""coco/run_dir.py: the one owner of a run folder's files: names, typed readers and writers, and the list of runs."""
import numpy as np
import pytest
import torch

from coco.config import Config
from coco.run_dir import CSV_COLUMNS, RunDir, list_runs
from coco.thresholds import ThresholdResult


def _thresholds(value: float) -> ThresholdResult:
    return ThresholdResult(global_threshold=value, class_thresholds=np.full(80, value))


def test_a_new_run_folder_reads_back_what_was_written(tmp_path):
    config = Config(out_dir=str(tmp_path), run_name="probe", epochs=2)
    run = RunDir.create(config)
    assert run.path.parent == tmp_path and run.name.endswith("-probe") and not run.is_run()
    assert RunDir.create(config).name.startswith(run.name)  # same second: "-2", not the same folder
    run.write_config(config)
    assert run.is_run() and run.config() == config and run.saved_config() == config.to_dict()
    stems = ["a", "b", "c", "d"]
    run.write_split(stems, np.array([0, 2, 3]), np.array([1]), data_root="somewhere")
    train_idx, val_idx = run.split(stems)
    assert list(train_idx) == [0, 2, 3] and list(val_idx) == [1]
    assert run.split_record()["data_root"] == "somewhere"
    assert run.history() == [] and run.summary() is None and run.cross_fit() is None and run.oof_outputs() is None
    rows = [{column: float(i) for column in CSV_COLUMNS} | {"epoch": i} for i in (1, 2)]
    run.write_history(rows)
    assert run.history() == rows and isinstance(run.history()[0]["epoch"], int)
    run.write_summary({"status": "finished"})
    assert run.summary() == {"status": "finished"}


def test_thresholds_follow_the_checkpoint_they_belong_to(tmp_path):
    run = RunDir(tmp_path)
    probs, targets = np.random.default_rng(0).random((3, 80)), np.zeros((3, 80), dtype=bool)
    run.write_best_outputs(_thresholds(0.3), probs, targets, ["x", "y", "z"], epoch=4)
    run.save_checkpoint("best", {"thresholds": _thresholds(0.3).to_dict()})
    assert run.resolve_checkpoint() == "best" and run.thresholds().global_threshold == 0.3
    saved = run.val_outputs()
    assert saved["epoch"] == 4 and saved["stems"] == ["x", "y", "z"]
    np.testing.assert_allclose(saved["probs"], probs.astype(np.float32))
    run.save_checkpoint("final", {"thresholds": _thresholds(0.2).to_dict(), "model": torch.zeros(1)})
    run.write_cross_fit({"thresholds": _thresholds(0.1).to_dict(), "folds": 5}, probs, targets, ["x", "y", "z"],
                        np.arange(3))
    assert run.resolve_checkpoint() == "final"  # a cross-fitted run submits its final head
    assert run.thresholds("final").global_threshold == 0.1  # cross_fit.json is final.pt's record
    assert run.thresholds("best").global_threshold == 0.3
    assert set(run.oof_outputs()) == {"probs", "targets", "stems", "folds"}
    with pytest.raises(ValueError, match="which must be one of"):
        run.resolve_checkpoint("middle")


def test_list_runs_names_the_folders_that_are_not_runs(tmp_path):
    config = Config(out_dir=str(tmp_path), run_name="r")
    started = RunDir.create(config)
    started.write_config(config)
    (tmp_path / "image-cache").mkdir()
    runs, skipped = list_runs(tmp_path)
    assert [run.path for run in runs] == [started.path] and skipped == ["image-cache"]
    assert list_runs(tmp_path / "absent") == ([], [])
