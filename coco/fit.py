"""A training run from start to finish, and its folder: :func:`fit`, :func:`load_run`, :func:`predict_run`.

:func:`fit` reads as its steps: the data and its split, the model, the inputs (images, or a feature cache),
the loss, optimiser and schedule, a restored checkpoint when resuming, the epochs, and the finish. Each step is
a function of its own below.

The run folder is the interface: whatever the notebook, the reports and ``predict`` need from a run is written
there once, by :func:`fit`, through :class:`coco.run_dir.RunDir` (which lists its files), and read back, never
recomputed.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from coco import atomic, costs, course, data, exits, features, image_cache, leaderboard, loaders, networks, recipe
from coco.config import RESUME_MUTABLE, Config
from coco.engine import ModelEma, evaluate, train_one_epoch, update_graphs
from coco.run_dir import CSV_COLUMNS, RunDir
from coco.runtime import (
    amp_settings,
    derived_seed,
    determinism,
    hardware_info,
    inference_batch_size,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    uses_channels_last,
)
from coco.thresholds import ThresholdResult, tune_thresholds


# ----------------------------------------------------------------------------------------------------------
# fit, step by step
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What the epochs read: a training loader (``set_epoch`` before each epoch), one validation loader per
    evaluation view (their probabilities are averaged), the module that trains, and how it is evaluated."""

    train_loader: Any
    val_loaders: list
    train_module: nn.Module
    channels_last: bool
    tta_hflip: bool  # flip TTA inside evaluate (image inputs; a feature cache holds the mirror view instead)
    description: str
    store: features.FeatureStore | None = None  # the feature cache, when stages[:cache_stages] are cached
    cache_stages: int = 0
    input_path: loaders.InputPath = field(default_factory=lambda: loaders.InputPath("workers"))  # summary.json

    def eval_module(self, net: nn.Module) -> nn.Module:
        return features.Tail(net, self.cache_stages) if self.store is not None else net


