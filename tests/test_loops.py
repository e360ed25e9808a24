"""Tests of the training engine (loops.py): configuration, course loops, fit/resume/checkpoints, CLI.

The end-to-end tests train small networks on the synthetic demo data on the CPU; they share one
session-scoped dataset and one session-scoped run to keep the whole file to a few CPU minutes.
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dataset
import loops
import metrics
import models

ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast recipe for the mechanics tests (resume, checkpoints, freezing): what they check does not need
# a model that learns well, only one that runs the same code paths.
TINY = dict(model="shufflenet_v2_x0_5", pretrained=False, image_size=32, batch_size=16, epochs=3, lr=3e-3,
            max_train_images=96, val_fraction=0.25, num_workers=0, progress=False, deterministic=True,
            head_dropout=0.1)


pytestmark = pytest.mark.filterwarnings("ignore::metrics.MissingClassWarning")  # small splits miss classes


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (conftest's one_thread): the resume test compares bit for bit."""


def _env(**extra):
    """Environment of a CLI subprocess: this checkout importable, one thread (see _one_thread)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="session")
def learn_root(tmp_path_factory):
    """A synthetic dataset big enough for a 10 % validation split to be a meaningful score."""
    import synthetic

    return synthetic.make_demo_dataset(tmp_path_factory.mktemp("learn") / "ms-coco", n_train=600, n_test=40,
                                       seed=1, long_side=96)


@pytest.fixture(scope="module")
def tiny_run(_one_thread, demo_root, tmp_path_factory):
    """One uninterrupted TINY run (3 epochs) shared by the resume and checkpoint tests.

    It depends on _one_thread explicitly: CPU results differ in the last bits between thread counts, and
    the resume test compares bit for bit."""
    out_dir = tmp_path_factory.mktemp("runs")
    config = loops.Config(data_root=str(demo_root), out_dir=str(out_dir), **TINY)
    return config, loops.fit(config)


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
def test_config_round_trips_and_rejects_unknown_keys():
    config = loops.config_from_preset("demo", epochs=3, lr=0.5)
    assert config.epochs == 3 and config.lr == 0.5  # explicit values beat the preset
    assert config.model == loops.PRESETS["demo"]["model"]
    assert loops.Config.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(ValueError, match="learning_rate"):
        loops.Config.from_dict({**config.to_dict(), "learning_rate": 0.1})
    with pytest.raises(ValueError, match="select_metric"):
        loops.Config(select_metric="accuracy").validate()
    with pytest.raises(ValueError, match="pos_weight"):
        loops.Config(loss="asl", pos_weight=True).validate()
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        loops.config_from_preset("nope")
    assert loops.config_from_preset("shufflenet") == loops.Config()  # the defaults are the shufflenet recipe


def test_every_preset_is_a_valid_documented_config():
    assert set(loops.PRESETS) == set(loops.PRESET_DESCRIPTIONS)
    for name in loops.PRESETS:
        assert loops.config_from_preset(name).validate()
    assert {"shufflenet", "demo", "cpu"} <= set(loops.PRESETS)


def test_cli_flags_mirror_config_and_override_the_preset(capsys):
    parser = loops.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(loops.Config):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    assert "(default: 0.001)" in help_text and "(default: shufflenet_v2_x1_0)" in help_text

    args = parser.parse_args(["train", "--preset", "demo", "--epochs", "2", "--no-stratify", "--image-size", "48",
                              "--unfreeze-stages", "none"])
    config = loops.config_from_args(args)
    assert (config.epochs, config.stratify, config.image_size, config.unfreeze_stages) == (2, False, 48, None)
    assert config.model == loops.PRESETS["demo"]["model"]  # not given: from the preset
    assert loops.config_from_args(parser.parse_args(["train"])) == loops.Config()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--loss", "focal"])  # choices come from the Config field


# ------------------------------------------------------------------------------------------------
# The course's functions
# ------------------------------------------------------------------------------------------------
def _logit(p):
    return math.log(p / (1 - p))


def test_validation_loop_thresholds_probabilities_with_the_leaderboard_metric():
    # The "network" is the identity: the inputs are the logits. Probabilities, 3 images x 3 classes:
    probs = torch.tensor([[0.60, 0.20, 0.90],
                          [0.55, 0.70, 0.10],
                          [0.30, 0.52, 0.40]])
    targets = torch.tensor([[1., 0., 1.],
                            [0., 1., 0.],
                            [1., 1., 0.]])
    logits = torch.log(probs / (1 - probs))
    loader = DataLoader(TensorDataset(logits, targets), batch_size=2)
    results, class_results = loops.validation_loop(loader, nn.Identity(), nn.BCEWithLogitsLoss(), 3, "cpu",
                                                   multi_label=True, th_multi_label=0.5, class_metrics=True)
    # Predicted at p > 0.5: class 0 {img0, img1}: TP 1, FP 1, 2 positives -> P 1/2, R 1/2
    # class 1 {img1, img2}: TP 2, FP 0, 2 positives -> P 1, R 1;  class 2 {img0}: TP 1, 1 positive -> P 1, R 1
    # weights 1/n_c normalised: (1/2, 1/2, 1) / 2 = (0.25, 0.25, 0.5)
    precision = 0.25 * 0.5 + 0.25 * 1 + 0.5 * 1
    recall = precision
    assert results["precision"] == pytest.approx(precision)
    assert results["recall"] == pytest.approx(recall)
    assert results["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert results["accuracy"] == pytest.approx(4 / 5)  # TP / positives
    assert results["loss"] == pytest.approx(nn.BCEWithLogitsLoss()(logits, targets).item(), rel=1e-5)
    assert [round(c["f1"], 6) for c in class_results] == [0.5, 1.0, 1.0]
    # Thresholding the logits at 0.5 instead (the course skeleton's habit) would drop img0/class 0 (logit 0.41),
    # img1/class 0 (0.20) and img2/class 1 (0.08): a different F1, so the value above proves probabilities.
    logit_preds = logits > 0.5
    assert metrics.leaderboard_scores(logit_preds, targets, warn=False)["f1"] != pytest.approx(results["f1"])


def test_validation_loop_single_label_and_one_hot():
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.2], [0.1, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)
    results = loops.validation_loop(loader, nn.Identity(), nn.CrossEntropyLoss(), 3, "cpu")
    assert results["accuracy"] == pytest.approx(0.5)
    one_hot_loader = DataLoader(TensorDataset(logits, torch.eye(3)[labels]), batch_size=3)
    same = loops.validation_loop(one_hot_loader, nn.Identity(), nn.CrossEntropyLoss(), 3, "cpu", one_hot=True)
    assert same["accuracy"] == results["accuracy"] and same["f1"] == pytest.approx(results["f1"])


def test_train_loop_returns_grouped_minibatch_losses_and_learns():
    torch.manual_seed(0)
    inputs = torch.randn(64, 8)
    targets = (inputs[:, :4] > 0).float()  # 4 labels, each readable from one input
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=8)  # 8 batches
    net = nn.Linear(8, 4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    criterion = nn.BCEWithLogitsLoss()
    before = loops.validation_loop(loader, net, criterion, 4, "cpu", multi_label=True)
    assert loops.train_loop(loader, net, criterion, optimizer, "cpu") is None
    losses = loops.train_loop(loader, net, criterion, optimizer, "cpu", mbatch_loss_group=3)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)  # 8 batches -> 2 full groups of 3
    for _ in range(10):
        loops.train_loop(loader, net, criterion, optimizer, "cpu")
    after = loops.validation_loop(loader, net, criterion, 4, "cpu", multi_label=True)
    assert after["loss"] < 0.6 * before["loss"] and after["f1"] > 0.9


class _RecordingWriter:
    def __init__(self):
        self.scalars, self.groups = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_scalars(self, tag, values, step):
        self.groups.append((tag, values, step))

    def flush(self):
        pass


def test_update_graphs_writes_the_course_graphs():
    writer = _RecordingWriter()
    train = {"loss": 1.0, "f1": 0.1, "precision": 0.2, "recall": 0.3, "accuracy": 0.4}
    test = {"loss": 2.0, "f1": 0.5, "precision": 0.6, "recall": 0.7, "accuracy": 0.8}
    classes = [{"f1": 0.1, "precision": 0.2, "recall": 0.3}] * 2
    loops.update_graphs(writer, 2, train, test, classes, classes, class_names=["cat", "dog"],
                        mbatch_group=5, mbatch_count=10, mbatch_losses=[0.9, 0.8])
    tags = {tag: (values, step) for tag, values, step in writer.groups}
    assert tags["Losses/Train Loss vs Test Loss"] == ({"Train Loss": 1.0, "Test Loss": 2.0}, 30)
    assert tags["Metrics/Train F1 vs Test F1"][0] == {"Train F1": 0.1, "Test F1": 0.5}
    for tag in ("Metrics/Train Precision vs Test Precision", "Metrics/Train Recall vs Test Recall",
                "Metrics/Train Accuracy vs Test Accuracy", "Class Metrics/dog/Train Recall vs Test Recall"):
        assert tag in tags
    assert [step for _, _, step in writer.scalars] == [25, 30]


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def test_save_checkpoint_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "ck.pt"
    loops.save_checkpoint(path, {"a": torch.arange(3), "rng": np.random.get_state()})
    loops.save_checkpoint(path, {"a": torch.arange(4)})
    assert torch.equal(loops.load_checkpoint(path)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        loops.save_checkpoint(path, {"a": Boom()})
    assert torch.equal(loops.load_checkpoint(path)["a"], torch.arange(4))  # the old file survived
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    first, second = loops.EpochShuffleSampler(50, seed=3), loops.EpochShuffleSampler(50, seed=3)
    first.set_epoch(0)
    list(first)
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second) and sorted(first) == list(range(50))
    second.set_epoch(5)
    assert list(first) != list(second)


def test_ema_ramps_up_and_averages():
    net = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(net.weight)
    ema = loops.ModelEma(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # decay min(0.9, 2/11)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 1 - 2 / 11))
    state = ema.state_dict()
    other = loops.ModelEma(net, decay=0.9)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)
    ema.update(net)  # decay min(0.9, 3/12) = 0.25: 0.25 * 9/11 + 0.75 * 1
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.25 * 9 / 11 + 0.75))


def test_gradient_clipping_and_flip_tta():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    images, targets = torch.randn(8, 3, 6, 6), torch.ones(8, 2)
    loader = DataLoader(TensorDataset(images, targets), batch_size=8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the gradients stay those of these weights
    result = loops.train_one_epoch(net, loader, nn.BCEWithLogitsLoss(), optimizer, "cpu", grad_clip=1e-3,
                                   progress=False, collect_probs=True)
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert grad_norm == pytest.approx(1e-3, rel=1e-4)  # the unclipped norm is far larger
    assert result["steps"] == 1 and result["probs"].shape == (8, 2)
    with torch.no_grad():
        expected = (torch.sigmoid(net(images)) + torch.sigmoid(net(images.flip(-1)))) / 2
    out = loops.evaluate(net, loader, "cpu", tta_hflip=True, progress=False)
    torch.testing.assert_close(out["probs"], expected)
    assert math.isnan(out["loss"])  # no criterion given


# ------------------------------------------------------------------------------------------------
# fit, resume, checkpoints
# ------------------------------------------------------------------------------------------------
def test_demo_preset_learns_the_synthetic_data(learn_root, tmp_path):
    config = loops.config_from_preset("demo", data_root=str(learn_root), out_dir=str(tmp_path), progress=False,
                                      num_workers=0)
    result = loops.fit(config)
    history = result["history"]
    # Chance: a network that ignores the image and outputs the training class rates, thresholds tuned the
    # same way on the same validation split.
    full = dataset.COCOTrainImageDataset(*list(dataset.course_dirs(learn_root).values())[:2])
    train_idx, val_idx = dataset.split_train_val(full.targets, config.val_fraction, config.split_seed, config.stratify)
    prior = np.broadcast_to(full.targets[train_idx].mean(axis=0), full.targets[val_idx].shape)
    chance = metrics.leaderboard_scores(metrics.tune_thresholds(prior, full.targets[val_idx]).apply(prior),
                                        full.targets[val_idx], warn=False)["f1"]
    best = result["best"]
    print(f"demo preset: chance F1 {chance:.3f}, best val F1 {best['val/f1']:.3f}, val loss "
          f"{history[0]['val/loss']:.2f} -> {history[-1]['val/loss']:.2f}")
    # Measured: chance 0.02, best F1 ~0.34, val loss 7.1 -> 3.7, train loss 5.5 -> 0.7, mAP ~0.5.
    assert chance < 0.05
    assert best["val/f1"] > max(0.15, 5 * chance)  # margin for other CPUs' rounding
    assert history[-1]["val/loss"] < 0.75 * history[0]["val/loss"]
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
    stopped = loops.fit(config, stop_after_epochs=1)
    assert stopped["status"] == "stopped" and len(stopped["history"]) == 1
    assert loops.load_checkpoint(stopped["run_dir"] / "last.pt")["epoch"] == 1
    resumed = loops.fit(resume=stopped["run_dir"])
    assert resumed["status"] == "finished" and resumed["run_dir"] == stopped["run_dir"]
    assert _same_rows(resumed["history"], full_result["history"])
    assert resumed["best_epoch"] == full_result["best_epoch"]
    uninterrupted = loops.load_checkpoint(full_result["run_dir"] / "last.pt")["model"]
    continued = loops.load_checkpoint(resumed["run_dir"] / "last.pt")["model"]
    assert all(torch.equal(uninterrupted[key], continued[key]) for key in uninterrupted)
    assert len(loops._read_csv(resumed["run_dir"] / "metrics.csv")) == config.epochs
    with pytest.raises(ValueError, match="lr"):
        loops.fit(config.replace(lr=1.0), resume=stopped["run_dir"])


def test_ctrl_c_keeps_the_last_completed_epoch_and_resumes(tiny_run, tmp_path, monkeypatch, capsys):
    config, full_result = tiny_run
    real_evaluate, calls = loops.evaluate, []

    def interrupted_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during epoch 2
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loops, "evaluate", interrupted_evaluate)
    with pytest.raises(KeyboardInterrupt):
        loops.fit(config.replace(out_dir=str(tmp_path)))
    monkeypatch.setattr(loops, "evaluate", real_evaluate)
    (run_dir,) = tmp_path.iterdir()
    assert "resume with:  python -m loops train --resume" in capsys.readouterr().err
    assert loops.load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert not (run_dir / "summary.json").exists()
    resumed = loops.fit(resume=run_dir)
    assert _same_rows(resumed["history"], full_result["history"])


def test_checkpoint_restores_model_thresholds_and_config(tiny_run, demo_root):
    config, result = tiny_run
    run_dir = result["run_dir"]
    checkpoint = loops.load_checkpoint(run_dir / "best.pt")
    expected_keys = {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "global_step", "config",
                     "thresholds", "class_names", "metrics", "rng", "split"}
    assert expected_keys <= set(checkpoint)
    assert checkpoint["epoch"] == result["best_epoch"]
    model, loaded_config, thresholds = loops.load_run(run_dir)
    assert loaded_config == config
    assert json.loads((run_dir / "config.json").read_text()) == dataclasses.asdict(config)
    np.testing.assert_array_equal(thresholds.class_thresholds, result["thresholds"].class_thresholds)
    assert thresholds.to_dict() == checkpoint["thresholds"]
    assert not model.training
    # The loaded model reproduces the validation probabilities that the thresholds were tuned on.
    full = dataset.COCOTrainImageDataset(*list(dataset.course_dirs(demo_root).values())[:2],
                                         max_images=config.max_train_images)
    _, val_idx = dataset.load_split(run_dir / "split.json", full.stems)
    eval_tf = dataset.EvalPreset(image_size=config.image_size, mean=model.spec.mean, std=model.spec.std)
    loader = DataLoader(dataset.TransformSubset(full, val_idx, eval_tf), batch_size=32)
    probs = loops.evaluate(model, loader, "cpu", progress=False)["probs"]
    scores = metrics.leaderboard_scores(thresholds.apply(probs), full.targets[val_idx], warn=False)
    assert scores["f1"] == pytest.approx(checkpoint["metrics"]["val/f1"], abs=1e-9)


def test_ema_weights_are_the_ones_evaluated_and_loaded(demo_root, tmp_path):
    config = loops.Config(data_root=str(demo_root), out_dir=str(tmp_path), ema_decay=0.9, class_graphs=True,
                          **{**TINY, "epochs": 1})
    result = loops.fit(config)
    checkpoint = loops.load_checkpoint(result["run_dir"] / "best.pt")
    model, _, _ = loops.load_run(result["run_dir"])
    ema_weights = checkpoint["ema"]["module"]
    assert checkpoint["ema"]["updates"] == result["history"][0]["epoch"] * (72 // 16)  # one per step
    assert all(torch.equal(value, ema_weights[key]) for key, value in model.state_dict().items())
    assert not all(torch.equal(checkpoint["model"][key], ema_weights[key]) for key in ema_weights)
    assert any((result["run_dir"] / "tb").glob("Class Metrics_person_Train F1 vs Test F1*"))


def test_early_stopping_when_the_selected_metric_stalls(demo_root, tmp_path):
    # Head only (frozen backbone in eval mode) at a learning rate of 1e-12: the tuned F1 cannot move.
    config = loops.Config(data_root=str(demo_root), out_dir=str(tmp_path), patience=1, freeze_epochs=4,
                          **{**TINY, "epochs": 4, "lr": 1e-12})
    result = loops.fit(config)
    assert result["status"] == "early_stopped"
    assert [row["epoch"] for row in result["history"]] == [1, 2] and result["best_epoch"] == 1
    assert json.loads((result["run_dir"] / "summary.json").read_text())["status"] == "early_stopped"


def test_freeze_then_unfreeze_and_parameter_groups(demo_root, tmp_path):
    config = loops.Config(data_root=str(demo_root), out_dir=str(tmp_path), freeze_epochs=1, unfreeze_stages=2,
                          backbone_lr_mult=0.1, **{**TINY, "epochs": 2})
    loops.seed_everything(config.seed)
    initial = loops.build_net(config)  # fit seeds the same way before building its network
    result = loops.fit(config, stop_after_epochs=1)
    after_head_phase = loops.load_checkpoint(result["run_dir"] / "last.pt")
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
    loops.fit(resume=result["run_dir"])
    final_checkpoint = loops.load_checkpoint(result["run_dir"] / "last.pt")
    final = final_checkpoint["model"]
    # The unfreeze milestone starts a fresh one-cycle schedule over the remaining epoch (72 // 16 = 4 steps).
    assert loops.steps_per_epoch(72, 16) == 4
    assert after_head_phase["scheduler"]["total_steps"] == 4 and final_checkpoint["scheduler"]["total_steps"] == 4
    assert final_checkpoint["scheduler"]["last_epoch"] == 4
    n_stages = len(initial.stages)
    for index in range(n_stages):
        keys = [key for key in final if key.startswith(f"stages.{index}.")]
        changed = any(not torch.equal(final[key], initial_weights[key]) for key in keys)
        assert changed == (index >= n_stages - 2), index
    net = loops.build_net(config)
    assert loops.set_trainable(net, config, epoch=0) == "head only"
    assert models.trainable_stage_count(net) == 0
    loops.set_trainable(net, config, epoch=1)
    assert models.trainable_stage_count(net) == 2


def test_feature_cache_mode_trains_the_tail_and_predicts_with_the_full_model(demo_root, tmp_path):
    # amp=False: the cache in float32 (+ float16 storage), so the tolerances below hold on any CPU.
    config = loops.Config(data_root=str(demo_root), out_dir=str(tmp_path), cache_stages=3, cache_views=3,
                          amp=False, **{**TINY, "epochs": 2})
    loops.seed_everything(config.seed)
    initial = loops.build_net(config).state_dict()
    result = loops.fit(config)
    assert all(math.isfinite(row["val/loss"]) for row in result["history"])
    final = loops.load_checkpoint(result["run_dir"] / "last.pt")["model"]
    for key in final:
        if key.startswith(("stages.0.", "stages.1.", "stages.2.")):
            assert torch.equal(final[key], initial[key]), key  # cached stages never change
    assert not torch.equal(final["stages.4.0.weight"], initial["stages.4.0.weight"])
    # The full model on images gives the probabilities the cached tail gave on features (float16 cache).
    model, _, _ = loops.load_run(result["run_dir"], "last")
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


def test_missing_pretrained_weights_stop_fit_and_the_cli(demo_root, tmp_path, monkeypatch):
    empty_hub = tmp_path / "torch-home"
    empty_hub.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty_hub))

    def offline(url, dst, *args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out_dir = tmp_path / "runs"
    config = loops.Config(data_root=str(demo_root), out_dir=str(out_dir), **{**TINY, "pretrained": True})
    with pytest.raises(models.PretrainedWeightsUnavailable, match="shufflenetv2_x0.5"):
        loops.fit(config)
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
    predictions = metrics.load_and_validate(out_json, demo_root)
    assert len(predictions) == len(dataset.COCOTestImageDataset(dataset.course_dirs(demo_root)["test_images"]))
    assert pred.stdout.strip().splitlines()[-1] == str(out_json)


def test_gpu_input_path_trains_on_cpu_with_the_image_cache(demo_root, tmp_path, capsys):
    """The CUDA input path (cached JPEG bytes, batched decode + augmentation in the main process) is the same
    code on any device: forced here on the CPU, it trains, caches the images once and reuses the cache file."""
    config = loops.Config(data_root=str(demo_root), out_dir=str(tmp_path), loader="gpu", image_cache="decoded",
                          **{**TINY, "epochs": 1, "deterministic": False})
    first = loops.fit(config)
    assert first["status"] == "finished" and np.isfinite(first["best"]["val/loss"])
    assert "gpu path (main process, decoded cache" in capsys.readouterr().out
    cache_files = list((tmp_path / "image-cache").glob("*.pt"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns
    loops.fit(config)
    assert cache_files[0].stat().st_mtime_ns == stamp, "a matching cache file must be reused, not rebuilt"


def test_inference_settings_and_the_bf16_feature_cache(demo_root):
    """Forward-only passes use channels_last on the CPU, and bfloat16 only where the CPU has it natively;
    a cache made that way matches the float32 one closely enough to rank images alike."""
    cpu = torch.device("cpu")
    assert loops.inference_settings(cpu, enabled=False) == (None, True)
    native = loops.cpu_has_native_bf16()
    assert loops.inference_settings(cpu) == ((torch.bfloat16 if native else None), True)
    # pretrained: a random-init network's activations all but vanish in eval mode, and 0 == 0 in any precision
    net = loops.build_net(loops.Config(model="efficientnet_lite0")).eval()
    source = dataset.COCOTrainImageDataset(*list(dataset.course_dirs(demo_root).values())[:2], max_images=16)
    views = [dataset.EvalPreset(image_size=64, mean=net.spec.mean, std=net.spec.std)]
    common = dict(k=5, source=source, indices=np.arange(16), transforms=views, device=cpu, batch_size=8,
                  workers=0, seed=0, progress=False, desc="test")
    exact = loops._cache_features(net, amp=False, **common).float()
    fast = loops._cache_features(net, amp=True, **common).float()
    assert exact.shape == fast.shape == (1, 16, 1280, 2, 2)
    assert next(net.parameters()).is_contiguous(), "the network must be handed back in its memory format"
    if native:
        assert not torch.equal(exact, fast)  # bfloat16 really ran
    cos = torch.nn.functional.cosine_similarity(exact.flatten(1), fast.flatten(1), dim=1)
    assert cos.min() > 0.99


def test_avgmax_pool_config_doubles_the_head_input():
    config = loops.Config(model="efficientnet_lite0", pretrained=False, pool="avgmax")
    net = loops.build_net(config).eval()
    assert net.num_features == 2 * 1280 and net.head[-1].in_features == 2 * 1280
    with pytest.raises(ValueError, match="choose one of"):
        loops.Config(pool="max").validate()


def test_cross_fit_tunes_on_out_of_fold_probabilities_and_predict_uses_final(demo_root, tmp_path):
    config = loops.Config(data_root=str(demo_root), out_dir=str(tmp_path), model="efficientnet_lite0",
                          pretrained=False, image_size=32, cache_stages=5, cache_views=1, tta_hflip=True,
                          cross_fit_folds=3, **{k: v for k, v in TINY.items() if k not in ("model", "pretrained",
                                                                                           "image_size")})
    result = loops.fit(config)
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
    final_model, _, final_thresholds = loops.load_run(run_dir, "final")
    best_model, _, _ = loops.load_run(run_dir, "best")
    np.testing.assert_allclose(final_thresholds.class_thresholds, record["thresholds"]["class_thresholds"])
    assert not torch.equal(final_model.head[-1].weight, best_model.head[-1].weight)
    assert loops.resolve_checkpoint(run_dir) == "final"
    summary = loops.predict_run(run_dir, tmp_path / "p.json", progress=False)
    assert summary["checkpoint"] == "final.pt"
    with pytest.raises(ValueError, match="cross_fit_folds"):
        loops.fit(config.replace(cache_stages=3))
    with pytest.raises(ValueError, match="cross_fit_folds"):
        config.replace(cross_fit_folds=1).validate()
