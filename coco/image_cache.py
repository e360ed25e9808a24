"""The in-memory image cache: the training images read once and kept in one flat buffer.

:class:`ImageCache` holds either the files' JPEG bytes (~1 GB for the course's 65,000 images) or decoded RGB
pixels (~7 GB); it saves to one file and reloads when the images have not changed. Decoding cached bytes uses
``coco.data.load_rgb``, so the pixels are exactly those of the uncached dataset. :class:`CachedImageDataset` is a
drop-in for the course datasets (same items, same transforms), so caching changes nothing the model sees.
"""
from __future__ import annotations

import io
import os
import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from coco import atomic
from coco.config import CACHE_MODES
from coco.data import load_rgb
from coco.runtime import available_memory_bytes

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
    CPU by :func:`coco.data.load_rgb`, whose conversions (transparency on white, ...) they need.
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
        """One file, written atomically (atomic.write_atomic)."""
        record = {"version": _CACHE_VERSION, "mode": self.mode, "buffer": self.buffer,
                  "offsets": torch.from_numpy(self.offsets), "shapes": torch.from_numpy(self.shapes),
                  "gpu_decodable": torch.from_numpy(self.gpu_decodable), "names": list(self.names),
                  "file_sizes": torch.from_numpy(self.file_sizes), "mtimes": torch.from_numpy(self.mtimes)}
        atomic.write_atomic(path, lambda file: torch.save(record, file))

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
        """The RGB PIL image, pixel for pixel what ``data.load_rgb(path)`` returns."""
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
