"""The feature cache and what trains on it (features.py): the cached tail, bfloat16 extraction, cross-fitting."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY

from coco import course, data, features, fit, leaderboard, losses, networks, predict, recipe, runtime, transforms
from coco.config import Config
from coco.run_dir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::coco.leaderboard.MissingClassWarning")  # small splits miss classes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (conftest's one_thread): some compare results bit for bit."""


def test_feature_cache_mode_trains_the_tail_and_predicts_with_the_full_model(demo_root, tmp_path):
    # amp=False: the cache in float32 (+ float16 storage), so the tolerances below hold on any CPU.
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), cache_stages=3, cache_views=3,
                          amp=False, **{**TINY, "epochs": 2})
    runtime.seed_everything(config.seed)
    initial = recipe.build_net(config).state_dict()
    result = fit.fit(config)
    assert all(math.isfinite(row["val/loss"]) for row in result["history"])
    final = RunDir(result["run_dir"]).load_checkpoint("last")["model"]
    for key in final:
        if key.startswith(("stages.0.", "stages.1.", "stages.2.")):
            assert torch.equal(final[key], initial[key]), key  # cached stages never change
    assert not torch.equal(final["stages.4.0.weight"], initial["stages.4.0.weight"])
    # The full model on images gives the probabilities the cached tail gave on features (float16 cache).
    model, _, _ = predict.load_run(result["run_dir"], "last")
    full = data.COCOTrainImageDataset(*list(course.course_dirs(demo_root).values())[:2],
                                         max_images=config.max_train_images)
    _, val_idx = course.load_split(result["run_dir"] / "split.json", full.stems)
    eval_tf = transforms.EvalPreset(image_size=config.image_size, mean=model.spec.mean, std=model.spec.std)
    images = torch.stack([eval_tf(full.load_image(int(i))) for i in val_idx])
    with torch.no_grad():
        probs = torch.sigmoid(model(images))
        cached = torch.sigmoid(model.forward_from(3, model.features_until(3, images).half().float()))
    torch.testing.assert_close(cached, probs, atol=2e-3, rtol=0)
    with torch.no_grad():
        val_loss = losses.build_loss("asl")(model(images), torch.as_tensor(full.targets[val_idx])).item()
    assert result["history"][-1]["val/loss"] == pytest.approx(val_loss, rel=1e-2)


def _photos(demo_root, n, size=64):
    source = data.COCOTrainImageDataset(*list(course.course_dirs(demo_root).values())[:2], max_images=n)
    spec = networks.get_spec("efficientnet_lite0")
    preset = transforms.EvalPreset(image_size=size, mean=spec.mean, std=spec.std)
    return source, torch.stack([preset(source.load_image(i)) for i in range(n)])


def test_inference_settings_and_the_bf16_feature_cache(demo_root, tmp_path):
    """Forward-only passes use channels_last on the CPU, and bfloat16 only where the CPU has it natively;
    a cache made that way matches the float32 one closely enough to rank images alike."""
    cpu = torch.device("cpu")
    assert runtime.inference_settings(cpu, enabled=False) == (None, True)
    native = runtime.cpu_has_native_bf16()
    assert runtime.inference_settings(cpu) == ((torch.bfloat16 if native else None), True)
    # pretrained: a random-init network's activations all but vanish in eval mode, and 0 == 0 in any precision
    net = recipe.build_net(Config(model="efficientnet_lite0")).eval()
    source, images = _photos(demo_root, 16)
    views = [transforms.EvalPreset(image_size=64, mean=net.spec.mean, std=net.spec.std)]
    banks = {}
    for amp in (False, True):
        store = features.FeatureStore(tmp_path / f"amp{amp}", {"amp": amp}, (1, 16, 112, 4, 4), chunk_images=8)
        features.extract(net, 4, source, np.arange(16), views, store, device=cpu, batch_size=8, num_workers=0,
                         amp=amp, seed=0, progress=False)
        banks[amp] = torch.from_numpy(np.asarray(store.array, dtype=np.float32))
    exact, fast = banks[False], banks[True]
    assert next(net.parameters()).is_contiguous(), "the network must be handed back in its memory format"
    if native:
        assert not torch.equal(exact, fast)  # bfloat16 really ran
    cos = torch.nn.functional.cosine_similarity(exact.flatten(1), fast.flatten(1), dim=1)
    assert cos.min() > 0.99
    # the store holds what compute gives for the same batch
    direct = features.compute(net, 4, images[:8], device=cpu, amp_dtype=None, channels_last=False).float()
    torch.testing.assert_close(direct, exact[0, :8], atol=2e-3, rtol=2e-3)


