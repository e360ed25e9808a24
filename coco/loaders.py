"""Which input path a run takes, and its loader: :func:`make_loader`.

On CUDA with a cached dataset, the GPU path (``coco.gpu_batches.BatchLoader``); elsewhere a DataLoader with
worker processes (``coco.runtime.loader_settings`` decides how many) whose batches are moved to the device by
:class:`DeviceLoader`. :class:`EpochShuffleSampler` draws each epoch's order from (seed, epoch) alone, so a
resumed run sees the same order as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from coco.config import LOADER_MODES
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
