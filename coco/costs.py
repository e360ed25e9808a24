"""What a run will cost before it starts, on this machine and for this data: time per phase, peak memory, disk;
and the guard that stops a run which cannot fit, with the figures and what to change.

The speeds are measured, not looked up: the run's own network, at its own input size and precision, is timed
for a few batches on random inputs (a copy of it, with the random generators restored afterwards, so the run
itself is unchanged), then multiplied by what the run will process. Memory is added up from its parts: what the
process holds now, the batches' activations (counted on a one-image forward pass), the optimiser state, the image
and feature caches, the worker processes. ``python -m loops bench --recipe NAME`` measures whole runs at several
sizes to check these figures (see README).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from coco import features, loaders, recipe
from coco.config import Config
from coco.engine import evaluate, train_one_epoch
from coco.runtime import (
    amp_settings,
    available_memory_bytes,
    current_memory_bytes,
    free_disk_bytes,
    inference_batch_size,
    inference_settings,
    loader_settings,
)

WORKER_BYTES = 400 * 2**20  # a DataLoader worker process: a Python interpreter with torch and the dataset
HEADROOM = 0.9  # a run may plan to use this share of the memory available when it starts


class ResourceError(RuntimeError):
    """A run would need more memory or disk than this machine has; the message gives the figures and a remedy."""


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass
class Estimate:
    """Time per phase (seconds, with what it covers), memory by part (bytes; ``reclaimable`` parts are file
    pages the system can drop), disk, and what this machine has free."""

    phases: dict = field(default_factory=dict)     # name -> (seconds, what)
    memory: dict = field(default_factory=dict)     # name -> bytes
    reclaimable: dict = field(default_factory=dict)
    disk_bytes: int = 0
    available_bytes: int = 0
    free_disk_bytes: int = 0
    speeds: dict = field(default_factory=dict)     # what was measured, images per second

    @property
    def seconds(self) -> float:
        return sum(seconds for seconds, _ in self.phases.values())

    @property
    def needed_bytes(self) -> int:
        """Memory the run cannot do without (file pages excluded)."""
        return int(sum(self.memory.values()))

    @property
    def peak_bytes(self) -> int:
        """Peak resident memory, file pages of the feature cache included (what ``/usr/bin/time`` reports)."""
        return self.needed_bytes + int(sum(self.reclaimable.values()))

    def describe(self) -> str:
        lines = []
        for name, (seconds, what) in self.phases.items():
            lines.append(f"  {name:<14s} {format_seconds(seconds):>9s}   {what}")
        lines.append(f"  {'total':<14s} {format_seconds(self.seconds):>9s}")
        parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in {**self.memory, **self.reclaimable}.items()
                          if size >= 2**20)
        lines.append(f"  peak memory    {format_bytes(self.peak_bytes):>9s}   ({parts}); available now: "
                     f"{format_bytes(self.available_bytes) if self.available_bytes else 'unknown'}")
        if self.disk_bytes:
            lines.append(f"  disk           {format_bytes(self.disk_bytes):>9s}   feature cache in the run folder; "
                         f"free: {format_bytes(self.free_disk_bytes)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"seconds": {name: seconds for name, (seconds, _) in self.phases.items()},
                "total_s": self.seconds, "memory": dict(self.memory), "reclaimable": dict(self.reclaimable),
                "peak_bytes": self.peak_bytes, "needed_bytes": self.needed_bytes, "disk_bytes": self.disk_bytes,
                "available_bytes": self.available_bytes, "free_disk_bytes": self.free_disk_bytes,
                "speeds": dict(self.speeds)}


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------
def _rate(run, items: int, repeats: int = 2) -> float:
    """Items per second of ``run()`` (which handles ``items`` items), after one untimed warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return items * repeats / max(time.perf_counter() - start, 1e-9)


