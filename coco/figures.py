"""The notebook's figures, drawn from what a run saved and from the tables of ``coco.tables``.

Every ``plot_*`` function returns its matplotlib Figure and, given ``save=PATH``, also writes it there as a PNG
(``save_figure``: folders created, no version stamp in the file, so an unchanged figure gives an unchanged
file). ``label_points`` places point labels without overlaps.
"""
from __future__ import annotations

import io
import math
import random
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from coco import features, leaderboard, networks, recipe, transforms
from coco.course import CLASSES
from coco.losses import build_loss
from coco.tables import _as_numpy
from coco.thresholds import sweep_global_threshold

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


def _inline_jpeg(fig, quality: int = 85) -> None:
    """Inside a notebook, show a photo grid as JPEG and close it (so the inline backend does not embed it again as
    PNG): photos compress ~5x better as JPEG, which keeps the executed notebook small. Outside a kernel: nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=PHOTO_DPI, bbox_inches="tight", pil_kwargs={"quality": quality})
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="jpeg"))


def _wrap(names: Sequence[str], width: int = 28) -> str:
    return "\n".join(textwrap.wrap(", ".join(names), width)) or "(none)"


def _image_array(image) -> np.ndarray:
    """PIL image, or CHW float tensor with values in 0..1 (see transforms.denormalise) -> HxWx3 array for imshow."""
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
    _inline_jpeg(fig)
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
    spec = networks.get_spec(config.model)
    size = eval_tf.image_size
    others = {mode: transforms.EvalPreset(image_size=size, mean=spec.mean, std=spec.std, mode=mode)
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
                    view = transforms.denormalise(view, spec.mean, spec.std)
                _show(ax, view, columns[col] if number == 0 else None, fontsize=7)
    finally:
        random.setstate(state)
    fig.tight_layout()
    save_figure(fig, save, dpi=PHOTO_DPI)
    _inline_jpeg(fig)
    return fig


def plot_loss_shapes(config, save=None):
    """Per-label loss against the predicted probability, BCE vs the run's ASL setting, positives and negatives."""
    probs = torch.linspace(0.001, 0.999, 500)
    logits = torch.log(probs) - torch.log1p(-probs)
    mark = {config.loss: " - this run"}
    losses = {"BCE" + mark.get("bce", ""): build_loss("bce", reduction="none"),
              f"ASL (gamma- {config.gamma_neg:g}, gamma+ {config.gamma_pos:g}, clip {config.asl_clip:g})"
              + mark.get("asl", ""): build_loss("asl", gamma_pos=config.gamma_pos, gamma_neg=config.gamma_neg,
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


def plot_lr_schedule(schedule: pd.DataFrame, save=None, *, backbone_trains: bool = True):
    """The learning rate of each AdamW parameter group after every optimiser step (tables.lr_schedule: the
    OneCycleLR that fit builds, stepped per batch), before any training: warm-up, peak, cosine decay."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(schedule.index, schedule["head"], label=f"head (peak {schedule['head'].max():.0e})")
    if backbone_trains:
        ax.plot(schedule.index, schedule["backbone"], label=f"backbone (peak {schedule['backbone'].max():.0e})")
    ax.set_xlabel("epoch (one point per optimiser step)")
    ax.set_ylabel("learning rate")
    ax.set_title("OneCycleLR, stepped every batch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def plot_threshold_sweep(probs, targets, thresholds, save=None):
    """Leaderboard F1, precision and recall of one threshold shared by all classes, against the threshold;
    the tuned per-class F1 as a horizontal line."""
    best, grid, f1_curve = sweep_global_threshold(probs, targets)
    # Precision/recall of every grid threshold: one vectorised metric call per threshold (99 calls).
    scores = [leaderboard.leaderboard_scores(probs > t, targets, warn=False) for t in grid]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.plot(grid, f1_curve, color="black", lw=2, label="F1 (one threshold for all classes)")
    ax.plot(grid, [s["precision"] for s in scores], color=_NEUTRAL, label="weighted precision")
    ax.plot(grid, [s["recall"] for s in scores], color=_BAD, label="weighted recall")
    ax.axvline(0.5, color="grey", linestyle=":", label=f"0.5: F1 {f1_curve[np.argmin(abs(grid - 0.5))]:.3f}")
    ax.axvline(best, color="black", linestyle="--", label=f"best global {best:.2f}: F1 {f1_curve.max():.3f}")
    per_class = leaderboard.leaderboard_scores(thresholds.apply(probs), targets, warn=False)["f1"]
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
    _inline_jpeg(fig)
    return fig


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
    _inline_jpeg(fig)
    return fig


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


def plot_frontier(frame: pd.DataFrame, save=None):
    """Accuracy per CPU hour: held-out F1 (mean over seeds, +- its standard error) of each measured recipe against
    its hours at the course's 65,000 + 4,952 images on a 2-core CPU; the presets are filled and named, the
    budgets of the ``cpu`` (3 h) and ``cpu-fast`` (30 min) presets drawn as vertical lines."""
    fig, ax = plt.subplots(figsize=(9, 5.2))
    presets = frame["preset"].fillna("") != ""
    ax.errorbar(frame.loc[~presets, "hours_65k"], frame.loc[~presets, "f1"], yerr=frame.loc[~presets, "f1_se"],
                fmt="o", mfc="white", color=_NEUTRAL, capsize=3, label="measured recipe")
    ax.errorbar(frame.loc[presets, "hours_65k"], frame.loc[presets, "f1"], yerr=frame.loc[presets, "f1_se"],
                fmt="s", color=_GOOD, capsize=3, label="preset")
    ordered = frame.sort_values(["hours_65k", "f1"]).reset_index(drop=True)
    for i, row in ordered.iterrows():  # labels alternate right-above / right-below, so neighbours do not collide
        name = f"{row['preset']}: {row['short']}" if row["preset"] else row["short"]
        ax.annotate(name, (row["hours_65k"], row["f1"]), xytext=(6, 9 if i % 2 == 0 else -13),
                    textcoords="offset points", fontsize=7, color=_GOOD if row["preset"] else "0.25")
    ax.set_xscale("log")
    ticks = [0.25, 0.5, 1, 2, 3, 4, 6]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    top = ax.get_ylim()[1]
    for hours, name in ((0.5, "cpu-fast budget (30 min)"), (3.0, "cpu budget (3 h)")):
        ax.axvline(hours, color="0.6", linestyle=":", linewidth=1)
        ax.text(hours, top, f"{name} ", rotation=90, va="top", ha="right", fontsize=8, color="0.4")
    ax.set_xlabel("hours at 65,000 + 4,952 images on a 2-core CPU (log scale)")
    ax.set_ylabel("held-out leaderboard F1 (nested CV, coco-mini)")
    ax.set_title("More accuracy per CPU hour: the measured frontier")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, save)
    return fig
