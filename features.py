"""Frozen backbone stages run once: the feature cache, training on it, and cross-fitting.

On a CPU, running a pretrained backbone over every image in every epoch is what makes training slow. When its
first ``k`` stages are frozen (``Config.cache_stages = k``), their output does not change from one epoch to the
next, so it is computed once per *view* of each image (the evaluation view, its mirror image, random crops) and
the epochs train only the rest of the network on it:

* :func:`extract`: ``stages[:k]`` over the images, once per view, in the precision of
  :func:`runtime.inference_settings` (bfloat16 + channels_last on CPUs with native bfloat16), stored as float16.
* :class:`FeatureBank` (a Dataset over the cache, a random view per item when training) and :class:`Tail`
  (``stages[k:]`` + pool + head as one module).
* :class:`FeatureCache`: a run's cache (training and validation views) and how to extend it.
* :func:`train_head` and :func:`cross_fit`: with the whole backbone cached, a head trains in seconds; K heads
  on K folds of all labelled images give every image an out-of-fold probability (``Config.cross_fit_folds``).
  The study scripts (``study/``) train their heads with the same :func:`train_head`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import dataset
import metrics
import models
import pipeline
import recipe
from config import Config
from engine import ModelEma, evaluate, train_one_epoch
from runtime import autocast, epoch_seed, inference_settings, loader_settings, seed_everything, to_device

__all__ = ["FlippedView", "FeatureBank", "Tail", "extract", "FeatureCache", "train_head", "view_probs",
           "CrossFit", "cross_fit"]


class FlippedView:
    """A transform followed by a horizontal flip (the second view of the feature cache and of TTA)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image).flip(-1)


def eval_views(eval_tf, tta_hflip: bool) -> list:
    """The views an image is evaluated through: the evaluation preset, and its mirror image with TTA."""
    return [eval_tf, FlippedView(eval_tf)][: 1 + bool(tta_hflip)]


def train_views(eval_tf, train_tf, n_views: int) -> list:
    """``n_views`` cached training views: the evaluation view, its mirror image, then random training crops."""
    views = [eval_tf, FlippedView(eval_tf)][:n_views]
    return views + [train_tf] * (n_views - len(views))


class FeatureBank(Dataset):
    """Cached stage outputs ``feats`` (views, N, ...; float16) with their ``targets`` (N, classes).

    ``view=None`` draws a random view per item from torch's global generator (reseeded every epoch by the run
    engine); an int always serves that view.
    """

    def __init__(self, feats: torch.Tensor, targets, view: int | None = None):
        self.feats = feats
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        self.view = view

    def __len__(self) -> int:
        return self.feats.shape[1]

    def __getitem__(self, idx):
        view = self.view if self.view is not None else int(torch.randint(self.feats.shape[0], ()))
        return self.feats[view, idx].float(), self.targets[idx]


class Tail(nn.Module):
    """``net.forward_from(start, x)`` as a module: trains and evaluates on cached ``features_until`` outputs.
    The network is ``.net`` (what an EMA averages and a checkpoint stores)."""

    def __init__(self, net: nn.Module, start: int):
        super().__init__()
        self.net, self.start = net, int(start)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_from(self.start, feats)


# ----------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------
def extract(net, k: int, source, indices, transforms, *, device, batch_size: int, num_workers: int | None,
            amp: bool, seed: int, progress: bool, desc: str) -> torch.Tensor:
    """Run ``net.stages[:k]`` once per view (``transforms``) over ``source[indices]``: float16
    (views, N, C, H, W) on the CPU.

    Forward only, so it runs as :func:`runtime.inference_settings` says (on a CPU with native bfloat16:
    bfloat16 and channels_last, ~4x faster); the network is handed back in its original memory format.
    """
    net.eval()
    amp_dtype, channels_last = inference_settings(device, amp)
    conv = next((p for p in net.parameters() if p.dim() == 4), None)
    was_channels_last = conv is not None and conv.is_contiguous(memory_format=torch.channels_last) \
        and not conv.is_contiguous()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    try:
        return _extract_views(net, k, source, indices, transforms, device=device, batch_size=batch_size,
                              num_workers=num_workers, amp_dtype=amp_dtype, channels_last=channels_last, seed=seed,
                              progress=progress, desc=desc)
    finally:
        if channels_last and not was_channels_last:
            net.to(memory_format=torch.contiguous_format)


