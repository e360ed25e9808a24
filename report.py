"""Figures and tables of ``challenge.ipynb``, drawn from the files a run saved: the notebook tells the story,
this module draws and counts (the sentences that depend on the run are ``narrative.py``'s).

Every ``plot_*`` function returns its matplotlib Figure and, given ``save=PATH``, also writes it there as a
PNG (folders created, no version stamp in the file, so an unchanged figure gives an unchanged file). Tables
are pandas DataFrames; numbers the notebook quotes come from what is returned here, never from text typed by hand.

Sections follow the notebook:

* mode and data: :func:`mode_banner`, :func:`count_images`, :func:`class_table`, :func:`weight_facts`,
  :func:`plot_class_frequency`, :func:`plot_image_grid`, :func:`plot_labels_per_image`, :func:`split_coverage`,
  :func:`plot_split_coverage`;
* augmentation: :func:`plot_augmentations`;
* model: :func:`config_table`, :func:`stage_table`, :func:`freeze_schedule`, :func:`plot_loss_shapes`;
* training: :func:`read_history`, :func:`lr_schedule`, :func:`plot_training_curves`;
* thresholds: :func:`validation_outputs` (what the run saved), :func:`plot_threshold_sweep`,
  :func:`plot_class_thresholds`, :func:`threshold_table`, :func:`cross_fit_table`;
* evaluation: :func:`per_class_frame`, :func:`plot_per_class`, :func:`plot_precision_recall`,
  :func:`difficulty_factors`, :func:`frequency_bands`, :func:`plot_f1_vs_frequency`, :func:`strongest_weakest`,
  :data:`LOOKALIKE_GROUPS`, :func:`lookalike_confusion`, :func:`lookalike_finding`, :func:`pick_examples`,
  :func:`plot_predictions`;
* test predictions: :func:`prediction_stats`, :func:`plot_test_predictions`;
* comparative study: :func:`collect_runs`, :func:`comparable_runs`, :func:`load_reference_study`, :func:`study_rows`,
  :func:`threshold_floor_row`, :func:`plot_finetuning`, :func:`plot_recipe_study`.

:func:`label_points` places point labels without overlaps.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import textwrap
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import dataset
import features
import metrics
import models
import recipe
import runs
from config import Config

CLASSES = dataset.CLASSES
STUDY_CSV = Path(__file__).resolve().parent / "study" / "results.csv"
STUDY_COLUMNS = ("protocol", "recipe", "command", "hardware", "wall_time_s", "val_f1", "f1_se", "val_map", "notes")
COURSE_TRAIN_IMAGES = 65_000  # the course zip's labelled training set (images/train-resized)

# Classes whose members look alike or share scenes; the notebook asks whether one is predicted when only a
# sibling is in the image. Names must be dataset.CLASSES entries (checked at import).
LOOKALIKE_GROUPS: dict[str, tuple[str, ...]] = {
    "cutlery": ("fork", "knife", "spoon"),
    "drinkware": ("cup", "wine glass", "bottle"),
    "seating": ("couch", "chair", "bed"),
    "road vehicles": ("car", "truck", "bus"),
    "livestock": ("sheep", "cow", "horse"),
    "screens": ("tv", "laptop", "cell phone"),
}
for _group, _names in LOOKALIKE_GROUPS.items():
    _unknown = [name for name in _names if name not in CLASSES]
    if _unknown:
        raise ValueError(f"LOOKALIKE_GROUPS[{_group!r}]: {_unknown} not in dataset.CLASSES")

_GOOD, _BAD, _EXTRA, _NEUTRAL = "#1a9850", "#d73027", "#f46d43", "#4575b4"
# Photo grids: ~2.5 inches per image at 100 dpi is about the photos' own 224 px, so nothing is upsampled and the
# PNGs (saved, and embedded in the notebook) stay small.
PHOTO_DPI = 100


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def save_figure(fig, save, dpi: int = 110) -> Path | None:
    """Write ``fig`` as PNG to ``save`` (no-op for None). No 'Software' stamp: same figure, same bytes."""
    if save is None:
        return None
    path = Path(save)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path



def leaderboard_weights(class_counts) -> np.ndarray:
    """The leaderboard metric's class weights for these positive counts: (1/n_c) / sum_k (1/n_k).

    Computed by metrics.py's own function (a class with no positives gets 0), so the notebook shows exactly
    the weights the scorer uses.
    """
    return metrics.class_weights(np.asarray(class_counts, dtype=np.float64))


def _wrap(names: Sequence[str], width: int = 28) -> str:
    return "\n".join(textwrap.wrap(", ".join(names), width)) or "(none)"


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _image_array(image) -> np.ndarray:
    """PIL image, or CHW float tensor with values in 0..1 (see dataset.denormalise) -> HxWx3 array for imshow."""
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).cpu().numpy()
    return np.asarray(image)


def _show(ax, image, title: str | None = None, fontsize: int = 8) -> None:
    ax.imshow(_image_array(image))
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def _grid(n: int, ncols: int, cell: tuple[float, float]):
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell[0] * ncols, cell[1] * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


_OFFSETS = [(4, 4), (4, -11), (-4, 4), (-4, -11), (6, 14), (6, -20), (-6, 14), (-6, -20), (10, 26), (10, -32),
            (-10, 26), (-10, -32), (14, 0), (-14, 0)]


def label_points(ax, xs, ys, texts, fontsize: float = 7, colors=None) -> None:
    """Annotate points without letting the labels overlap: each label takes the first offset (in points) whose box
    clears the labels placed before it; one that finds no free place is left out (its point stays)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed = []
    for index, (x, y, text) in enumerate(zip(xs, ys, texts)):
        for dx, dy in _OFFSETS:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                                color=None if colors is None else colors[index])
            box = label.get_window_extent(renderer).expanded(1.05, 1.15)
            if not any(box.overlaps(other) for other in placed) and ax.bbox.contains(box.x0, box.y0) \
                    and ax.bbox.contains(box.x1, box.y1):
                placed.append(box)
                break
            label.remove()


# ----------------------------------------------------------------------------------------------------------
# mode and data
# ----------------------------------------------------------------------------------------------------------
def count_images(data_root) -> dict:
    """Numbers of training images, label files and test images in a course folder (files on disk)."""
    dirs = dataset.course_dirs(data_root)
    def images(folder):
        return sum(1 for p in Path(folder).iterdir() if p.suffix.lower() in dataset.IMAGE_EXTENSIONS)
    return {"train_images": images(dirs["train_images"]),
            "label_files": sum(1 for _ in Path(dirs["train_labels"]).glob("*.cls")),
            "test_images": images(dirs["test_images"])}