@dataclass
class Training:
    """The loss, optimiser, schedule and precision of a run."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    peak_lrs: list
    scheduler: Any
    scaler: Any
    amp_dtype: Any
    ema: ModelEma | None


@dataclass
class Progress:
    """Where a run stands: finished epochs, the selection of the best one, optimiser steps taken."""

    start_epoch: int = 0
    history: list = field(default_factory=list)
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_thresholds: dict | None = None
    bad_epochs: int = 0

    def selection(self, metric: str) -> dict:
        return {"metric": metric, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "best_thresholds": self.best_thresholds}


def _refuse_finished(run_dir: RunDir) -> None:
    """A run that ended (its summary says finished or early_stopped) is never trained again by resuming: that
    would replace its best.pt, metrics and thresholds (without its last.pt, from epoch 1)."""
    summary = run_dir.summary() or {}
    if summary.get("status") in ("finished", "early_stopped"):
        raise ValueError(f"{run_dir} is a finished run ({summary['status']} after {summary.get('epochs_done')} of "
                         f"{summary.get('epochs')} epochs): --resume continues only an interrupted run, and training "
                         f"this one again would replace its best.pt; predict with it (python -m loops predict --run "
                         f"{run_dir} --out predictions.json), or train a new run (python -m loops train ..., e.g. "
                         "with more --epochs)")


def _resume(run_dir: RunDir, config: Config | None) -> tuple[dict | None, Config]:
    """(the checkpoint of the last finished epoch, or None before the first one; the config to continue with).
    Only the settings in ``config.RESUME_MUTABLE`` may differ from the saved ones; a finished run is refused."""
    _refuse_finished(run_dir)
    checkpoint = run_dir.load_checkpoint("last") if run_dir.has_checkpoint("last") else None
    saved = Config.from_dict(checkpoint["config"] if checkpoint is not None else run_dir.saved_config())
    if config is None:
        return checkpoint, saved
    changed = [f.name for f in fields(Config)
               if f.name not in RESUME_MUTABLE and getattr(config, f.name) != getattr(saved, f.name)]
    if changed:
        details = ", ".join(f"{name}: {getattr(saved, name)!r} -> {getattr(config, name)!r}" for name in changed)
        raise ValueError(f"cannot resume {run_dir} with a different configuration ({details}); only "
                         f"{', '.join(RESUME_MUTABLE)} may change")
    return checkpoint, config


def _load_data(config: Config) -> tuple[Config, data.COCOTrainImageDataset]:
    """The labelled images; the config records where they were found, so resume and predict work anywhere."""
    data_root = course.find_data_root(config.data_root)
    if data_root is None:
        raise FileNotFoundError("no course data: pass data_root (--data-root), set $MSCOCO_ROOT, or put the "
                                "data in ./ms-coco (python -m coco.synthetic ms-coco makes a demo dataset)")
    config = config.replace(data_root=str(data_root))
    return config, labelled_images(config, check_images=config.check_images)


def labelled_images(config: Config, check_images: bool = False) -> data.COCOTrainImageDataset:
    """The labelled images a run with ``config`` trains on (its data root, ``max_train_images`` and
    ``skip_bad_files``), decoding every one first with ``check_images``."""
    dirs = course.course_dirs(config.data_root)
    skip = config.skip_bad_files
    return data.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], max_images=config.max_train_images,
                                         skip_unmatched=skip, skip_empty=skip, check_images=check_images,
                                         skip_unreadable=skip, progress=config.progress)


def _split(config: Config, full, run_dir: RunDir | None) -> tuple[np.ndarray, np.ndarray]:
    """The run's training and validation rows: a new seeded split, or the resumed run's."""
    if run_dir is not None:
        return run_dir.split(full.stems)
    train_idx, val_idx = course.split_train_val(full.targets, config.val_fraction, config.split_seed, config.stratify)
    if len(train_idx) < 2:  # BatchNorm cannot train on a batch of one image
        raise ValueError(f"{len(full)} labelled image(s) leave {len(train_idx)} for training at val_fraction "
                         f"{config.val_fraction}: a run needs at least 2 (more images, or a smaller val_fraction)")
    return train_idx, val_idx


def _estimate(config: Config, net, full, train_idx, val_idx, device) -> costs.Estimate:
    """Time and memory of this run on this machine, printed; a run that cannot fit stops here, before its folder
    exists (costs.ResourceError)."""
    test_dir = course.course_dirs(config.data_root)["test_images"]
    n_test = course.count_images(test_dir)
    estimate = costs.estimate(config, net, full, n_train=len(train_idx), n_val=len(val_idx), n_test=n_test,
                              device=device, out_dir=config.out_dir)
    print(f"estimate for this run on this machine ({device}, {torch.get_num_threads()} threads):\n"
          f"{estimate.describe()}", flush=True)
    costs.check(estimate, config)
    return estimate


def estimate_run(config: Config) -> costs.Estimate:
    """What :func:`fit` would estimate for ``config`` (time per phase, memory, disk), without running anything:
    the notebook shows it before it starts a long run. Raises ``costs.ResourceError`` like fit would."""
    config = config.validate()
    device = resolve_device(config.device)
    config, full = _load_data(config)
    train_idx, val_idx = _split(config, full, None)
    return _estimate(config, recipe.build_net(config), full, train_idx, val_idx, device)


def _new_folder(config: Config, full, train_idx, val_idx) -> RunDir:
    """A new run's folder with its config and split."""
    run_dir = RunDir.create(config)
    run_dir.write_config(config)
    run_dir.write_split(full.stems, train_idx, val_idx, data_root=config.data_root, seed=config.split_seed,
                        val_fraction=config.val_fraction)
    return run_dir


