"""The second round of hostile inputs (issue 22): nothing lost, nothing hidden, nothing stuck, and a safety net
under the GPU input path. Each case says what a new user did and what must happen; the style of
``tests/test_hostile.py`` (its ``train`` and ``one_error`` helpers: the command line in a subprocess, one
``error:`` line, exit status 2)."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, cli_env
from test_hostile import one_error

from coco import atomic, cli, course, fit, gpu_batches, loaders, predict, recipe, submission, synthetic
from coco.config import Config
from coco.data import COCOTestImageDataset, COCOTrainImageDataset
from coco.image_cache import cache_dataset
from coco.run_dir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::coco.leaderboard.MissingClassWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One intra-op thread: tiny tensors, a shared 2-core machine."""


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory):
    """A finished one-epoch TINY run on the demo data, shared by the predict cases (read, never changed)."""
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path_factory.mktemp("runs")), **{**TINY, "epochs": 1})
    return fit.fit(config)["run_dir"]


def predict_cli(*args):
    """``python -m loops predict`` in a subprocess; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "loops", "predict", "--no-progress", *map(str, args)], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=300)


def metrics_cli(*args):
    return subprocess.run([sys.executable, "-m", "metrics", *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


def only_test_images(run_dir, tmp_path) -> Path:
    """A data root that holds only ``images/test-resized`` (a copy of the run's)."""
    root = tmp_path / "only-test"
    shutil.copytree(course.course_dirs(RunDir(run_dir).config().data_root)["test_images"],
                    root / "images" / "test-resized")
    return root


# ------------------------------------------------------------------------------------------------
# 1-3. Data or work lost, or protected files replaced
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("last_pt", ["deleted", "kept"])
def test_resume_never_trains_a_finished_run_again(demo_root, tmp_path, last_pt):
    done = fit.fit(Config(data_root=str(demo_root), out_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 1}))
    run = RunDir(done["run_dir"])
    if last_pt == "deleted":
        run.checkpoint_path("last").unlink()
    def files():  # every file of the run, TensorBoard's events included
        return {str(path): path.read_bytes() for path in run.path.rglob("*") if path.is_file()}

    before = files()
    error = one_error(subprocess.run([sys.executable, "-m", "loops", "train", "--resume", str(run)], cwd=ROOT,
                                     env=cli_env(), capture_output=True, text=True, timeout=300))
    assert f"{run} is a finished run (finished after 1 of 1 epochs)" in error
    assert "python -m loops predict --run" in error and "train a new run" in error
    assert files() == before  # nothing replaced, no second set of TensorBoard events


def test_files_get_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path):
    previous = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
            os.umask(umask)
            atomic._umask.cache_clear()  # read once per process: a new umask for this test's sake
            path = atomic.write_json(tmp_path / f"new-{umask:o}.json", {"a": 1})
            assert stat.S_IMODE(path.stat().st_mode) == mode, (oct(umask), oct(path.stat().st_mode))
        kept = tmp_path / "predictions.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        atomic.write_text(kept, "{}\n")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "{}\n"
    finally:
        os.umask(previous)
        atomic._umask.cache_clear()


def test_predict_refuses_to_replace_a_read_only_file(run_dir, tmp_path):
    out = tmp_path / "x.json"
    out.write_text("a student's protected file\n")
    out.chmod(0o444)
    error = one_error(predict_cli("--run", run_dir, "--out", out))
    assert f"{out} is read-only: not replaced" in error and "chmod u+w" in error
    assert out.read_text() == "a student's protected file\n" and stat.S_IMODE(out.stat().st_mode) == 0o444


# ------------------------------------------------------------------------------------------------
# 4-6. Needless refusals
# ------------------------------------------------------------------------------------------------
def test_predict_needs_only_the_test_images(run_dir, tmp_path):
    root = only_test_images(run_dir, tmp_path)
    summary = predict.predict_run(run_dir, tmp_path / "p.json", data_root=root, progress=False)
    assert summary["images"] == 60
    submission.load_and_validate(tmp_path / "p.json", root)
    with pytest.raises(FileNotFoundError, match="not in the course layout; missing: .*train-resized"):
        course.find_data_root(root)  # training still needs the whole layout


def test_macos_metadata_and_hidden_files_are_not_images(demo_root, tmp_path):
    root = tmp_path / "ms-coco"
    shutil.copytree(demo_root, root)
    dirs = course.course_dirs(root)
    for key in ("train_images", "test_images"):
        stem = sorted(dirs[key].iterdir())[0].stem
        (dirs[key] / f"._{stem}.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 200)  # AppleDouble header
        (dirs[key] / ".hidden.png").write_bytes(b"not an image")
    (dirs["train_labels"] / "._000000000001.cls").write_bytes(b"\x00\x05\x16\x07\0\0")
    assert not any(path.name.startswith(".") for path in course.list_images(dirs["train_images"]).values())
    full = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], check_images=True)
    assert len(full) == 240
    assert COCOTestImageDataset(dirs["test_images"], check_images=True).stems == \
        submission.test_stems(dirs["test_images"])
    assert len(submission.read_labels(dirs["train_labels"])) == 240


