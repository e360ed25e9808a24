"""A training run end to end (runs.py): fit, resume, Ctrl-C, checkpoints, freezing, the command line.

The end-to-end tests train small networks on the synthetic demo data on the CPU; they share one
session-scoped dataset and one module-scoped run to keep the whole file to a few CPU minutes.
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY
from conftest import cli_env as _env
from torch.utils.data import DataLoader

from coco import (
    course,
    data,
    engine,
    fit,
    leaderboard,
    networks,
    predict,
    recipe,
    runtime,
    submission,
    synthetic,
    tables,
    transforms,
)
from coco.config import Config, config_from_preset
from coco.run_dir import RunDir, load_checkpoint, save_checkpoint
from coco.thresholds import ThresholdResult, tune_thresholds

pytestmark = pytest.mark.filterwarnings("ignore::coco.leaderboard.MissingClassWarning")  # small splits miss classes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (conftest's one_thread): some compare results bit for bit."""


@pytest.fixture(scope="session")
def learn_root(tmp_path_factory):
    """A synthetic dataset big enough for a 10 % validation split to be a meaningful score."""

    return synthetic.make_demo_dataset(tmp_path_factory.mktemp("learn") / "ms-coco", n_train=600, n_test=40,
                                       seed=1, long_side=96)


@pytest.fixture(scope="module")
def tiny_run(_one_thread, demo_root, tmp_path_factory):
    """One uninterrupted TINY run (3 epochs) shared by the resume and checkpoint tests.

    It depends on _one_thread explicitly: CPU results differ in the last bits between thread counts, and
    the resume test compares bit for bit."""
    out_dir = tmp_path_factory.mktemp("runs")
    config = Config(data_root=str(demo_root), out_dir=str(out_dir), **TINY)
    return config, fit.fit(config)


def test_save_checkpoint_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"a": torch.arange(3), "rng": np.random.get_state()})
    save_checkpoint(path, {"a": torch.arange(4)})
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"a": Boom()})
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(4))  # the old file survived
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_demo_preset_learns_the_synthetic_data(learn_root, tmp_path):
    config = config_from_preset("demo", data_root=str(learn_root), out_dir=str(tmp_path), progress=False,
                                      num_workers=0)
    result = fit.fit(config)
    history = result["history"]
    # Chance: a network that ignores the image and outputs the training class rates, thresholds tuned the
    # same way on the same validation split.
    full = data.COCOTrainImageDataset(*list(course.course_dirs(learn_root).values())[:2])
    train_idx, val_idx = course.split_train_val(full.targets, config.val_fraction, config.split_seed, config.stratify)
    prior = np.broadcast_to(full.targets[train_idx].mean(axis=0), full.targets[val_idx].shape)
    chance = leaderboard.leaderboard_scores(tune_thresholds(prior, full.targets[val_idx]).apply(prior),
                                        full.targets[val_idx], warn=False)["f1"]
    chance_map = leaderboard.mean_average_precision(prior, full.targets[val_idx])  # constant scores: AP = class rate
    best = result["best"]
    print(f"demo preset: chance F1 {chance:.3f}, mAP {chance_map:.3f}; best val F1 {best['val/f1']:.3f}, mAP "
          f"{best['val/map']:.3f}; train loss {history[0]['train/loss']:.2f} -> {history[-1]['train/loss']:.2f}")
    # Measured: chance F1 0.018; best F1 0.347, mAP 0.56; train loss 4.3 -> 0.41. (The validation loss falls from
    # 4.2 to 3.1 by epoch 2 and then rises again: 60 validation images of a small synthetic set overfit early.)
    assert chance < 0.05
    assert best["val/f1"] > max(0.15, 5 * chance)  # margin for other CPUs' rounding
    assert best["val/map"] > max(0.3, 4 * chance_map)
    assert history[-1]["train/loss"] < 0.3 * history[0]["train/loss"]
    assert best["val/map"] > 0.3
    run_dir = result["run_dir"]
    for name in ("config.json", "split.json", "metrics.csv", "best.pt", "last.pt", "summary.json", "thresholds.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").rglob("events.out.tfevents*"))
    assert json.loads((run_dir / "summary.json").read_text())["best_epoch"] == result["best_epoch"]