def _cached_inputs(config: Config, net, full, train_idx, val_idx, run_dir: RunDir, device) -> Inputs:
    """Inputs of a feature-cache run: ``stages[:k]`` computed once per view of every labelled image into the run
    folder (resumable), the rest of the network trains on the cache."""
    k = config.cache_stages
    if k > len(net.stages):  # k == len(stages): the whole backbone is cached and only the head trains
        raise ValueError(f"Config.cache_stages={k} exceeds the {len(net.stages)} stages of {config.model}")
    views, train_views, eval_views = features.cache_views(config)
    _, eval_tf = recipe.presets_for(config)
    shape = (len(views), len(full), *features.feature_shape(net, k, eval_tf.image_size, device))
    store = features.FeatureStore(run_dir.features_path, features.fingerprint(config, full.stems, device), shape)
    what = "pooled features" if features.pooled(net, k) else f"stages[:{k}] maps"
    print(f"feature cache: {what} {shape[2:]} x {len(views)} views of {len(full):,} images, "
          f"{store.nbytes / 2**20:,.0f} MiB on disk in {store.folder}", flush=True)
    features.extract(net, k, full, np.arange(len(full)), views, store, device=device,
                     batch_size=inference_batch_size(device, eval_tf.image_size, config.batch_size),
                     num_workers=config.num_workers, amp=config.amp,
                     seed=config.seed, progress=config.progress, desc="caching features")
    train_set = features.FeatureBank(store, train_idx, full.targets[train_idx], views=train_views)
    val_sets = [features.FeatureBank(store, val_idx, full.targets[val_idx], view=view) for view in eval_views]
    # read from the memory-mapped store in this process: no workers needed
    train_loader = loaders.make_loader(train_set, batch_size=config.batch_size, device=device, train=True,
                                        drop_last=recipe.drop_last(len(train_set), config.batch_size),
                                        seed=config.seed, mode="workers", num_workers=0,
                                        collate_fn=features.whole_batch)
    val_loaders = [loaders.make_loader(val_set, batch_size=config.batch_size * 2, device=device, train=False,
                                        mode="workers", num_workers=0, collate_fn=features.whole_batch)
                   for val_set in val_sets]
    return Inputs(train_loader, val_loaders, features.Tail(net, k), tta_hflip=False,
                  channels_last=uses_channels_last(device, config.channels_last),  # maps; vectors stay as they are
                  description="DataLoader over the feature cache", store=store, cache_stages=k)


def _image_inputs(config: Config, full, train_idx, val_idx, device) -> Inputs:
    """Inputs of a run on images: the gpu path (cached JPEG bytes decoded and augmented on the device) on
    CUDA by default, with DataLoader workers behind it should it fail (loaders.FallbackLoader); DataLoader
    workers elsewhere."""
    gpu_path = config.loader == "gpu" or (config.loader == "auto" and device.type == "cuda")
    cache_mode = config.image_cache
    if cache_mode == "auto" or (cache_mode == "none" and gpu_path):  # the gpu path needs the images cached
        cache_mode = "jpeg" if gpu_path else "none"
    source = full
    if cache_mode != "none":
        # One file per data folder and mode, reused by later runs (a stale one is rebuilt by pipeline).
        cache_file = Path(config.out_dir) / "image-cache" / f"{full.img_dir.resolve().parents[1].name}-{cache_mode}.pt"
        source = image_cache.cache_dataset(full, cache_mode, path=cache_file, device=device)
    train_tf, eval_tf = recipe.presets_for(config)
    channels_last = uses_channels_last(device, config.channels_last)
    mode = "gpu" if gpu_path else "workers"
    train_set = data.TransformSubset(source, train_idx, train_tf)
    train_loader = loaders.make_loader(train_set, batch_size=config.batch_size, device=device, train=True,
                                        drop_last=recipe.drop_last(len(train_set), config.batch_size),
                                        seed=config.seed, mode=mode, num_workers=config.num_workers,
                                        channels_last=channels_last)
    val_loader = loaders.make_loader(data.TransformSubset(source, val_idx, eval_tf),
                                      batch_size=inference_batch_size(device, eval_tf.image_size, config.batch_size),
                                      device=device, train=False, mode=mode,
                                      num_workers=config.num_workers, channels_last=channels_last)
    description = loaders.loader_description(train_loader) if gpu_path else "DataLoader"
    path = loaders.InputPath(mode)
    train_loader, val_loader = (loaders.guarded(loader, path, config.num_workers)
                                for loader in (train_loader, val_loader))
    return Inputs(train_loader, [val_loader], None, channels_last=channels_last, tta_hflip=config.tta_hflip,
                  description=description, input_path=path)


