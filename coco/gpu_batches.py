"""The GPU input path: JPEG decode and augmentation of whole batches on the device, in the main process.

ShuffleNet V2 is so light that on a GPU the per-image JPEG decode and augmentation in DataLoader workers, not
the network, sets the pace. :class:`BatchLoader` takes a dataset cached as JPEG bytes (``coco.image_cache``),
decodes each batch with ``torchvision.io.decode_jpeg`` on the device and applies the ``TrainPreset``'s crops,
jitter and mirror as batched tensor operations (:func:`batch_transform`), so no worker processes are needed.
"""
from __future__ import annotations

import math
import queue
import random
import threading
import warnings

import numpy as np
import torch

from coco.data import TransformSubset
from coco.image_cache import CachedImageDataset, ImageCache, _log
from coco.runtime import derived_seed
from coco.transforms import EvalPreset, TrainPreset, long_side_size

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # torchvision 0.29 deprecated its decoders for TorchCodec's; without them, load_rgb decodes
    ImageReadMode = decode_jpeg = None
# The deprecation is known (see above) and would otherwise be repeated for every batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


# --------------------------------------------------------------------------------------------
# Batched presets: the whole batch in a few tensor operations, on any device
# --------------------------------------------------------------------------------------------
def _plan(preset, height: int, width: int, params: dict | None):
    """Per axis (rows, then columns): (src0, src_len, full_len, sel0, out_len, pad0, flip).

    Source pixels [src0, src0 + src_len) are resized to full_len; positions [sel0, sel0 + out_len)
    of the result are kept, mirrored if ``flip``, and placed at pad0 on the square canvas.
    """
    size = preset.image_size
    if type(preset) is TrainPreset:
        crop_h, crop_w = params["height"], params["width"]
        out_h, out_w = long_side_size(crop_h, crop_w, size)
        offset = params["offset"]
        return ((params["top"], crop_h, out_h, 0, out_h, round((size - out_h) * offset[0]), False),
                (params["left"], crop_w, out_w, 0, out_w, round((size - out_w) * offset[1]), bool(params["flip"])))
    if preset.mode == "pad":
        out_h, out_w = long_side_size(height, width, size)
        return ((0, height, out_h, 0, out_h, round((size - out_h) * 0.5), False),
                (0, width, out_w, 0, out_w, round((size - out_w) * 0.5), False))
    if preset.mode == "stretch":
        return (0, height, size, 0, size, 0, False), (0, width, size, 0, size, 0, False)
    # "crop": torchvision's resize of the short side to `size`, then its centre crop
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    full_h, full_w = (new_long, size) if height > width else (size, new_long)
    return ((0, height, full_h, int(round((full_h - size) / 2.0)), size, 0, False),
            (0, width, full_w, int(round((full_w - size) / 2.0)), size, 0, False))


