"""The course's data as files, without torch: the 80 class names, label files, the folder layout, splits and folds.

Layout (the course zip, ``coco-mini``, or the synthetic demo data)::

    <root>/images/train-resized/<stem>.jpg   training photos, long side 224 px, aspect ratio kept
    <root>/labels/train/<stem>.cls           one class index 0..79 per line
    <root>/images/test-resized/<stem>.jpg    test photos, no labels

``CLASSES`` is defined here once (person = 0 ... toothbrush = 79). Label lines are checked strictly
(``read_label_file`` names ``file:line``). ``split_train_val`` and ``kfold_assignments`` stratify so that rare
classes reach every side. No torch, so that ``python -m metrics`` starts in a fraction of a second.
"""
from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from coco import atomic

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
def _utf16_without_mark(raw: bytes) -> bool:
    """ASCII text saved as UTF-16 without a byte-order mark: every other byte zero, the others not."""
    even, odd = raw[0::2], raw[1::2]
    return bool(raw) and len(raw) % 2 == 0 and ((all(even) and not any(odd)) or (all(odd) and not any(even)))


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a file saved as UTF-8 (a byte-order mark tolerated, as Windows editors write one).

    A file saved as UTF-16 (Windows Notepad's "Unicode") or anything else that is not UTF-8 raises
    ``ValueError`` naming the file and how to save it as UTF-8.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _utf16_without_mark(raw):
        raise ValueError(f"{path}: saved as UTF-16 (Windows Notepad's \"Unicode\"), not as UTF-8; open it and save "
                         "it again as UTF-8 (Notepad: File > Save as > Encoding: UTF-8), or convert it: "
                         f"iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}-utf8{path.suffix}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err}); save it as UTF-8 text") from None


def read_label_file(path: str | os.PathLike) -> list[int]:
    """Return the sorted, de-duplicated class indices listed in a ``.cls`` file.

    Blank lines, surrounding spaces, a UTF-8 byte-order mark and Windows line ends are
    tolerated.  Anything else raises ``ValueError("<file>:<line>: ...")`` naming the bad text (a file saved
    as UTF-16: ``read_text_file``'s message).
    """
    path = Path(path)
    text = read_text_file(path)
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


def _visible(entry: Path) -> bool:
    """Not a hidden file: macOS's ``._<name>`` AppleDouble metadata, ``.DS_Store`` and the like are no data."""
    return not entry.name.startswith(".")


def is_image_file(entry: Path) -> bool:
    """Whether ``entry`` is a course image by its name (a visible ``.jpg``, ``.jpeg`` or ``.png`` file)."""
    return entry.suffix.lower() in IMAGE_EXTENSIONS and _visible(entry) and entry.is_file()


def list_images(folder: Path) -> dict[str, Path]:
    """Map stem -> image path for every image in ``folder`` (one image per stem; hidden files are not images)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        if is_image_file(entry):
            if entry.stem in found:
                raise ValueError(f"{folder}: two images share the stem {entry.stem!r}: "
                                 f"{found[entry.stem].name} and {entry.name}")
            found[entry.stem] = entry
    return found


def count_images(folder) -> int:
    """How many images :func:`list_images` would find in ``folder`` (0 where there is no such folder)."""
    folder = Path(folder)
    return sum(1 for entry in folder.iterdir() if is_image_file(entry)) if folder.is_dir() else 0


def list_label_files(folder: Path) -> dict[str, Path]:
    """Map stem -> ``.cls`` file for every label file in ``folder`` (hidden files are not label files)."""
    return {path.stem: path for path in Path(folder).glob("*.cls") if _visible(path)}


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
        if inner.is_dir() and not any(is_image_file(p) for p in folder.iterdir()):
            return inner
        return folder

    dirs = {
        "train_images": root / "images" / "train-resized",
        "train_labels": root / "labels" / "train",
        "test_images": root / "images" / "test-resized",
    }
    return {key: unnest(path) if path.is_dir() else path for key, path in dirs.items()}


COURSE_PARTS = ("train_images", "train_labels", "test_images")  # the keys of course_dirs


def _missing_parts(root: Path, parts: Sequence[str]) -> list[str]:
    return [str(path) for key, path in course_dirs(root).items() if key in parts and not path.is_dir()]


def find_data_root(explicit=None, parts: Sequence[str] = COURSE_PARTS) -> Path | None:
    """Where the course data is: ``explicit``, else ``$MSCOCO_ROOT``, else ``./ms-coco``.

    A path that was asked for (argument or environment variable) but is not a course folder
    raises ``FileNotFoundError`` listing what is missing: a typo must never pass for "no data".
    Returns ``None`` only when nothing was asked for and ``./ms-coco`` does not exist. ``parts``: the folders
    (keys of :func:`course_dirs`) the caller needs; predicting needs only ``("test_images",)``.
    """
    for source, value in (("argument", explicit), ("MSCOCO_ROOT", os.environ.get("MSCOCO_ROOT"))):
        if value:
            root = Path(value).expanduser()
            missing = _missing_parts(root, parts)
            if missing:
                raise FileNotFoundError(f"data root {root} (from {source}) is not in the course layout; "
                                        f"missing: {', '.join(missing)}")
            return root.resolve()
    default = Path("ms-coco")
    if default.exists():
        missing = _missing_parts(default, parts)
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
    atomic.write_json(path, record, indent=1)


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
