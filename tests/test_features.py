"""The feature cache and what trains on it (features.py): the cached tail, bfloat16 extraction, cross-fitting."""
import json
import math

import numpy as np
import pytest
import torch

import dataset
import features
import metrics
import models
import recipe
import runs
import runtime
from config import Config
from conftest import TINY

pytestmark = pytest.mark.filterwarnings("ignore::metrics.MissingClassWarning")  # small splits miss classes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (conftest's one_thread): some compare results bit for bit."""


def test_feature_cache_mode_trains_the_tail_and_predicts_with_the_full_model(demo_root, tmp_path):
    # amp=False: the cache in float32 (+ float16 storage), so the tolerances below hold on any CPU.
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), cache_stages=3, cache_views=3,
                          amp=False, **{**TINY, "epochs": 2})
    runtime.seed_everything(config.seed)
    initial = recipe.build_net(config).state_dict()
    result = runs.fit(config)
    assert all(math.isfinite(row["val/loss"]) for row in result["history"])
    final = runs.load_checkpoint(result["run_dir"] / "last.pt")["model"]
    for key in final:
        if key.startswith(("stages.0.", "stages.1.", "stages.2.")):
            assert torch.equal(final[key], initial[key]), key  # cached stages never change
    assert not torch.equal(final["stages.4.0.weight"], initial["stages.4.0.weight"])
    # The full model on images gives the probabilities the cached tail gave on features (float16 cache).
    model, _, _ = runs.load_run(result["run_dir"], "last")
    full = dataset.COCOTrainImageDataset(*list(dataset.course_dirs(demo_root).values())[:2],
                                         max_images=config.max_train_images)
    _, val_idx = dataset.load_split(result["run_dir"] / "split.json", full.stems)
    eval_tf = dataset.EvalPreset(image_size=config.image_size, mean=model.spec.mean, std=model.spec.std)
    images = torch.stack([eval_tf(full.load_image(int(i))) for i in val_idx])
    with torch.no_grad():
        probs = torch.sigmoid(model(images))
        cached = torch.sigmoid(model.forward_from(3, model.features_until(3, images).half().float()))
    torch.testing.assert_close(cached, probs, atol=2e-3, rtol=0)
    with torch.no_grad():
        val_loss = models.build_loss("asl")(model(images), torch.as_tensor(full.targets[val_idx])).item()
    assert result["history"][-1]["val/loss"] == pytest.approx(val_loss, rel=1e-2)


def test_inference_settings_and_the_bf16_feature_cache(demo_root):
    """Forward-only passes use channels_last on the CPU, and bfloat16 only where the CPU has it natively;
    a cache made that way matches the float32 one closely enough to rank images alike."""
    cpu = torch.device("cpu")
    assert runtime.inference_settings(cpu, enabled=False) == (None, True)
    native = runtime.cpu_has_native_bf16()
    assert runtime.inference_settings(cpu) == ((torch.bfloat16 if native else None), True)
    # pretrained: a random-init network's activations all but vanish in eval mode, and 0 == 0 in any precision
    net = recipe.build_net(Config(model="efficientnet_lite0")).eval()
    source = dataset.COCOTrainImageDataset(*list(dataset.course_dirs(demo_root).values())[:2], max_images=16)
    views = [dataset.EvalPreset(image_size=64, mean=net.spec.mean, std=net.spec.std)]
    common = dict(k=5, source=source, indices=np.arange(16), transforms=views, device=cpu, batch_size=8,
                  num_workers=0, seed=0, progress=False, desc="test")
    exact = features.extract(net, amp=False, **common).float()
    fast = features.extract(net, amp=True, **common).float()
    assert exact.shape == fast.shape == (1, 16, 1280, 2, 2)
    assert next(net.parameters()).is_contiguous(), "the network must be handed back in its memory format"
    if native:
        assert not torch.equal(exact, fast)  # bfloat16 really ran
    cos = torch.nn.functional.cosine_similarity(exact.flatten(1), fast.flatten(1), dim=1)
    assert cos.min() > 0.99


def test_cross_fit_tunes_on_out_of_fold_probabilities_and_predict_uses_final(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), model="efficientnet_lite0",
                          pretrained=False, image_size=32, cache_stages=5, cache_views=1, tta_hflip=True,
                          cross_fit_folds=3, **{k: v for k, v in TINY.items() if k not in ("model", "pretrained",
                                                                                           "image_size")})
    result = runs.fit(config)
    run_dir = result["run_dir"]
    record = json.loads((run_dir / "cross_fit.json").read_text())
    oof = np.load(run_dir / "oof.npz")
    full = dataset.COCOTrainImageDataset(*list(dataset.course_dirs(demo_root).values())[:2],
                                         max_images=config.max_train_images)
    # every labelled image has exactly one out-of-fold probability row, its own labels beside it
    assert sorted(oof["stems"]) == sorted(full.stems) and oof["probs"].shape == (len(full), 80)
    by_stem = dict(zip(full.stems, full.targets))
    assert all(np.array_equal(by_stem[stem], row) for stem, row in zip(oof["stems"], oof["targets"]))
    assert set(oof["folds"]) == {0, 1, 2}
    assert record["oof_map"] == pytest.approx(metrics.mean_average_precision(oof["probs"], oof["targets"]))
    # the final checkpoint holds the out-of-fold thresholds and differs from the split run's best
    final_model, _, final_thresholds = runs.load_run(run_dir, "final")
    best_model, _, _ = runs.load_run(run_dir, "best")
    np.testing.assert_allclose(final_thresholds.class_thresholds, record["thresholds"]["class_thresholds"])
    assert not torch.equal(final_model.head[-1].weight, best_model.head[-1].weight)
    assert runs.resolve_checkpoint(run_dir) == "final"
    summary = runs.predict_run(run_dir, tmp_path / "p.json", progress=False)
    assert summary["checkpoint"] == "final.pt"
    with pytest.raises(ValueError, match="cross_fit_folds"):
        runs.fit(config.replace(cache_stages=3))
    with pytest.raises(ValueError, match="cross_fit_folds"):
        config.replace(cross_fit_folds=1).validate()