def mode_banner(data_root, demo: bool, requested=None) -> str:
    """Markdown saying which data the notebook runs on; demo mode in bold, coco-mini named as the proxy it is.

    ``requested``: the DATA_ROOT parameter (None when the notebook looked in $MSCOCO_ROOT and ./ms-coco).
    """
    counts = count_images(data_root)
    if demo:
        looked = (f"`{requested}`" if requested else
                  f"`$MSCOCO_ROOT` (unset) and `{Path('ms-coco').resolve()}`")
        return (f"**DEMO MODE: course data not found at {looked} — training on synthetic shapes "
                f"({counts['train_images']:,} training / {counts['test_images']:,} test images generated in "
                f"`{data_root}`); scores below say nothing about COCO.** Put the course data in `ms-coco/` "
                f"(or set `MSCOCO_ROOT`, or the `DATA_ROOT` parameter) and run again for real results.")
    text = (f"**Real mode:** course data at `{data_root}`: {counts['train_images']:,} labelled training images "
            f"({counts['label_files']:,} label files), {counts['test_images']:,} test images.")
    if Path(data_root).name == "coco-mini":
        text += (f"\n\n**This is coco-mini, a {counts['train_images']:,}-image proxy of the "
                 f"{COURSE_TRAIN_IMAGES:,}-image course set** (real COCO photos in the course layout, "
                 f"{COURSE_TRAIN_IMAGES / counts['train_images']:.0f} times fewer images). "
                 "It proves the pipeline learns from real photographs; its scores are not challenge scores.")
    return text


def class_table(targets, train_idx=None, val_idx=None) -> pd.DataFrame:
    """One row per class (course order): images, share of images, leaderboard weight (from these counts),
    and, given a split, its training and validation images."""
    targets = _as_numpy(targets) > 0
    counts = targets.sum(axis=0)
    frame = pd.DataFrame({"class": list(CLASSES), "images": counts, "share": counts / len(targets),
                          "weight": leaderboard_weights(counts)})
    if train_idx is not None and val_idx is not None:
        frame["train"] = targets[train_idx].sum(axis=0)
        frame["val"] = targets[val_idx].sum(axis=0)
    return frame.set_index("class")


def weight_facts(table: pd.DataFrame, k: int = 2) -> dict:
    """Numbers for the notebook's sentence on the leaderboard weights."""
    by_weight = table.sort_values("weight", ascending=False)
    rarest = by_weight.head(k)
    commonest = table["images"].idxmax()
    return {"rarest": list(rarest.index), "rarest_images": [int(v) for v in rarest["images"]],
            "rarest_share": float(rarest["weight"].sum()),
            "top10_share": float(by_weight["weight"].head(10).sum()),
            "commonest": commonest, "commonest_images": int(table.loc[commonest, "images"]),
            "commonest_share": float(table.loc[commonest, "weight"]),
            "ratio": float(by_weight["weight"].iloc[0] / table.loc[commonest, "weight"])}


def plot_class_frequency(table: pd.DataFrame, save=None, annotate: int = 5):
    """Images per class sorted from commonest to rarest (log scale) above each class's leaderboard weight."""
    ordered = table.sort_values("images", ascending=False)
    x = np.arange(len(ordered))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.bar(x, ordered["images"], color=_NEUTRAL)
    top.set_yscale("log")
    top.set_ylabel("training images (log)")
    top.set_title(f"Long tail: {ordered['images'].iloc[0]:,} images of '{ordered.index[0]}' ... "
                  f"{ordered['images'].iloc[-1]:,} of '{ordered.index[-1]}'")
    bottom.bar(x, 100 * ordered["weight"], color=_BAD)
    bottom.set_ylabel("leaderboard weight (%)")
    bottom.set_title("Weight of each class in the leaderboard's precision and recall (1 / positives, normalised)")
    bottom.set_xticks(x)
    bottom.set_xticklabels(ordered.index, rotation=90, fontsize=7)
    bottom.set_xlim(-0.7, len(x) - 0.3)
    for pos in list(range(annotate)) + list(range(len(x) - annotate, len(x))):
        top.annotate(f"{ordered['images'].iloc[pos]:,}", (pos, ordered["images"].iloc[pos]), ha="center",
                     va="bottom", fontsize=6)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def plot_image_grid(source, indices: Sequence[int], save=None, ncols: int = 4):
    """Training images (untransformed) titled with their label names. ``source`` is a COCOTrainImageDataset."""
    fig, axes = _grid(len(indices), ncols, (2.5, 2.9))
    for ax, idx in zip(axes, indices):
        names = [CLASSES[c] for c in np.flatnonzero(source.targets[idx])]
        _show(ax, source.load_image(int(idx)), _wrap(names, 34), fontsize=7)
    fig.tight_layout()
    save_figure(fig, save, dpi=PHOTO_DPI)
    return fig


def plot_labels_per_image(targets, save=None):
    """Histogram of the number of labels per image."""
    per_image = (_as_numpy(targets) > 0).sum(axis=1)
    bins = np.arange(0, per_image.max() + 2) - 0.5
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(per_image, bins=bins, color=_NEUTRAL, rwidth=0.85)
    ax.axvline(per_image.mean(), color=_BAD, linestyle="--", label=f"mean {per_image.mean():.2f}")
    ax.set_xlabel("labels (distinct classes) per image")
    ax.set_ylabel("images")
    ax.set_xticks(range(0, per_image.max() + 1))
    ax.legend()
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def split_coverage(targets, val_fraction: float, seed: int, min_positives: int = metrics.DEFAULT_MIN_POSITIVES) -> dict:
    """The stratified split the run uses against a plain random split of the same size: validation images of
    each class (arrays in course order), how many classes each leaves without a validation image and how many
    with fewer than ``min_positives`` (too few for a per-class threshold)."""
    targets = _as_numpy(targets) > 0
    out = {}
    for name, stratify in (("stratified", True), ("random", False)):
        train_idx, val_idx = dataset.split_train_val(targets, val_fraction, seed, stratify)
        val_counts = targets[val_idx].sum(axis=0)
        out[name] = {"train_idx": train_idx, "val_idx": val_idx, "val_counts": val_counts,
                     "classes_without_val": int((val_counts == 0).sum()),
                     "classes_under_min": int((val_counts < min_positives).sum())}
    out["total_counts"] = targets.sum(axis=0)
    return out


