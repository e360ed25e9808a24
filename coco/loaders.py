"""Which input path a run takes, and its loader: :func:`make_loader`.

On CUDA with a cached dataset, the GPU path (``coco.gpu_batches.BatchLoader``); elsewhere a DataLoader with
worker processes (``coco.runtime.loader_settings`` decides how many) whose batches are moved to the device by
:class:`DeviceLoader`. :class:`EpochShuffleSampler` draws each epoch's order from (seed, epoch) alone, so a
resumed run sees the same order as an uninterrupted one. A run's GPU path has the workers path behind it
(:class:`FallbackLoader`): a student's first run on a GPU is not where the GPU path gets tested.
"""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, Sampler

from coco.config import LOADER_MODES
from coco.data import TransformSubset
from coco.gpu_batches import BatchLoader, gpu_path_supported
from coco.runtime import derived_seed, loader_settings


class EpochShuffleSampler(Sampler):
    """A random order per epoch drawn from (seed, epoch) alone (call ``set_epoch`` before each epoch).

    The order does not depend on how many epochs ran before in this process, so a resumed run sees the same
    batches as an uninterrupted one, and it works with persistent DataLoader workers.
    """

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.length, generator=generator).tolist())


class DeviceLoader:
    """A DataLoader whose batches are moved to ``device`` (non-blocking from pinned memory); ``set_epoch``
    reaches its :class:`EpochShuffleSampler`.

    Without workers, batches are loaded in this process with one torch thread: a 224 px image's
    operations are too small to split, and on a busy 2-core machine splitting them made loading
    100x slower (OpenMP threads waiting on each other).  DataLoader workers do the same.
    """

    def __init__(self, loader: DataLoader, device, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, torch.device(device), channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.loader.sampler, EpochShuffleSampler):
            self.loader.sampler.set_epoch(epoch)

    def _batches(self):
        batches = iter(self.loader)
        while True:
            threads = torch.get_num_threads()
            if self.loader.num_workers == 0:
                torch.set_num_threads(1)
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                torch.set_num_threads(threads)
            yield batch

    def __iter__(self):
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for images, labels in self._batches():
            images = images.to(self.device, non_blocking=True, memory_format=memory_format)
            if isinstance(labels, torch.Tensor):
                labels = labels.to(self.device, non_blocking=True)
            yield images, labels


def make_loader(dataset, *, batch_size: int, device, train: bool, drop_last: bool | None = None, seed: int = 0,
                mode: str = "auto", num_workers: int | None = None, channels_last: bool = False, collate_fn=None):
    """The loader for ``dataset``: an iterable of ``(inputs_on_device, targets_on_device | stems)`` with
    ``len()`` = batches per epoch and, for training, ``set_epoch(epoch)`` to call before each epoch.

    ``mode="gpu"``: :class:`BatchLoader` (a course dataset cached by :func:`cache_dataset`, or a
    ``TransformSubset`` of one, with a stock preset; runs on any device).  ``mode="workers"``: a DataLoader
    over any dataset (images, cached features) with :func:`runtime.loader_settings` (``num_workers``
    overrides).  ``mode="auto"``: gpu on CUDA when the dataset allows it, else workers.
    Training (``train=True``) shuffles in an order drawn from (seed, epoch) alone and drops an incomplete last
    batch unless ``drop_last`` says otherwise (a last batch of one image would break BatchNorm); evaluation
    keeps every item in order. ``collate_fn``: the DataLoader's (e.g. for a dataset whose ``__getitems__``
    returns whole batches).
    """
    if mode not in LOADER_MODES:
        raise ValueError(f"loader mode must be one of {LOADER_MODES}, got {mode!r}")
    device = torch.device(device)
    drop_last = train if drop_last is None else drop_last
    if mode == "auto":
        mode = "gpu" if device.type == "cuda" and gpu_path_supported(dataset) else "workers"
    if mode == "gpu":
        return BatchLoader(dataset, batch_size=batch_size, device=device, shuffle=train, drop_last=drop_last,
                           seed=seed, channels_last=channels_last)
    settings = loader_settings(device, num_workers)
    if train:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(len(dataset), seed),
                            drop_last=drop_last, generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn,
                            **settings)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last, collate_fn=collate_fn,
                            **settings)
    return DeviceLoader(loader, device, channels_last)