def _same_rows(first, second):
    drop = {"time_s"}
    return [{k: v for k, v in row.items() if k not in drop} for row in first] == \
           [{k: v for k, v in row.items() if k not in drop} for row in second]


def test_resume_reproduces_an_uninterrupted_run(tiny_run, demo_root, tmp_path):
    config, full_result = tiny_run
    config = config.replace(out_dir=str(tmp_path))
    stopped = fit.fit(config, stop_after_epochs=1)
    assert stopped["status"] == "stopped" and len(stopped["history"]) == 1
    assert RunDir(stopped["run_dir"]).load_checkpoint("last")["epoch"] == 1
    resumed = fit.fit(resume=stopped["run_dir"])
    assert resumed["status"] == "finished" and resumed["run_dir"] == stopped["run_dir"]
    assert _same_rows(resumed["history"], full_result["history"])
    assert resumed["best_epoch"] == full_result["best_epoch"]
    uninterrupted = RunDir(full_result["run_dir"]).load_checkpoint("last")["model"]
    continued = RunDir(resumed["run_dir"]).load_checkpoint("last")["model"]
    assert all(torch.equal(uninterrupted[key], continued[key]) for key in uninterrupted)
    assert len(RunDir(resumed["run_dir"]).history()) == config.epochs
    with pytest.raises(ValueError, match="is a finished run"):  # never trained again (tests/test_hostile_inputs.py)
        fit.fit(config.replace(lr=1.0), resume=stopped["run_dir"])


def test_ctrl_c_keeps_the_last_completed_epoch_and_resumes(tiny_run, tmp_path, monkeypatch, capsys):
    config, full_result = tiny_run
    real_evaluate, calls = fit.evaluate, []

    def interrupted_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during epoch 2
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(fit, "evaluate", interrupted_evaluate)
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config.replace(out_dir=str(tmp_path)))
    monkeypatch.setattr(fit, "evaluate", real_evaluate)
    (run_dir,) = tmp_path.iterdir()
    assert "resume with:  python -m loops train --resume" in capsys.readouterr().err
    assert RunDir(run_dir).load_checkpoint("last")["epoch"] == 1
    assert not (run_dir / "summary.json").exists()
    resumed = fit.fit(resume=run_dir)
    assert _same_rows(resumed["history"], full_result["history"])


def test_checkpoint_restores_model_thresholds_and_config(tiny_run, demo_root):
    config, result = tiny_run
    run_dir = result["run_dir"]
    checkpoint = RunDir(run_dir).load_checkpoint("best")
    expected_keys = {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "global_step", "config",
                     "thresholds", "class_names", "metrics", "rng"}
    assert expected_keys <= set(checkpoint)
    assert checkpoint["epoch"] == result["best_epoch"]
    model, loaded_config, thresholds = predict.load_run(run_dir)
    assert loaded_config == config
    assert json.loads((run_dir / "config.json").read_text()) == dataclasses.asdict(config)
    np.testing.assert_array_equal(thresholds.class_thresholds, result["thresholds"].class_thresholds)
    assert thresholds.to_dict() == checkpoint["thresholds"]
    assert not model.training
    # The loaded model reproduces the validation probabilities that the thresholds were tuned on.
    full = data.COCOTrainImageDataset(*list(course.course_dirs(demo_root).values())[:2],
                                         max_images=config.max_train_images)
    _, val_idx = course.load_split(run_dir / "split.json", full.stems)
    eval_tf = transforms.EvalPreset(image_size=config.image_size, mean=model.spec.mean, std=model.spec.std)
    loader = DataLoader(data.TransformSubset(full, val_idx, eval_tf), batch_size=2 * config.batch_size)
    cpu = torch.device("cpu")  # evaluated in the run's precision and memory format
    channels_last = runtime.uses_channels_last(cpu, config.channels_last)
    model.to(memory_format=torch.channels_last if channels_last else torch.preserve_format)
    probs = engine.evaluate(model, loader, cpu, amp_dtype=runtime.amp_settings(cpu, config.amp)[0],
                            channels_last=channels_last, progress=False)["probs"]
    scores = leaderboard.leaderboard_scores(thresholds.apply(probs), full.targets[val_idx], warn=False)
    assert scores["f1"] == pytest.approx(checkpoint["metrics"]["val/f1"], abs=1e-9)
    assert np.array_equal(probs.numpy(), np.load(run_dir / "val_outputs.npz")["probs"])