def _activations(module: nn.Module, sample: torch.Tensor) -> tuple[int, int]:
    """(sum, largest) of the output elements of ``module``'s leaf layers for one input: what a batch keeps for
    the backward pass, and what a forward-only pass holds at its widest point."""
    sizes = []
    hooks = [leaf.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
             for leaf in module.modules() if not list(leaf.children())]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()  # one image: BatchNorm in training mode would refuse a 1 x 1 map
            module(sample)
    finally:
        module.train(was_training)
        for hook in hooks:
            hook.remove()
    return sum(sizes), max(sizes, default=0)


def _load_seconds(source, transform, n: int = 8) -> float:
    """Seconds to read, decode and transform one image of ``source`` (mean over ``n`` spread-out images)."""
    rows = np.linspace(0, len(source) - 1, num=min(n, len(source))).astype(int)
    transform(source.load_image(int(rows[0])))  # warm-up
    start = time.perf_counter()
    for row in rows:
        transform(source.load_image(int(row)))
    return (time.perf_counter() - start) / len(rows)


def _inputs_of(config: Config, net, device) -> tuple[nn.Module, torch.Tensor, int]:
    """(what trains, one random input of it, the cached-feature extraction's output elements per image)."""
    image_size = config.image_size or net.spec.input_size
    k = config.cache_stages
    if k == 0:
        return net, torch.randn(1, 3, image_size, image_size, device=device), 0
    shape = features.feature_shape(net, k, image_size, device)
    return features.Tail(net, k), torch.randn(1, *shape, device=device), math.prod(shape)


def _measure(config: Config, net, device) -> dict:
    """Speeds (images per second) and per-image activation sizes of this run's network on this machine."""
    device = torch.device(device)
    image_size = config.image_size or net.spec.input_size
    # CPU: a few images time the per-image cost well enough, and a forward-only pass runs in small batches anyway
    batch = config.batch_size if device.type == "cuda" else min(8, config.batch_size)
    forward_batch = inference_batch_size(device, image_size, config.batch_size)
    measured = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(net).to(device)
        optimizer = recipe.build_optimizer(probe, config)
        recipe.set_trainable(probe, config, epoch=config.epochs - 1)  # the most that ever trains
        module, sample, _ = _inputs_of(config, probe, device)
        measured["train_elements"], measured["eval_elements"] = _activations(module, sample)
        amp_dtype, scaler = amp_settings(device, config.amp)
        targets = torch.zeros(1, probe.num_classes)
        if config.cache_stages:
            # a real epoch over a small in-memory bank: the loader's per-item cost counts as much as the step
            n_items = 4 * config.batch_size
            bank = np.random.default_rng(0).standard_normal((1, n_items, *sample.shape[1:])).astype(np.float16)
            train_set = features.FeatureBank(bank, np.arange(n_items), np.zeros((n_items, probe.num_classes)))
            loader = loaders.make_loader(train_set, batch_size=config.batch_size, device=device, train=True,
                                          mode="workers", num_workers=0, collate_fn=features.whole_batch)
            eval_loader = loaders.make_loader(features.FeatureBank(bank, np.arange(n_items), train_set.targets,
                                                                    view=0),
                                               batch_size=2 * config.batch_size, device=device, train=False,
                                               mode="workers", num_workers=0, collate_fn=features.whole_batch)
            batches_per_run = n_items
        else:
            images = torch.randn(batch, 3, image_size, image_size)
            loader = [(images, targets.expand(batch, -1).clone())]
            eval_loader = [(images[:forward_batch], targets.expand(min(batch, forward_batch), -1).clone())]
            batches_per_run = batch
        criterion = recipe.build_criterion(config, np.zeros((2, probe.num_classes))).to(device)
        measured["train_ips"] = _rate(lambda: train_one_epoch(module, loader, criterion, optimizer, device,
                                                              scaler=scaler, amp_dtype=amp_dtype, progress=False),
                                      batches_per_run)
        measured["eval_ips"] = _rate(lambda: evaluate(module, eval_loader, device, amp_dtype=amp_dtype,
                                                      progress=False), len(eval_loader[0][0]) if not config.cache_stages
                                     else batches_per_run)
        if config.cache_stages:
            cache_dtype, channels_last = inference_settings(device, config.amp)
            images = torch.randn(forward_batch, 3, image_size, image_size)
            with features.InferenceFormat(probe, device, config.amp), torch.inference_mode():
                measured["extract_ips"] = _rate(lambda: features.compute(
                    probe, config.cache_stages, images, device=device, amp_dtype=cache_dtype,
                    channels_last=channels_last), forward_batch)
                _, measured["extract_elements"] = _activations(
                    nn.Sequential(*probe.stages[:config.cache_stages]), torch.randn(1, 3, image_size, image_size))
        measured["trainable_parameters"] = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    return measured


