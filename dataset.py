"""Reading the course's ``ms-coco`` folder safely, splitting it, and turning photos into tensors.

Layout (the course zip, or ``coco-mini``, or the synthetic demo data)::

    <root>/images/train-resized/<stem>.jpg   training photos, long side 224 px, aspect ratio kept
    <root>/labels/train/<stem>.cls           one class index 0..79 per line
    <root>/images/test-resized/<stem>.jpg    test photos, no labels

Everything here is importable at module level so that DataLoader workers started with
``spawn`` (Windows, macOS) can unpickle it.  Labels are parsed and checked when a dataset is
built, never in the middle of an epoch.
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

import files

# The course's class tuple: index i in a .cls file means CLASSES[i].  This is the only place in
# the project where the names are written down.
CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
NUM_CLASSES = len(CLASSES)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: Python's int() would also read '٤٥' as 45
_MAX_LISTED = 5  # how many offending names an error message shows


def _first_names(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_MAX_LISTED])
    return shown + (", ..." if len(names) > _MAX_LISTED else "")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def read_label_file(path: str | os.PathLike) -> list[int]:
    """Return the sorted, de-duplicated class indices listed in a ``.cls`` file.

    Blank lines, surrounding spaces, a UTF-8 byte-order mark and Windows line ends are
    tolerated.  Anything else raises ``ValueError("<file>:<line>: ...")`` naming the bad text.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err})") from None
    classes: set[int] = set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if not value:
            continue
        if not _INTEGER.fullmatch(value):
            raise ValueError(f"{path}:{line_no}: expected one class index 0..{NUM_CLASSES - 1}, got {line!r}")
        index = int(value)
        if not 0 <= index < NUM_CLASSES:
            raise ValueError(f"{path}:{line_no}: class index {index} not in 0..{NUM_CLASSES - 1}")
        classes.add(index)
    return sorted(classes)


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


def _list_images(folder: Path) -> dict[str, Path]:
    """Map stem -> image path for every image in ``folder`` (one image per stem)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            if entry.stem in found:
                raise ValueError(f"{folder}: two images share the stem {entry.stem!r}: "
                                 f"{found[entry.stem].name} and {entry.name}")
            found[entry.stem] = entry
    return found


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
        images = _list_images(self.img_dir)
        label_files = {p.stem: p for p in self.annotations_dir.glob("*.cls")}
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
    prediction, so none can be left out)."""

    def __init__(self, img_dir, transform=None, *, check_images: bool = False, progress: bool = False):
        self.img_dir = Path(img_dir)
        self.transform = transform
        images = _list_images(self.img_dir)
        if not images:
            raise FileNotFoundError(f"no images in {self.img_dir}")
        self.stems: list[str] = sorted(images)
        self.image_paths: list[Path] = [images[s] for s in self.stems]
        if check_images:
            bad = unreadable_images(self.image_paths, progress=progress, desc="checking test images")
            if bad:
                raise OSError(_bad_images_message(bad, self.img_dir, "every test image needs a prediction: "
                                                                     "replace them with readable copies"))

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


# --------------------------------------------------------------------------------------------
# Finding the data
# --------------------------------------------------------------------------------------------
def course_dirs(root) -> dict[str, Path]:
    """The three folders of the course layout under ``root``.

    Some unzip tools nest the folders (``images/train-resized/train-resized``); that nesting is
    followed when the outer folder holds no images but the inner one exists.
    """
    root = Path(root)

    def unnest(folder: Path) -> Path:
        inner = folder / folder.name
        if inner.is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
            return inner
        return folder

    dirs = {
        "train_images": root / "images" / "train-resized",
        "train_labels": root / "labels" / "train",
        "test_images": root / "images" / "test-resized",
    }
    return {key: unnest(path) if path.is_dir() else path for key, path in dirs.items()}


def _missing_parts(root: Path) -> list[str]:
    return [str(path) for path in course_dirs(root).values() if not path.is_dir()]


def find_data_root(explicit=None) -> Path | None:
    """Where the course data is: ``explicit``, else ``$MSCOCO_ROOT``, else ``./ms-coco``.

    A path that was asked for (argument or environment variable) but is not a course folder
    raises ``FileNotFoundError`` listing what is missing: a typo must never pass for "no data".
    Returns ``None`` only when nothing was asked for and ``./ms-coco`` does not exist.
    """
    for source, value in (("argument", explicit), ("MSCOCO_ROOT", os.environ.get("MSCOCO_ROOT"))):
        if value:
            root = Path(value).expanduser()
            missing = _missing_parts(root)
            if missing:
                raise FileNotFoundError(f"data root {root} (from {source}) is not in the course layout; "
                                        f"missing: {', '.join(missing)}")
            return root.resolve()
    default = Path("ms-coco")
    if default.exists():
        missing = _missing_parts(default)
        if missing:
            raise FileNotFoundError(f"./ms-coco exists but is not in the course layout; missing: {', '.join(missing)}")
        return default.resolve()
    return None


