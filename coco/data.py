"""The course's datasets: photos read safely and turned into ``(image, target)`` or ``(image, stem)`` items.

``COCOTrainImageDataset`` and ``COCOTestImageDataset`` keep the course's names and arguments; labels are parsed
and checked when a dataset is built (``coco.course``), never in the middle of an epoch, and ``check_images``
decodes every image first so an unreadable file stops a run at once, named. ``TransformSubset`` gives each side of
a split its own transform. Everything is importable at module level, so DataLoader workers started with
``spawn`` (Windows, macOS) can unpickle it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from coco.course import _MAX_LISTED, NUM_CLASSES, _first_names, list_images, list_label_files, read_label_file


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file into an RGB PIL image.

    Grayscale, palette, CMYK and 16-bit images are converted; transparent pixels (RGBA, or a
    palette with transparency) are laid on white rather than on the black that a plain
    ``convert("RGB")`` would give.  A file that cannot be decoded raises ``OSError`` naming it.
    """
    try:
        with Image.open(path) as img:
            img.load()  # force the full decode here, so truncated files fail now, with the name
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA", "PA"):
                rgba = img.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                canvas.paste(rgba, mask=rgba.getchannel("A"))
                return canvas
            if img.mode == "I;16" or img.mode == "I":
                # 16/32-bit grayscale: scale to 8 bits instead of clipping to white.
                array = np.asarray(img, dtype=np.float64)
                peak = array.max() if array.size and array.max() > 0 else 1.0
                img = Image.fromarray((array / peak * 255).astype(np.uint8))
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise OSError(f"{path}: image too large to decode safely ({err}); the course's photos are 224 px on their "
                      "long side: is this the right file?") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise OSError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def unreadable_images(paths: Sequence[Path], *, progress: bool = False, desc: str = "checking images",
                      threads: int | None = None) -> list[tuple[Path, str]]:
    """(path, reason) of every image among ``paths`` that :func:`load_rgb` cannot decode, found by decoding them
    all (several threads: file reads and JPEG decoding release the GIL). The course's 65,000 images take about
    a minute on two cores; an unreadable one found here cannot stop a long run halfway."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def problem(path):
        try:
            load_rgb(path)
        except OSError as err:
            return str(err)
        return None

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        reasons = list(tqdm(pool.map(problem, paths, chunksize=64), total=len(paths), desc=desc, unit="img",
                            disable=not progress, leave=False, dynamic_ncols=True))
    return [(Path(path), reason) for path, reason in zip(paths, reasons) if reason is not None]


def _bad_images_message(bad: Sequence[tuple[Path, str]], folder: Path, remedy: str) -> str:
    shown = "; ".join(reason for _, reason in bad[:_MAX_LISTED]) + ("; ..." if len(bad) > _MAX_LISTED else "")
    return f"{len(bad)} image(s) in {folder} cannot be read: {shown} ({remedy})"


# --------------------------------------------------------------------------------------------
# Datasets (the course's names, arguments and return values)
# --------------------------------------------------------------------------------------------
class _ImageListDataset(Dataset):
    """What both course datasets share: ``stems`` and ``image_paths`` in the same order, a ``transform``."""

    stems: list[str]
    image_paths: list[Path]
    transform = None

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, idx: int) -> Path:
        return self.image_paths[idx]

    def load_image(self, idx: int) -> Image.Image:
        """The untransformed RGB image."""
        return load_rgb(self.image_paths[idx])

    def transformed_image(self, idx: int):
        image = self.load_image(idx)
        return image if self.transform is None else self.transform(image)


class COCOTrainImageDataset(_ImageListDataset):
    """Labelled training images: ``dataset[i] -> (image, 80-dim float multi-hot tensor)``.

    Same constructor and items as the course's class, plus keyword-only safety switches. Faults stop the
    construction with an error that names the files, unless their switch says to leave them out (then a count
    is printed):

    - ``skip_unmatched``: label files without an image, images without a label file.
    - ``skip_empty``: label files with no class index. Every course image holds at least one object, so an
      empty file is a broken one rather than a photo of nothing: by default it is an error.
    - ``check_images``: decode every image now (:func:`unreadable_images`, with a progress bar when
      ``progress``), so that a broken file cannot stop an epoch halfway; ``skip_unreadable`` leaves out those
      that fail (it implies the check).

    ``stems`` (sorted, like the course) and ``targets`` (``float32`` array N x 80) are ready
    after construction; ``load_image(i)`` returns the untransformed PIL image.
    """

    def __init__(self, img_dir, annotations_dir, max_images=None, transform=None, *,
                 skip_unmatched: bool = False, skip_empty: bool = False, check_images: bool = False,
                 skip_unreadable: bool = False, progress: bool = False):
        self.img_dir = Path(img_dir)
        self.annotations_dir = Path(annotations_dir)
        self.transform = transform
        if not self.annotations_dir.is_dir():
            raise FileNotFoundError(f"label folder not found: {self.annotations_dir}")
        images = list_images(self.img_dir)
        label_files = list_label_files(self.annotations_dir)
        if not label_files:
            raise FileNotFoundError(f"no .cls label files in {self.annotations_dir}")

        labels_only = sorted(set(label_files) - set(images))
        images_only = sorted(set(images) - set(label_files))
        problems = []
        if labels_only:
            problems.append(f"{len(labels_only)} label file(s) in {self.annotations_dir} have no image in "
                            f"{self.img_dir}: {_first_names(labels_only)}")
        if images_only:
            problems.append(f"{len(images_only)} image(s) in {self.img_dir} have no label file in "
                            f"{self.annotations_dir}: {_first_names(images_only)}")
        if problems and not skip_unmatched:
            raise FileNotFoundError("; ".join(problems) + " (pass skip_unmatched=True, on the command line "
                                                          "--skip-bad-files, to leave them out)")
        if problems:
            print(f"COCOTrainImageDataset: skipped {len(labels_only)} label file(s) without image and "
                  f"{len(images_only)} image(s) without label file")

        stems = sorted(set(label_files) & set(images))
        if max_images:
            stems = stems[:max_images]
        labels = {stem: read_label_file(label_files[stem]) for stem in stems}
        empty = [stem for stem in stems if not labels[stem]]
        if empty and not skip_empty:
            raise ValueError(f"{len(empty)} label file(s) in {self.annotations_dir} hold no class index: "
                             f"{_first_names([label_files[stem].name for stem in empty])}; every course image holds "
                             "at least one object, so these files are probably broken (pass skip_empty=True, on the "
                             "command line --skip-bad-files, to leave their images out)")
        if empty:
            print(f"COCOTrainImageDataset: skipped {len(empty)} image(s) whose label file is empty")
            stems = [stem for stem in stems if labels[stem]]
        if check_images or skip_unreadable:
            bad = unreadable_images([images[stem] for stem in stems], progress=progress, desc="checking images")
            if bad and not skip_unreadable:
                raise OSError(_bad_images_message(bad, self.img_dir, "pass skip_unreadable=True, on the command "
                                                                     "line --skip-bad-files, to leave them out"))
            if bad:
                unreadable = {path.stem for path, _ in bad}
                print(f"COCOTrainImageDataset: skipped {len(bad)} unreadable image(s), e.g. {bad[0][1]}")
                stems = [stem for stem in stems if stem not in unreadable]
        if not stems:
            raise ValueError(f"no usable training images in {self.img_dir}")

        self.stems: list[str] = stems
        self.image_paths: list[Path] = [images[s] for s in stems]
        self.targets = np.zeros((len(stems), NUM_CLASSES), dtype=np.float32)
        for row, stem in enumerate(stems):
            self.targets[row, labels[stem]] = 1.0

    def __getitem__(self, idx):
        return self.transformed_image(idx), torch.from_numpy(self.targets[idx].copy())


class COCOTestImageDataset(_ImageListDataset):
    """Unlabelled test images: ``dataset[i] -> (image, stem)``, stems sorted like the course.

    ``check_images``: decode every image now; an unreadable one is an error naming it (every test image needs a
    prediction). ``skip_unreadable`` (implies the check) leaves them out instead, printing how many; their stems
    are in ``skipped`` (``predict_run`` gives them an empty label list, so the predictions file still holds every
    test image)."""

    def __init__(self, img_dir, transform=None, *, check_images: bool = False, skip_unreadable: bool = False,
                 progress: bool = False):
        self.img_dir = Path(img_dir)
        self.transform = transform
        images = list_images(self.img_dir)
        if not images:
            raise FileNotFoundError(f"no images in {self.img_dir}")
        self.stems: list[str] = sorted(images)
        self.skipped: list[str] = []
        if check_images or skip_unreadable:
            bad = unreadable_images([images[s] for s in self.stems], progress=progress, desc="checking test images")
            if bad and not skip_unreadable:
                raise OSError(_bad_images_message(bad, self.img_dir, "every test image needs a prediction: "
                                                                     "replace them with readable copies, or pass "
                                                                     "skip_unreadable=True, on the command line "
                                                                     "--skip-bad-files, to predict no label for them"))
            if bad:
                self.skipped = sorted(path.stem for path, _ in bad)
                print(f"COCOTestImageDataset: skipped {len(bad)} unreadable test image(s), predicted with no label, "
                      f"e.g. {bad[0][1]}")
                unreadable = set(self.skipped)
                self.stems = [stem for stem in self.stems if stem not in unreadable]
                if not self.stems:
                    raise OSError(_bad_images_message(bad, self.img_dir, "none of the test images can be read"))
        self.image_paths: list[Path] = [images[s] for s in self.stems]

    def __getitem__(self, idx):
        return self.transformed_image(idx), self.stems[idx]


class TransformSubset(Dataset):
    """A subset of a dataset with its own transform.

    ``torch.utils.data.random_split`` shares the parent's transform between train and
    validation, so validation images would be augmented too; this class loads the parent's
    untransformed image and applies its own ``transform``. Items are ``(image, target)`` like the
    parent's, or ``(image, stem)`` for an unlabelled parent (the test images).
    """

    def __init__(self, dataset, indices, transform=None):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    @property
    def targets(self) -> np.ndarray:
        return self.dataset.targets[self.indices]

    @property
    def stems(self) -> list[str]:
        return [self.dataset.stems[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx):
        parent_idx = int(self.indices[idx])
        image = self.dataset.load_image(parent_idx)
        if self.transform is not None:
            image = self.transform(image)
        if getattr(self.dataset, "targets", None) is None:
            return image, self.dataset.stems[parent_idx]
        return image, torch.from_numpy(self.dataset.targets[parent_idx].copy())