# ----------------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------------
def estimate(config: Config, net, source, *, n_train: int, n_val: int, n_test: int, device, out_dir) -> Estimate:
    """The estimate for a run of ``config`` with ``net`` (as built for it) on ``n_train`` / ``n_val`` labelled
    images of ``source`` (the labelled dataset: its images are read to time decoding and to size the image cache)
    and ``n_test`` test images. ``out_dir``: where the run folder (and its feature cache) will be."""
    device = torch.device(device)
    measured = _measure(config, net, device)
    train_tf, eval_tf = recipe.presets_for(config)
    # Reading and transforming an image happens in the main process when there are no loader workers; with
    # workers (and on the gpu path) it overlaps with the network.
    in_process = loader_settings(device, config.num_workers)["num_workers"] == 0 and device.type != "cuda"
    eval_load_s = _load_seconds(source, eval_tf)
    train_load_s = _load_seconds(source, train_tf) if in_process and not config.cache_stages else 0.0
    measured["load_ips"] = 1.0 / eval_load_s
    n_all = n_train + n_val
    k = config.cache_stages
    if k:
        views, _, eval_views = features.cache_views(config)
        n_views, n_eval = len(views), len(eval_views)
    else:
        n_views, n_eval = 0, 1 + bool(config.tta_hflip)
    result = Estimate(available_bytes=available_memory_bytes(), free_disk_bytes=free_disk_bytes(out_dir),
                      speeds={key: round(value, 2) for key, value in measured.items() if key.endswith("_ips")})
    train_s = 1.0 / measured["train_ips"] + train_load_s
    eval_s = 1.0 / measured["eval_ips"] + (0.0 if k or not in_process else eval_load_s)
    if k:
        extract_s = 1.0 / measured["extract_ips"] + eval_load_s * (1.0 if in_process else 0.0)
        result.phases["feature cache"] = (n_views * n_all * extract_s,
                                          f"{n_views} view(s) x {n_all:,} images at {1 / extract_s:.1f} img/s")
    else:
        eval_s *= n_eval  # flip TTA runs the network twice per image
    per_epoch = n_train * train_s + n_val * (n_eval if k else 1) * eval_s
    result.phases["epochs"] = (config.epochs * per_epoch,
                               f"{config.epochs} x ({n_train:,} training at {1 / train_s:.1f} img/s + "
                               f"{n_val:,} validation images)")
    if config.cross_fit_folds:
        folds = config.cross_fit_folds
        heads = config.epochs * n_all * train_s * ((folds - 1) + 1)  # K heads on (K-1)/K of the images, one on all
        result.phases["cross-fit"] = (heads + n_all * n_eval * eval_s, f"{folds + 1} heads x {config.epochs} epochs")
    predict_s = n_test * n_eval * (extract_s if k else eval_s / n_eval)
    result.phases["predict"] = (predict_s, f"{n_test:,} test images x {n_eval} view(s)")

    # memory: what stays for the whole run, plus the widest phase's batches
    bytes_per = 2 if amp_settings(device, config.amp)[0] is not None else 4
    forward_batch = inference_batch_size(device, config.image_size or net.spec.input_size, config.batch_size)
    train_batch = 2 * measured["train_elements"] * bytes_per * config.batch_size
    eval_batch = 3 * measured["eval_elements"] * bytes_per * (2 * config.batch_size if k else forward_batch)
    batches = max(train_batch, eval_batch)
    if k:
        extract_bytes = 2 if inference_settings(device, config.amp)[0] is not None else 4
        batches = max(batches, 3 * measured["extract_elements"] * extract_bytes * forward_batch)
    result.memory["process now"] = current_memory_bytes()
    result.memory["batches"] = int(batches)
    result.memory["optimiser"] = int(measured["trainable_parameters"] * 4 * (3 + (config.ema_decay > 0)))
    result.memory["labels, probabilities"] = int((n_all + n_test) * net.num_classes * 4 * 4)
    workers = loader_settings(device, config.num_workers)["num_workers"] if not k else 0
    if workers:
        result.memory["loader workers"] = workers * WORKER_BYTES
    image_cache = _image_cache_mode(config, device)
    if image_cache != "none":
        per_image = image_bytes(source)[0 if image_cache == "jpeg" else 1]
        result.memory[f"image cache ({image_cache})"] = int(n_all * per_image)
    if k:
        store_bytes = int(n_views * n_all * 2 * math.prod(features.feature_shape(net, k, config.image_size
                                                                                 or net.spec.input_size, device)))
        result.reclaimable["feature cache pages"] = store_bytes
        result.disk_bytes = store_bytes
    return result


