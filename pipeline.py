"""The input pipeline: in-memory image cache, batched decode + augmentation on the device, and the loaders.

ShuffleNet V2 is so light that on a GPU the per-image JPEG decode and augmentation in DataLoader
workers, not the network, sets the pace.  This module removes that bottleneck:

- :class:`ImageCache` reads the training images once and keeps them in one flat buffer, either as
  the files' JPEG bytes (~1 GB for the course's 65,000 images) or as decoded RGB pixels (~7 GB);
  it saves to one file and reloads when the images have not changed.  Decoding cached bytes uses
  :func:`dataset.load_rgb`, so the pixels are exactly those of the uncached dataset.
- :class:`CachedImageDataset` is a drop-in for the course datasets (same items, same
  ``TransformSubset`` + preset objects), so caching changes nothing the model sees.
- :func:`make_loader` picks the loader: on CUDA, batches are assembled in the main process, decoded
  on the GPU (nvJPEG) and augmented there by :func:`batch_transform`, a batched re-implementation of
  ``TrainPreset`` / ``EvalPreset`` that draws its parameters from the preset's own
  ``sample_params`` (no worker processes, hence no Windows start-up cost); elsewhere a DataLoader
  with worker settings from :func:`runtime.loader_settings` and, for training, an
  :class:`EpochShuffleSampler` whose order depends only on (seed, epoch).

``bench.py`` measures both paths (``python -m loops bench``).
"""
from __future__ import annotations

import io
import math
import os
import pickle
import queue
import random
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

import files
from dataset import EvalPreset, TrainPreset, TransformSubset, load_rgb, long_side_size
from runtime import available_memory_bytes, derived_seed, loader_settings

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # torchvision 0.29 deprecated its decoders for TorchCodec's; without them, load_rgb decodes
    ImageReadMode = decode_jpeg = None
# The deprecation is known (see above) and would otherwise be repeated for every batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)
CACHE_MODES = ("auto", "none", "jpeg", "decoded")
LOADER_MODES = ("auto", "workers", "gpu")
_CACHE_VERSION = 1
_DECODED_RAM_SHARE = 0.5  # "auto" keeps decoded pixels only if they take at most half the available RAM


def _log(message: str) -> None:
    # stderr, so that `bench --json` leaves exactly one JSON object on stdout
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
def _fingerprint(paths) -> tuple[list[str], np.ndarray, np.ndarray]:
    """File names, sizes and modification times: what tells a saved cache that it is stale."""
    stats = [os.stat(p) for p in paths]
    return ([Path(p).name for p in paths], np.array([s.st_size for s in stats], dtype=np.int64),
            np.array([s.st_mtime_ns for s in stats], dtype=np.int64))


def _header(path) -> tuple[int, int, bool]:
    """(height, width, gpu_decodable) from the file header, without decoding the pixels.

    nvJPEG gets plain 3-channel JPEGs only; grayscale and CMYK JPEGs and PNGs are decoded on the
    CPU by :func:`dataset.load_rgb`, whose conversions (transparency on white, ...) they need.
    """
    try:
        with Image.open(path) as img:
            return img.height, img.width, img.format == "JPEG" and img.mode == "RGB"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise OSError(f"{path}: cannot read image header ({type(err).__name__}: {err})") from err


