"""Frozen backbone stages run once: the feature cache, training on it, and cross-fitting.

On a CPU, running a pretrained backbone over every image in every epoch is what makes training slow. When its
first ``k`` stages are frozen (``Config.cache_stages = k``), their output does not change from one epoch to the
next, so it is computed once per *view* of each image (the evaluation view, its mirror image, random crops) and
the epochs train only the rest of the network on it.

* :func:`compute`: the one definition of a cached feature. ``stages[:k]`` in the precision of
  :func:`runtime.inference_settings` (bfloat16 + channels_last on CPUs with native bfloat16). With the whole
  backbone frozen (``k`` = its number of stages) the head only ever sees the pooled vector, so that is what is
  kept (a few KB per view instead of the whole feature map: 0.01 MiB instead of 0.35 MiB for EfficientNet-Lite2
  at 384 px); the pool runs in float32 on the feature map, so the only difference to pooling a cached map is the
  final float16 rounding. Stored as float16.
* :class:`FeatureStore`: the cache on disk in the run folder (``features/``), a float16 array
  (views, images, ...) written chunk by chunk and memory-mapped when read, so its size costs disk, not RAM.
  Finished chunks are recorded; Ctrl-C during a long extraction and ``--resume`` continue where it stopped.
* :func:`extract`: fills a store, with a progress bar and a time estimate.
* :class:`FeatureBank` (a Dataset over a store: a random training view per item, or one fixed view) and
  :class:`Tail` (what trains on the cache: ``stages[k:]`` + pool + head, or the head alone on pooled vectors).
* :func:`train_head`, :func:`view_probs`, :func:`cross_fit`: with the whole backbone cached, a head trains in
  seconds; K heads on K folds of all labelled images give every image an out-of-fold probability
  (``Config.cross_fit_folds``). The study scripts (``study/``) train their heads with the same functions.
* :func:`predict_cached`: test images through the same :func:`compute`, so the run's thresholds fit them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from coco import atomic, course, data, leaderboard, loaders, networks, recipe
from coco.config import Config
from coco.engine import ModelEma, evaluate, train_one_epoch
from coco.runtime import (
    amp_settings,
    autocast,
    derived_seed,
    inference_batch_size,
    inference_settings,
    loader_settings,
    seed_everything,
    to_device,
    uses_channels_last,
)
from coco.thresholds import ThresholdResult, tune_thresholds

CHUNK_IMAGES = 2048  # images per chunk of the store: what a resumed extraction may have to redo at most


class FlippedView:
    """A transform followed by a horizontal flip (the mirror view of the feature cache and of TTA)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image).flip(-1)


def cache_views(config: Config) -> tuple[list, list[int], list[int]]:
    """(transforms of the cached views, indices of the training views, indices of the evaluation views).

    The views are the evaluation view, its mirror image, then random training crops; the first
    ``cache_views`` of them are the training views, the first one (two with ``tta_hflip``) the evaluation
    views. Every labelled image gets all of them, so that cross-fitting can train on or hold out any image.
    """
    train_tf, eval_tf = recipe.presets_for(config)
    n_eval = 1 + bool(config.tta_hflip)
    n_views = max(config.cache_views, n_eval)
    views = [eval_tf, FlippedView(eval_tf)][:n_views]
    views += [train_tf] * (n_views - len(views))
    return views, list(range(config.cache_views)), list(range(n_eval))


def pooled(net, k: int) -> bool:
    """Whether a cache of ``stages[:k]`` keeps pooled vectors (the whole backbone frozen)."""
    return k == len(net.stages)


def compute(net, k: int, images: torch.Tensor, *, device, amp_dtype, channels_last: bool) -> torch.Tensor:
    """Cached features of a batch of transformed images: float16 on the CPU, (B, C, H, W) maps of
    ``stages[:k]`` or, when ``k`` covers the whole backbone, (B, features) pooled vectors."""
    with autocast(device, amp_dtype):
        feats = net.features_until(k, to_device(images, device, channels_last))
    if pooled(net, k):
        feats = net.pool(feats.float())  # float32 pooling: what the head would compute from the cached map
    return feats.to("cpu", torch.float16)