def _image_cache_mode(config: Config, device) -> str:
    """The image cache a run keeps (as fit._image_inputs decides it)."""
    if config.cache_stages:
        return "none"
    gpu_path = config.loader == "gpu" or (config.loader == "auto" and torch.device(device).type == "cuda")
    if config.image_cache == "auto" or (config.image_cache == "none" and gpu_path):
        return "jpeg" if gpu_path else "none"
    return config.image_cache


def check(result: Estimate, config: Config) -> None:
    """Raise :class:`ResourceError` when the run cannot fit: its memory (file pages excluded) above
    ``HEADROOM`` of what is available now, or its feature cache above the free disk space."""
    problems = []
    if result.available_bytes and result.needed_bytes > HEADROOM * result.available_bytes:
        largest = max(result.memory, key=result.memory.get)
        remedy = {
            "batches": f"a smaller batch_size (now {config.batch_size}) or image_size",
            "image cache (decoded)": "image_cache='jpeg' or 'none'",
            "image cache (jpeg)": "image_cache='none'",
            "loader workers": f"fewer num_workers (now {config.num_workers})",
            "labels, probabilities": "max_train_images to train on fewer images",
        }.get(largest, "max_train_images, a smaller image_size or batch_size")
        problems.append(f"it needs about {format_bytes(result.needed_bytes)} of memory, "
                        f"{format_bytes(result.available_bytes)} are available (largest part: {largest}, "
                        f"{format_bytes(result.memory[largest])}); try {remedy}")
    if result.disk_bytes and result.disk_bytes > result.free_disk_bytes:
        problems.append(f"its feature cache needs {format_bytes(result.disk_bytes)} of disk, "
                        f"{format_bytes(result.free_disk_bytes)} are free; try fewer cache_views "
                        f"(now {config.cache_views}), a smaller image_size, or out_dir on a larger disk")
    if problems:
        raise ResourceError("this run does not fit on this machine: " + "; ".join(problems) + ".")


def image_bytes(source, sample: int = 64) -> tuple[float, float]:
    """Mean (file size, decoded RGB size) of an image of ``source``, from the headers of up to ``sample`` files."""
    from PIL import Image

    paths = source.image_paths[:: max(1, len(source.image_paths) // sample)][:sample]
    sizes, pixels = [], []
    for path in paths:
        sizes.append(Path(path).stat().st_size)
        with Image.open(path) as image:
            pixels.append(image.width * image.height * 3)
    return float(np.mean(sizes)), float(np.mean(pixels))