class ImageCache:
    """All images of a dataset in one flat ``uint8`` buffer, in the dataset's order.

    ``mode="jpeg"`` keeps the files' bytes, ``mode="decoded"`` the RGB pixels (H x W x 3 each, at
    ``offsets[i]``).  One buffer and a few arrays instead of 65,000 Python objects: cheap to hand
    to DataLoader workers (a torch tensor goes through shared memory under spawn) and to save.
    """

    def __init__(self, mode: str, buffer: torch.Tensor, offsets: np.ndarray, shapes: np.ndarray,
                 gpu_decodable: np.ndarray, names: list[str], file_sizes: np.ndarray, mtimes: np.ndarray):
        if mode not in ("jpeg", "decoded"):
            raise ValueError(f"ImageCache mode must be 'jpeg' or 'decoded', got {mode!r}")
        self.mode, self.buffer, self.offsets, self.shapes = mode, buffer, offsets, shapes
        self.gpu_decodable, self.names, self.file_sizes, self.mtimes = gpu_decodable, names, file_sizes, mtimes

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel())

    def __repr__(self) -> str:
        return f"ImageCache(mode={self.mode!r}, images={len(self)}, size={self.nbytes / 2**20:.0f} MiB)"

    # ---- building, saving, loading ----
    @classmethod
    def build(cls, paths, mode: str = "auto", *, device="cpu", threads: int | None = None,
              verbose: bool = True) -> "ImageCache":
        """Read every image once.  ``mode="auto"``: JPEG bytes when the GPU decodes (CUDA), else
        decoded pixels if they fit in half the available RAM, else JPEG bytes."""
        if mode not in ("auto", "jpeg", "decoded"):
            raise ValueError(f"cache mode must be 'auto', 'jpeg' or 'decoded', got {mode!r}")
        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError("ImageCache.build: no image paths given")
        start = time.perf_counter()
        threads = threads or min(8, os.cpu_count() or 1)  # file reads and PIL decodes release the GIL
        names, file_sizes, mtimes = _fingerprint(paths)
        with ThreadPoolExecutor(threads) as pool:
            headers = list(pool.map(_header, paths, chunksize=64))
        shapes = np.array([h[:2] for h in headers], dtype=np.int64)
        gpu_decodable = np.array([h[2] for h in headers], dtype=bool)
        decoded_bytes = int((shapes[:, 0] * shapes[:, 1] * 3).sum())
        if mode == "auto":
            fits = decoded_bytes <= _DECODED_RAM_SHARE * available_memory_bytes()
            mode = "decoded" if fits and torch.device(device).type != "cuda" else "jpeg"
        item_sizes = shapes[:, 0] * shapes[:, 1] * 3 if mode == "decoded" else file_sizes
        offsets = np.zeros(len(paths) + 1, dtype=np.int64)
        np.cumsum(item_sizes, out=offsets[1:])
        buffer = torch.empty(int(offsets[-1]), dtype=torch.uint8)
        flat = buffer.numpy()
        if verbose:
            _log(f"ImageCache: reading {len(paths):,} images as {mode} ({offsets[-1] / 2**20:,.0f} MiB)...")

        def fill(i: int) -> None:
            view = flat[offsets[i]:offsets[i + 1]]
            if mode == "jpeg":
                with open(paths[i], "rb") as file:
                    if file.readinto(memoryview(view)) != len(view):
                        raise OSError(f"{paths[i]}: changed size while being cached")
            else:
                pixels = np.asarray(load_rgb(paths[i]))
                if pixels.shape[:2] != tuple(shapes[i]):
                    raise OSError(f"{paths[i]}: decoded to {pixels.shape[:2]}, header said {tuple(shapes[i])}")
                view[:] = pixels.reshape(-1)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fill, range(len(paths)), chunksize=64))
        if verbose:
            _log(f"ImageCache: done in {time.perf_counter() - start:.1f} s")
        return cls(mode, buffer, offsets, shapes, gpu_decodable, names, file_sizes, mtimes)

    def save(self, path) -> None:
        """One file, written atomically (files.write_atomic)."""
        record = {"version": _CACHE_VERSION, "mode": self.mode, "buffer": self.buffer,
                  "offsets": torch.from_numpy(self.offsets), "shapes": torch.from_numpy(self.shapes),
                  "gpu_decodable": torch.from_numpy(self.gpu_decodable), "names": list(self.names),
                  "file_sizes": torch.from_numpy(self.file_sizes), "mtimes": torch.from_numpy(self.mtimes)}
        files.write_atomic(path, lambda file: torch.save(record, file))

    @classmethod
    def load(cls, path, paths) -> "ImageCache":
        """Reload a saved cache; ``ValueError`` saying what differs if it does not match ``paths``
        (file names, sizes, modification times): a stale cache is never used silently."""
        path = Path(path)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise ValueError(f"{path}: not a readable cache file ({type(err).__name__}: {err})") from err
        if record.get("version") != _CACHE_VERSION:
            raise ValueError(f"{path}: cache format version {record.get('version')}, expected {_CACHE_VERSION}")
        names, file_sizes, mtimes = _fingerprint(paths)
        if record["names"] != names:
            missing = sorted(set(names) - set(record["names"]))
            extra = sorted(set(record["names"]) - set(names))
            raise ValueError(f"{path}: stale cache, the image list differs ({len(missing)} new, {len(extra)} gone"
                             f"{', e.g. ' + (missing + extra)[0] if missing or extra else ', order differs'})")
        changed = np.flatnonzero((record["file_sizes"].numpy() != file_sizes) | (record["mtimes"].numpy() != mtimes))
        if len(changed):
            raise ValueError(f"{path}: stale cache, {len(changed)} image(s) changed since it was written, "
                             f"e.g. {names[changed[0]]}")
        return cls(record["mode"], record["buffer"], record["offsets"].numpy(), record["shapes"].numpy(),
                   record["gpu_decodable"].numpy(), names, file_sizes, mtimes)

    # ---- reading one image ----
    def encoded(self, i: int) -> torch.Tensor:
        """The file's bytes as a 1-D uint8 tensor (a view, no copy); jpeg mode only."""
        if self.mode != "jpeg":
            raise ValueError("encoded() needs a cache in 'jpeg' mode")
        return self.buffer[self.offsets[i]:self.offsets[i + 1]]

    def pixels(self, i: int) -> torch.Tensor:
        """The image as a uint8 H x W x 3 tensor on the CPU (a view in decoded mode)."""
        if self.mode == "decoded":
            height, width = self.shapes[i]
            return self.buffer[self.offsets[i]:self.offsets[i + 1]].view(int(height), int(width), 3)
        return torch.from_numpy(np.array(self.pil(i)))

    def pil(self, i: int) -> Image.Image:
        """The RGB PIL image, pixel for pixel what ``dataset.load_rgb(path)`` returns."""
        if self.mode == "decoded":
            return Image.fromarray(self.pixels(i).numpy(), "RGB")
        try:
            # the very decoder and conversions of the uncached dataset, on the bytes in memory
            return load_rgb(io.BytesIO(self.encoded(i).numpy().tobytes()))
        except OSError as err:
            raise OSError(f"{self.names[i]} (cached): {err}") from err