class InferenceFormat:
    """The network in eval mode and in the memory format of the forward-only precision, given back afterwards.
    Enter it outside ``torch.inference_mode()``: parameters converted inside it would become inference tensors."""

    def __init__(self, net, device, amp: bool):
        self.net = net
        self.amp_dtype, self.channels_last = inference_settings(device, amp)

    def __enter__(self):
        conv = next((p for p in self.net.parameters() if p.dim() == 4), None)
        self.restore = self.channels_last and conv is not None and conv.is_contiguous()
        self.was_training = self.net.training
        self.net.eval()
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        return self

    def __exit__(self, *exc):
        if self.restore:
            self.net.to(memory_format=torch.contiguous_format)
        self.net.train(self.was_training)


# ----------------------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------------------
class FeatureStore:
    """A float16 array (views, images, *shape) in ``folder/bank.npy``, written chunk by chunk.

    ``meta.json`` records what the features are (``fingerprint``: model, stages, size, views, precision,
    images) and ``done.json`` which (view, chunk) pairs are complete. Opening a folder whose fingerprint
    matches continues it; one that does not is rebuilt from scratch (a message says why). Picklable: a
    DataLoader worker reopens the memory map.
    """

    def __init__(self, folder, fingerprint: dict, shape: Sequence[int], chunk_images: int | None = None):
        self.folder, self.fingerprint = Path(folder), dict(fingerprint)
        self.shape, self.chunk_images = tuple(int(d) for d in shape), int(chunk_images or CHUNK_IMAGES)
        self._array = None
        meta = {"fingerprint": self.fingerprint, "shape": list(self.shape), "chunk_images": self.chunk_images}
        meta_path = self.folder / "meta.json"
        if meta_path.is_file() and (self.folder / "bank.npy").is_file():
            if json.loads(meta_path.read_text(encoding="utf-8")) == meta:
                return
            print(f"{self.folder}: features of other settings; extracting again", file=sys.stderr, flush=True)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        np.lib.format.open_memmap(self.folder / "bank.npy", mode="w+", dtype=np.float16, shape=self.shape).flush()
        atomic.write_json(self.folder / "done.json", [])
        atomic.write_json(meta_path, meta)  # written last: a folder without it is rebuilt

    @classmethod
    def open(cls, folder) -> "FeatureStore":
        """An existing store as it was written (its ``meta.json``); FileNotFoundError if there is none."""
        meta_path = Path(folder) / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no feature store here (no meta.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return cls(folder, meta["fingerprint"], meta["shape"], meta["chunk_images"])

    @property
    def n_views(self) -> int:
        return self.shape[0]

    @property
    def n_images(self) -> int:
        return self.shape[1]

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_images / self.chunk_images)

    @property
    def nbytes(self) -> int:
        return 2 * math.prod(self.shape)

    def chunk_rows(self, chunk: int) -> slice:
        return slice(chunk * self.chunk_images, min((chunk + 1) * self.chunk_images, self.n_images))

    def done(self) -> set[tuple[int, int]]:
        return {tuple(pair) for pair in json.loads((self.folder / "done.json").read_text(encoding="utf-8"))}

    @property
    def complete(self) -> bool:
        return len(self.done()) == self.n_views * self.n_chunks

    def write(self, view: int, chunk: int, feats: np.ndarray) -> None:
        """Store one finished chunk, flushed to disk before it is recorded as done."""
        array = np.load(self.folder / "bank.npy", mmap_mode="r+")
        array[view, self.chunk_rows(chunk)] = feats
        array.flush()
        del array
        atomic.write_json(self.folder / "done.json", sorted([*self.done(), (view, chunk)]))

    @property
    def array(self) -> np.ndarray:
        """The whole bank, memory-mapped read-only (pages are read from disk as they are used)."""
        if self._array is None:
            self._array = np.load(self.folder / "bank.npy", mmap_mode="r")
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


