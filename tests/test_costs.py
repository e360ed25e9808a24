"""What a run will cost (costs.py): the estimate printed before a run, and the guard that stops a run which
cannot fit, before anything is written."""
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, cli_env

from coco import costs, fit
from coco.config import Config

pytestmark = pytest.mark.filterwarnings("ignore::metrics.MissingClassWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One intra-op thread: tiny tensors, a shared 2-core machine."""


def test_the_estimate_names_every_phase_with_time_memory_and_disk(demo_root, tmp_path):
    cached = Config(data_root=str(demo_root), out_dir=str(tmp_path), cache_stages=3, cache_views=2, tta_hflip=True,
                    cross_fit_folds=0, **{**TINY, "model": "efficientnet_lite0"})
    estimate = fit.estimate_run(cached)
    assert list(estimate.phases) == ["feature cache", "epochs", "predict"]
    assert all(seconds > 0 for seconds, _ in estimate.phases.values())
    assert estimate.phases["feature cache"][1].startswith("2 view(s) x 96 images")
    assert estimate.memory["process now"] > 50 * 2**20 and estimate.peak_bytes >= estimate.needed_bytes
    # the feature cache: 2 views x 96 images x (40 x 4 x 4) float16 values of stage 3 at 32 px
    assert estimate.disk_bytes == estimate.reclaimable["feature cache pages"] == 2 * 96 * 40 * 4 * 4 * 2
    text = estimate.describe()
    for word in ("feature cache", "epochs", "predict", "total", "peak memory", "available now", "disk"):
        assert word in text, word
    assert not list(tmp_path.iterdir()), "an estimate writes nothing"
    images = Config(data_root=str(demo_root), out_dir=str(tmp_path), cross_fit_folds=0, **TINY)
    assert list(fit.estimate_run(images).phases) == ["epochs", "predict"]
    crossfit = cached.replace(cache_stages=5, cross_fit_folds=3)
    assert "cross-fit" in fit.estimate_run(crossfit).phases


def test_a_run_that_does_not_fit_in_memory_stops_before_writing_anything(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(costs, "available_memory_bytes", lambda: 100 * 2**20)  # a machine with 100 MiB free
    out_dir = tmp_path / "runs"
    config = Config(data_root=str(demo_root), out_dir=str(out_dir), **TINY)
    with pytest.raises(costs.ResourceError) as caught:
        fit.fit(config)
    message = str(caught.value)
    assert "does not fit on this machine" in message and "100 MiB are available" in message
    assert "needs about" in message and "try " in message
    assert "peak memory" in capsys.readouterr().out  # the figures were printed before the refusal
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_a_feature_cache_larger_than_the_free_disk_is_refused(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(costs, "free_disk_bytes", lambda path: 1000)
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path / "runs"), cache_stages=3,
                    **{**TINY, "model": "efficientnet_lite0"})
    with pytest.raises(costs.ResourceError,
                       match="feature cache needs .* of disk, 0 MiB are free; try fewer cache_views"):
        fit.fit(config)


def test_the_command_line_reports_a_refusal_in_one_line(demo_root, tmp_path):
    # ask for far more memory than any machine has: 10 million images per batch
    out_dir = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "loops", "train", "--data-root", str(demo_root), "--model",
                           "shufflenet_v2_x0_5", "--no-pretrained", "--image-size", "64", "--batch-size", "10000000",
                           "--epochs", "1", "--out", str(out_dir), "--no-progress", "--num-workers", "0"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit on this machine" in errors[0] and "batch_size" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())