def _inputs(config: Config, net, full, train_idx, val_idx, run_dir: RunDir, device) -> Inputs:
    if config.cross_fit_folds and (config.cache_stages != len(net.stages) or config.freeze_epochs
                                   or config.unfreeze_stages):
        raise ValueError(f"Config.cross_fit_folds={config.cross_fit_folds} trains heads only: it needs "
                         f"cache_stages={len(net.stages)} (the whole {config.model} backbone cached) and no "
                         f"freeze_epochs/unfreeze_stages; got cache_stages={config.cache_stages}")
    if config.cache_stages > 0:
        inputs = _cached_inputs(config, net, full, train_idx, val_idx, run_dir, device)
    else:
        inputs = _image_inputs(config, full, train_idx, val_idx, device)
        inputs.train_module = net
    print(f"input: {inputs.description}", flush=True)
    if config.compile:
        inputs.train_module = torch.compile(inputs.train_module)
    return inputs


def _training(config: Config, net, inputs: Inputs, train_targets, device, start_epoch: int) -> Training:
    criterion = recipe.build_criterion(config, train_targets).to(device)
    optimizer = recipe.build_optimizer(net, config)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    # The schedule of the last completed epoch's phase: a resumed run loads its saved state into it.
    scheduler = recipe.make_scheduler(optimizer, peak_lrs, config, len(inputs.train_loader), max(start_epoch - 1, 0))
    amp_dtype, scaler = amp_settings(device, config.amp)
    ema = ModelEma(net, config.ema_decay) if config.ema_decay > 0 else None
    return Training(criterion, optimizer, peak_lrs, scheduler, scaler, amp_dtype, ema)


def _restore(run_dir: RunDir, checkpoint, net, training: Training) -> Progress:
    """The state of the last finished epoch of a resumed run (a fresh Progress for a new run)."""
    if checkpoint is None:
        return Progress()
    net.load_state_dict(checkpoint["model"])
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    if training.scheduler is not None:
        training.scheduler.load_state_dict(checkpoint["scheduler"])
    if training.scaler is not None and checkpoint.get("scaler"):
        training.scaler.load_state_dict(checkpoint["scaler"])
    if training.ema is not None:
        training.ema.load_state_dict(checkpoint["ema"])
    set_rng_state(checkpoint["rng"])
    start_epoch = int(checkpoint["epoch"])
    selection = checkpoint["selection"]
    print(f"resuming after epoch {start_epoch}/{checkpoint['config']['epochs']}", flush=True)
    return Progress(start_epoch=start_epoch, global_step=int(checkpoint["global_step"]),
                    history=[row for row in run_dir.history() if row["epoch"] <= start_epoch],
                    best_score=selection["best_score"], best_epoch=selection["best_epoch"],
                    bad_epochs=selection["bad_epochs"], best_thresholds=selection["best_thresholds"])


def _score(row: Mapping, select_metric: str) -> float:
    value = {"f1": row["val/f1"], "map": row["val/map"], "loss": -row["val/loss"]}[select_metric]
    return value if math.isfinite(value) else -math.inf


def _validate(config: Config, net, inputs: Inputs, training: Training, device, desc: str):
    """(probabilities averaged over the evaluation views, targets, loss) of the validation split."""
    eval_net = training.ema.module if training.ema is not None else net
    module = inputs.eval_module(eval_net)
    outs = [evaluate(module, loader, device, criterion=training.criterion, amp_dtype=training.amp_dtype,
                     channels_last=inputs.channels_last, tta_hflip=inputs.tta_hflip, progress=config.progress,
                     desc=desc)
            for loader in inputs.val_loaders]
    return torch.stack([out["probs"] for out in outs]).mean(dim=0), outs[0]["targets"], outs[0]["loss"]


def _epoch_row(epoch: int, train: Mapping, probs, val_targets, val_loss: float, thresholds, started: float):
    tuned = leaderboard.leaderboard_scores(thresholds.apply(probs), val_targets, warn=False)
    at_half = leaderboard.leaderboard_scores(probs > 0.5, val_targets, warn=False)
    train_at_half = leaderboard.leaderboard_scores(train["probs"] > 0.5, train["targets"], warn=False)
    row = {"epoch": epoch + 1, "lr": train["lr"], "train/loss": train["loss"], "train/f1@0.5": train_at_half["f1"],
           "val/loss": val_loss, "val/f1": tuned["f1"], "val/f1@0.5": at_half["f1"],
           "val/precision": tuned["precision"], "val/recall": tuned["recall"],
           "val/map": leaderboard.mean_average_precision(probs, val_targets), "val/accuracy": tuned["accuracy"],
           "time_s": time.perf_counter() - started}
    return row, train_at_half, at_half