def plot_split_coverage(coverage: Mapping, save=None, rarest: int = 30):
    """Validation images of the rarest classes: stratified split vs a random split of the same size."""
    order = np.argsort(coverage["total_counts"], kind="stable")[:rarest]
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(14, 4))
    ax.bar(x - 0.2, coverage["stratified"]["val_counts"][order], 0.4, label="stratified (this run)", color=_GOOD)
    ax.bar(x + 0.2, coverage["random"]["val_counts"][order], 0.4, label="random split, same size", color=_BAD)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{CLASSES[c]} ({coverage['total_counts'][c]})" for c in order], rotation=90, fontsize=7)
    ax.set_ylabel("validation images")
    ax.set_title(f"The {rarest} rarest classes (total images in brackets): validation positives per split")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, save)
    return fig


# ----------------------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------------------
def plot_augmentations(source, indices: Sequence[int], config, n_draws: int = 3, seed: int = 0, save=None):
    """Each row one training image: the file, the evaluation preset (pad), the course's stretch, a centre crop, and
    what this run trains on: ``n_draws`` draws of the training preset, or, for a run on a feature cache, the views
    it cached (the image, its mirror image, random crops). Tensors are denormalised for display."""
    train_tf, eval_tf = recipe.presets_for(config)
    spec = models.get_spec(config.model)
    size = eval_tf.image_size
    others = {mode: dataset.EvalPreset(image_size=size, mean=spec.mean, std=spec.std, mode=mode)
              for mode in ("stretch", "crop")}
    if config.cache_stages:
        views = features.cache_views(config)[0][: config.cache_views]
        names = ["this run: cached view", "this run: cached mirror"] + [f"this run: cached crop {k}"
                                                                        for k in range(1, len(views) - 1)]
        run_columns = list(zip(names[: len(views)], views))
    else:
        run_columns = [(f"this run: train draw {k + 1}", train_tf) for k in range(n_draws)]
    columns = ["file", f"eval: pad to {size}", "course: stretch", "ImageNet: centre crop"] + [n for n, _ in run_columns]
    fig, axes = plt.subplots(len(indices), len(columns), figsize=(1.95 * len(columns), 2.0 * len(indices)),
                             squeeze=False)
    state = random.getstate()
    random.seed(seed)  # TrainPreset draws from Python's random module; the caller's stream is restored below
    try:
        for number, (row, idx) in enumerate(zip(axes, indices)):
            image = source.load_image(int(idx))
            views = [image, eval_tf(image), others["stretch"](image), others["crop"](image)]
            views += [transform(image) for _, transform in run_columns]
            for col, (ax, view) in enumerate(zip(row, views)):
                if isinstance(view, torch.Tensor):
                    view = dataset.denormalise(view, spec.mean, spec.std)
                _show(ax, view, columns[col] if number == 0 else None, fontsize=7)
    finally:
        random.setstate(state)
    fig.tight_layout()
    save_figure(fig, save, dpi=PHOTO_DPI)
    return fig


# ----------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------
def config_table(config) -> pd.DataFrame:
    """Every Config field: value, Config's default, whether the preset/overrides changed it, help text."""
    defaults = Config()
    rows = []
    for f in dataclasses.fields(Config):
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        rows.append({"field": f.name, "value": value, "default": default,
                     "changed": "yes" if value != default else "", "help": f.metadata.get("help", "")})
    return pd.DataFrame(rows).set_index("field")