def test_predict_skip_bad_files_predicts_no_label_for_unreadable_test_images(run_dir, tmp_path):
    root = only_test_images(run_dir, tmp_path)
    test_dir = root / "images" / "test-resized"
    broken = sorted(test_dir.iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:200])
    error = one_error(predict_cli("--run", run_dir, "--data-root", root, "--out", tmp_path / "p.json"))
    assert f"1 image(s) in {test_dir} cannot be read" in error and "--skip-bad-files" in error
    done = predict_cli("--run", run_dir, "--data-root", root, "--out", tmp_path / "p.json", "--skip-bad-files")
    assert done.returncode == 0, done.stderr
    assert "skipped 1 unreadable test image(s)" in done.stdout and "(1 of them unreadable)" in done.stdout
    predictions = submission.load_and_validate(tmp_path / "p.json", test_dir)  # every test image, once
    assert predictions[broken.stem] == []


def test_a_predictions_file_with_a_byte_order_mark_is_accepted(demo_root, tmp_path):
    stems = submission.test_stems(demo_root)
    path = tmp_path / "p.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({stem: [0] for stem in stems}).encode())
    assert submission.load_and_validate(path, demo_root)[stems[0]] == [0]
    done = metrics_cli("validate", path, "--test-dir", demo_root / "images" / "test-resized")
    assert done.returncode == 0 and done.stdout.startswith(f"OK: {path} is a valid submission"), done.stderr
    scored = metrics_cli("score", path, "--labels", demo_root / "labels" / "test", "--json")
    assert scored.returncode == 0 and "f1" in json.loads(scored.stdout), scored.stderr


# ------------------------------------------------------------------------------------------------
# 7-12. Messages that do not help; interrupted work
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, allowed", [
    ("--epochs", "0", "1 or more"), ("--batch-size", "0", "1 or more"), ("--image-size", "7", "16 (pixels) or more"),
    ("--lr", "-1", "a number above 0"), ("--max-train-images", "1", "2 or more")])