# --------------------------------------------------------------------------------------------
# Train / validation split
# --------------------------------------------------------------------------------------------
def split_train_val(targets: np.ndarray, val_fraction: float = 0.1, seed: int = 0,
                    stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of row indices into (train, validation), both sorted.

    With ``stratify``, every class with at least 2 images gets at least one validation image and
    about ``val_fraction`` of its images there: rare classes (toaster, hair drier: ~100 of
    65,000 images) would otherwise be missing from a 10 % random validation split often enough
    to make per-class thresholds meaningless.  Classes are served from the rarest up, the
    remaining validation slots are filled at random.
    """
    targets = np.asarray(targets)
    n_images = len(targets)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(max(1, round(n_images * val_fraction)), n_images - 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_images)  # a seeded random order; every later choice follows it
    in_val = np.zeros(n_images, dtype=bool)
    if stratify:
        positives = targets[order] > 0
        class_counts = positives.sum(axis=0)
        for cls in np.argsort(class_counts, kind="stable"):
            count = int(class_counts[cls])
            if count < 2:
                continue
            wanted = max(1, round(count * val_fraction))
            members = order[positives[:, cls]]
            have = int(in_val[members].sum())
            candidates = members[~in_val[members]]
            take = min(wanted - have, n_val - int(in_val.sum()), len(candidates))
            if take > 0:
                in_val[candidates[:take]] = True
    remaining = n_val - int(in_val.sum())
    if remaining > 0:
        in_val[order[~in_val[order]][:remaining]] = True
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def kfold_assignments(targets: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Seeded fold number (0..n_folds-1) of every row, stratified like :func:`split_train_val`.

    Classes are served from the rarest up: each not-yet-placed image of the class goes to the fold holding
    the fewest images of that class (ties: the smallest fold), so each class is spread about evenly (images
    placed earlier for a rarer class can tilt it by one or two); images without a placed class fill the
    smallest folds. Fold sizes stay within a few percent of each other (coco-mini, 5 folds: 477 to 481).
    """
    targets = np.asarray(targets) > 0
    n_images = len(targets)
    if not 2 <= n_folds <= n_images:
        raise ValueError(f"n_folds must be in 2..{n_images} (the number of images), got {n_folds}")
    order = np.random.default_rng(seed).permutation(n_images)
    fold = np.full(n_images, -1)
    sizes = np.zeros(n_folds, dtype=int)
    for cls in np.argsort(targets.sum(axis=0), kind="stable"):
        members = order[targets[order, cls]]
        per_fold = np.bincount(fold[members][fold[members] >= 0], minlength=n_folds)
        for image in members[fold[members] < 0]:
            target = np.lexsort((sizes, per_fold))[0]  # fewest of this class, then smallest fold
            fold[image] = target
            per_fold[target] += 1
            sizes[target] += 1
    for image in order[fold[order] < 0]:
        target = int(np.argmin(sizes))
        fold[image] = target
        sizes[target] += 1
    return fold


def save_split(path, stems: Sequence[str], train_idx, val_idx, **info) -> None:
    """Write the split as stem lists (JSON), atomically, so that a resumed run reuses it."""
    record = {**info, "train": [stems[i] for i in train_idx], "val": [stems[i] for i in val_idx]}
    files.write_json(path, record, indent=1)


def load_split(path, stems: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a split written by :func:`save_split` and map its stems back to row indices."""
    path = Path(path)
    record = json.loads(path.read_text())
    position = {stem: i for i, stem in enumerate(stems)}
    result = []
    for part in ("train", "val"):
        missing = [s for s in record[part] if s not in position]
        if missing:
            raise ValueError(f"{path}: {len(missing)} {part} stem(s) are not in the dataset: {_first_names(missing)}")
        result.append(np.array(sorted(position[s] for s in record[part]), dtype=np.int64))
    return result[0], result[1]


# --------------------------------------------------------------------------------------------
# Transform presets
# --------------------------------------------------------------------------------------------
def _as_uint8_tensor(image) -> torch.Tensor:
    """PIL image or uint8 CHW tensor -> uint8 CHW tensor (on the tensor's own device)."""
    if isinstance(image, torch.Tensor):
        return image
    return TF.pil_to_tensor(image)


def long_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing so that the long side is ``size``, aspect ratio kept (rounding included)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    new_hw = long_side_size(height, width, size)
    if new_hw == (height, width):
        return image
    return TF.resize(image, list(new_hw), antialias=True)


def _normalise_and_pad(image: torch.Tensor, size: int, mean, std, offset: tuple[float, float]) -> torch.Tensor:
    """uint8 CHW -> normalised float, padded to ``size`` x ``size``.

    Padding happens after normalisation with zeros, i.e. with the dataset mean colour, which
    the pretrained network treats as "nothing here".  ``offset`` (0..1 each) places the image
    in the square: 0.5 centres it.
    """
    image = TF.normalize(image.float().div_(255.0), mean, std)
    height, width = image.shape[-2:]
    pad_h, pad_w = size - height, size - width
    top, left = round(pad_h * offset[0]), round(pad_w * offset[1])
    if pad_h or pad_w:
        image = torch.nn.functional.pad(image, (left, pad_w - left, top, pad_h - top))
    return image


class EvalPreset:
    """Deterministic evaluation transform.

    ``mode="pad"`` (default) resizes the long side to ``image_size`` and pads the short side
    with the mean colour: nothing is cut off and nothing is stretched.  Course photos have their
    long side at 224 px already, so at 224 this is a pure pad; objects at the border (a multi-
    label image's labels can sit anywhere) stay visible, which a centre crop would not
    guarantee.  ``mode="crop"`` resizes the short side and centre-crops (the ImageNet habit);
    ``mode="stretch"`` reproduces the course's ``Resize((s, s))``.
    """

    MODES = ("pad", "crop", "stretch")

    def __init__(self, *, image_size: int = 224, mean: Sequence[float], std: Sequence[float], mode: str = "pad"):
        if mode not in self.MODES:
            raise ValueError(f"EvalPreset mode must be one of {self.MODES}, got {mode!r}")
        self.image_size, self.mean, self.std, self.mode = int(image_size), list(mean), list(std), mode

    def __call__(self, image) -> torch.Tensor:
        image = _as_uint8_tensor(image)
        size = self.image_size
        if self.mode == "stretch":
            image = TF.resize(image, [size, size], antialias=True)
        elif self.mode == "crop":
            image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
        else:
            image = _resize_long_side(image, size)
        return _normalise_and_pad(image, size, self.mean, self.std, (0.5, 0.5))

    def __repr__(self) -> str:
        return f"EvalPreset(image_size={self.image_size}, mode={self.mode!r}, mean={self.mean}, std={self.std})"


class TrainPreset:
    """Training augmentation for photos whose long side is 224 px, aspect ratio kept.

    1. a random crop covering ``scale`` of the image area, its aspect ratio jittered by
       ``ratio`` around the photo's own (so objects are not squashed the way a square
       RandomResizedCrop squashes a 4:3 photo); a mild ``scale`` lower bound because a
       multi-label image's labels sit anywhere and a tight crop drops them,
    2. resize so the long side is ``image_size``,
    3. horizontal flip with probability ``hflip`` (COCO has no left/right classes),
    4. brightness / contrast / saturation jitter of +-``color_jitter``,
    5. normalise, then pad to a square at a random position (the evaluation preset pads
       centrally, so train and test see objects at the same scale).

    Randomness comes from Python's ``random`` module, which PyTorch seeds per DataLoader worker.
    ``sample_params`` / ``apply`` are separate so that a GPU pipeline can draw the same
    augmentation distribution.
    """

    def __init__(self, *, image_size: int = 224, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, color_jitter: float = 0.2):
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.image_size, self.mean, self.std = int(image_size), list(mean), list(std)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip, self.color_jitter = float(hflip), float(color_jitter)

    def sample_params(self, height: int, width: int, rng: random.Random | None = None) -> dict:
        rng = rng or random
        area = height * width * rng.uniform(*self.scale)
        log_ratio = rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]))
        aspect = (width / height) * float(np.exp(log_ratio))
        crop_w = int(round(min(width, (area * aspect) ** 0.5)))
        crop_h = int(round(min(height, (area / aspect) ** 0.5)))
        crop_w, crop_h = max(1, crop_w), max(1, crop_h)
        jitter = self.color_jitter
        return {
            "top": rng.randint(0, height - crop_h), "left": rng.randint(0, width - crop_w),
            "height": crop_h, "width": crop_w,
            "flip": rng.random() < self.hflip,
            "brightness": rng.uniform(1 - jitter, 1 + jitter),
            "contrast": rng.uniform(1 - jitter, 1 + jitter),
            "saturation": rng.uniform(1 - jitter, 1 + jitter),
            "offset": (rng.random(), rng.random()),
        }

    def apply(self, image: torch.Tensor, params: dict) -> torch.Tensor:
        image = image[..., params["top"]:params["top"] + params["height"],
                      params["left"]:params["left"] + params["width"]]
        image = _resize_long_side(image, self.image_size)
        if params["flip"]:
            image = image.flip(-1)
        if self.color_jitter > 0:
            image = TF.adjust_brightness(image, params["brightness"])
            image = TF.adjust_contrast(image, params["contrast"])
            image = TF.adjust_saturation(image, params["saturation"])
        return _normalise_and_pad(image, self.image_size, self.mean, self.std, params["offset"])

    def __call__(self, image) -> torch.Tensor:
        image = _as_uint8_tensor(image)
        return self.apply(image, self.sample_params(*image.shape[-2:]))

    def __repr__(self) -> str:
        return (f"TrainPreset(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, color_jitter={self.color_jitter})")


def denormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the normalisation for display: float images in 0..1 (CHW or BCHW)."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)