def _log_epoch(writer, row, train, train_at_half, at_half, probs, val_targets, class_graphs: bool) -> None:
    """Namespaced scalars (train/loss, val/f1, ...) plus the course's graphs, where train and validation are
    both thresholded at 0.5 (comparable with each other; the tuned F1 is ``val/f1``)."""
    step = row["epoch"]
    for key in CSV_COLUMNS[1:]:
        writer.add_scalar(key, row[key], step)
    keys = ("f1", "precision", "recall", "accuracy")
    train_results = {"loss": row["train/loss"], **{key: train_at_half[key] for key in keys}}
    test_results = {"loss": row["val/loss"], **{key: at_half[key] for key in keys}}
    train_class = test_class = None
    if class_graphs:
        train_class = leaderboard.per_class_table(train["probs"], train["targets"], 0.5)
        test_class = leaderboard.per_class_table(probs, val_targets, 0.5)
    update_graphs(writer, step - 1, train_results, test_results, train_class, test_class)


def _checkpoint_state(config: Config, net, training: Training, progress: Progress, epoch: int, row, thresholds):
    return {
        "model": net.state_dict(), "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict() if training.scheduler is not None else None,
        "scaler": training.scaler.state_dict() if training.scaler is not None else None,
        "ema": training.ema.state_dict() if training.ema is not None else None,
        "epoch": epoch + 1, "global_step": progress.global_step, "config": config.to_dict(),
        "thresholds": thresholds.to_dict(), "class_names": list(course.CLASSES), "metrics": row,
        "rng": rng_state(), "selection": progress.selection(config.select_metric),
    }