def _taps(plan: np.ndarray, size: int, device):
    """Source indices and weights (B, size, K) of torch's antialiased bilinear resize along one axis.

    The weights are ATen's (``_compute_indices_min_size_weights_aa`` for a float32 tensor: triangle
    filter, widened by the scale when shrinking, renormalised at the borders), its float32 and
    float64 roundings included, so a crop + resize + flip + pad is one gather per axis.  Computed
    on ``device`` (a few hundred thousand numbers per batch).  Canvas positions outside the placed
    image get weight 0 (``valid`` False).
    """
    f32, f64 = torch.float32, torch.float64
    # the number of taps, known on the host so that nothing waits for the device
    host_scale = plan[:, 1].astype(np.float32) / plan[:, 2].astype(np.float32)
    n_taps = int(np.ceil(np.maximum(host_scale, 1.0)).max()) * 2 + 1
    plan = _upload(torch.from_numpy(plan), device)
    src0, src_len, full_len, sel0, out_len, pad0, flip = (plan[:, k, None] for k in range(7))
    local = torch.arange(size, device=device)[None, :] - pad0
    valid = (local >= 0) & (local < out_len)
    local = torch.minimum(local.clamp(min=0), out_len - 1)
    local = torch.where(flip.bool(), out_len - 1 - local, local)
    q = sel0 + local  # position in the resized axis
    scale = src_len.to(f32) / full_len.to(f32)
    support = torch.where(scale >= 1.0, scale, 1.0)  # bilinear: half of 2 taps, times the scale when shrinking
    invscale = torch.where(scale >= 1.0, (1.0 / scale.to(f64)).to(f32), 1.0)
    max_taps = torch.ceil(support).long() * 2 + 1
    center = (scale.to(f64) * (q.to(f64) + 0.5)).to(f32)
    xmin = torch.trunc((center - support).to(f64) + 0.5).clamp(min=0).long()
    xsize = torch.minimum(torch.trunc((center + support).to(f64) + 0.5).long(), src_len) - xmin
    xsize = torch.minimum(xsize.clamp(min=0), max_taps)
    taps = xmin[..., None] + torch.arange(n_taps, device=device)
    distance = ((taps.to(f32) - center[..., None]).to(f64) + 0.5) * invscale[..., None].to(f64)
    distance = distance.to(f32).abs()
    weights = torch.where(distance < 1.0, (1.0 - distance.to(f64)).to(f32), 0.0)
    weights = torch.where(taps < (xmin + xsize)[..., None], weights, 0.0)
    total = weights[..., 0].clone()
    for k in range(1, n_taps):  # in order, in float32, like ATen
        total += weights[..., k]
    weights = torch.where(total[..., None] != 0, weights / torch.where(total == 0, 1.0, total)[..., None], weights)
    weights = torch.where(valid[..., None], weights, 0.0)
    index = src0[..., None] + torch.minimum(taps, src_len[..., None] - 1)
    return index, weights, valid


def _weighted_sum(values: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of values x weights over the taps in ``dim``, in ATen's order: ``t0 * w0``, then one
    fused multiply-add per tap (``addcmul`` is fused on CPU and CUDA), so the roundings match."""
    total = values.select(dim, 0) * weights.select(dim, 0)
    for k in range(1, values.shape[dim]):
        total = torch.addcmul(total, values.select(dim, k), weights.select(dim, k))
    return total


def _upload(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: a plain ``.to("cuda")`` from
    pageable memory synchronises with the stream, i.e. with the training step still queued on it."""
    if torch.device(device).type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    # torchvision's rgb_to_grayscale on uint8 values, truncation included
    return (0.2989 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]).trunc_()


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, one_minus_ratio: torch.Tensor):
    # torchvision's _blend for uint8 images: float blend, clamp, truncate back to integers.  It
    # computes 1 - ratio in double precision before rounding to float32, so the caller does too.
    return (ratio * images + one_minus_ratio * other).clamp_(0.0, 255.0).trunc_()


def pack_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, np.ndarray]:
    """Uint8 C x H x W images of varying sizes -> one (B, 3, H_max, W_max) batch and their (h, w)."""
    sizes = np.array([image.shape[-2:] for image in images], dtype=np.int64)
    batch = images[0].new_zeros((len(images), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max())))
    for k, image in enumerate(images):
        batch[k, :, :image.shape[-2], :image.shape[-1]] = image
    return batch, sizes


