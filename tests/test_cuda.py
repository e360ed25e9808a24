"""What only a GPU can show (skipped without CUDA): mixed precision with bf16 and with fp16 + gradient scaler,
channels_last, the GPU input path (cached JPEG bytes decoded and augmented on the device) inside ``fit``,
``torch.compile``, prediction and resume on CUDA.

On a machine with an NVIDIA GPU: ``bash tests/gpu_checks.sh`` runs these tests, the benchmark and the notebook
with the default recipe on generated data.
"""
import json

import numpy as np
import pytest
import torch
from conftest import TINY
from torch import nn

from coco import engine, fit, predict, runtime, submission
from coco.config import Config
from coco.run_dir import RunDir

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.filterwarnings("ignore::coco.leaderboard.MissingClassWarning")]

CUDA = dict(TINY, device="cuda", deterministic=False)


def _tiny_batches(n_batches=4, batch=16, size=32):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=generator),
             (torch.rand(batch, 80, generator=generator) < 0.1).float()) for _ in range(n_batches)]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 80)).cuda()


def test_mixed_precision_bf16_and_fp16_with_the_gradient_scaler():
    device = torch.device("cuda")
    amp_dtype, scaler = runtime.amp_settings(device, True)
    assert amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert (scaler is None) == (amp_dtype == torch.bfloat16)
    for dtype, grad_scaler in ((torch.bfloat16, None), (torch.float16, torch.amp.GradScaler("cuda"))):
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        net = _net()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, fused=True)
        first = engine.train_one_epoch(net, _tiny_batches(), nn.BCEWithLogitsLoss(), optimizer, device,
                                       amp_dtype=dtype, scaler=grad_scaler, grad_clip=1.0, progress=False)
        for _ in range(5):
            last = engine.train_one_epoch(net, _tiny_batches(), nn.BCEWithLogitsLoss(), optimizer, device,
                                          amp_dtype=dtype, scaler=grad_scaler, grad_clip=1.0, progress=False)
        assert np.isfinite(last["loss"]) and last["loss"] < first["loss"], dtype
        if grad_scaler is not None:
            assert grad_scaler.get_scale() > 0


def test_channels_last_gives_the_same_probabilities():
    device = torch.device("cuda")
    net = _net().eval()
    images = torch.randn(8, 3, 32, 32, device=device)
    with torch.inference_mode():
        plain = torch.sigmoid(net(images))
        net.to(memory_format=torch.channels_last)
        nhwc = torch.sigmoid(net(images.contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(nhwc, plain, atol=1e-4, rtol=1e-3)


def test_fit_on_cuda_uses_the_gpu_input_path_and_predicts_with_the_run_thresholds(demo_root, tmp_path, capsys):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path / "runs"), **{**CUDA, "epochs": 2})
    result = fit.fit(config)
    out = capsys.readouterr().out
    assert "gpu path (main process, jpeg cache, decode on cuda)" in out
    assert result["status"] == "finished" and all(np.isfinite(row["val/loss"]) for row in result["history"])
    assert json.loads((result["run_dir"] / "summary.json").read_text())["hardware"]["gpu"]
    summary = predict.predict_run(result["run_dir"], tmp_path / "predictions.json", device="cuda", progress=False)
    predictions = submission.load_and_validate(tmp_path / "predictions.json", demo_root)
    thresholds = predict.load_run(result["run_dir"])[2]
    assert summary["global_threshold"] == thresholds.global_threshold and len(predictions) == summary["images"]
    on_cpu = predict.predict_run(result["run_dir"], tmp_path / "cpu.json", device="cpu", progress=False)
    cpu_predictions = json.loads((tmp_path / "cpu.json").read_text())
    same = np.mean([predictions[stem] == cpu_predictions[stem] for stem in predictions])
    assert same > 0.8, f"CUDA and CPU predictions agree on {same:.0%} of the test images"
    assert on_cpu["images"] == summary["images"]


def test_compile_when_asked(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), compile=True, **{**CUDA, "epochs": 1})
    result = fit.fit(config)
    assert result["status"] == "finished" and np.isfinite(result["best"]["val/loss"])


def test_resume_on_cuda_continues_the_schedule(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), **{**CUDA, "epochs": 3, "deterministic": True})
    whole = fit.fit(config.replace(out_dir=str(tmp_path / "whole")))
    stopped = fit.fit(config, stop_after_epochs=1)
    resumed = fit.fit(resume=stopped["run_dir"])
    assert resumed["status"] == "finished" and [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    checkpoint = RunDir(resumed["run_dir"]).load_checkpoint("last")
    assert checkpoint["scheduler"]["last_epoch"] == RunDir(whole["run_dir"]).load_checkpoint("last")["scheduler"][
        "last_epoch"]
    # deterministic kernels: the continued run follows the uninterrupted one closely
    assert resumed["history"][-1]["val/loss"] == pytest.approx(whole["history"][-1]["val/loss"], rel=1e-3)