def test_the_run_folder_keeps_the_validation_outputs_of_the_selected_model(tiny_run, demo_root):
    """val_outputs.npz holds what best.pt's thresholds were tuned on, so nothing downstream re-runs inference."""

    config, result = tiny_run
    run_dir = result["run_dir"]
    saved = np.load(run_dir / "val_outputs.npz")
    split = json.loads((run_dir / "split.json").read_text())
    assert list(saved["stems"]) == split["val"] and int(saved["epoch"]) == result["best_epoch"]
    thresholds = ThresholdResult.from_dict(json.loads((run_dir / "thresholds.json").read_text()))
    scores = leaderboard.leaderboard_scores(thresholds.apply(saved["probs"]), saved["targets"], warn=False)
    assert scores["f1"] == pytest.approx(result["best"]["val/f1"], abs=1e-9)
    assert leaderboard.mean_average_precision(saved["probs"], saved["targets"]) == pytest.approx(result["best"]["val/map"])
    val = tables.validation_outputs(run_dir)
    assert np.array_equal(val["probs"], saved["probs"]) and val["epoch"] == result["best_epoch"]
    assert [val["source"].stems[i] for i in val["val_idx"]] == split["val"]
    np.testing.assert_array_equal(val["thresholds"].class_thresholds, result["thresholds"].class_thresholds)


def test_ema_weights_are_the_ones_evaluated_and_loaded(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), ema_decay=0.9, class_graphs=True,
                          **{**TINY, "epochs": 1})
    result = fit.fit(config)
    checkpoint = RunDir(result["run_dir"]).load_checkpoint("best")
    model, _, _ = predict.load_run(result["run_dir"])
    ema_weights = checkpoint["ema"]["module"]
    assert checkpoint["ema"]["updates"] == result["history"][0]["epoch"] * (72 // 16)  # one per step
    assert all(torch.equal(value, ema_weights[key]) for key, value in model.state_dict().items())
    assert not all(torch.equal(checkpoint["model"][key], ema_weights[key]) for key in ema_weights)
    assert any((result["run_dir"] / "tb").glob("Class Metrics_person_Train F1 vs Test F1*"))


def test_early_stopping_when_the_selected_metric_stalls(demo_root, tmp_path):
    # Head only (frozen backbone in eval mode) at a learning rate of 1e-12: the tuned F1 cannot move.
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), patience=1, freeze_epochs=4,
                          **{**TINY, "epochs": 4, "lr": 1e-12})
    result = fit.fit(config)
    assert result["status"] == "early_stopped"
    assert [row["epoch"] for row in result["history"]] == [1, 2] and result["best_epoch"] == 1
    assert json.loads((result["run_dir"] / "summary.json").read_text())["status"] == "early_stopped"


def test_freeze_then_unfreeze_and_parameter_groups(demo_root, tmp_path):
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), freeze_epochs=1, unfreeze_stages=2,
                          backbone_lr_mult=0.1, **{**TINY, "epochs": 2})
    runtime.seed_everything(config.seed)
    initial = recipe.build_net(config)  # fit seeds the same way before building its network
    result = fit.fit(config, stop_after_epochs=1)
    after_head_phase = RunDir(result["run_dir"]).load_checkpoint("last")
    weights = after_head_phase["model"]
    initial_weights = initial.state_dict()
    stage_keys = [key for key in weights if key.startswith("stages.")]
    assert stage_keys and all(torch.equal(weights[key], initial_weights[key]) for key in stage_keys)  # BN stats too
    assert not torch.equal(weights["head.1.weight"], initial_weights["head.1.weight"])
    # Optimiser: backbone groups at lr x backbone_lr_mult (OneCycle's max_lr), head groups at lr.
    groups = {g["name"]: g for g in after_head_phase["optimizer"]["param_groups"]}
    assert groups["head_decay"]["max_lr"] == pytest.approx(config.lr)
    assert groups["backbone_decay"]["max_lr"] == pytest.approx(config.lr * 0.1)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    # Second epoch: the last 2 of 5 stages train, the first 3 stay as they were.
    fit.fit(resume=result["run_dir"])
    final_checkpoint = RunDir(result["run_dir"]).load_checkpoint("last")
    final = final_checkpoint["model"]
    # The unfreeze milestone starts a fresh one-cycle schedule over the remaining epoch (72 // 16 = 4 steps).
    assert recipe.steps_per_epoch(72, 16) == 4
    assert after_head_phase["scheduler"]["total_steps"] == 4 and final_checkpoint["scheduler"]["total_steps"] == 4
    assert final_checkpoint["scheduler"]["last_epoch"] == 4
    n_stages = len(initial.stages)
    for index in range(n_stages):
        keys = [key for key in final if key.startswith(f"stages.{index}.")]
        changed = any(not torch.equal(final[key], initial_weights[key]) for key in keys)
        assert changed == (index >= n_stages - 2), index
    net = recipe.build_net(config)
    assert recipe.set_trainable(net, config, epoch=0) == "head only"
    assert sum(any(p.requires_grad for p in stage.parameters()) for stage in net.stages) == 0
    recipe.set_trainable(net, config, epoch=1)
    assert sum(any(p.requires_grad for p in stage.parameters()) for stage in net.stages) == 2