def batch_transform(batch: torch.Tensor, sizes, preset, params: list[dict] | None = None, *,
                    channels_last: bool = False) -> torch.Tensor:
    """``preset`` (``TrainPreset`` or ``EvalPreset``) applied to a whole padded uint8 batch at once.

    ``batch[k, :, :h_k, :w_k]`` holds image k; ``params[k]`` are its ``TrainPreset.sample_params``.
    Each step reproduces the per-image preset's arithmetic (ATen's resize weights and roundings,
    torchvision's truncating colour blends, the same normalisation and padding): on the CPU the
    result equals ``preset.apply`` image by image, bit for bit (the tests check it).  Nothing in
    here waits for the device, so batches can be prepared while the GPU trains.
    """
    if type(preset) not in (TrainPreset, EvalPreset):
        raise TypeError(f"batch_transform supports TrainPreset and EvalPreset, got {preset!r}")
    train = type(preset) is TrainPreset
    n_images, size, device = batch.shape[0], preset.image_size, batch.device
    if train and (params is None or len(params) != n_images):
        raise ValueError("TrainPreset needs one sample_params dict per image")
    plans = np.array([_plan(preset, int(h), int(w), params[k] if train else None)
                      for k, (h, w) in enumerate(np.asarray(sizes))], dtype=np.int64)  # (B, 2 axes, 7)

    row_index, row_weights, row_valid = _taps(plans[:, 0], size, device)
    col_index, col_weights, col_valid = _taps(plans[:, 1], size, device)
    images = batch.float()
    channels, height = images.shape[1], images.shape[2]
    # columns first, then rows, like ATen's separable antialiased resize
    taps = col_index.shape[-1]
    index = col_index.view(n_images, 1, 1, size * taps).expand(n_images, channels, height, size * taps)
    images = images.gather(3, index).view(n_images, channels, height, size, taps)
    images = _weighted_sum(images, col_weights.view(n_images, 1, 1, size, taps), dim=4)
    taps = row_index.shape[-1]
    index = row_index.view(n_images, 1, size * taps, 1).expand(n_images, channels, size * taps, size)
    images = images.gather(2, index).view(n_images, channels, size, taps, size)
    images = _weighted_sum(images, row_weights.view(n_images, 1, size, taps, 1), dim=3)
    images = images.round_().clamp_(0.0, 255.0)
    inside = (row_valid[:, None, :, None] & col_valid[:, None, None, :])  # (B, 1, S, S)

    if train and preset.color_jitter > 0:
        ratios = np.array([[p["brightness"], p["contrast"], p["saturation"]] for p in params], dtype=np.float64)
        factors = _upload(torch.from_numpy(np.concatenate([ratios, 1.0 - ratios], axis=1).astype(np.float32)), device)
        brightness, contrast, saturation, _, contrast_rest, saturation_rest = (
            factors[:, k].view(-1, 1, 1, 1) for k in range(6))
        images = (brightness * images).clamp_(0.0, 255.0).trunc_()
        pixel_counts = inside.sum(dim=(-2, -1), keepdim=True).float()
        means = (_grayscale(images) * inside).sum(dim=(-2, -1), keepdim=True) / pixel_counts
        images = _blend(images, means, contrast, contrast_rest)
        images = _blend(images, _grayscale(images), saturation, saturation_rest)

    mean = _upload(torch.tensor(preset.mean, dtype=torch.float32), device).view(1, -1, 1, 1)
    std = _upload(torch.tensor(preset.std, dtype=torch.float32), device).view(1, -1, 1, 1)
    images = images.div_(255.0).sub_(mean).div_(std)
    images = torch.where(inside, images, torch.zeros((), device=device))  # pad with the mean colour
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------
def _unwrap(dataset):
    """(dataset holding the images, row indices into it, preset) of a dataset or TransformSubset."""
    if isinstance(dataset, TransformSubset):
        return dataset.dataset, dataset.indices, dataset.transform
    return dataset, np.arange(len(dataset)), getattr(dataset, "transform", None)


def gpu_path_supported(dataset) -> bool:
    """Whether :class:`BatchLoader` can serve ``dataset``: cached images and a stock preset."""
    base, _, preset = _unwrap(dataset)
    return isinstance(base, CachedImageDataset) and type(preset) in (TrainPreset, EvalPreset)