def extract(net, k: int, source, indices, views: Sequence, store: FeatureStore, *, device, batch_size: int,
            num_workers: int | None, amp: bool, seed: int, progress: bool, desc: str = "features") -> FeatureStore:
    """Fill ``store`` with :func:`compute` of ``source[indices]`` through each of ``views``, chunk by chunk,
    skipping the chunks it already holds. Random views are drawn from a seed per (view, chunk), so a resumed
    extraction computes what an uninterrupted one would have. Returns ``store``."""
    done = store.done()
    total = store.n_views * store.n_images
    finished = sum(store.chunk_rows(chunk).stop - store.chunk_rows(chunk).start for _, chunk in done)
    if finished == total:
        return store
    indices = np.asarray(indices)
    started, computed = time.perf_counter(), 0
    bar = tqdm(total=total, initial=finished, desc=desc, unit="img", disable=not progress, dynamic_ncols=True,
               smoothing=0.05)
    with InferenceFormat(net, device, amp) as fmt, torch.inference_mode():
        for view, transform in enumerate(views):
            for chunk in range(store.n_chunks):
                if (view, chunk) in done:
                    continue
                rows = store.chunk_rows(chunk)
                chunk_seed = derived_seed(seed, view, chunk)
                seed_everything(chunk_seed)  # this chunk's random crops, whatever ran before
                loader = DataLoader(data.TransformSubset(source, indices[rows], transform), batch_size=batch_size,
                                    shuffle=False, generator=torch.Generator().manual_seed(chunk_seed),
                                    **loader_settings(device, num_workers))
                parts = []
                for images, _ in loader:
                    parts.append(compute(net, k, images, device=device, amp_dtype=fmt.amp_dtype,
                                         channels_last=fmt.channels_last).numpy())
                    bar.update(len(images))
                store.write(view, chunk, np.concatenate(parts))
                computed += rows.stop - rows.start
                finished += rows.stop - rows.start
                if not progress:  # a line per chunk: the log of a headless run shows how far it is
                    rate = computed / (time.perf_counter() - started)
                    left = (total - finished) / rate
                    print(f"{desc}: {finished:,}/{total:,} images x views, {rate:.1f} img/s, about "
                          + (f"{left / 60:.0f} min left" if left >= 60 else f"{left:.0f} s left"), flush=True)
    bar.close()
    return store


# ----------------------------------------------------------------------------------------------------------
# Training on the store
# ----------------------------------------------------------------------------------------------------------
class FeatureBank(Dataset):
    """Items ``(features as float32, targets)`` of ``rows`` of a store (or any array (views, images, ...)).

    ``view`` fixed: always that view (evaluation). ``view=None``: a random one of ``views`` per item, drawn
    from torch's global generator (reseeded every epoch by the run engine).
    """

    def __init__(self, feats, rows, targets, *, views: Sequence[int] = (0,), view: int | None = None):
        self.feats, self.rows = feats, np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        self.views, self.view = list(views), view
        if len(self.targets) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.targets)} target rows")

    def __len__(self) -> int:
        return len(self.rows)

    def _array(self):
        return self.feats.array if isinstance(self.feats, FeatureStore) else self.feats

    def __getitem__(self, idx):
        view = self.view if self.view is not None else self.views[int(torch.randint(len(self.views), ()))]
        return torch.from_numpy(np.asarray(self._array()[view, self.rows[idx]], dtype=np.float32)), self.targets[idx]

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one gather (the DataLoader calls this instead of one ``__getitem__`` per item; see
        :func:`whole_batch`): a head trains on tens of thousands of items per epoch, and per-item Python calls
        would cost more than the head's own arithmetic."""
        indices = np.asarray(indices)
        if self.view is not None:
            views = np.full(len(indices), self.view)
        else:
            views = np.asarray(self.views)[torch.randint(len(self.views), (len(indices),)).numpy()]
        feats = np.asarray(self._array()[views, self.rows[indices]], dtype=np.float32)
        return torch.from_numpy(feats), self.targets[torch.from_numpy(indices)]


def whole_batch(batch):
    """The ``collate_fn`` of a :class:`FeatureBank` loader: its ``__getitems__`` already returns the batch."""
    return batch


class Tail(nn.Module):
    """What trains on cached ``stages[:start]`` outputs: ``stages[start:]``, pool and head, or the head alone on
    pooled vectors (the whole backbone cached). The network is ``.net`` (what an EMA averages and a checkpoint
    stores)."""

    def __init__(self, net: nn.Module, start: int):
        super().__init__()
        self.net, self.start = net, int(start)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if pooled(self.net, self.start):
            return self.net.head(feats)
        return self.net.forward_from(self.start, feats)