@torch.inference_mode()  # inside only: parameters moved to channels_last under it would become inference tensors
def _extract_views(net, k, source, indices, transforms, *, device, batch_size, num_workers, amp_dtype, channels_last,
                   seed, progress, desc) -> torch.Tensor:
    bank = None
    for view, transform in enumerate(transforms):
        seed_everything(seed + view)  # each view's random crops are reproducible
        loader = DataLoader(dataset.TransformSubset(source, indices, transform), batch_size=batch_size,
                            shuffle=False, generator=torch.Generator().manual_seed(seed + view),
                            **loader_settings(device, num_workers))
        offset = 0
        for images, _ in tqdm(loader, desc=f"{desc} view {view + 1}/{len(transforms)}", disable=not progress,
                              leave=False, dynamic_ncols=True):
            with autocast(device, amp_dtype):
                feats = net.features_until(k, to_device(images, device, channels_last))
            if bank is None:
                bank = torch.empty((len(transforms), len(indices), *feats.shape[1:]), dtype=torch.float16)
            bank[view, offset:offset + len(feats)] = feats.to("cpu", torch.float16)
            offset += len(feats)
    return bank


@dataclass
class FeatureCache:
    """A run's feature cache: ``train`` (training views, training images) and ``val`` (evaluation views,
    validation images), plus what it takes to extract more views of more images the same way."""

    net: nn.Module
    k: int
    source: Any
    config: Config
    device: torch.device
    train_views: list
    eval_views: list
    train: torch.Tensor = field(init=False)
    val: torch.Tensor = field(init=False)

    def extract(self, indices, transforms, seed: int, desc: str) -> torch.Tensor:
        config = self.config
        return extract(self.net, self.k, self.source, indices, transforms, device=self.device,
                       batch_size=config.batch_size * 2, num_workers=config.num_workers, amp=config.amp, seed=seed,
                       progress=config.progress, desc=desc)

    def build(self, train_idx, val_idx) -> "FeatureCache":
        self.train = self.extract(train_idx, self.train_views, self.config.seed, "caching train")
        self.val = self.extract(val_idx, self.eval_views, self.config.seed, "caching val")
        size_mb = (self.train.numel() + self.val.numel()) * 2 / 2**20
        print(f"feature cache: stages[:{self.k}] -> {tuple(self.train.shape[2:])} x {len(self.train_views)} views, "
              f"{size_mb:.0f} MiB", flush=True)
        return self


# ----------------------------------------------------------------------------------------------------------
# Training heads on the cache
# ----------------------------------------------------------------------------------------------------------
def train_head(net, initial_state, criterion, bank: torch.Tensor, targets, rows, config: Config, device, seed: int,
               desc: str = "head") -> nn.Module:
    """Train from ``initial_state`` what ``config`` trains on top of the cached ``stages[:k]`` outputs
    ``bank[:, rows]`` (k = ``config.cache_stages``), for ``config.epochs`` epochs on the run's optimiser and
    schedule (:mod:`recipe`), a random cached view per image and epoch. Returns the module to evaluate on the
    cache (the EMA weights with an EMA)."""
    net.load_state_dict(initial_state)
    if config.prior_from_data:
        models.set_head_prior(net, targets[rows].mean(axis=0))
    k = config.cache_stages
    optimizer = recipe.build_optimizer(net, config)
    train_set = FeatureBank(bank[:, rows], targets[rows])
    loader = pipeline.make_loader(train_set, batch_size=config.batch_size, device=device, train=True,
                                  drop_last=recipe.drop_last(len(train_set), config.batch_size), seed=seed,
                                  mode="workers", num_workers=0)
    scheduler = recipe.make_scheduler(optimizer, [group["lr"] for group in optimizer.param_groups], config,
                                      len(loader), 0)
    ema = ModelEma(net, config.ema_decay) if config.ema_decay > 0 else None
    for epoch in range(config.epochs):
        seed_everything(epoch_seed(seed, epoch))
        loader.set_epoch(epoch)
        train_one_epoch(Tail(net, k), loader, criterion, optimizer, device, scheduler=scheduler,
                        grad_clip=config.grad_clip, ema=ema, progress=False, desc=desc)
    return Tail(ema.module if ema is not None else net, k)


def view_probs(module, bank: torch.Tensor, targets, rows, batch_size: int, device) -> np.ndarray:
    """Mean over the cached views of the probabilities of ``rows`` (float32 NumPy)."""
    outs = []
    for view in range(bank.shape[0]):
        loader = pipeline.make_loader(FeatureBank(bank[:, rows], targets[rows], view=view), batch_size=batch_size,
                                      device=device, train=False, mode="workers", num_workers=0)
        outs.append(evaluate(module, loader, device, progress=False)["probs"])
    return torch.stack(outs).mean(dim=0).numpy()


@dataclass
class CrossFit:
    """What :func:`cross_fit` computed: out-of-fold probabilities of every labelled image (``order``: rows of
    the dataset), their folds, the thresholds tuned on them, the final head's network and a summary record."""

    order: np.ndarray
    folds: np.ndarray
    oof: np.ndarray
    targets: np.ndarray
    thresholds: metrics.ThresholdResult
    final_net: nn.Module
    record: dict


