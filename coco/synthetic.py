"""A synthetic stand-in for the course data, in the exact course layout.

Each of the 80 classes is a coloured shape (8 shapes x 10 colours); an image holds one to
four of them, one per quarter of the image on a noisy grey background, and class frequencies follow a long tail like
COCO's (class 0, "person", is the commonest).  It lets the notebook, the command line and
the tests run anywhere, without the course zip and without internet; a small CNN learns it
in a few CPU minutes.  Scores on it say nothing about COCO.

    python -m coco.synthetic OUT_DIR [--train N] [--test N] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from coco import atomic
from coco.course import NUM_CLASSES

SHAPES = ("disc", "square", "triangle", "diamond", "cross", "ring", "bar", "star")
COLOURS = (  # well separated in RGB so that colour alone splits the classes into 10 groups
    (220, 30, 30), (30, 170, 40), (30, 40, 220), (235, 215, 20), (215, 30, 215),
    (20, 210, 220), (250, 135, 0), (110, 40, 150), (20, 20, 20), (255, 255, 255),
)
ASPECTS = ((1.0, 1.0), (1.0, 0.75), (0.75, 1.0), (1.0, 0.66))  # (width, height) over the long side
MARKER = "SYNTHETIC.json"  # written last: the folder is complete
PARTIAL_MARKER = "SYNTHETIC.partial.json"  # written first, removed last: the generator's own unfinished folder


def class_shape_colour(cls: int) -> tuple[str, tuple[int, int, int]]:
    return SHAPES[cls % len(SHAPES)], COLOURS[cls // len(SHAPES)]


def class_frequencies(exponent: float = 1.0) -> np.ndarray:
    """Zipf-like class probabilities, class 0 first: the long tail of COCO in miniature."""
    weights = 1.0 / np.arange(1, NUM_CLASSES + 1) ** exponent
    return weights / weights.sum()


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, colour, box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - w, y0, cx + w, y1), fill=colour)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "bar":
        draw.rectangle((x0, cy - r / 3, x1, cy + r / 3), fill=colour)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_image(classes: list[int], rng: np.random.Generator, long_side: int = 224) -> Image.Image:
    """Draw the given classes as shapes on a noisy background of random aspect ratio."""
    aspect_w, aspect_h = ASPECTS[rng.integers(len(ASPECTS))]
    width, height = round(long_side * aspect_w), round(long_side * aspect_h)
    base = rng.integers(90, 170)
    noise = rng.normal(0, 12, size=(height, width, 1)) + rng.normal(0, 4, size=(height, width, 3))
    canvas = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    # One object per grid cell, cells in random order: objects never hide one another.
    if len(classes) > 4:
        raise ValueError(f"at most 4 objects per synthetic image, got {len(classes)}")
    cols, rows = 2, 2
    cells = rng.permutation(cols * rows)
    cell_w, cell_h = width / cols, height / rows
    for cls, cell in zip(classes, cells):
        size = rng.uniform(0.55, 0.95) * min(cell_w, cell_h)
        x0 = (cell % cols) * cell_w + rng.uniform(0, cell_w - size)
        y0 = (cell // cols) * cell_h + rng.uniform(0, cell_h - size)
        shape, colour = class_shape_colour(cls)
        _draw_object(draw, shape, colour, (x0, y0, x0 + size, y0 + size))
    return canvas


MAX_OBJECTS = 4  # one per quarter of the image


def sample_labels(n_images: int, rng: np.random.Generator, min_per_class: int = 3) -> list[list[int]]:
    """1-3 classes per image from the long-tailed frequencies, then topped up so that every class appears at
    least ``min_per_class`` times (up to 4 objects per image). That needs ``n_images * 4 >= 80 * min_per_class``
    (ValueError otherwise); when the images are full, an object of a class that has more than it needs makes room."""
    needed = NUM_CLASSES * min_per_class
    if n_images * MAX_OBJECTS < needed:
        smallest = -(-needed // MAX_OBJECTS)
        raise ValueError(f"{n_images} images cannot show each of the {NUM_CLASSES} classes {min_per_class} time(s) "
                         f"with at most {MAX_OBJECTS} objects per image: use at least {smallest} images")
    probs = class_frequencies()
    labels = [set(rng.choice(NUM_CLASSES, size=rng.integers(1, 4), replace=False, p=probs).tolist())
              for _ in range(n_images)]
    counts = np.zeros(NUM_CLASSES, dtype=int)
    for row in labels:
        counts[list(row)] += 1
    for cls in range(NUM_CLASSES):
        missing = min_per_class - counts[cls]
        if missing <= 0:
            continue
        room = [i for i, row in enumerate(labels) if len(row) < MAX_OBJECTS and cls not in row]
        chosen = list(rng.choice(room, size=min(missing, len(room)), replace=False)) if room else []
        for idx in chosen:
            labels[idx].add(cls)
        counts[cls] += len(chosen)
        while counts[cls] < min_per_class:  # every image full: replace an object of a class with some to spare
            idx, spare = next((i, other) for i, row in enumerate(labels) if cls not in row
                              for other in sorted(row) if counts[other] > min_per_class)
            labels[idx].discard(spare)
            labels[idx].add(cls)
            counts[spare] -= 1
            counts[cls] += 1
    return [sorted(row) for row in labels]


def _write_split(images_dir: Path, labels_dir: Path, stems: list[str], labels: list[list[int]],
                 rng: np.random.Generator, long_side: int) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for stem, classes in zip(stems, labels):
        render_image(classes, rng, long_side).save(images_dir / f"{stem}.jpg", quality=90)
        (labels_dir / f"{stem}.cls").write_text("".join(f"{c}\n" for c in classes))


def make_demo_dataset(root, n_train: int = 1000, n_test: int = 250, seed: int = 0,
                      long_side: int = 224, overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the course layout under ``root`` and return ``root``.

    ``labels/test`` holds the test labels that the real challenge withholds, so that tests can
    score predictions.  A folder already generated with the same settings is reused; a folder this function
    left unfinished (interrupted: it holds ``SYNTHETIC.partial.json``) is generated again from the start.
    """
    root = Path(root)
    settings = {"n_train": n_train, "n_test": n_test, "seed": seed, "long_side": long_side, "version": 1}
    marker, partial = root / MARKER, root / PARTIAL_MARKER
    if marker.exists() and not overwrite:
        if json.loads(marker.read_text()) == settings:
            return root
        raise FileExistsError(f"{root} holds a synthetic dataset made with other settings "
                              f"({marker.read_text().strip()}); pass overwrite=True or choose another folder")
    if partial.exists():
        print(f"{root}: an unfinished synthetic dataset (interrupted); generating it again", flush=True)
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{root} exists and is not a synthetic dataset folder; refusing to write into it: "
                                  "choose another folder (or delete this one if you are sure nothing in it is needed)")
        shutil.rmtree(root)
    atomic.write_json(partial, settings, indent=None)  # first: what an interrupted run leaves is known
    rng = np.random.default_rng(seed)
    train_labels = sample_labels(n_train, rng)
    # the test labels only serve the demo's own scoring: with fewer than 20 images some classes stay out
    test_labels = sample_labels(n_test, rng, min_per_class=1 if n_test * MAX_OBJECTS >= NUM_CLASSES else 0)
    train_stems = [f"{i:012d}" for i in range(1, n_train + 1)]
    test_stems = [f"{i:012d}" for i in range(500_001, 500_001 + n_test)]
    _write_split(root / "images" / "train-resized", root / "labels" / "train", train_stems, train_labels, rng, long_side)
    _write_split(root / "images" / "test-resized", root / "labels" / "test", test_stems, test_labels, rng, long_side)
    atomic.write_json(marker, settings, indent=None)  # last: a half-written folder has no marker
    partial.unlink()
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coco.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to create (course layout)")
    parser.add_argument("--train", type=int, default=1000,
                        help="number of training images, at least 60 (every class 3 times); default: 1000")
    parser.add_argument("--test", type=int, default=250, help="number of test images (default: 250)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--long-side", type=int, default=224, help="long image side in pixels (default: 224)")
    args = parser.parse_args(argv)
    try:
        root = make_demo_dataset(args.out_dir, args.train, args.test, args.seed, args.long_side)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