def train_head(net, initial_state, criterion, store, all_targets, rows, config: Config, device, seed: int,
               desc: str = "head") -> nn.Module:
    """Train from ``initial_state`` what ``config`` trains on top of the cached ``stages[:k]`` outputs of
    ``rows`` (k = ``config.cache_stages``; ``all_targets`` indexed like the store), for ``config.epochs``
    epochs on the run's optimiser and schedule (:mod:`recipe`), a random training view per image and epoch.
    Returns the module to evaluate on the cache (the EMA weights with an EMA)."""
    net.load_state_dict(initial_state)
    rows = np.asarray(rows)
    if config.prior_from_data:
        networks.set_head_prior(net, all_targets[rows].mean(axis=0))
    k = config.cache_stages
    optimizer = recipe.build_optimizer(net, config)
    train_set = FeatureBank(store, rows, all_targets[rows], views=cache_views(config)[1])
    loader = loaders.make_loader(train_set, batch_size=config.batch_size, device=device, train=True,
                                  drop_last=recipe.drop_last(len(train_set), config.batch_size), seed=seed,
                                  mode="workers", num_workers=0, collate_fn=whole_batch)
    scheduler = recipe.make_scheduler(optimizer, [group["lr"] for group in optimizer.param_groups], config,
                                      len(loader), 0)
    ema = ModelEma(net, config.ema_decay) if config.ema_decay > 0 else None
    amp_dtype, scaler = amp_settings(torch.device(device), config.amp)
    channels_last = uses_channels_last(torch.device(device), config.channels_last)
    for epoch in range(config.epochs):
        seed_everything(derived_seed(seed, epoch))
        loader.set_epoch(epoch)
        train_one_epoch(Tail(net, k), loader, criterion, optimizer, device, scheduler=scheduler, scaler=scaler,
                        amp_dtype=amp_dtype, grad_clip=config.grad_clip, ema=ema, channels_last=channels_last,
                        progress=False, desc=desc)
    return Tail(ema.module if ema is not None else net, k)


def view_probs(module, store, rows, views: Sequence[int], batch_size: int, device, amp_dtype=None,
               channels_last: bool = False) -> np.ndarray:
    """Mean over the cached ``views`` of the probabilities of ``rows`` (float32 NumPy)."""
    outs = []
    targets = np.zeros((len(rows), 1), dtype=np.float32)  # not used: evaluate without a criterion
    for view in views:
        loader = loaders.make_loader(FeatureBank(store, rows, targets, view=view), batch_size=batch_size,
                                      device=device, train=False, mode="workers", num_workers=0,
                                      collate_fn=whole_batch)
        outs.append(evaluate(module, loader, device, amp_dtype=amp_dtype, channels_last=channels_last,
                             progress=False)["probs"])
    return torch.stack(outs).mean(dim=0).numpy()


@dataclass
class CrossFit:
    """What :func:`cross_fit` computed: out-of-fold probabilities of every image it was given (in the order of its
    ``rows``), their folds, the thresholds tuned on them, the final head's network and a summary record."""

    folds: np.ndarray
    oof: np.ndarray
    thresholds: ThresholdResult
    final_net: nn.Module
    record: dict


def cross_fit(net, store, initial_state, criterion, all_targets: np.ndarray, config: Config, device,
              rows=None) -> CrossFit:
    """Out-of-fold thresholds and a head trained on every labelled image (``Config.cross_fit_folds``).

    Why: the validation split holds a fifth of a small dataset, so each rare class's threshold is fitted on a
    handful of images and the head never sees them. Here K heads, trained exactly like the run's (same
    epochs, schedule, views), each predict the fold they did not see; thresholds are tuned on those
    out-of-fold probabilities of *all* images, and the final head is trained on all of them (the run engine
    saves it as ``final.pt``, the model ``predict`` uses). Measured on coco-mini: see ``study/results.csv``.
    ``rows``: the store rows (labelled images) to cross-fit on, default all; the results follow their order.
    """
    started = time.perf_counter()
    rows = np.arange(len(all_targets)) if rows is None else np.asarray(rows)
    targets = all_targets[rows]
    folds = course.kfold_assignments(targets, config.cross_fit_folds, seed=config.split_seed)
    oof = np.zeros(targets.shape, dtype=np.float32)
    eval_views = cache_views(config)[2]
    amp_dtype = amp_settings(torch.device(device), config.amp)[0]  # evaluated as the run evaluates
    channels_last = uses_channels_last(torch.device(device), config.channels_last)
    fold_maps = []
    for fold in range(config.cross_fit_folds):
        fit, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        module = train_head(net, initial_state, criterion, store, all_targets, rows[fit], config, device,
                            seed=config.seed + 1 + fold, desc=f"cross-fit fold {fold + 1}")
        oof[held] = view_probs(module, store, rows[held], eval_views, config.batch_size * 2, device, amp_dtype,
                               channels_last)
        fold_maps.append(leaderboard.mean_average_precision(oof[held], targets[held]))
        print(f"cross-fit fold {fold + 1}/{config.cross_fit_folds}: {len(fit)} images to train, "
              f"{len(held)} held out, mAP {fold_maps[-1]:.4f}", flush=True)
    thresholds = tune_thresholds(oof, targets, **config.tuning_options())
    tuned = leaderboard.leaderboard_scores(thresholds.apply(oof), targets, warn=False)
    module = train_head(net, initial_state, criterion, store, all_targets, rows, config, device, seed=config.seed,
                        desc="cross-fit final head")
    n_images = len(rows)
    record = {"folds": config.cross_fit_folds, "images": int(n_images), "epochs": config.epochs,
              "oof_map": leaderboard.mean_average_precision(oof, targets), "fold_maps": fold_maps,
              "oof_f1": tuned["f1"], "oof_precision": tuned["precision"], "oof_recall": tuned["recall"],
              "oof_f1@0.5": leaderboard.leaderboard_scores(oof > 0.5, targets, warn=False)["f1"],
              "time_s": time.perf_counter() - started, "thresholds": thresholds.to_dict()}
    print(f"cross-fit ({config.cross_fit_folds} folds, {n_images} images, {record['time_s']:.0f}s): out-of-fold "
          f"mAP {record['oof_map']:.4f}, tuned F1 {tuned['f1']:.4f} (in-sample on the out-of-fold probabilities); "
          f"final.pt = head on all {n_images} images", flush=True)
    return CrossFit(folds, oof, thresholds, module.net, record)