def test_missing_pretrained_weights_stop_fit_and_the_cli(demo_root, tmp_path, monkeypatch):
    empty_hub = tmp_path / "torch-home"
    empty_hub.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty_hub))

    def offline(url, dst, *args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out_dir = tmp_path / "runs"
    config = Config(data_root=str(demo_root), out_dir=str(out_dir), **{**TINY, "pretrained": True})
    with pytest.raises(networks.PretrainedWeightsUnavailable, match="shufflenetv2_x0.5"):
        fit.fit(config)
    assert not out_dir.exists() or not any(out_dir.iterdir())  # no run folder, no training from random weights

    # The CLI in a fresh process: weights missing and the download failing fast (a dead proxy).
    env = _env(TORCH_HOME=str(empty_hub), HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", "loops", "train", "--data-root", str(demo_root), "--out-dir",
                           str(out_dir), "--model", "shufflenet_v2_x0_5", "--epochs", "1", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Pretrained ImageNet weights" in proc.stderr and "pretrained=False" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_cli_train_then_predict_writes_valid_json(demo_root, tmp_path):
    env = _env()
    out_dir = tmp_path / "runs"
    train = subprocess.run([sys.executable, "-m", "loops", "train", "--data-root", str(demo_root), "--preset", "demo",
                            "--epochs", "1", "--image-size", "32", "--max-train-images", "64", "--out-dir", str(out_dir),
                            "--no-progress", "--num-workers", "0"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    run_dir = Path(train.stdout.strip().splitlines()[-1])
    assert run_dir.parent == out_dir and (run_dir / "best.pt").is_file()
    assert json.loads((run_dir / "config.json").read_text())["image_size"] == 32
    out_json = tmp_path / "predictions.json"
    pred = subprocess.run([sys.executable, "-m", "loops", "predict", "--run", str(run_dir), "--data-root",
                           str(demo_root), "--out", str(out_json), "--no-progress", "--num-workers", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr
    predictions = submission.load_and_validate(out_json, demo_root)
    assert len(predictions) == len(data.COCOTestImageDataset(course.course_dirs(demo_root)["test_images"]))
    assert pred.stdout.strip().splitlines()[-1] == str(out_json)


def test_gpu_input_path_trains_on_cpu_with_the_image_cache(demo_root, tmp_path, capsys):
    """The CUDA input path (cached JPEG bytes, batched decode + augmentation in the main process) is the same
    code on any device: forced here on the CPU, it trains, caches the images once and reuses the cache file."""
    config = Config(data_root=str(demo_root), out_dir=str(tmp_path), loader="gpu", image_cache="decoded",
                          **{**TINY, "epochs": 1, "deterministic": False})
    first = fit.fit(config)
    assert first["status"] == "finished" and np.isfinite(first["best"]["val/loss"])
    assert "gpu path (main process, decoded cache" in capsys.readouterr().out
    cache_files = list((tmp_path / "image-cache").glob("*.pt"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns
    fit.fit(config)
    assert cache_files[0].stat().st_mtime_ns == stamp, "a matching cache file must be reused, not rebuilt"