def _epochs(config: Config, run_dir: RunDir, device, net, inputs: Inputs, training: Training, progress: Progress,
            val_stems, stop_after_epochs: int | None) -> str:
    """Train, validate, tune, log and checkpoint every remaining epoch; returns the run's status."""
    from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here

    writer = SummaryWriter(str(run_dir.tensorboard_path), purge_step=progress.start_epoch + 1 if progress.start_epoch else None)
    try:
        for epoch in range(progress.start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            seed_everything(derived_seed(config.seed, epoch))  # augmentation and dropout, independent of history
            inputs.train_loader.set_epoch(epoch)
            trains = recipe.set_trainable(net, config, epoch)
            if epoch > 0 and epoch == config.freeze_epochs:  # unfreeze milestone: a fresh cycle for the rest
                training.scheduler = recipe.make_scheduler(training.optimizer, training.peak_lrs, config,
                                                           len(inputs.train_loader), epoch)
            label = f"epoch {epoch + 1}/{config.epochs}"
            train = train_one_epoch(inputs.train_module, inputs.train_loader, training.criterion, training.optimizer,
                                    device, scheduler=training.scheduler, scaler=training.scaler,
                                    amp_dtype=training.amp_dtype, grad_clip=config.grad_clip, ema=training.ema,
                                    channels_last=inputs.channels_last, collect_probs=True,
                                    progress=config.progress, desc=f"{label} train")
            progress.global_step += train["steps"]
            probs, val_targets, val_loss = _validate(config, net, inputs, training, device, f"{label} val")
            thresholds = tune_thresholds(probs, val_targets, **config.tuning_options())
            row, train_at_half, at_half = _epoch_row(epoch, train, probs, val_targets, val_loss, thresholds,
                                                     epoch_start)
            progress.history.append(row)
            score = _score(row, config.select_metric)
            improved = score > progress.best_score
            if improved:
                progress.best_score, progress.best_epoch = score, epoch + 1
                progress.best_thresholds, progress.bad_epochs = thresholds.to_dict(), 0
            else:
                progress.bad_epochs += 1
            _log_epoch(writer, row, train, train_at_half, at_half, probs, val_targets, config.class_graphs)
            run_dir.write_history(progress.history)
            state = _checkpoint_state(config, net, training, progress, epoch, row, thresholds)
            if improved:
                run_dir.save_checkpoint("best", state)
                run_dir.write_best_outputs(thresholds, probs, val_targets, val_stems, epoch + 1)
            run_dir.save_checkpoint("last", state)
            tqdm.write(f"epoch {epoch + 1:3d}/{config.epochs}  {trains:<28s} lr {row['lr']:.2e}  "
                       f"train loss {row['train/loss']:.4f}  val loss {row['val/loss']:.4f}  "
                       f"F1 {row['val/f1']:.4f} (@0.5 {row['val/f1@0.5']:.4f})  mAP {row['val/map']:.4f}  "
                       f"{row['time_s']:.0f}s{'  *best' if improved else ''}", file=sys.stdout)
            if config.patience and progress.bad_epochs >= config.patience:
                print(f"early stop: {config.select_metric} did not improve for {progress.bad_epochs} epochs",
                      flush=True)
                return "early_stopped"
            if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs and epoch + 1 < config.epochs:
                return "stopped"
    finally:
        writer.close()
    return "finished"


def _finish(config: Config, run_dir: RunDir, device, net, inputs: Inputs, training: Training, progress: Progress,
            status: str, initial_state, full, started: float, phases: dict, estimate: costs.Estimate) -> dict:
    """Cross-fit (when asked and the run was not stopped early), write ``summary.json``, return the result."""
    cross_fit = None
    if config.cross_fit_folds and status != "stopped":
        phase_start = time.perf_counter()
        result = features.cross_fit(net, inputs.store, initial_state, training.criterion, full.targets, config, device)
        run_dir.save_checkpoint("final", {
            "model": result.final_net.state_dict(), "ema": None, "epoch": config.epochs, "config": config.to_dict(),
            "thresholds": result.thresholds.to_dict(), "class_names": list(course.CLASSES),
            "metrics": {key: value for key, value in result.record.items() if key != "thresholds"}})
        run_dir.write_cross_fit(result.record, result.oof, full.targets, full.stems, result.folds)
        cross_fit = result.record
        phases["cross_fit_s"] = time.perf_counter() - phase_start
    history = progress.history
    best_row = next((row for row in history if row["epoch"] == progress.best_epoch), None)
    summary = {"status": status, "epochs_done": len(history), "epochs": config.epochs,
               "select_metric": config.select_metric, "best_epoch": progress.best_epoch, "best": best_row,
               "last": history[-1] if history else None, "time_s": time.perf_counter() - started,
               "hardware": hardware_info(device), "model": config.model,
               "parameters": networks.count_parameters(net)["total"], "cross_fit": cross_fit, "phases": phases,
               "estimate": estimate.to_dict(), "input_path": inputs.input_path.record()}
    run_dir.write_summary(summary)
    if status == "stopped":
        print(f"stopped after epoch {len(history)}; resume with:  python -m loops train --resume {run_dir}", flush=True)
    thresholds = progress.best_thresholds
    return {"run_dir": run_dir.path, "status": status, "best_epoch": progress.best_epoch, "best": best_row,
            "thresholds": ThresholdResult.from_dict(thresholds) if thresholds else None,
            "history": history, "cross_fit": cross_fit}


def _warn_small_split(targets, val_idx) -> None:
    """Say so when the validation split is too small for its scores to mean much (they are printed anyway)."""
    val_targets = targets[val_idx] > 0
    present = int((targets > 0).any(axis=0).sum())
    covered = int(val_targets.any(axis=0).sum())
    if len(val_idx) < 100 or covered < present / 2:
        print(f"warning: the validation split holds {len(val_idx)} image(s) with {covered} of the {present} classes "
              f"of the data: its F1 and mAP rest on too few images to mean much (use more images or a larger "
              f"val_fraction)", file=sys.stderr, flush=True)


def _prepare_model(config: Config, net, train_targets, device):
    """The head's biases at the training split's class rates, the network on its device; returns the state every
    cross-fitted head starts from (None without cross-fitting)."""
    if config.prior_from_data:
        networks.set_head_prior(net, train_targets.mean(axis=0))
    channels_last = uses_channels_last(device, config.channels_last)
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    return copy.deepcopy(net.state_dict()) if config.cross_fit_folds else None


def _interrupted(run_dir: RunDir, config: Config) -> None:
    if run_dir.has_checkpoint("last"):
        done = run_dir.load_checkpoint("last")["epoch"]
        print(f"\ninterrupted; {run_dir.checkpoint_path('last')} holds epoch {done}/{config.epochs}.\n"
              f"resume with:  python -m loops train --resume {run_dir}\n"
              f"         or:  loops.fit(resume={str(run_dir)!r})", file=sys.stderr, flush=True)
    else:
        kept = " (the feature cache keeps its finished chunks)" if run_dir.features_path.is_dir() else ""
        print(f"\ninterrupted before the first epoch ended{kept}.\n"
              f"resume with:  python -m loops train --resume {run_dir}", file=sys.stderr, flush=True)


def fit(config: Config | None = None, resume=None, *, stop_after_epochs: int | None = None) -> dict:
    """Train a model as ``config`` says, into a new run folder; or continue the run folder ``resume``.

    Every epoch: train, evaluate on the validation split, tune thresholds on its probabilities
    (``tune_thresholds``), append a row to ``metrics.csv`` and TensorBoard, save ``last.pt``, and
    ``best.pt`` (with ``thresholds.json`` and ``val_outputs.npz``) when ``config.select_metric`` improved.
    Ctrl-C keeps the last completed epoch in ``last.pt`` and prints how to resume. ``stop_after_epochs=N`` stops
    like Ctrl-C once N epochs are done (tests). A resumed run uses its saved config; a ``config`` given with
    ``resume`` may change only where and how it runs (``config.RESUME_MUTABLE``).
    Resuming reproduces the uninterrupted run bit for bit with ``deterministic=True``, ``num_workers=0``, the
    same device and the same number of CPU threads (float sums are ordered differently with more threads);
    otherwise it continues statistically equivalently (same schedule, same shuffling order, different last bits).

    Returns a dict: ``run_dir``, ``status`` ("finished", "early_stopped" or "stopped"), ``best_epoch``,
    ``best`` (that epoch's CSV row), ``thresholds`` (its ``ThresholdResult``), ``history`` (all rows),
    ``cross_fit`` (the cross-fit record or None).
    """
    started = time.perf_counter()
    checkpoint = run_dir = None
    if resume is not None:
        run_dir = RunDir(resume)
        checkpoint, config = _resume(run_dir, config)
    else:
        config = (config or Config()).validate()
    device = resolve_device(config.device)
    with determinism(config.deterministic, device):
        seed_everything(config.seed)
        config, full = _load_data(config)
        # The network and the estimate come before the run folder: missing pretrained weights or a run that
        # cannot fit leave no empty run behind.
        net = recipe.build_net(config)
        train_idx, val_idx = _split(config, full, run_dir)
        estimate = _estimate(config, net, full, train_idx, val_idx, device)
        run_dir = run_dir or _new_folder(config, full, train_idx, val_idx)
        for folder in (run_dir.path, run_dir.features_path):  # what a killed write of an earlier start left behind
            atomic.remove_stale_temps(folder)
        print(f"run folder: {run_dir}  ({len(train_idx)} training / {len(val_idx)} validation images, {device})",
              flush=True)
        _warn_small_split(full.targets, val_idx)
        try:
            initial_state = _prepare_model(config, net, full.targets[train_idx], device)
            phase_start = time.perf_counter()
            inputs = _inputs(config, net, full, train_idx, val_idx, run_dir, device)
            phases = {"inputs_s": time.perf_counter() - phase_start}  # the feature or image cache
            start_epoch = int(checkpoint["epoch"]) if checkpoint is not None else 0
            training = _training(config, net, inputs, full.targets[train_idx], device, start_epoch)
            progress = _restore(run_dir, checkpoint, net, training)
            val_stems = [full.stems[i] for i in val_idx]
            phase_start = time.perf_counter()
            status = _epochs(config, run_dir, device, net, inputs, training, progress, val_stems, stop_after_epochs)
            phases["epochs_s"] = time.perf_counter() - phase_start
            return _finish(config, run_dir, device, net, inputs, training, progress, status, initial_state, full,
                           started, phases, estimate)
        except KeyboardInterrupt as err:
            _interrupted(run_dir, config)
            exits.mark_reported(err)
            raise
        except Exception as err:  # the folder says it failed (the run table reads it), then the error goes on
            run_dir.write_summary({
                "status": "failed", "error": f"{type(err).__name__}: {err}", "epochs": config.epochs,
                "epochs_done": len(run_dir.history()), "time_s": time.perf_counter() - started, "model": config.model,
                "hardware": hardware_info(device)})
            raise