@torch.inference_mode()
def predict_cached(net, config: Config, source, device, *, batch_size: int | None = None,
                   num_workers: int | None = None, progress: bool = True) -> np.ndarray:
    """Probabilities of every image of ``source`` from a network trained on the cache: :func:`compute` through
    each evaluation view, the tail in the run's precision and memory format (``net`` as the run left it), the
    mean over the views; computed exactly as the run computed its validation probabilities, so that its
    thresholds fit them. Streams: nothing is stored."""
    amp_dtype = amp_settings(torch.device(device), config.amp)[0]
    _, eval_tf = recipe.presets_for(config)
    n_eval = len(cache_views(config)[2])
    net.eval()
    tail = Tail(net, config.cache_stages)  # the tail as the run evaluated it (its memory format, its precision)
    extractor = copy.deepcopy(net)  # the frozen stages as the cache ran them
    loader = DataLoader(data.TransformSubset(source, np.arange(len(source)), eval_tf),
                        batch_size=batch_size or inference_batch_size(device, eval_tf.image_size, config.batch_size),
                        shuffle=False,
                        **loader_settings(device, num_workers))
    probs = []
    with InferenceFormat(extractor, device, config.amp) as fmt:
        for images, _ in tqdm(loader, desc="predict", disable=not progress, leave=False, dynamic_ncols=True):
            per_view = []
            for view in [images, images.flip(-1)][:n_eval]:  # FlippedView(eval_tf) is eval_tf, then a flip
                feats = compute(extractor, config.cache_stages, view, device=device, amp_dtype=fmt.amp_dtype,
                                channels_last=fmt.channels_last)
                feats = to_device(feats.float(), device, uses_channels_last(device, config.channels_last))
                with autocast(device, amp_dtype):
                    per_view.append(torch.sigmoid(tail(feats).float()).cpu())
            probs.append(torch.stack(per_view).mean(dim=0))
    return torch.cat(probs).numpy()


def feature_shape(net, k: int, image_size: int, device) -> tuple[int, ...]:
    """The shape of one image's cached features at ``image_size`` (a pooled vector, or a stage's map)."""
    probe = torch.zeros(1, 3, image_size, image_size)
    with InferenceFormat(net, device, amp=False), torch.inference_mode():  # format first: no inference parameters
        return tuple(compute(net, k, probe, device=device, amp_dtype=None, channels_last=False).shape[1:])


def fingerprint(config: Config, stems: Sequence[str], device) -> dict:
    """What a run's cached features depend on: a store with another fingerprint is not reused."""
    keys = ("model", "pretrained", "image_size", "pool", "cache_stages", "cache_views", "tta_hflip", "amp", "seed",
            "crop_scale_min", "color_jitter")
    precision = inference_settings(torch.device(device), config.amp)[0]
    return {**{key: getattr(config, key) for key in keys}, "precision": str(precision), "images": len(stems),
            "stems": hashlib.sha256("\n".join(stems).encode("utf-8")).hexdigest()}