def test_out_of_range_settings_name_the_flag_and_the_range(flag, value, allowed, demo_root, capsys):
    assert cli.main(["train", "--data-root", str(demo_root), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    field = flag[2:].replace("-", "_")
    assert f"Config.{field}={value}" in err and f"({flag}) is out of range: it must be {allowed}" in err, err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_label_file_is_named_as_such(tmp_path, encoding):
    path = tmp_path / "000000000001.cls"
    path.write_text("12\n3\n", encoding=encoding)  # "utf-16" writes a byte-order mark, the others none
    with pytest.raises(ValueError, match=r"000000000001.cls: saved as UTF-16 .*save it again as UTF-8"):
        course.read_label_file(path)


def test_metrics_fails_with_exit_status_2_one_error_line_and_a_debug_flag(demo_root, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({stem: [1] for stem in submission.test_stems(demo_root)}))
    done = metrics_cli("score", path, "--labels", tmp_path / "missing_dir")
    assert one_error(done) == f"error: {tmp_path / 'missing_dir'}: labels not found (give a folder of .cls files " \
                              "or a JSON file)"
    label = tmp_path / "labels" / "000000000001.cls"
    label.parent.mkdir()
    label.write_text("1\n", encoding="utf-16")
    assert "saved as UTF-16" in one_error(metrics_cli("score", path, "--labels", label.parent))
    debug = metrics_cli("score", path, "--labels", tmp_path / "missing_dir", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
    assert "no images in" in one_error(metrics_cli("validate", path, "--test-dir", tmp_path / "labels"))
    # a file that is not a valid submission is validate's verdict (1), each fault on a line of its own
    faulty = tmp_path / "faulty.json"
    faulty.write_text("{}")
    verdict = metrics_cli("validate", faulty, "--test-dir", demo_root / "images" / "test-resized")
    assert verdict.returncode == 1 and "invalid predictions" in verdict.stderr and "Traceback" not in verdict.stderr


def _interrupt_once_loaded(command, library: str, delay: float = 0.0) -> subprocess.CompletedProcess:
    """Start ``command``, wait until it has mapped ``library`` (it is importing it), wait ``delay`` more, press
    Ctrl-C (SIGINT), and return the finished process."""
    process = subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if library in maps.read_text():
                    break
            except OSError:
                pass
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports")
@pytest.mark.parametrize("command, library, delay", [
    (["-m", "loops", "train", "--help"], "libtorch", 0.0),  # while torch loads
    (["-m", "metrics", "bench", "--images", "50000", "--repeat", "50"], "numpy", 0.0),  # while numpy loads
    (["-m", "metrics", "bench", "--images", "50000", "--repeat", "50"], "numpy", 2.0),  # while it works
])
def test_ctrl_c_at_any_moment_ends_in_one_line(command, library, delay):
    done = _interrupt_once_loaded([sys.executable, *command], library, delay)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)"), done.stderr


def test_ctrl_c_in_predict_says_so_in_one_line(run_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict", interrupted)
    assert cli.main(["predict", "--run", str(run_dir), "--out", str(tmp_path / "p.json"), "--no-progress"]) == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n" and not list(tmp_path.iterdir())


def test_the_generator_finishes_its_own_interrupted_folder(tmp_path, monkeypatch):
    calls = []
    write_split = synthetic._write_split

    def interrupted_after_the_training_split(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write_split(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_split", interrupted_after_the_training_split)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_demo_dataset(tmp_path / "demo", n_train=60, n_test=4, long_side=32)
    assert (tmp_path / "demo" / synthetic.PARTIAL_MARKER).exists()
    done = subprocess.run([sys.executable, "-m", "coco.synthetic", str(tmp_path / "demo"), "--train", "60", "--test",
                           "4", "--long-side", "32"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "an unfinished synthetic dataset (interrupted); generating it again" in done.stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [synthetic.MARKER, "images", "labels"]
    assert course.count_images(tmp_path / "demo" / "images" / "test-resized") == 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic dataset folder; .*choose another folder"):
        synthetic.make_demo_dataset(tmp_path / "other", n_train=60, n_test=4, long_side=32)


def test_predict_out_with_a_trailing_slash_is_refused_before_inference(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "predict", lambda *a, **k: pytest.fail("inference ran"))
    out = f"{tmp_path / 'newdir'}{os.sep}"
    assert cli.main(["predict", "--run", str(run_dir), "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{out} ends with a slash, so it names a folder: give a file name" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# The GPU input path's safety net (made to fail on the CPU)
# ------------------------------------------------------------------------------------------------
def _failing_batches(monkeypatch, fail_at: int) -> None:
    """Make every BatchLoader of the process raise, as a broken GPU decoder would, at its ``fail_at``-th batch
    (counted over all of them, validation included) and at every one after it."""
    served = []
    batches = gpu_batches.BatchLoader._batches

    def failing(self, epoch):
        for batch in batches(self, epoch):
            if len(served) >= fail_at:
                raise RuntimeError("nvjpeg: decode failed (simulated)")
            served.append(1)
            yield batch

    monkeypatch.setattr(gpu_batches.BatchLoader, "_batches", failing)


@pytest.mark.parametrize("fail_at", [0, 6])  # the first batch; the second training batch of epoch 2
def test_a_failing_gpu_path_falls_back_to_workers_and_the_run_goes_on(demo_root, tmp_path, monkeypatch, capsys,
                                                                       fail_at):
    _failing_batches(monkeypatch, fail_at)
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path / "runs"), loader="gpu", **TINY)
    result = fit.fit(config)
    err = capsys.readouterr().err
    assert result["status"] == "finished" and len(result["history"]) == config.epochs
    warnings = [line for line in err.splitlines() if "the gpu input path failed" in line]
    assert warnings == ["warning: the gpu input path failed (RuntimeError: nvjpeg: decode failed (simulated)); the "
                        "run goes on with DataLoader workers (--loader workers skips the gpu path)"]
    run = RunDir(result["run_dir"])
    assert run.summary()["input_path"] == "gpu, then workers after: RuntimeError: nvjpeg: decode failed (simulated)"
    # every epoch took its full number of steps (72 training images, batch 16: 4), as the schedule expects
    assert run.load_checkpoint("last")["global_step"] == config.epochs * 4


def test_the_summary_says_which_input_path_ran(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 1})
    assert RunDir(fit.fit(config.replace(loader="gpu"))["run_dir"]).summary()["input_path"] == "gpu"
    assert RunDir(fit.fit(config.replace(loader="workers"))["run_dir"]).summary()["input_path"] == "workers"


@pytest.mark.parametrize("shuffle, prefetch", [(True, 0), (False, 0), (True, 2)])  # 2: the thread CUDA uses
def test_the_workers_serve_the_rest_of_the_epoch_in_the_same_order(demo_root, monkeypatch, shuffle, prefetch):
    dirs = course.course_dirs(demo_root)
    _, eval_tf = recipe.presets_for(Config(**TINY))
    dataset = cache_dataset(COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], max_images=50,
                                                  transform=eval_tf), "jpeg", verbose=False)
    make = dict(batch_size=8, device="cpu", shuffle=shuffle, drop_last=shuffle, seed=3)
    expected = [targets for _, targets in gpu_batches.BatchLoader(dataset, **make)]
    _failing_batches(monkeypatch, 2)
    path = loaders.InputPath("gpu")
    loader = loaders.guarded(gpu_batches.BatchLoader(dataset, **make, prefetch=prefetch), path, num_workers=0)
    loader.set_epoch(0)
    served = [targets for _, targets in loader]
    assert path.failure and len(served) == len(loader) == len(expected) == (6 if shuffle else 7)
    assert all(torch.equal(a, b) for a, b in zip(served, expected))  # the same images, in the same order
    loader.set_epoch(1)  # the next epoch: all from the workers, the GPU path's order for epoch 1
    expected_next = gpu_batches.BatchLoader(dataset, **make)
    expected_next.set_epoch(1)
    monkeypatch.undo()
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(loader, expected_next))