class BatchLoader:
    """Batches assembled in the main process: cached images -> decode -> batched preset, on ``device``.

    On CUDA, JPEGs are decoded by nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``) and
    the preset runs on the GPU; a background thread prepares the next batches while the GPU trains.
    On the CPU the same code yields exactly what the per-image DataLoader path yields (the tests
    check it).  On CUDA, nvJPEG's pixels differ from libjpeg-turbo's by a grey level here and
    there; the augmentation arithmetic and its distribution are the same.  Augmentation parameters
    come from the preset's ``sample_params`` with a ``random.Random`` seeded per epoch
    (:func:`derived_seed`), so runs repeat.
    Yields ``(images, targets)`` (float32 targets on ``device``) or ``(images, stems)`` for test data.
    """

    def __init__(self, dataset, *, batch_size: int, device, shuffle: bool, drop_last: bool, seed: int = 0,
                 channels_last: bool = False, prefetch: int | None = None):
        if not gpu_path_supported(dataset):
            raise ValueError("the gpu loader needs a cached dataset (image_cache.cache_dataset) and a TrainPreset "
                             f"or EvalPreset transform; got {type(_unwrap(dataset)[0]).__name__} with "
                             f"{_unwrap(dataset)[2]!r}")
        self.base, self.indices, self.preset = _unwrap(dataset)
        self.cache: ImageCache = self.base.cache
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = int(batch_size), shuffle, drop_last, seed
        self.channels_last = channels_last
        self.prefetch = (2 if self.device.type == "cuda" else 0) if prefetch is None else prefetch
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _decode(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        cache, device = self.cache, self.device
        if cache.mode == "decoded":
            sizes = cache.shapes[rows]
            staging = torch.empty((len(rows), int(sizes[:, 0].max()), int(sizes[:, 1].max()), 3), dtype=torch.uint8,
                                  pin_memory=device.type == "cuda")
            for k, row in enumerate(rows):
                staging[k, :sizes[k, 0], :sizes[k, 1]] = cache.pixels(row)
            return staging.to(device, non_blocking=True).permute(0, 3, 1, 2), sizes
        # Plain JPEGs in one decode_jpeg call (nvJPEG on CUDA, torchvision's libjpeg-turbo on the
        # CPU); the others through load_rgb, whose conversions they need.
        plain = [row for row in rows if cache.gpu_decodable[row]] if decode_jpeg is not None else []
        decoded = {}
        if plain:
            if torch.device(device).type == "cuda":
                # nvJPEG's hardware decoder writes its outputs before the work already queued on the stream has
                # run, into blocks the caching allocator hands out as soon as they are freed on that stream: the
                # previous step's targets, still read by its queued loss, came back as pixel values (255) on an
                # H200 (tests/gpu_checks.sh). Draining the stream first costs the overlap, not correctness.
                torch.cuda.current_stream(device).synchronize()
            try:
                decoded = dict(zip(plain, decode_jpeg([cache.encoded(row) for row in plain], mode=ImageReadMode.RGB,
                                                      device=device)))
            except RuntimeError as err:  # a JPEG variant the device decoder rejects: the CPU decoder names bad files
                _log(f"decode_jpeg on {device} failed ({err}); decoding this batch with load_rgb")
        images = [decoded[row] if row in decoded else _upload(cache.pixels(row).permute(2, 0, 1), device)
                  for row in rows]
        return pack_images(images)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions in the dataset in the order epoch ``epoch`` serves them (without drop_last's leftovers): the
        order of ``loaders.EpochShuffleSampler`` for training, the dataset's order otherwise."""
        n = len(self.indices)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch))).numpy() \
            if self.shuffle else np.arange(n)
        return order[:len(self) * self.batch_size if self.drop_last else n]

    def _batches(self, epoch: int):
        rng = random.Random(derived_seed(self.seed, epoch))
        order = self.epoch_order(epoch)
        train = type(self.preset) is TrainPreset
        for start in range(0, len(order), self.batch_size):
            rows = self.indices[order[start:start + self.batch_size]]
            # drawn image by image in loading order, as TrainPreset.__call__ draws them
            params = [self.preset.sample_params(int(h), int(w), rng) for h, w in self.cache.shapes[rows]] \
                if train else None
            batch, sizes = self._decode(rows)
            images = batch_transform(batch, sizes, self.preset, params, channels_last=self.channels_last)
            if self.base.targets is None:
                yield images, [self.base.stems[row] for row in rows]
            else:
                yield images, _upload(torch.from_numpy(self.base.targets[rows]), self.device)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.prefetch <= 0:
            yield from self._batches(epoch)
            return
        # A thread keeps `prefetch` batches ready: kernels it launches go to the same CUDA stream
        # as the training step, in order, so handing tensors over needs no extra synchronisation.
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for item in self._batches(epoch):
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready.put(done)
            except BaseException as err:  # handed to the consumer, which re-raises it
                ready.put(err)

        worker = threading.Thread(target=produce, name="BatchLoader", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()