def test_pooled_cache_gives_the_probabilities_of_the_cached_feature_map(demo_root):
    """With the whole backbone frozen only the pooled vector is kept (2,560 values instead of the whole map);
    the head's probabilities equal those computed from the float16 feature map, up to float16 rounding."""
    cpu = torch.device("cpu")
    net = recipe.build_net(Config(model="efficientnet_lite0", pool="avgmax", head_hidden=64)).eval()
    _, images = _photos(demo_root, 12, size=128)
    amp_dtype = runtime.inference_settings(cpu)[0]
    pooled = features.compute(net, 5, images, device=cpu, amp_dtype=amp_dtype, channels_last=True)
    assert pooled.dtype == torch.float16 and pooled.shape == (12, 2 * 1280)
    with torch.inference_mode(), runtime.autocast(cpu, amp_dtype):  # the map cache: stages, then float16 storage
        feature_map = net.features_until(5, images.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        from_map = torch.sigmoid(net.head(net.pool(feature_map.to(torch.float16).float())))
        from_pooled = torch.sigmoid(features.Tail(net, 5)(pooled.float()))
    assert feature_map.numel() // 12 == 1280 * 4 * 4  # 8 times more per image at this size (144 x at 384 px)
    torch.testing.assert_close(from_pooled, from_map, atol=2e-3, rtol=0)
    assert not torch.equal(from_pooled, torch.sigmoid(net.head(torch.zeros_like(pooled, dtype=torch.float32))))


def test_an_interrupted_extraction_resumes_without_recomputing_finished_chunks(demo_root, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    net = recipe.build_net(Config(model="efficientnet_lite0", pretrained=False)).eval()
    source, _ = _photos(demo_root, 20)
    config = Config(model="efficientnet_lite0", image_size=48, cache_views=3)  # eval, mirror, one random crop
    views = features.cache_views(config)[0]
    kwargs = dict(device=cpu, batch_size=4, num_workers=0, amp=False, seed=3, progress=False)
    shape = (3, 20, 40, 6, 6)

    whole = features.FeatureStore(tmp_path / "whole", {"run": 1}, shape, chunk_images=8)  # 3 chunks per view
    features.extract(net, 3, source, np.arange(20), views, whole, **kwargs)
    assert whole.complete and whole.n_chunks == 3

    real_compute, calls, interrupt = features.compute, [], [True]

    def counting_compute(*args, **kw):
        calls.append(len(args[2]))
        if len(calls) == 7 and interrupt and interrupt.pop():  # once, in the fourth chunk (view 1, chunk 0): Ctrl-C
            raise KeyboardInterrupt
        return real_compute(*args, **kw)

    monkeypatch.setattr(features, "compute", counting_compute)
    store = features.FeatureStore(tmp_path / "run", {"run": 1}, shape, chunk_images=8)
    with pytest.raises(KeyboardInterrupt):
        features.extract(net, 3, source, np.arange(20), views, store, **kwargs)
    assert store.done() == {(0, 0), (0, 1), (0, 2)} and not store.complete
    calls.clear()
    reopened = features.FeatureStore(tmp_path / "run", {"run": 1}, shape, chunk_images=8)  # as --resume does
    features.extract(net, 3, source, np.arange(20), views, reopened, **kwargs)
    assert sum(calls) == 2 * 20, "only the two unfinished views were computed again"
    assert reopened.complete and np.array_equal(np.asarray(reopened.array), np.asarray(whole.array))
    # other settings: the folder is rebuilt, not reused
    other = features.FeatureStore(tmp_path / "run", {"run": 2}, shape, chunk_images=8)
    assert other.done() == set()


def test_cross_fit_tunes_on_out_of_fold_probabilities_and_predict_uses_final(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), model="efficientnet_lite0",
                          pretrained=False, image_size=32, cache_stages=5, cache_views=1, tta_hflip=True,
                          cross_fit_folds=3, **{k: v for k, v in TINY.items() if k not in ("model", "pretrained",
                                                                                           "image_size")})
    result = fit.fit(config)
    run_dir = result["run_dir"]
    record = json.loads((run_dir / "cross_fit.json").read_text())
    oof = np.load(run_dir / "oof.npz")
    full = data.COCOTrainImageDataset(*list(course.course_dirs(demo_root).values())[:2],
                                         max_images=config.max_train_images)
    # every labelled image has exactly one out-of-fold probability row, its own labels beside it
    assert sorted(oof["stems"]) == sorted(full.stems) and oof["probs"].shape == (len(full), 80)
    by_stem = dict(zip(full.stems, full.targets))
    assert all(np.array_equal(by_stem[stem], row) for stem, row in zip(oof["stems"], oof["targets"]))
    assert set(oof["folds"]) == {0, 1, 2}
    assert record["oof_map"] == pytest.approx(leaderboard.mean_average_precision(oof["probs"], oof["targets"]))
    # the final checkpoint holds the out-of-fold thresholds and differs from the split run's best
    final_model, _, final_thresholds = predict.load_run(run_dir, "final")
    best_model, _, _ = predict.load_run(run_dir, "best")
    np.testing.assert_allclose(final_thresholds.class_thresholds, record["thresholds"]["class_thresholds"])
    assert not torch.equal(final_model.head[-1].weight, best_model.head[-1].weight)
    assert RunDir(run_dir).resolve_checkpoint() == "final"
    summary = predict.predict_run(run_dir, tmp_path / "p.json", progress=False)
    assert summary["checkpoint"] == "final.pt"
    with pytest.raises(ValueError, match="cross_fit_folds"):
        fit.fit(config.replace(cache_stages=3))
    with pytest.raises(ValueError, match="cross_fit_folds"):
        config.replace(cross_fit_folds=1).validate()



def test_ctrl_c_during_feature_extraction_and_resume_give_the_uninterrupted_run(demo_root, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr(features, "CHUNK_IMAGES", 32)  # 96 images: 3 chunks per view
    config = Config(data_root=str(demo_root), cache_stages=3, cache_views=3,
                    **{**TINY, "model": "efficientnet_lite0", "epochs": 2})
    uninterrupted = fit.fit(config.replace(out_dir=str(tmp_path / "whole")))

    real_write, calls, interrupt = features.FeatureStore.write, [], [True]

    def interrupted_write(store, view, chunk, feats):
        calls.append((view, chunk))
        if len(calls) == 3 and interrupt and interrupt.pop():  # once: Ctrl-C while the third chunk is computed
            raise KeyboardInterrupt
        return real_write(store, view, chunk, feats)

    monkeypatch.setattr(features.FeatureStore, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config.replace(out_dir=str(tmp_path / "runs")))
    (run_dir,) = (tmp_path / "runs").iterdir()
    err = capsys.readouterr().err
    assert "feature cache keeps its finished chunks" in err and f"--resume {run_dir}" in err
    assert not (run_dir / "last.pt").exists() and len(json.loads((run_dir / "features" / "done.json").read_text())) == 2
    calls.clear()
    resumed = fit.fit(resume=run_dir)
    assert len(calls) == 3 * 3 - 2 and (0, 0) not in calls, "the two finished chunks were not computed again"
    assert resumed["status"] == "finished"
    drop = ("time_s",)
    assert [{k: v for k, v in row.items() if k not in drop} for row in resumed["history"]] == \
           [{k: v for k, v in row.items() if k not in drop} for row in uninterrupted["history"]]
