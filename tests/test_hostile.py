"""Broken data, odd settings and interrupted work, as a new user meets them: each ends in one clean message that
names the file and says what to do (on the command line one ``error:`` line, exit status 2), nothing written
before is lost, nothing is left behind."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, cli_env
from PIL import Image

from coco import atomic, cli, course, fit, networks, predict, recipe, submission, synthetic, tables
from coco.config import Config, config_from_preset
from coco.data import COCOTrainImageDataset, load_rgb, unreadable_images
from coco.run_dir import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::coco.leaderboard.MissingClassWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One intra-op thread: tiny tensors, a shared 2-core machine."""


@pytest.fixture()
def data(demo_root, tmp_path):
    """A private copy of the demo data (80 labelled images, 20 test images) to break."""
    root = tmp_path / "ms-coco"
    dirs = course.course_dirs(demo_root)
    for key, count in (("train_images", 80), ("train_labels", 80), ("test_images", 20)):
        target = root / dirs[key].relative_to(demo_root)
        target.mkdir(parents=True)
        for path in sorted(dirs[key].iterdir())[:count]:
            shutil.copy(path, target / path.name)
    return root


def train(*args, cwd=ROOT):
    """``python -m loops train`` with a tiny recipe; returns the finished process."""
    command = [sys.executable, "-m", "loops", "train", "--model", "shufflenet_v2_x0_5", "--no-pretrained",
               "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--no-progress", "--num-workers", "0",
               *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


def one_error(proc) -> str:
    """The single ``error:`` line of a failed command (exit status 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ------------------------------------------------------------------------------------------------
# 1. Any run length the settings allow must train
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pct_start", [0.2, 0.1, 0.25, 0.5])
def test_one_cycle_schedules_of_every_length_step_through(pct_start):
    config = Config(pct_start=pct_start, epochs=1)
    for steps in range(1, 41):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = recipe.make_scheduler(optimizer, [1.0], config, steps, epoch=0)
        lrs = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert all(np.isfinite(lrs)) and max(lrs) <= 1.0 + 1e-9, (steps, lrs)


def test_a_five_step_run_trains_where_one_cycle_used_to_divide_by_zero(data, tmp_path):
    # 80 images, 20 % validation: 64 training images, batch 16 -> 4 steps a run; 5 epochs at 1 step (batch 64)
    config = Config(data_root=str(data), out_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 5, "batch_size": 64,
                                                                            "max_train_images": 40})
    assert recipe.steps_per_epoch(36, 64) * config.epochs * config.pct_start == pytest.approx(1.0)
    result = fit.fit(config)
    assert result["status"] == "finished" and len(result["history"]) == 5
    demo = config_from_preset("demo", data_root=str(data), out_dir=str(tmp_path / "demo"), epochs=1, progress=False,
                              val_fraction=0.2, max_train_images=None, batch_size=12, image_size=32)
    assert recipe.steps_per_epoch(64, 12) == 5  # the demo case: 5 steps at pct_start 0.2
    assert fit.fit(demo)["status"] == "finished"


# ------------------------------------------------------------------------------------------------
# 2. One clean error line instead of a traceback
# ------------------------------------------------------------------------------------------------
def test_a_bad_label_line_is_named_with_file_and_line(data, tmp_path):
    label = sorted((data / "labels" / "train").iterdir())[3]
    label.write_text("12\ncat\n")
    error = one_error(train("--data-root", str(data), "--out", str(tmp_path / "runs")))
    assert f"{label}:2: expected one class index 0..79, got 'cat'" in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_non_ascii_digits_are_not_class_indices(tmp_path):
    label = tmp_path / "x.cls"
    label.write_text("٤٥\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x.cls:1: expected one class index"):
        course.read_label_file(label)


def test_settings_that_cannot_be_used_are_refused_in_one_line(data, tmp_path):
    assert "Config.lr=inf: must be a finite number" in one_error(train("--data-root", str(data), "--lr", "inf"))
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    error = one_error(train("--data-root", str(data), "--out", str(a_file)))
    assert f"cannot create a run folder in {a_file}" in error and "choose another out_dir" in error


def test_resume_with_a_changed_setting_and_a_damaged_checkpoint(data, tmp_path):
    # stopped after 1 of 2 epochs, as Ctrl-C would (a finished run is never resumed: tests/test_hostile_inputs.py)
    done = train("--data-root", str(data), "--out", str(tmp_path / "runs"), "--epochs", "2", "--stop-after-epochs", "1")
    assert done.returncode == 0, done.stderr
    run_dir = done.stdout.strip().splitlines()[-1]
    error = one_error(train("--resume", run_dir, "--lr", "0.5"))
    assert "cannot resume" in error and f"lr: {Config().lr} -> 0.5" in error
    best = os.path.join(run_dir, "best.pt")
    with open(best, "r+b") as file:
        file.truncate(os.path.getsize(best) // 2)  # cut short, as a copy interrupted halfway would be
    proc = subprocess.run([sys.executable, "-m", "loops", "predict", "--run", run_dir, "--which", "best", "--out",
                           str(tmp_path / "p.json"), "--no-progress"], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    error = one_error(proc)
    assert f"{best}: not a readable checkpoint" in error and "damaged or cut short" in error
    debug = subprocess.run(proc.args + ["--debug"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # --debug shows where it came from


def test_a_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 1000))

    def torch_on_a_full_disk(state, file, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    with pytest.raises(OSError, match=r"last.pt: not written, the disk is full \(0 MiB free\)") as caught:
        save_checkpoint(path, {"epoch": 2})
    assert "free some space" in cli.describe(caught.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_read_only_place_is_named(tmp_path, monkeypatch, capsys, demo_root):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    status = cli.main(["train", "--data-root", str(demo_root), "--out", str(tmp_path / "runs"), "--model",
                       "shufflenet_v2_x0_5", "--no-pretrained", "--image-size", "32", "--epochs", "1",
                       "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("error:") == 1
    assert f"cannot create a run folder in {tmp_path / 'runs'} (" in error and "Permission denied" in error


def test_an_over_large_image_is_named(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (Image.MAX_IMAGE_PIXELS // 9000 * 2 + 1000, 9000)).save(path)  # > 2x Pillow's limit
    with pytest.raises(OSError, match=r"huge.png: image too large to decode safely"):
        load_rgb(path)


# ------------------------------------------------------------------------------------------------
# 3. One bad photo does not stop a long run halfway
# ------------------------------------------------------------------------------------------------
def test_unreadable_images_are_found_before_training_and_can_be_left_out(data, tmp_path):
    broken = sorted((data / "images" / "train-resized").iterdir())[5]
    broken.write_bytes(broken.read_bytes()[:300])  # a truncated JPEG
    error = one_error(train("--data-root", str(data), "--out", str(tmp_path / "runs")))
    assert f"1 image(s) in {broken.parent} cannot be read: {broken}" in error and "--skip-bad-files" in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    skipped = train("--data-root", str(data), "--out", str(tmp_path / "runs"), "--skip-bad-files")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 unreadable image(s)" in skipped.stdout
    split = json.loads((Path(skipped.stdout.strip().splitlines()[-1]) / "split.json").read_text())
    assert broken.stem not in split["train"] + split["val"] and len(split["train"] + split["val"]) == 79


def test_the_image_check_reads_many_files_quickly_and_names_each_culprit(data, tmp_path):
    paths = sorted((data / "images" / "train-resized").iterdir())
    (tmp_path / "empty.jpg").write_bytes(b"")
    bad = unreadable_images(paths + [tmp_path / "empty.jpg"])
    assert [path.name for path, _ in bad] == ["empty.jpg"] and "cannot decode image" in bad[0][1]


# ------------------------------------------------------------------------------------------------
# 4. Accepted without a word, before
# ------------------------------------------------------------------------------------------------
def test_empty_label_files_are_an_error_unless_left_out(data, tmp_path, capsys):
    empty = sorted((data / "labels" / "train").iterdir())[:2]
    empty[0].write_text("")
    empty[1].write_text("\n  \n")
    dirs = course.course_dirs(data)
    with pytest.raises(ValueError, match=r"2 label file\(s\) .* hold no class index: .*every course image holds"):
        COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    kept = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], skip_empty=True)
    assert len(kept) == 78 and "skipped 2 image(s) whose label file is empty" in capsys.readouterr().out


def test_duplicate_keys_in_a_predictions_file_are_a_fault(data, tmp_path):
    stems = submission.test_stems(data / "images" / "test-resized")
    body = ", ".join(f'"{stem}": [1]' for stem in stems)
    path = tmp_path / "p.json"
    path.write_text("{" + body + f', "{stems[0]}": [999, "x"]' + "}")  # valid but for the repeated key
    with pytest.raises(submission.PredictionsError, match=rf"1 key\(s\) appear more than once \(first: '{stems[0]}'\)"):
        submission.load_predictions(path)
    proc = subprocess.run([sys.executable, "-m", "metrics", "validate", str(path), "--test-dir",
                           str(data / "images" / "test-resized")], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "appear more than once" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_split_too_small_to_mean_anything_is_said_to_be(data, tmp_path, capsys):
    config = Config(data_root=str(data), out_dir=str(tmp_path / "runs"), **{**TINY, "max_train_images": 4, "epochs": 1,
                                                                   "val_fraction": 0.5})
    fit.fit(config)
    assert "warning: the validation split holds 2 image(s)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="leave 1 for training at val_fraction 0.5: a run needs at least 2"):
        fit.fit(config.replace(max_train_images=2))


def test_bench_fails_in_one_line_when_a_preset_needs_weights_that_are_not_here(monkeypatch, capsys):
    monkeypatch.setattr(networks, "weights_on_disk", lambda name: False)
    assert cli.main(["bench", "--recipe", "shufflenet", "--images", "100"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert "pretrained weights of shufflenet_v2_x1_0 are not on this machine" in err and "--random-weights" in err


# ------------------------------------------------------------------------------------------------
# 5. Debris
# ------------------------------------------------------------------------------------------------
def test_a_killed_checkpoint_write_leaves_nothing_after_resume(data, tmp_path):
    config = Config(data_root=str(data), out_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 2})
    stopped = fit.fit(config, stop_after_epochs=1)
    run_dir = stopped["run_dir"]
    debris = run_dir / ".last.pt.k1ll3d.tmp"  # what SIGKILL during torch.save leaves
    debris.write_bytes(b"\0" * 4096)
    fit.fit(resume=run_dir)
    assert not debris.exists() and not list(run_dir.glob(".*.tmp"))


def test_a_run_that_failed_says_so_in_its_folder_and_the_run_table(data, tmp_path, monkeypatch):
    config = Config(data_root=str(data), out_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 2})

    def broken_epoch(*args, **kwargs):
        raise RuntimeError("a bug in an epoch")

    monkeypatch.setattr(fit, "train_one_epoch", broken_epoch)
    with pytest.raises(RuntimeError, match="a bug in an epoch"):
        fit.fit(config)
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "a bug in an epoch" in summary["error"]
    table, _ = tables.collect_runs(tmp_path / "runs")
    assert table.loc[0, "status"] == "failed"


# ------------------------------------------------------------------------------------------------
# 6. Predict checks where it writes before it predicts
# ------------------------------------------------------------------------------------------------
def test_predict_refuses_an_unwritable_output_before_any_inference(data, tmp_path, monkeypatch):
    run_dir = fit.fit(Config(data_root=str(data), out_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 1}))["run_dir"]

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before the output was checked")

    monkeypatch.setattr(predict, "predict", no_inference)
    a_folder = tmp_path / "a-folder.json"
    a_folder.mkdir()
    with pytest.raises(IsADirectoryError, match="a-folder.json is a folder: give a file name"):
        predict.predict_run(run_dir, a_folder, progress=False)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "no")))
    with pytest.raises(OSError, match=r"p.json: cannot write there \(no\)"):
        predict.predict_run(run_dir, tmp_path / "ro" / "p.json", progress=False)


# ------------------------------------------------------------------------------------------------
# 7. The generator's own limits
# ------------------------------------------------------------------------------------------------
def test_the_generator_makes_small_datasets_and_names_its_limit(tmp_path):
    root = synthetic.make_demo_dataset(tmp_path / "small", n_train=200, n_test=20, long_side=32)
    dirs = course.course_dirs(root)
    full = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    assert len(full) == 200 and full.targets.sum(axis=0).min() >= 3
    test_labels = submission.read_labels(root / "labels" / "test")
    assert len(test_labels) == 20 and len({c for row in test_labels.values() for c in row}) == 80
    tiny = synthetic.make_demo_dataset(tmp_path / "tiny", n_train=60, n_test=3, long_side=32)
    assert len(list(course.course_dirs(tiny)["test_images"].iterdir())) == 3
    proc = subprocess.run([sys.executable, "-m", "coco.synthetic", str(tmp_path / "too-small"), "--train", "59"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: 59 images cannot show each of the 80 classes 3")
    assert "use at least 60 images" in proc.stderr