def _all_views(cache: FeatureCache, train_idx, val_idx) -> tuple[torch.Tensor, torch.Tensor]:
    """(training views, evaluation views) of every labelled image, training split first: each image needs its
    training views for the folds that train on it and its evaluation views for the fold that holds it out."""
    config, n_eval = cache.config, len(cache.eval_views)
    if config.cache_views > n_eval:
        extra = cache.extract(val_idx, cache.train_views[n_eval:], config.seed + n_eval,
                              "caching val (training views)")
        val_train = torch.cat([cache.val, extra])
    else:
        val_train = cache.val[:config.cache_views]
    if n_eval > config.cache_views:
        extra = cache.extract(train_idx, cache.eval_views[config.cache_views:], config.seed,
                              "caching train (evaluation views)")
        train_eval = torch.cat([cache.train, extra])
    else:
        train_eval = cache.train[:n_eval]
    return torch.cat([cache.train, val_train], dim=1), torch.cat([train_eval, cache.val], dim=1)


def cross_fit(cache: FeatureCache, initial_state, criterion, all_targets: np.ndarray, train_idx, val_idx) -> CrossFit:
    """Out-of-fold thresholds and a head trained on every labelled image (``Config.cross_fit_folds``).

    Why: the validation split holds 1/5 of a small dataset, so each rare class's threshold is fitted on a
    handful of images and the head never sees them. Here K heads, trained exactly like the run's (same
    epochs, schedule, views), each predict the fold they did not see; thresholds are tuned on those
    out-of-fold probabilities of *all* images, and the final head is trained on all of them (the run engine
    saves it as ``final.pt``, the model ``predict`` uses). Measured on coco-mini by nested cross-validation:
    see ``study/results.csv``.
    """
    started = time.perf_counter()
    config, net, device = cache.config, cache.net, cache.device
    train_bank, eval_bank = _all_views(cache, train_idx, val_idx)
    order = np.concatenate([train_idx, val_idx])
    targets = all_targets[order]
    folds = dataset.kfold_assignments(targets, config.cross_fit_folds, seed=config.split_seed)
    oof = np.zeros(targets.shape, dtype=np.float32)
    fold_maps = []
    for fold in range(config.cross_fit_folds):
        fit_rows, held_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        module = train_head(net, initial_state, criterion, train_bank, targets, fit_rows, config, device,
                            seed=config.seed + 1 + fold, desc=f"cross-fit fold {fold + 1}")
        oof[held_rows] = view_probs(module, eval_bank, targets, held_rows, config.batch_size * 2, device)
        fold_maps.append(metrics.mean_average_precision(oof[held_rows], targets[held_rows]))
        print(f"cross-fit fold {fold + 1}/{config.cross_fit_folds}: {len(fit_rows)} images to train, "
              f"{len(held_rows)} held out, mAP {fold_maps[-1]:.4f}", flush=True)
    thresholds = metrics.tune_thresholds(oof, targets, **config.tuning_options())
    tuned = metrics.leaderboard_scores(thresholds.apply(oof), targets, warn=False)
    module = train_head(net, initial_state, criterion, train_bank, targets, np.arange(len(order)), config, device,
                        seed=config.seed, desc="cross-fit final head")
    record = {"folds": config.cross_fit_folds, "images": int(len(order)), "epochs": config.epochs,
              "oof_map": metrics.mean_average_precision(oof, targets), "fold_maps": fold_maps,
              "oof_f1": tuned["f1"], "oof_precision": tuned["precision"], "oof_recall": tuned["recall"],
              "oof_f1@0.5": metrics.leaderboard_scores(oof > 0.5, targets, warn=False)["f1"],
              "time_s": time.perf_counter() - started, "thresholds": thresholds.to_dict()}
    print(f"cross-fit ({config.cross_fit_folds} folds, {len(order)} images, {record['time_s']:.0f}s): out-of-fold "
          f"mAP {record['oof_map']:.4f}, tuned F1 {tuned['f1']:.4f} (in-sample on the out-of-fold probabilities); "
          f"final.pt = head on all {len(order)} images", flush=True)
    return CrossFit(order, folds, oof, targets, thresholds, module.net, record)


def predict_cached(net, config: Config, source, device, *, batch_size: int | None = None,
                   num_workers: int | None = None, progress: bool = True) -> np.ndarray:
    """Probabilities of every image of ``source`` from a network trained on the cache, computed the way its run
    computed validation probabilities (the same extraction, float16 rounding and views), so that the run's
    thresholds fit them."""
    _, eval_tf = recipe.presets_for(config)
    views = eval_views(eval_tf, config.tta_hflip)
    indices = np.arange(len(source))
    bank = extract(net, config.cache_stages, source, indices, views, device=device,
                   batch_size=batch_size or config.batch_size * 2, num_workers=num_workers, amp=config.amp,
                   seed=config.seed, progress=progress, desc="features")
    targets = np.zeros((len(source), net.num_classes), dtype=np.float32)  # unused by the evaluation
    return view_probs(Tail(net, config.cache_stages), bank, targets, indices, batch_size or config.batch_size * 2,
                      device)