def loader_description(loader) -> str:
    if isinstance(loader, BatchLoader):
        return f"gpu path (main process, {loader.cache.mode} cache, decode on {loader.device.type})"
    return f"workers path ({loader.loader.num_workers} worker(s), pin_memory={loader.loader.pin_memory})"


# --------------------------------------------------------------------------------------------
# The GPU path's safety net
# --------------------------------------------------------------------------------------------
class InputPath:
    """The input path a run's loaders share: ``"gpu"`` or ``"workers"``, and why the GPU path was left, once it
    failed (every :class:`FallbackLoader` of the run then reads from workers). ``record()`` goes into
    ``summary.json``."""

    def __init__(self, name: str):
        self.name, self.failure = name, None

    def fall_back(self, err: Exception) -> None:
        self.failure = f"{type(err).__name__}: {err}".splitlines()[0]
        print(f"warning: the gpu input path failed ({self.failure}); the run goes on with DataLoader workers "
              "(--loader workers skips the gpu path)", file=sys.stderr, flush=True)

    def record(self) -> str:
        return self.name if self.failure is None else f"gpu, then workers after: {self.failure}"


class FallbackLoader:
    """A :class:`BatchLoader` with the workers path behind it: when the GPU path fails (its first batch or any
    later one), :meth:`InputPath.fall_back` prints one line and the batches come from DataLoader workers.

    The epoch in progress continues where the GPU path stopped rather than starting again: the workers serve the
    rest of the same epoch's order (``BatchLoader.epoch_order``, the order ``EpochShuffleSampler`` draws too), so
    no image is seen twice or skipped, and the epoch keeps its number of steps, which the one-cycle schedule was
    built for (a restarted epoch would step it past its end). Only the augmentation draws differ from the GPU
    path's. Later epochs read from a workers loader over the same images.
    """

    def __init__(self, primary: BatchLoader, path: InputPath, *, num_workers: int | None = None):
        self.primary, self.path, self.num_workers = primary, path, num_workers
        self.epoch, self._workers = 0, None

    def __len__(self) -> int:
        return len(self.primary)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.primary.set_epoch(epoch)

    def _workers_loader(self, positions=None) -> DeviceLoader:
        """The workers path over the GPU path's images (its shuffling, its drop_last), or over ``positions`` of
        them in that order and all of them (the rest of an epoch)."""
        primary, whole = self.primary, positions is None
        indices = primary.indices if whole else primary.indices[positions]
        return make_loader(TransformSubset(primary.base, indices, primary.preset), batch_size=primary.batch_size,
                           device=primary.device, train=primary.shuffle and whole,
                           drop_last=primary.drop_last and whole, seed=primary.seed, mode="workers",
                           num_workers=self.num_workers, channels_last=primary.channels_last)

    def __iter__(self):
        if self.path.failure is None:
            epoch, served = self.primary.epoch, 0
            batches = iter(self.primary)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except Exception as err:  # anything the GPU path raises; Ctrl-C goes on
                    self.path.fall_back(err)
                    break
                yield batch
                served += 1
            # the rest of this epoch's order, in order: whole batches, as the GPU path would have cut them
            yield from self._workers_loader(self.primary.epoch_order(epoch)[served * self.primary.batch_size:])
            return
        if self._workers is None:
            self._workers = self._workers_loader()
        self._workers.set_epoch(self.epoch)
        yield from self._workers


def guarded(loader, path: InputPath, num_workers: int | None = None):
    """``loader`` with the workers path behind it where it is the GPU path's (:class:`FallbackLoader`)."""
    return FallbackLoader(loader, path, num_workers=num_workers) if isinstance(loader, BatchLoader) else loader