class CachedImageDataset(Dataset):
    """A course dataset whose images come from an :class:`ImageCache` instead of the disk.

    Same ``stems``, ``targets``, ``image_paths``, ``load_image`` and items as the wrapped
    ``COCOTrainImageDataset`` / ``COCOTestImageDataset``, so ``TransformSubset`` and the presets
    work on it unchanged and the model sees the same images, labels and augmentations.
    """

    def __init__(self, dataset, cache: ImageCache, transform=None):
        if [Path(p).name for p in dataset.image_paths] != list(cache.names):
            raise ValueError(f"cache of {len(cache)} images does not match the dataset in {dataset.img_dir}")
        self.dataset, self.cache = dataset, cache
        self.transform = transform if transform is not None else dataset.transform
        self.img_dir, self.stems, self.image_paths = dataset.img_dir, dataset.stems, dataset.image_paths
        self.targets = getattr(dataset, "targets", None)  # None for the unlabelled test set

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, idx: int) -> Path:
        return self.image_paths[idx]

    def load_image(self, idx: int) -> Image.Image:
        return self.cache.pil(idx)

    def __getitem__(self, idx):
        image = self.load_image(idx)
        if self.transform is not None:
            image = self.transform(image)
        if self.targets is None:
            return image, self.stems[idx]
        return image, torch.from_numpy(self.targets[idx].copy())


def cache_dataset(dataset, mode: str = "auto", path=None, *, device="cpu", verbose: bool = True):
    """The dataset with its images cached in memory (``mode="none"``: the dataset itself).

    With ``path``, a saved cache is reused when it still matches the image files (and the mode
    asked for); a stale or mismatching one is rebuilt, with a message, and saved again.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")
    if mode == "none" or isinstance(dataset, CachedImageDataset):
        return dataset
    cache = None
    if path is not None and Path(path).exists():
        try:
            cache = ImageCache.load(path, dataset.image_paths)
        except ValueError as err:
            if verbose:
                _log(f"{err}; rebuilding it")
        if cache is not None and mode != "auto" and cache.mode != mode:
            if verbose:
                _log(f"{path} holds a {cache.mode} cache, {mode} was asked for; rebuilding it")
            cache = None
    if cache is None:
        cache = ImageCache.build(dataset.image_paths, mode, device=device, verbose=verbose)
        if path is not None:
            cache.save(path)
    elif verbose:
        _log(f"ImageCache: reloaded {cache} from {path}")
    return CachedImageDataset(dataset, cache)


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
            raise ValueError("the gpu loader needs a cached dataset (pipeline.cache_dataset) and a TrainPreset "
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
            try:
                decoded = dict(zip(plain, decode_jpeg([cache.encoded(row) for row in plain], mode=ImageReadMode.RGB,
                                                      device=device)))
            except RuntimeError as err:  # a JPEG variant the device decoder rejects: the CPU decoder names bad files
                _log(f"decode_jpeg on {device} failed ({err}); decoding this batch with load_rgb")
        images = [decoded[row] if row in decoded else _upload(cache.pixels(row).permute(2, 0, 1), device)
                  for row in rows]
        return pack_images(images)

    def _batches(self, epoch: int):
        seed = derived_seed(self.seed, epoch)
        rng = random.Random(seed)
        n = len(self.indices)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy() if self.shuffle \
            else np.arange(n)
        stop = len(self) * self.batch_size if self.drop_last else n
        train = type(self.preset) is TrainPreset
        for start in range(0, stop, self.batch_size):
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