def stage_table(model, image_size: int) -> pd.DataFrame:
    """Stages, pool and head of a MultiLabelNet: what they hold, output shape at ``image_size``, parameters."""
    rows = []
    feats = torch.zeros(1, 3, image_size, image_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for index, stage in enumerate(model.stages):
            feats = stage(feats)
            kinds = Counter(type(child).__name__ for child in stage.children())
            rows.append({"part": f"stage {index}", "holds": ", ".join(f"{n}x {k}" for k, n in kinds.items()),
                         "output": "x".join(str(d) for d in feats.shape[1:]),
                         "parameters": sum(p.numel() for p in stage.parameters())})
        pooled = model.pool(feats)
        kind = "global average and max pools side by side" if getattr(model.pool, "mode", "avg") == "avgmax" \
            else "global average pool"
        rows.append({"part": "pool", "holds": kind, "output": str(pooled.shape[1]),
                     "parameters": sum(p.numel() for p in model.pool.parameters())})
        logits = model.head(pooled)
        rows.append({"part": "head", "holds": " -> ".join(type(m).__name__ for m in model.head),
                     "output": f"{logits.shape[1]} logits", "parameters": sum(p.numel() for p in model.head.parameters())})
    model.train(was_training)
    return pd.DataFrame(rows).set_index("part")


def freeze_schedule(model, config) -> pd.DataFrame:
    """Which parts train in which epochs, asked of recipe.set_trainable, the rule runs.fit follows (on a copy of
    ``model``)."""
    probe = copy.deepcopy(model)
    rows, previous = [], None
    for epoch in range(config.epochs):
        trains = recipe.set_trainable(probe, config, epoch)
        counts = models.count_parameters(probe)
        if previous is not None and previous["trains"] == trains:
            previous["epochs"] = f"{previous['first']}-{epoch + 1}"
            continue
        previous = {"first": epoch + 1, "epochs": str(epoch + 1), "trains": trains,
                    "trainable parameters": counts["trainable"], "frozen parameters": counts["total"] - counts["trainable"]}
        rows.append(previous)
    frame = pd.DataFrame(rows).drop(columns="first").set_index("epochs")
    return frame


def plot_loss_shapes(config, save=None):
    """Per-label loss against the predicted probability, BCE vs the run's ASL setting, positives and negatives."""
    probs = torch.linspace(0.001, 0.999, 500)
    logits = torch.log(probs) - torch.log1p(-probs)
    mark = {config.loss: " - this run"}
    losses = {"BCE" + mark.get("bce", ""): models.build_loss("bce", reduction="none"),
              f"ASL (gamma- {config.gamma_neg:g}, gamma+ {config.gamma_pos:g}, clip {config.asl_clip:g})"
              + mark.get("asl", ""): models.build_loss("asl", gamma_pos=config.gamma_pos, gamma_neg=config.gamma_neg,
                                                       clip=config.asl_clip, reduction="none")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (name, loss), style, order in zip(losses.items(), ("--", "-"), (3, 2)):  # dashed BCE on top: visible where equal
        for ax, target in zip(axes, (1.0, 0.0)):
            values = loss(logits[:, None], torch.full((len(probs), 1), target))[:, 0]
            ax.plot(probs, values, style, label=name, zorder=order)
    axes[0].set_title("label present (positive)")
    axes[1].set_title("label absent (negative): most of an image's 80 labels")
    for ax in axes:
        ax.set_xlabel("predicted probability sigmoid(logit)")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def read_history(run_dir) -> pd.DataFrame:
    """The run's metrics.csv (one row per epoch), indexed by epoch."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-epoch metrics (did the run finish an epoch?)")
    return pd.read_csv(path).set_index("epoch")


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def lr_schedule(config, n_train: int) -> pd.DataFrame:
    """Learning rates of the head and the backbone after every optimiser step, from the scheduler that
    runs.fit builds (recipe.make_scheduler, a fresh cycle at the unfreeze milestone); index: epochs
    (fractional). ``n_train``: training images of the run."""
    per_epoch = recipe.steps_per_epoch(n_train, config.batch_size)
    head, backbone = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    peak_lrs = [config.lr, config.lr * config.backbone_lr_mult]
    optimizer = torch.optim.AdamW([{"params": [head], "lr": peak_lrs[0]}, {"params": [backbone], "lr": peak_lrs[1]}])
    rows = []
    scheduler = None
    for epoch in range(config.epochs):
        if epoch == 0 or epoch == config.freeze_epochs:
            scheduler = recipe.make_scheduler(optimizer, peak_lrs, config, per_epoch, epoch)
        for _ in range(per_epoch):
            rows.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()  # no gradients: nothing changes; keeps the scheduler's order-of-calls check quiet
            if scheduler is not None:
                scheduler.step()
    rows.append([group["lr"] for group in optimizer.param_groups])  # after the last step
    return pd.DataFrame(rows, columns=["head", "backbone"], index=np.arange(len(rows)) / per_epoch)


def plot_training_curves(history: pd.DataFrame, schedule: pd.DataFrame | None = None, best_epoch: int | None = None,
                         save=None, *, backbone_trains: bool = True, train_label: str = "train (augmented)"):
    """Loss (train vs validation), F1 and mAP per epoch, and the learning rate (of the backbone too when it
    trains). ``train_label``: what the training loss is measured on."""
    fig, (ax_loss, ax_f1, ax_lr) = plt.subplots(1, 3, figsize=(16, 4))
    epochs = history.index
    ax_loss.plot(epochs, history["train/loss"], "o-", label=train_label)
    ax_loss.plot(epochs, history["val/loss"], "o-", label="validation")
    ax_loss.set_title("loss per image (sum over the 80 labels)")
    ax_f1.plot(epochs, history["train/f1@0.5"], "o-", label="train F1 @ 0.5")
    ax_f1.plot(epochs, history["val/f1@0.5"], "o-", label="val F1 @ 0.5")
    ax_f1.plot(epochs, history["val/f1"], "o-", label="val F1, tuned thresholds")
    ax_f1.plot(epochs, history["val/map"], "s--", label="val mAP", alpha=0.7)
    ax_f1.set_title("leaderboard F1 and mAP")
    ax_f1.set_ylim(0, 1)
    if schedule is not None:
        ax_lr.plot(schedule.index, schedule["head"], label="head (schedule)")
        if backbone_trains:
            ax_lr.plot(schedule.index, schedule["backbone"], label="backbone (schedule)")
    ax_lr.plot(epochs, history["lr"], "o", label="logged at epoch end")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_f1, ax_lr):
        ax.set_xlabel("epoch")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


# ----------------------------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------------------------
def validation_outputs(run_dir, data_root=None) -> dict:
    """What a run saved about its selected model's validation pass (``val_outputs.npz``, ``thresholds.json``,
    ``split.json``, ``config.json``), with the dataset the split indexes, for the notebook's analysis.

    Returns a dict: ``config``, ``thresholds`` (metrics.ThresholdResult), ``epoch`` (of best.pt), ``source``
    (the untransformed dataset), ``train_idx``, ``val_idx`` (rows of ``source``), ``probs`` and ``targets``
    (numpy, validation rows in ``val_idx`` order). Nothing is recomputed: these are the probabilities the
    thresholds were tuned on.
    """
    run_dir = Path(run_dir)
    config = Config.from_dict(read_json(run_dir / "config.json"))
    root = dataset.find_data_root(data_root or config.data_root)
    if root is None:
        raise FileNotFoundError(f"{run_dir}: no data root given and the run's ({config.data_root}) is not found")
    source = runs.labelled_images(config.replace(data_root=str(root)))
    train_idx, val_idx = dataset.load_split(run_dir / "split.json", source.stems)
    path = run_dir / "val_outputs.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished an epoch")
    saved = np.load(path)
    if list(saved["stems"]) != [source.stems[i] for i in val_idx]:
        raise ValueError(f"{path}: its validation images are not those of {run_dir / 'split.json'}")
    return {"config": config, "thresholds": metrics.ThresholdResult.from_dict(read_json(run_dir / "thresholds.json")),
            "epoch": int(saved["epoch"]), "source": source, "train_idx": train_idx, "val_idx": val_idx,
            "probs": saved["probs"].astype(np.float64), "targets": saved["targets"]}


def plot_threshold_sweep(probs, targets, thresholds, save=None):
    """Leaderboard F1, precision and recall of one threshold shared by all classes, against the threshold;
    the tuned per-class F1 as a horizontal line."""
    best, grid, f1_curve = metrics.sweep_global_threshold(probs, targets)
    # Precision/recall of every grid threshold: one vectorised metric call per threshold (99 calls).
    scores = [metrics.leaderboard_scores(probs > t, targets, warn=False) for t in grid]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.plot(grid, f1_curve, color="black", lw=2, label="F1 (one threshold for all classes)")
    ax.plot(grid, [s["precision"] for s in scores], color=_NEUTRAL, label="weighted precision")
    ax.plot(grid, [s["recall"] for s in scores], color=_BAD, label="weighted recall")
    ax.axvline(0.5, color="grey", linestyle=":", label=f"0.5: F1 {f1_curve[np.argmin(abs(grid - 0.5))]:.3f}")
    ax.axvline(best, color="black", linestyle="--", label=f"best global {best:.2f}: F1 {f1_curve.max():.3f}")
    per_class = metrics.leaderboard_scores(thresholds.apply(probs), targets, warn=False)["f1"]
    ax.axhline(per_class, color=_GOOD, linestyle="-.", label=f"per-class thresholds: F1 {per_class:.3f}")
    ax.set_xlabel("threshold on the probability sigmoid(logit)")
    ax.set_ylabel("validation score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def plot_class_thresholds(thresholds, counts, min_positives: int, save=None, annotate: int = 8,
                          counted_on: str = "validation images"):
    """Each class's threshold against the images of the class it was tuned on (``counted_on``); classes with too
    few keep the global one. The classes with the lowest and the highest thresholds are named."""
    counts = np.asarray(counts)
    class_thresholds = np.asarray(thresholds.class_thresholds)
    tuned = counts >= min_positives
    fig, ax = plt.subplots(figsize=(10, 4.6))
    jitter = 1 + 0.06 * (np.arange(len(counts)) % 5 - 2)  # keeps equal counts apart on the log axis
    x = np.maximum(counts, 0.8) * jitter
    ax.scatter(x[tuned], class_thresholds[tuned], color=_NEUTRAL, label=f"tuned (>= {min_positives} positives)")
    ax.scatter(x[~tuned], class_thresholds[~tuned], color="grey", marker="x", label="kept the global threshold")
    ax.axhline(thresholds.global_threshold, color="black", linestyle="--",
               label=f"global threshold {thresholds.global_threshold:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel(f"{counted_on} of the class (log)")
    ax.set_ylabel("threshold")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    order = [c for c in np.argsort(class_thresholds, kind="stable") if tuned[c]]
    named = list(dict.fromkeys(order[:annotate // 2] + order[::-1][:annotate // 2]))  # the lowest and the highest
    label_points(ax, x[named], class_thresholds[named], [CLASSES[c] for c in named])
    save_figure(fig, save)
    return fig


STEP_NAMES = {"0.5": "threshold 0.5 for every class", "global": "best single threshold",
              "per_class": "per-class thresholds", "final": "+ at-least-one rule (if kept)"}


def threshold_table(probs, targets, thresholds, config, repeats: int = 10) -> pd.DataFrame:
    """What each tuning step is worth, in-sample and held out; one row per rule (0.5, global, per_class, final).

    * ``in-sample F1``: the run's stored thresholds applied to ``probs``, i.e. scored on the very images they
      were tuned on (optimistic); ``in-sample gain``: its gain over the 0.5 row.
    * ``held-out gain`` (mean, std, standard error): ``metrics.held_out_gains``, thresholds tuned afresh on one
      stratified half and scored on the other against 0.5 on that same half.
    * ``expected F1``: the 0.5 row's F1 (nothing fitted) plus the held-out gain: an estimate for new images.
    """
    in_sample = pd.Series(metrics.f1_by_rule(probs, targets, thresholds))
    gains = pd.DataFrame(metrics.held_out_gains(probs, targets, repeats=repeats, **config.tuning_options()))
    frame = pd.DataFrame({"step": [STEP_NAMES[k] for k in in_sample.index], "in-sample F1": in_sample,
                          "in-sample gain": in_sample - in_sample["0.5"], "held-out gain": gains.mean(),
                          "held-out gain (std)": gains.std(),
                          # The halves overlap and the two directions share a split, so this understates the noise.
                          "held-out gain (se)": gains.std() / np.sqrt(len(gains))})
    frame["expected F1"] = in_sample["0.5"] + frame["held-out gain"]
    return frame


def cross_fit_table(run_dir, config, test_size: int, repeats: int = 10) -> pd.DataFrame | None:
    """The cross-fitted thresholds (``Config.cross_fit_folds``) judged on images they were not tuned on
    (``metrics.mock_test_scores`` on the run's ``oof.npz``): the mean over mock test sets of ``test_size``
    images, their spread, and first the in-sample figure (tuned and scored on all images). None when the run
    was not cross-fitted.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "oof.npz").is_file():
        return None
    saved = np.load(run_dir / "oof.npz")
    probs, targets = saved["probs"], saved["targets"]
    tuning = config.tuning_options()
    result = metrics.tune_thresholds(probs, targets, **tuning)
    in_sample = {**metrics.f1_by_rule(probs, targets, result), "mAP": metrics.mean_average_precision(probs, targets)}
    held = pd.DataFrame(metrics.mock_test_scores(probs, targets, test_size, repeats=repeats, **tuning))
    n_test = min(len(probs) - 1, max(1, round(len(probs) * test_size / len(probs))))
    frame = pd.DataFrame({f"in-sample: tuned and scored on all {len(probs):,} images": pd.Series(in_sample),
                          f"held out: tuned on {len(probs) - n_test:,}, scored on {n_test:,} (mean)": held.mean(),
                          "held out: spread over the mock test sets (std)": held.std()}).T
    return frame.rename(columns={key: STEP_NAMES.get(key, key) for key in frame.columns})


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------
def _group_of() -> dict[int, str]:
    return {CLASSES.index(name): group for group, names in LOOKALIKE_GROUPS.items() for name in names}


def per_class_frame(probs, targets, thresholds, train_targets, all_targets=None) -> pd.DataFrame:
    """metrics.per_class_table with the run's thresholds, plus: ``train_images`` (training split positives),
    ``weight`` (leaderboard weight on this validation set), ``clutter`` (mean labels per image among the
    images holding the class, over ``all_targets``), ``group`` (look-alike group). Indexed by class name."""
    table = pd.DataFrame(metrics.per_class_table(probs, targets, thresholds.class_thresholds,
                                                 at_least_one=thresholds.at_least_one)).set_index("name")
    train_targets = _as_numpy(train_targets) > 0
    all_targets = train_targets if all_targets is None else _as_numpy(all_targets) > 0
    table["train_images"] = train_targets.sum(axis=0)
    table["weight"] = leaderboard_weights(table["support"].to_numpy())
    labels_per_image = all_targets.sum(axis=1)
    holders = all_targets.sum(axis=0)
    table["clutter"] = np.divide(all_targets.T.astype(np.float64) @ labels_per_image, holders,
                                 out=np.full(len(holders), np.nan), where=holders > 0)
    groups = _group_of()
    table["group"] = [groups.get(i, "") for i in range(len(table))]
    return table


def plot_per_class(frame: pd.DataFrame, save=None):
    """Per-class F1 bars with precision and recall marks, classes from commonest to rarest (training images)."""
    ordered = frame.sort_values("train_images", ascending=False)
    x = np.arange(len(ordered))
    fig, ax = plt.subplots(figsize=(16, 5))
    ax.bar(x, ordered["f1"], color="#bbbbbb", label="F1")
    ax.plot(x, ordered["precision"], "v", color=_NEUTRAL, label="precision", ms=5)
    ax.plot(x, ordered["recall"], "^", color=_BAD, label="recall", ms=5)
    missing = ordered["support"].to_numpy() == 0
    ax.plot(x[missing], np.zeros(missing.sum()), "x", color="black", label="no validation image (weight 0)")
    ax.set_xticks(x)
    ax.set_xticklabels(ordered.index, rotation=90, fontsize=7)
    ax.set_xlim(-0.7, len(x) - 0.3)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("validation score")
    twin = ax.twinx()
    twin.plot(x, ordered["train_images"], color="black", lw=1, alpha=0.5, label="training images")
    twin.set_yscale("log")
    twin.set_ylabel("training images (log)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=5, frameon=False)
    fig.suptitle("Per-class scores on the validation split (tuned thresholds), classes from commonest to rarest")
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def plot_precision_recall(frame: pd.DataFrame, save=None, annotate: int = 6):
    """Precision against recall per class; marker size ~ validation positives, colour ~ training images."""
    present = frame[frame["support"] > 0]
    fig, ax = plt.subplots(figsize=(8, 6.5))
    for f1 in (0.2, 0.4, 0.6, 0.8):  # iso-F1 curves
        recall = np.linspace(f1 / (2 - f1) + 1e-3, 1, 200)
        ax.plot(recall, f1 * recall / (2 * recall - f1), color="grey", lw=0.6, alpha=0.5)
        ax.annotate(f"F1={f1}", (1.0, f1 / (2 - f1)), fontsize=7, color="grey")
    points = ax.scatter(present["recall"], present["precision"], s=15 + 4 * np.sqrt(present["support"]) * 4,
                        c=np.log10(present["train_images"].clip(lower=1)), cmap="viridis", alpha=0.8,
                        edgecolors="black", linewidths=0.3)
    fig.colorbar(points, ax=ax, label="log10 training images")
    ax.set_xlim(-0.02, 1.12)
    ax.set_ylim(-0.02, 1.08)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Per-class precision vs recall (validation, tuned thresholds)")
    fig.tight_layout()
    ranked = present.sort_values("f1")
    chosen = present.loc[list(ranked.index[:annotate]) + list(ranked.index[-annotate:])]
    # Classes on the same point (common with few validation images) share one label.
    groups = chosen.groupby([chosen["recall"].round(3), chosen["precision"].round(3)]).groups.items()
    points = [(recall, precision, ", ".join(list(names)[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else ""))
              for (recall, precision), names in groups]
    label_points(ax, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points])
    save_figure(fig, save)
    return fig


def difficulty_factors(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation of per-class F1 and AP with candidate explanations, over the classes that
    have validation images: training frequency, validation positives and clutter (labels per image)."""
    present = frame[frame["support"] > 0]
    factors = {"training images": "train_images", "validation images": "support",
               "clutter": "clutter"}
    rows = []
    for label, column in factors.items():
        rows.append({"factor": label,
                     "Spearman rho with F1": present["f1"].corr(present[column], method="spearman"),
                     "Spearman rho with AP": present["ap"].corr(present[column], method="spearman"),
                     "classes": len(present)})
    return pd.DataFrame(rows).set_index("factor")


def frequency_bands(frame: pd.DataFrame, bands: int = 4) -> pd.DataFrame:
    """Classes in ``bands`` groups of training frequency (commonest first): mean F1/precision/recall/AP and the
    share of the leaderboard weight the band carries on this validation set."""
    present = frame[frame["support"] > 0].sort_values("train_images", ascending=False)
    labels = np.array_split(np.arange(len(present)), bands)
    rows = []
    for number, positions in enumerate(labels, start=1):
        part = present.iloc[positions]
        rows.append({"band": f"{number}: {part['train_images'].max()}-{part['train_images'].min()} images",
                     "classes": len(part), "mean F1": part["f1"].mean(), "mean precision": part["precision"].mean(),
                     "mean recall": part["recall"].mean(), "mean AP": part["ap"].mean(),
                     "weight share": part["weight"].sum()})
    return pd.DataFrame(rows).set_index("band")


def plot_f1_vs_frequency(frame: pd.DataFrame, save=None, annotate: int = 5):
    """Per-class F1 against training images (log), with the strongest and weakest classes named."""
    present = frame[frame["support"] > 0]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.scatter(present["train_images"], present["f1"], s=12 + 6 * np.sqrt(present["support"]), color=_NEUTRAL,
               alpha=0.7)
    ranked = present.sort_values("f1")
    for name, colour in [(n, _BAD) for n in ranked.index[:annotate]] + [(n, _GOOD) for n in ranked.index[-annotate:]]:
        ax.annotate(name, (present.loc[name, "train_images"], present.loc[name, "f1"]), fontsize=7, color=colour,
                    xytext=(3, 3), textcoords="offset points")
    rho = present["f1"].corr(present["train_images"], method="spearman")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("validation F1")
    ax.set_title(f"F1 against frequency (Spearman rho {rho:.2f}; marker size ~ validation images)")
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def strongest_weakest(frame: pd.DataFrame, n: int = 5, min_support: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` best and worst classes by F1 (ties broken by AP) among those with ``min_support`` validation images."""
    columns = ["f1", "precision", "recall", "ap", "support", "train_images", "clutter", "threshold", "group"]
    present = frame[frame["support"] >= min_support].sort_values(["f1", "ap"], ascending=False)[columns]
    return present.head(n), present.tail(n).iloc[::-1]


def lookalike_confusion(preds, targets, groups: Mapping[str, Sequence[str]] = LOOKALIKE_GROUPS) -> pd.DataFrame:
    """For each class c of each group: how often c is predicted on images that hold a sibling but not c
    (``false alarm | sibling``), against images holding no group member (``false alarm | none``); their ratio
    (``lift``); and c's recall. Counts of the images behind each rate are given."""
    preds = _as_numpy(preds) > 0
    targets = _as_numpy(targets) > 0
    rows = []
    for group, names in groups.items():
        members = [CLASSES.index(name) for name in names]
        any_member = targets[:, members].any(axis=1)
        for c in members:
            siblings = [m for m in members if m != c]
            with_sibling = targets[:, siblings].any(axis=1) & ~targets[:, c]
            none = ~any_member
            rate_sibling = preds[with_sibling, c].mean() if with_sibling.any() else np.nan
            rate_none = preds[none, c].mean() if none.any() else np.nan
            if np.isnan(rate_sibling) or np.isnan(rate_none) or rate_sibling == rate_none == 0:
                lift = np.nan
            else:  # never predicted without a sibling but sometimes with one: an infinite lift, kept as such
                lift = rate_sibling / rate_none if rate_none > 0 else np.inf
            holders = targets[:, c]
            rows.append({"group": group, "class": CLASSES[c], "images with a sibling only": int(with_sibling.sum()),
                         "false alarms there": int(preds[with_sibling, c].sum()),
                         "false alarm | sibling": rate_sibling, "false alarm | none": rate_none,
                         "lift": lift,
                         "positives": int(holders.sum()),
                         "recall": preds[holders, c].mean() if holders.any() else np.nan})
    return pd.DataFrame(rows).set_index(["group", "class"])


def lookalike_finding(table: pd.DataFrame, min_images: int = 10, min_alarms: int = 5, min_lift: float = 1.5) -> str:
    """One sentence on the best-supported sibling effect in a :func:`lookalike_confusion` table: among the classes
    predicted at least ``min_lift`` times as often next to a sibling as without one, measured on at least
    ``min_images`` images with at least ``min_alarms`` such false alarms, the one with the most false alarms (a
    rate on two images proves nothing). Says so when no class qualifies."""
    solid = table[(table["images with a sibling only"] >= min_images) & (table["false alarms there"] >= min_alarms)
                  & (table["lift"] >= min_lift)]
    if not len(solid):
        return (f"no class of the look-alike groups is predicted at least {min_lift:g} times as often next to a "
                f"sibling as without one with {min_alarms}+ such false alarms on {min_images}+ validation images: "
                "no clear sibling effect on this split.")
    solid = solid.sort_values(["false alarms there", "lift"], ascending=False)
    (group, name), row = solid.index[0], solid.iloc[0]
    ratio = "never without one" if np.isinf(row["lift"]) else f"{row['lift']:.1f} times the rate"
    others = len(solid) - 1
    alarms, images = int(row["false alarms there"]), int(row["images with a sibling only"])
    return (f"'{name}' is predicted on {alarms} of the {images} "
            f"validation images that hold another {group} member but no {name} ({row['false alarm | sibling']:.0%}), "
            f"against {row['false alarm | none']:.0%} of the images without any {group} member ({ratio})"
            + (f"; {others} more class(es) show such an effect on as much evidence" if others else "")
            + ". In COCO these classes also share their scenes, so resemblance and co-occurrence both feed such "
              "errors.")


def pick_examples(preds, targets, n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Row positions of the ``n`` best-predicted images (highest per-image F1 of the predicted against the true
    labels; among equals, those with more labels first) and the ``n`` worst (lowest F1; among equals, more wrong
    labels first); remaining ties in random order (seeded). Also the per-image F1 of every row (``f1``)."""
    preds = _as_numpy(preds) > 0
    targets = _as_numpy(targets) > 0
    order = np.random.default_rng(seed).permutation(len(preds))  # random order first: ties stay random
    tp = (preds & targets).sum(axis=1)
    errors = (preds ^ targets).sum(axis=1)
    f1 = np.divide(2 * tp, 2 * tp + errors, out=np.zeros(len(tp)), where=(2 * tp + errors) > 0)
    # np.lexsort is stable and sorts by its last key first.
    best = order[np.lexsort((-targets.sum(axis=1)[order], -f1[order]))][:n]
    worst = order[np.lexsort((-errors[order], f1[order]))][:n]
    return {"best": best, "worst": worst, "f1": f1}


def plot_predictions(source, rows: Sequence[int], parent_idx, preds, targets, probs=None, save=None, ncols: int = 4):
    """Validation images with the model's decisions: right labels (green), missed labels (red), false alarms
    (orange), each with its probability when ``probs`` is given.

    ``rows``: positions in the validation arrays; ``parent_idx[row]`` is the image's row in ``source``."""
    preds, targets = _as_numpy(preds) > 0, _as_numpy(targets) > 0
    if len(rows) == 0:
        fig, ax = plt.subplots(figsize=(6, 0.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "no such validation image", ha="center", va="center")
        save_figure(fig, save)
        return fig
    fig, axes = _grid(len(rows), ncols, (2.6, 3.6))
    for ax, row in zip(axes, rows):
        _show(ax, source.load_image(int(parent_idx[row])))
        lines = [("right", preds[row] & targets[row], _GOOD), ("missed", ~preds[row] & targets[row], _BAD),
                 ("false alarm", preds[row] & ~targets[row], _EXTRA)]
        offset = -3  # points below the image: independent of the image's aspect ratio
        for label, mask, colour in lines:
            names = [CLASSES[c] + (f" ({probs[row, c]:.2f})" if probs is not None else "") for c in np.flatnonzero(mask)]
            text = f"{label}: " + _wrap(names, 36)
            ax.annotate(text, (0, 0), xycoords="axes fraction", xytext=(0, offset), textcoords="offset points",
                        va="top", fontsize=6.5, color=colour)
            offset -= 8 * (text.count("\n") + 1) + 2
    fig.tight_layout(h_pad=4)
    save_figure(fig, save, dpi=PHOTO_DPI)
    return fig


# ----------------------------------------------------------------------------------------------------------
# test predictions
# ----------------------------------------------------------------------------------------------------------
def prediction_stats(predictions: Mapping[str, Sequence[int]], top: int = 5) -> dict:
    """Images, labels per image, images without a label and the most predicted classes of a predictions dict."""
    per_image = np.array([len(v) for v in predictions.values()])
    counts = Counter(c for v in predictions.values() for c in v)
    return {"images": len(predictions), "mean_labels": float(per_image.mean()) if len(per_image) else 0.0,
            "empty": int((per_image == 0).sum()), "max_labels": int(per_image.max()) if len(per_image) else 0,
            "top_classes": [(CLASSES[c], n) for c, n in counts.most_common(top)]}


def plot_test_predictions(test_set, predictions: Mapping[str, Sequence[int]], n: int = 8, seed: int = 0, save=None,
                          ncols: int = 4):
    """``n`` random test images (seeded) titled with the class names predicted for them."""
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(test_set), size=min(n, len(test_set)), replace=False))
    fig, axes = _grid(len(indices), ncols, (2.5, 3.1))
    for ax, idx in zip(axes, indices):
        stem = test_set.stems[idx]
        names = [CLASSES[c] for c in predictions[stem]]
        _show(ax, test_set.load_image(int(idx)), f"{stem}\n" + _wrap(names, 34), fontsize=7)
    fig.tight_layout()
    save_figure(fig, save, dpi=PHOTO_DPI)
    return fig


# ----------------------------------------------------------------------------------------------------------
# comparative study
# ----------------------------------------------------------------------------------------------------------
def _recipe(config: Mapping) -> str:
    spec = models.get_spec(config["model"])
    parts = [f"{config['loss']}", f"{config.get('image_size') or spec.input_size}px", f"bs {config['batch_size']}",
             f"lr {config['lr']:g}", config["scheduler"]]
    if not config.get("pretrained", True):
        parts.append("from scratch")
    if config.get("cache_stages"):
        parts.append(f"cache {config['cache_stages']} stages")
    if config.get("freeze_epochs"):
        parts.append(f"head-only {config['freeze_epochs']} ep")
    if config.get("unfreeze_stages") is not None:
        parts.append(f"train last {config['unfreeze_stages']} stages")
    if config.get("ema_decay"):
        parts.append(f"EMA {config['ema_decay']:g}")
    if config.get("tta_hflip"):
        parts.append("TTA flip")
    return ", ".join(parts)


def _hardware_text(hardware: Mapping | None) -> str:
    if not hardware:
        return ""
    if hardware.get("gpu"):
        return hardware["gpu"]
    threads = hardware.get("torch_threads")
    return f"{hardware.get('device', 'cpu')} ({threads} thread{'' if threads == 1 else 's'})"


def collect_runs(runs_dir) -> tuple[pd.DataFrame, list[str]]:
    """One row per run folder under ``runs_dir`` (a folder holding config.json), from the files runs.fit
    writes: config.json, split.json, metrics.csv, summary.json (absent while a run is unfinished).

    Returns (table, skipped): sub-folders without config.json are listed in ``skipped``, not silently dropped.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return pd.DataFrame(), []
    rows, skipped = [], []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if not (run_dir / "config.json").is_file():
            skipped.append(run_dir.name)
            continue
        config = read_json(run_dir / "config.json")
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else None
        history = pd.read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else pd.DataFrame()
        split = read_json(run_dir / "split.json") if (run_dir / "split.json").is_file() else {}
        if summary is not None and summary.get("best"):
            best, status = summary["best"], summary["status"]
            wall, epochs_done = summary["time_s"], summary["epochs_done"]
        elif len(history):
            best = history.loc[history["val/f1"].idxmax()].to_dict()
            status, wall, epochs_done = "unfinished", float(history["time_s"].sum()), len(history)
        else:
            best, status, wall, epochs_done = {}, "no epoch", float("nan"), 0
        if summary is not None and summary.get("status") == "failed":  # runs.fit marks a run that raised
            status = "failed"
        rows.append({"run": run_dir.name, "model": config["model"], "recipe": _recipe(config),
                     "data": Path(split.get("data_root", config.get("data_root") or "?")).name,
                     "train/val images": f"{len(split.get('train', []))}/{len(split.get('val', []))}",
                     "epochs": f"{epochs_done}/{config['epochs']}", "status": status,
                     "wall time (min)": wall / 60, "hardware": _hardware_text(summary and summary.get("hardware")),
                     "best epoch": best.get("epoch"), "val F1": best.get("val/f1"),
                     "val precision": best.get("val/precision"), "val recall": best.get("val/recall"),
                     "val mAP": best.get("val/map"), "val F1 @0.5": best.get("val/f1@0.5")})
    return pd.DataFrame(rows), skipped


def comparable_runs(table: pd.DataFrame, data_root, n_train: int, n_val: int) -> pd.DataFrame:
    """The finished runs of a :func:`collect_runs` table on ``data_root``'s data with a split of this size."""
    if not len(table):
        return table
    same = (table["status"] == "finished") & (table["data"] == Path(data_root).name) & \
        (table["train/val images"] == f"{n_train}/{n_val}")
    return table[same].reset_index(drop=True)


def load_reference_study(path=None) -> tuple[pd.DataFrame | None, str]:
    """The team's reference study (``study/results.csv``): (table, message). A missing file gives
    (None, message saying so); a file without the expected columns raises naming them."""
    path = Path(path) if path is not None else STUDY_CSV
    if not path.is_file():
        return None, f"{path} is not there yet: the reference study has not been committed to this checkout."
    frame = pd.read_csv(path)
    missing = [column for column in STUDY_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(STUDY_COLUMNS)}")
    return frame, f"{path.name}: {len(frame)} rows, measured with {frame['protocol'].nunique()} protocols."


def study_rows(frame: pd.DataFrame | None, protocol: str) -> pd.DataFrame | None:
    """The rows of the reference study measured with ``protocol``, numbered from 1, their columns as they read
    (None without a study or such rows)."""
    if frame is None or not (frame["protocol"] == protocol).any():
        return None
    rows = frame[frame["protocol"] == protocol].drop(columns="protocol").reset_index(drop=True)
    rows.index = pd.RangeIndex(1, len(rows) + 1, name="#")
    return rows.dropna(axis=1, how="all")


def threshold_floor_row(frame: pd.DataFrame | None):
    """The study's row on a floor under the class thresholds (None without it)."""
    rows = study_rows(frame, "threshold policies")
    return None if rows is None else rows.iloc[0]


def plot_finetuning(rows: pd.DataFrame, save=None):
    """Validation mAP of each fine-tuning variant (bars, numbered like the table) and of the frozen backbone with a
    linear head at the same input size (grey)."""
    labels = [textwrap.fill(f"{number}. {name}", 70) for number, name in zip(rows.index, rows["recipe"])]
    fig, ax = plt.subplots(figsize=(11, 0.62 * len(rows) + 1.4))
    colours = [_NEUTRAL if "frozen backbone" not in recipe_name else "grey" for recipe_name in rows["recipe"]]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, rows["val_map"], color=colours)
    for position, (number, row) in zip(y, rows.iterrows()):
        ax.text(row["val_map"] + 0.005, position, f"{row['val_map']:.3f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7.5)
    ax.set_xlim(0, min(1.0, rows["val_map"].max() + 0.12))
    ax.set_xlabel("validation mAP of best.pt (the default recipe's 90/10 split of coco-mini)")
    ax.set_title("Fine-tuning EfficientNet-Lite0 end to end (blue) against a frozen backbone with a linear head (grey)")
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def plot_recipe_study(rows: pd.DataFrame, save=None):
    """Held-out F1 (mean of the folds, +- its standard error) of each recipe of the nested cross-validation, its
    thresholds from an 80/20 split (circles) and cross-fitted (squares); the held-out mAP of both beside them."""
    names = rows["recipe"].str.split("; ").str[0]
    order = list(dict.fromkeys(names))
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(order) + 1.6))
    row_of = names.map({name: len(order) - 1 - position for position, name in enumerate(order)})  # top to bottom
    crossed = rows["recipe"].str.contains("cross-fit")
    for cross_fit, marker, offset, label in ((False, "o", 0.15, "thresholds from an 80/20 split"),
                                             (True, "s", -0.15, "cross-fit (the cpu preset's way)")):
        part = crossed == cross_fit
        ax.errorbar(rows.loc[part, "val_f1"], row_of[part] + offset, xerr=rows.loc[part, "f1_se"], fmt=marker,
                    capsize=3, label=label)
    low = (rows["val_f1"] - rows["f1_se"]).min()
    high = (rows["val_f1"] + rows["f1_se"]).max()
    for position, name in enumerate(order[::-1]):
        maps = rows.loc[names == name, "val_map"].to_numpy()
        ax.text(high + 0.01, position, "mAP " + " / ".join(f"{value:.3f}" for value in maps), va="center", fontsize=8)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels([textwrap.fill(name, 60) for name in order[::-1]], fontsize=8)
    ax.set_xlim(low - 0.01, high + 0.085)
    ax.set_xlabel("held-out leaderboard F1 (mean of 5 outer folds, +- standard error); "
                  "right: held-out mAP, split / cross-fit")
    ax.set_title("Recipes on frozen features, judged on images no part of them saw")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, save)
    return fig
