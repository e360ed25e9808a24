"""Leaderboard metric, threshold tuning and predictions export for the MS-COCO multi-label challenge.

Everything the project tunes optimises the number the leaderboard ranks by, computed exactly the way the
course's reference scorer (its ``validation_loop``) computes it, on binary predictions and targets (N x C):

* per class c: TP_c, FP_c and positives n_c;
* precision_c = TP_c / (TP_c + FP_c) and recall_c = TP_c / n_c, both 0 when TP_c = 0;
* class weights w_c = (1 / n_c) / sum_k (1 / n_k): rare classes weigh the most (a class with 10 test
  images counts some 270 times more than ``person`` with its ~2,700);
* precision P = sum_c w_c precision_c, recall R = sum_c w_c recall_c, F1 = 2 P R / (P + R) (0 when P or R is 0);
* accuracy = sum_c TP_c / sum_c n_c.

Classes with no positives in the evaluated set (a small validation split has some; the real test set has
none): the leaderboard formula would divide by zero (weight 1/0), so such a class gets weight 0. It is left
out of the weighted precision and recall, so its false positives cost nothing in the leaderboard F1 (they do
count in ``micro_f1``); it is also left out of ``macro_f1`` and mAP. A :class:`MissingClassWarning` names
the classes whenever this happens, because a validation F1 computed without them is not comparable with a
test F1 that has them.

All computations are numpy, float64 and vectorised over classes and thresholds. The module imports neither
torch nor ``dataset`` at load time: ``dataset`` (which owns NUM_CLASSES, the class names, the label parser
and the test-image listing, and imports torch) is imported when first needed, so ``bench`` and ``--help``
start at once while ``validate``/``score`` pay the torch import. Inputs may be numpy arrays or torch tensors.

Command line (``python -m metrics --help``)::

    python -m metrics validate PREDICTIONS.json --test-dir ms-coco/images/test-resized
    python -m metrics score PREDICTIONS.json --labels ms-coco/labels/train [--json] [--per-class]
    python -m metrics bench
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

import files

__all__ = [
    "MissingClassWarning",
    "PredictionsError",
    "ThresholdResult",
    "DEFAULT_CANDIDATES",
    "per_class_counts",
    "leaderboard_from_counts",
    "leaderboard_scores",
    "average_precision",
    "mean_average_precision",
    "per_class_table",
    "sweep_global_threshold",
    "tune_class_thresholds",
    "apply_thresholds",
    "tune_thresholds",
    "RULES",
    "f1_by_rule",
    "prior_f1",
    "held_out_gains",
    "mock_test_scores",
    "predictions_to_dict",
    "validate_predictions",
    "write_predictions",
    "load_predictions",
    "load_and_validate",
    "read_labels",
    "test_stems",
    "score_predictions",
    "main",
]

# Candidate thresholds for the sweeps: 0.01 .. 0.99 in steps of 0.01 (99 values). Probabilities are
# compared with ``probs > threshold`` (strictly greater, as the course's skeleton compares).
DEFAULT_CANDIDATES = np.round(np.arange(1, 100) / 100.0, 2)

# Overfitting guards of tune_class_thresholds, chosen on held-out data (numbers in its docstring):
DEFAULT_MIN_POSITIVES = 5  # classes with fewer validation positives keep the global threshold
DEFAULT_SMOOTH = 2  # pick each class's threshold on its F1 curve averaged over +-2 grid steps
DEFAULT_SHRINK = 0.0  # pulling thresholds towards the global one lost F1 on held-out data: off
DEFAULT_ROUNDS = 3  # rounds of coordinate ascent; 1 round was measurably worse, 10 no better than 3

# Extensions (besides dataset.IMAGE_EXTENSIONS) that betray a file name used as a key instead of a stem.
_OTHER_KEY_SUFFIXES = (".cls", ".txt", ".json")
_SHOW = 5  # how many culprits an error message lists


class MissingClassWarning(UserWarning):
    """Some classes have no positives in the evaluated set; they get weight 0 in the leaderboard F1."""


class PredictionsError(ValueError):
    """A predictions file or object breaks the submission format; ``.errors`` lists every fault found."""

    def __init__(self, errors: Sequence[str], source: str = "predictions"):
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.errors))


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------
def _dataset():
    # Imported lazily: dataset imports torch, which costs seconds the CLI does not need.
    import dataset

    return dataset


def _num_classes(num_classes: int | None) -> int:
    return _dataset().NUM_CLASSES if num_classes is None else int(num_classes)


def _to_numpy(array, name: str) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor; converted without importing torch here
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (images x classes), got shape {array.shape}")
    return array


def _binary(array, name: str) -> np.ndarray:
    array = _to_numpy(array, name)
    if array.dtype == bool:
        return array
    if array.size and not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))].ravel()[:_SHOW].tolist()
        raise ValueError(f"{name} must hold only 0/1 (or bools), found values such as {bad}")
    return array.astype(bool)


def _finite_scores(scores, name: str = "probs") -> np.ndarray:
    """Any real scores (AP only needs their order, so logits are fine), float64, no NaN/inf."""
    scores = _to_numpy(scores, name).astype(np.float64, copy=False)
    if scores.size and not np.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return scores


def _probabilities(probs, name: str = "probs") -> np.ndarray:
    probs = _finite_scores(probs, name)
    if probs.size:
        low, high = float(probs.min()), float(probs.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name} must be probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]: "
                "apply torch.sigmoid to the logits first (never threshold logits)"
            )
    return probs


def _pair(first, targets, first_name: str, first_kind) -> tuple[np.ndarray, np.ndarray]:
    first = first_kind(first, first_name)
    targets = _binary(targets, "targets")
    if first.shape != targets.shape:
        raise ValueError(f"{first_name} has shape {first.shape} but targets has shape {targets.shape}")
    return first, targets


def _class_label(indices: Iterable[int], num_classes: int) -> str:
    indices = [int(i) for i in indices]
    names = None
    if num_classes == _dataset().NUM_CLASSES:
        names = _dataset().CLASSES
    shown = [f"{i} ({names[i]})" if names else str(i) for i in indices[:10]]
    more = f" and {len(indices) - 10} more" if len(indices) > 10 else ""
    return ", ".join(shown) + more


def _warn_missing(pos: np.ndarray, stacklevel: int = 3) -> None:
    missing = np.flatnonzero(pos == 0)
    if missing.size:
        warnings.warn(
            MissingClassWarning(
                f"{missing.size} of {pos.size} classes have no positives in the evaluated set and get weight 0 "
                f"in the leaderboard F1 (their false positives are not counted there): "
                f"{_class_label(missing, pos.size)}"
            ),
            stacklevel=stacklevel,
        )


# ----------------------------------------------------------------------------------------------------------
# the leaderboard metric
# ----------------------------------------------------------------------------------------------------------
def per_class_counts(preds, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives and positives (int64 arrays of shape (C,))."""
    preds, targets = _pair(preds, targets, "preds", _binary)
    tp = np.count_nonzero(preds & targets, axis=0).astype(np.int64)
    fp = np.count_nonzero(preds & ~targets, axis=0).astype(np.int64)
    pos = np.count_nonzero(targets, axis=0).astype(np.int64)
    return tp, fp, pos


def class_weights(pos: np.ndarray) -> np.ndarray:
    """The leaderboard's class weights: proportional to 1 / positives, summing to 1 (0 for a class without positives)."""
    pos = np.asarray(pos, dtype=np.float64)
    inverse = np.divide(1.0, pos, out=np.zeros_like(pos), where=pos > 0)  # no positives -> weight 0
    total = inverse.sum()
    return inverse / total if total > 0 else inverse


def _class_precision_recall(tp, fp, pos) -> tuple[np.ndarray, np.ndarray]:
    """Course rule: precision and recall of a class are 0 when it has no true positive. Broadcasts."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    pos = np.broadcast_to(np.asarray(pos, dtype=np.float64), tp.shape)
    has_tp = tp > 0
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=has_tp)
    recall = np.divide(tp, pos, out=np.zeros_like(tp), where=has_tp)
    return precision, recall


def _f1(precision, recall):
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    total = precision + recall
    return np.divide(2.0 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def leaderboard_from_counts(tp, fp, pos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leaderboard (precision, recall, F1) from per-class counts; ``tp``/``fp`` may carry leading axes
    (e.g. shape (T, C) for T thresholds) and are reduced over the last one. ``pos`` has shape (C,)."""
    weights = class_weights(pos)
    class_precision, class_recall = _class_precision_recall(tp, fp, pos)
    precision = class_precision @ weights
    recall = class_recall @ weights
    return precision, recall, _f1(precision, recall)


def leaderboard_scores(preds, targets, *, warn: bool = True) -> dict:
    """The leaderboard's numbers for binary ``preds`` and ``targets`` (N x C, numpy or torch, 0/1 or bool).

    Returns floats ``f1``, ``precision``, ``recall``, ``accuracy`` (leaderboard definitions, see the module
    docstring), ``micro_f1`` (from the summed TP/FP/FN, every class's false positives included),
    ``macro_f1`` (mean per-class F1 over the classes that have positives) and the int ``n_missing_classes``.
    A class without positives gets weight 0 and triggers a :class:`MissingClassWarning` (``warn=False``
    silences it, for callers that warned already).
    """
    tp, fp, pos = per_class_counts(preds, targets)
    if warn:
        _warn_missing(pos)
    precision, recall, f1 = leaderboard_from_counts(tp, fp, pos)
    present = pos > 0
    fn = pos - tp
    micro_denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    class_f1 = _f1(*_class_precision_recall(tp, fp, pos))
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "accuracy": float(tp.sum() / pos.sum()) if pos.sum() > 0 else 0.0,
        "micro_f1": float(2 * tp.sum() / micro_denominator) if micro_denominator > 0 else 0.0,
        "macro_f1": float(class_f1[present].mean()) if present.any() else 0.0,
        "n_missing_classes": int((~present).sum()),
    }


# ----------------------------------------------------------------------------------------------------------
# ranking metrics
# ----------------------------------------------------------------------------------------------------------
def average_precision(probs, targets) -> np.ndarray:
    """Average precision per class, shape (C,), equal to ``sklearn.metrics.average_precision_score``:
    AP = sum over distinct score thresholds of (R_k - R_{k-1}) * P_k, tied scores forming one threshold.
    Classes without positives get NaN. Vectorised: one sort of all columns, cumulative sums, no class loop.
    """
    probs, targets = _pair(probs, targets, "probs", _finite_scores)
    n_images, n_classes = probs.shape
    pos = targets.sum(axis=0)
    if n_images == 0:
        return np.full(n_classes, np.nan)
    order = np.argsort(-probs, axis=0, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=0)
    sorted_targets = np.take_along_axis(targets, order, axis=0)
    cum_tp = np.cumsum(sorted_targets, axis=0, dtype=np.float64)
    ranks = np.arange(1, n_images + 1, dtype=np.float64)[:, None]
    # A row closes a group of tied scores when the next score differs (or it is the last row); every
    # positive in the group gets the precision measured at the group's end, as sklearn's curve does.
    group_end = np.ones_like(sorted_targets)
    group_end[:-1] = sorted_probs[:-1] != sorted_probs[1:]
    end_index = np.where(group_end, np.arange(n_images)[:, None], n_images)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(cum_tp / ranks, end_index, axis=0)
    summed = np.where(sorted_targets, precision_at_end, 0.0).sum(axis=0)
    return np.divide(summed, pos, out=np.full(n_classes, np.nan), where=pos > 0)


def mean_average_precision(probs, targets) -> float:
    """Mean of :func:`average_precision` over the classes that have positives (NaN if none has)."""
    ap = average_precision(probs, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> Sequence[str]:
    if class_names is None:
        dataset = _dataset()
        if num_classes != dataset.NUM_CLASSES:
            return [str(i) for i in range(num_classes)]
        class_names = dataset.CLASSES
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    return class_names


def _class_rows(tp, fp, pos, class_names, thresholds=None, ap=None) -> list[dict]:
    precision, recall = _class_precision_recall(tp, fp, pos)
    f1 = _f1(precision, recall)
    rows = []
    for index, name in enumerate(class_names):  # building the output rows, not a metric loop
        row = {
            "name": name,
            "index": index,
            "support": int(pos[index]),
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
        }
        if ap is not None:
            row["ap"] = float(ap[index])
        if thresholds is not None:
            row["threshold"] = float(thresholds[index])
        rows.append(row)
    return rows


def per_class_table(probs, targets, thresholds=0.5, class_names: Sequence[str] | None = None,
                    *, at_least_one: bool = False) -> list[dict]:
    """One dict per class: name, index, support, precision, recall, f1 (leaderboard per-class rules), ap
    (NaN without positives) and threshold, for ``probs`` thresholded with ``thresholds`` (scalar or (C,)).
    ``class_names`` defaults to ``dataset.CLASSES``. Feed it to ``pandas.DataFrame`` for display."""
    probs, targets = _pair(probs, targets, "probs", _probabilities)
    n_classes = probs.shape[1]
    names = _class_names(n_classes, class_names)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_classes,))
    preds = apply_thresholds(probs, thresholds, at_least_one=at_least_one)
    tp, fp, pos = per_class_counts(preds, targets)
    return _class_rows(tp, fp, pos, names, thresholds, average_precision(probs, targets))


# ----------------------------------------------------------------------------------------------------------
# threshold tuning
# ----------------------------------------------------------------------------------------------------------
def _candidate_grid(candidates) -> np.ndarray:
    grid = DEFAULT_CANDIDATES if candidates is None else np.asarray(candidates, dtype=np.float64).ravel()
    if grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError("thresholds must be a non-empty set of finite numbers")
    return np.unique(grid)  # sorted ascending, as _counts_at_thresholds needs


def _counts_at_thresholds(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray):
    """TP and FP of every class at every threshold of the ascending ``grid``: int64 arrays (T, C).

    Exact and loop-free: for each probability, ``searchsorted`` finds k = how many thresholds lie strictly
    below it, i.e. it is predicted positive at thresholds 0..k-1. One bincount per (class, k) and a
    reverse cumulative sum turn these into counts for every threshold: O(N C log T + C T).
    """
    n_thresholds = grid.size
    n_classes = probs.shape[1]
    bins = np.searchsorted(grid, probs, side="left")  # (N, C) in 0..T
    flat = bins + (n_thresholds + 1) * np.arange(n_classes)  # class-major bin ids
    size = n_classes * (n_thresholds + 1)
    predicted = np.bincount(flat.ravel(), minlength=size).reshape(n_classes, n_thresholds + 1)
    true = np.bincount(flat[targets], minlength=size).reshape(n_classes, n_thresholds + 1)
    # count at threshold j = sum of bins k > j
    predicted_at = np.cumsum(predicted[:, ::-1], axis=1)[:, ::-1][:, 1:]
    tp = np.cumsum(true[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return tp.T.astype(np.int64), (predicted_at - tp).T.astype(np.int64)


def sweep_global_threshold(probs, targets, thresholds=None) -> tuple[float, np.ndarray, np.ndarray]:
    """Leaderboard F1 of one threshold shared by all classes, for every threshold at once.

    ``probs`` are probabilities (after sigmoid). Returns ``(best_threshold, thresholds, f1_curve)`` with
    ``thresholds`` sorted ascending (default :data:`DEFAULT_CANDIDATES`); ties go to the lowest threshold.
    """
    probs, targets = _pair(probs, targets, "probs", _probabilities)
    grid = _candidate_grid(thresholds)
    tp, fp = _counts_at_thresholds(probs, targets, grid)
    _, _, f1_curve = leaderboard_from_counts(tp, fp, targets.sum(axis=0))
    return float(grid[int(np.argmax(f1_curve))]), grid, f1_curve


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def tune_class_thresholds(probs, targets, init=None, candidates=None, *,
                          min_positives: int = DEFAULT_MIN_POSITIVES, shrink: float = DEFAULT_SHRINK,
                          n_rounds: int = DEFAULT_ROUNDS, smooth: int = DEFAULT_SMOOTH) -> np.ndarray:
    """Per-class thresholds (C,) that maximise the leaderboard F1 itself, by coordinate ascent.

    The leaderboard F1 does not split by class: every class moves the global weighted precision and
    recall. So classes are visited in turn and each gets the candidate threshold that maximises the
    *global* F1 with all other classes held fixed; all candidates of a class are scored at once from
    per-class counts precomputed for the whole grid (only that class's precision/recall terms change).
    A move is made only when it strictly raises the global F1 on the fitted data, so the result never
    scores below ``init`` there. Stops after ``n_rounds`` rounds or after a round without a move.

    ``init``: starting thresholds, scalar or (C,); default the best global threshold of the sweep.
    ``candidates``: the threshold grid (default :data:`DEFAULT_CANDIDATES`, 0.01 .. 0.99).

    Guards against fitting noise (in-sample, per-class tuning gains ~0.11 F1 but only ~0.04 survives on
    held-out data, because the metric weighs rare classes most and their few images make F1 curves jagged):

    * ``min_positives``: a class with fewer validation positives keeps its ``init`` threshold (a class
      with 3 validation images does not get a threshold fitted to those 3 images);
    * ``smooth``: a class's threshold is chosen where its global-F1 curve, averaged over +-``smooth``
      grid steps, peaks (the middle of a good plateau, not a lucky spike); the move is still only taken
      if it raises the un-smoothed global F1;
    * ``shrink`` (off by default): pull the chosen threshold towards ``init`` in logit space by
      n / (n + shrink) for a class with n positives, snapped to the grid.

    Held-out measurements behind the defaults (fit on one set, leaderboard F1 scored on another;
    mean gain over the best global threshold fitted on the same set, standard error in brackets):

    ==========================================  ========================  ========================
    per-class tuning variant                    real photos (a)           synthetic, course scale (b)
    ==========================================  ========================  ========================
    no guard (min_positives=1, smooth=0)        +0.0323 (0.0022)          +0.0478 (0.0047)
    min_positives=5                             +0.0326 (0.0023)          +0.0478 (0.0047)
    min_positives=5, smooth=2  (default)        +0.0397 (0.0023)          +0.0506 (0.0040)
    min_positives=5, smooth=4                   +0.0398 (0.0022)          +0.0512 (0.0044)
    min_positives=5, smooth=2, shrink=5         +0.0309 (0.0018)          +0.0402 (0.0041)
    ==========================================  ========================  ========================

    Paired against no guard, the default gains +0.0074 (se 0.0013) on (a) and +0.0028 (se 0.0027) on
    (b). Earlier rounds on other splits/seeds, used to pick the candidates (paired against no guard):
    min_positives=10: -0.0014 to +0.0017, min_positives=20: -0.015 / -0.002, shrink=5..50: -0.004 to
    -0.020, one round instead of three: -0.002 to -0.006, a 0.02-step grid: -0.008 / -0.011,
    smooth=2: +0.0054 / +0.0032, smooth=8..12: +0.000 to +0.005 (first figure (a), second (b)).

    (a) coco-mini, 2,395 real photos: out-of-fold probabilities (5 folds) of a BCE linear probe on frozen
        ImageNet EfficientNet-Lite0 features (mAP 0.46), fitted on one stratified half (~1,200 images,
        many classes with < 10 positives) and scored on the other; 30 splits x 2 directions.
    (b) 30 synthetic models with COCO-like class frequencies (person 54 %, others 0.16 %-12 %), Gaussian
        class scores of varied separability turned into mis-calibrated probabilities; fitted on 6,500
        images (a 10 % validation split of the course's 65,000) and scored on 4,952 (the test set size).
    """
    probs, targets = _pair(probs, targets, "probs", _probabilities)
    n_classes = probs.shape[1]
    grid = _candidate_grid(candidates)
    pos = targets.sum(axis=0)
    if init is None:
        init, _, _ = sweep_global_threshold(probs, targets, grid)
    thresholds = np.broadcast_to(np.asarray(init, dtype=np.float64), (n_classes,)).copy()

    weights = class_weights(pos)
    tp_grid, fp_grid = _counts_at_thresholds(probs, targets, grid)
    weighted_precision, weighted_recall = _class_precision_recall(tp_grid.T, fp_grid.T, pos[:, None])
    weighted_precision *= weights[:, None]  # (C, T): class c's term in the global precision at each threshold
    weighted_recall *= weights[:, None]

    # Exact terms at the starting thresholds (which need not lie on the grid).
    tp0, fp0, _ = per_class_counts(probs > thresholds, targets)
    start_precision, start_recall = _class_precision_recall(tp0, fp0, pos)
    current_precision = start_precision * weights
    current_recall = start_recall * weights
    precision_total, recall_total = current_precision.sum(), current_recall.sum()
    best_f1 = float(_f1(precision_total, recall_total))

    init_logit = _logit(thresholds)
    grid_logit = _logit(grid)
    tunable = np.flatnonzero(pos >= max(int(min_positives), 1))
    smooth = int(smooth)
    window = np.full(2 * smooth + 1, 1.0 / (2 * smooth + 1))
    for _ in range(int(n_rounds)):
        moved = False
        for c in tunable:  # coordinate ascent is sequential by nature; each step is vectorised over T
            precision_rest = precision_total - current_precision[c]
            recall_rest = recall_total - current_recall[c]
            f1_candidates = _f1(precision_rest + weighted_precision[c], recall_rest + weighted_recall[c])
            if smooth > 0:  # pick the centre of the best plateau, not a lucky spike
                padded = np.pad(f1_candidates, smooth, mode="edge")
                choice = int(np.argmax(np.convolve(padded, window, mode="valid")))
            else:
                choice = int(np.argmax(f1_candidates))
            if shrink > 0:
                pulled = init_logit[c] + (grid_logit[choice] - init_logit[c]) * pos[c] / (pos[c] + shrink)
                choice = int(np.argmin(np.abs(grid_logit - pulled)))
            if f1_candidates[choice] > best_f1 + 1e-12 and grid[choice] != thresholds[c]:
                thresholds[c] = grid[choice]
                current_precision[c] = weighted_precision[c, choice]
                current_recall[c] = weighted_recall[c, choice]
                # re-summed, not updated incrementally, so rounding cannot drift across moves
                precision_total, recall_total = current_precision.sum(), current_recall.sum()
                best_f1 = float(_f1(precision_total, recall_total))
                moved = True
        if not moved:
            break
    return thresholds


def apply_thresholds(probs, thresholds, at_least_one: bool = False) -> np.ndarray:
    """Boolean predictions ``probs > thresholds`` (scalar or per-class (C,)). With ``at_least_one`` a row
    that predicts nothing gets its most probable class (every course image has at least one label)."""
    probs = _probabilities(probs)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim not in (0, 1) or (thresholds.ndim == 1 and thresholds.shape[0] != probs.shape[1]):
        raise ValueError(f"thresholds must be a scalar or have shape ({probs.shape[1]},), got {thresholds.shape}")
    preds = probs > thresholds
    if at_least_one and probs.shape[1]:
        empty = np.flatnonzero(~preds.any(axis=1))
        preds[empty, probs[empty].argmax(axis=1)] = True
    return preds


@dataclass
class ThresholdResult:
    """What :func:`tune_thresholds` chose; ``to_dict``/``from_dict`` round-trip through JSON/checkpoints."""

    global_threshold: float
    class_thresholds: np.ndarray
    at_least_one: bool = False
    f1_by_step: dict = field(default_factory=dict)

    def apply(self, probs) -> np.ndarray:
        """Boolean predictions for ``probs`` with the chosen thresholds and rule."""
        return apply_thresholds(probs, self.class_thresholds, self.at_least_one)

    def to_dict(self) -> dict:
        return {
            "global_threshold": float(self.global_threshold),
            "class_thresholds": [float(t) for t in np.asarray(self.class_thresholds).ravel()],
            "at_least_one": bool(self.at_least_one),
            "f1_by_step": {str(k): float(v) for k, v in self.f1_by_step.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ThresholdResult":
        missing = {"global_threshold", "class_thresholds"} - set(data)
        if missing:
            raise ValueError(f"threshold record lacks {sorted(missing)}")
        return cls(
            global_threshold=float(data["global_threshold"]),
            class_thresholds=np.asarray(data["class_thresholds"], dtype=np.float64),
            at_least_one=bool(data.get("at_least_one", False)),
            f1_by_step={str(k): float(v) for k, v in dict(data.get("f1_by_step", {})).items()},
        )


def tune_thresholds(probs, targets, candidates=None, *, min_positives: int = DEFAULT_MIN_POSITIVES,
                    shrink: float = DEFAULT_SHRINK, n_rounds: int = DEFAULT_ROUNDS, smooth: int = DEFAULT_SMOOTH,
                    try_at_least_one: bool = True) -> ThresholdResult:
    """Everything fit() needs from validation probabilities: best global threshold, per-class thresholds
    (coordinate ascent from the global one, rare-class guard, see :func:`tune_class_thresholds`) and the
    "at least one label per image" rule, kept only if it raises the validation F1.
    ``f1_by_step`` records the validation leaderboard F1 at 0.5, global, per_class and at_least_one.

    Held-out, the rule made no measurable difference (kept in 0 of 60 real-photo fits and 2 of 30
    synthetic ones, mean held-out change < 0.0001): thresholds tuned for this metric already leave few
    images empty. It stays as a validated option because it costs nothing when it is not kept."""
    probs, targets = _pair(probs, targets, "probs", _probabilities)
    _warn_missing(targets.sum(axis=0))
    grid = _candidate_grid(candidates)
    global_threshold, _, _ = sweep_global_threshold(probs, targets, grid)
    class_thresholds = tune_class_thresholds(probs, targets, global_threshold, grid, min_positives=min_positives,
                                             shrink=shrink, n_rounds=n_rounds, smooth=smooth)

    def f1_of(thresholds, at_least_one=False):
        return leaderboard_scores(apply_thresholds(probs, thresholds, at_least_one), targets, warn=False)["f1"]

    f1_by_step = {"0.5": f1_of(0.5), "global": f1_of(global_threshold), "per_class": f1_of(class_thresholds)}
    at_least_one = False
    if try_at_least_one:
        f1_by_step["at_least_one"] = f1_of(class_thresholds, True)
        at_least_one = f1_by_step["at_least_one"] > f1_by_step["per_class"]
    return ThresholdResult(global_threshold, class_thresholds, at_least_one, f1_by_step)


# ----------------------------------------------------------------------------------------------------------
# how much of a tuned F1 survives on new images
# ----------------------------------------------------------------------------------------------------------
RULES = ("0.5", "global", "per_class", "final")  # the steps of tune_thresholds, in order


def f1_by_rule(probs, targets, result: ThresholdResult) -> dict:
    """Leaderboard F1 on ``probs`` of each rule of a tuning ``result``: 0.5 for every class, its global
    threshold, its per-class thresholds, and ``final`` (per-class plus the at-least-one rule if it was kept)."""
    def f1(preds):
        return leaderboard_scores(preds, targets, warn=False)["f1"]
    return {"0.5": f1(apply_thresholds(probs, 0.5)), "global": f1(apply_thresholds(probs, result.global_threshold)),
            "per_class": f1(apply_thresholds(probs, result.class_thresholds)), "final": f1(result.apply(probs))}


def prior_f1(train_targets, val_targets, **tuning) -> float:
    """Chance level: the F1 on ``val_targets`` of a model that ignores the image and gives every image the
    class rates of ``train_targets`` as probabilities, with thresholds tuned on the validation images."""
    train_targets = _binary(train_targets, "train_targets")
    val_targets = _binary(val_targets, "val_targets")
    prior = np.broadcast_to(train_targets.mean(axis=0), val_targets.shape).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingClassWarning)
        result = tune_thresholds(prior, val_targets, **tuning)
    return leaderboard_scores(result.apply(prior), val_targets, warn=False)["f1"]


def _tuned_elsewhere(probs, targets, splits, tuning: dict):
    """For each (fit rows, scored rows) of ``splits``: thresholds tuned on the fit rows, the scored rows'
    F1 of each rule; yields (scored rows, probs, targets, the tuning result, F1 by rule)."""
    probs, targets = _pair(probs, targets, "probs", _probabilities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingClassWarning)
        for fit_idx, score_idx in splits(targets):
            result = tune_thresholds(probs[fit_idx], targets[fit_idx], **tuning)
            yield score_idx, probs, targets, result, f1_by_rule(probs[score_idx], targets[score_idx], result)


def held_out_gains(probs, targets, repeats: int = 10, seed: int = 1000, **tuning) -> list[dict]:
    """Gains over 0.5 of each rule (:data:`RULES`) on images the thresholds were not tuned on: tune on one
    stratified half of ``probs``, score the other half against 0.5 on that same half, both directions,
    ``repeats`` different halves. Only gains are comparable: the F1 of a half weighs its classes differently
    from the F1 of the whole set. Tuning on half the images is noisier than on all of them, so this leans
    pessimistic. One dict per (repeat, direction)."""
    def halves(targets):
        for repeat in range(repeats):
            half_a, half_b = _dataset().split_train_val(targets, 0.5, seed=seed + repeat, stratify=True)
            yield from ((half_a, half_b), (half_b, half_a))

    return [{rule: scores[rule] - scores["0.5"] for rule in RULES}
            for _, _, _, _, scores in _tuned_elsewhere(probs, targets, halves, tuning)]


def mock_test_scores(probs, targets, test_size: int, repeats: int = 10, seed: int = 2000, **tuning) -> list[dict]:
    """Scores on mock test sets: ``repeats`` times, a stratified draw of ``test_size`` of the images is held out,
    thresholds are tuned on the rest as ``tune_thresholds`` tunes them, and the held-out images are scored (F1 of
    each rule of :data:`RULES`, ``mAP`` and the ``labels_per_image`` predicted). Meant for out-of-fold
    probabilities, where no image's probability comes from a model that trained on it: the mean is the F1 to expect
    on a test set of that size, the spread how far one such test set can land from the next."""
    def draws(targets):
        for repeat in range(repeats):
            yield _dataset().split_train_val(targets, test_size / len(targets), seed=seed + repeat)

    return [{**scores, "mAP": mean_average_precision(probs[held], targets[held]),
             "labels_per_image": float(result.apply(probs[held]).sum(axis=1).mean())}
            for held, probs, targets, result, scores in _tuned_elsewhere(probs, targets, draws, tuning)]


# ----------------------------------------------------------------------------------------------------------
# predictions export, validation and scoring
# ----------------------------------------------------------------------------------------------------------
def predictions_to_dict(stems: Sequence[str], preds) -> dict[str, list[int]]:
    """``{stem: sorted class indices}`` from boolean predictions (one row per stem, in order)."""
    preds = _binary(preds, "preds")
    stems = [str(stem) for stem in stems]
    if len(stems) != preds.shape[0]:
        raise ValueError(f"{len(stems)} stems for {preds.shape[0]} prediction rows")
    if len(set(stems)) != len(stems):
        raise ValueError("stems contain duplicates")
    rows, cols = np.nonzero(preds)  # row-major, so each row's classes come out ascending
    split = np.searchsorted(rows, np.arange(1, len(stems)))
    return {stem: classes.tolist() for stem, classes in zip(stems, np.split(cols, split))}


def _examples(items: Iterable, limit: int = _SHOW) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _has_extension(key: str) -> bool:
    return os.path.splitext(key)[1].lower() in _dataset().IMAGE_EXTENSIONS + _OTHER_KEY_SUFFIXES


def validate_predictions(obj, expected_stems: Iterable[str] | None = None,
                         num_classes: int | None = None) -> list[str]:
    """Every way ``obj`` breaks the submission format, one message per kind of fault (empty list: valid).

    Format: a dict ``{stem: [class indices]}``; keys are stems (no file extension); values are lists of
    distinct ints in 0..num_classes-1 (default ``dataset.NUM_CLASSES``). With ``expected_stems`` every
    expected stem must appear exactly once and no other key may appear. Unsorted lists are accepted (the
    scorer does not care; :func:`write_predictions` sorts them).
    """
    return list(_format_faults(obj, expected_stems, num_classes).values())


def _format_faults(obj, expected_stems, num_classes) -> dict[str, str]:
    """{kind of fault: message}, for validate_predictions and for score (which tolerates some kinds)."""
    if not isinstance(obj, dict):
        return {"not_object": f"predictions must be a JSON object {{stem: [class indices]}}, "
                              f"got {type(obj).__name__}"}
    num_classes = _num_classes(num_classes)
    expected = None if expected_stems is None else {str(stem) for stem in expected_stems}
    errors = {}
    non_string = [key for key in obj if not isinstance(key, str)]
    if non_string:
        errors["non_string_keys"] = (f"{len(non_string)} keys are not strings (first: {_examples(non_string)}); "
                                     "keys are stems")
    with_extension = [key for key in obj if isinstance(key, str) and _has_extension(key)
                      and (expected is None or key not in expected)]
    if with_extension:
        errors["extension"] = (
            f"{len(with_extension)} keys include a file extension (first: {_examples(with_extension)}); "
            f"keys must be stems such as {os.path.splitext(with_extension[0])[0]!r}"
        )
    if expected is not None:
        keys = {str(key) for key in obj}
        missing = sorted(expected - keys)
        if missing:
            errors["missing"] = (f"{len(missing)} of {len(expected)} test stems are missing "
                                 f"(first: {_examples(missing)})")
        unknown = sorted(keys - expected - set(with_extension))
        if unknown:
            errors["unknown"] = f"{len(unknown)} keys are not test stems (first: {_examples(unknown)})"

    not_list, non_integer, out_of_range, duplicated = [], [], [], []
    for key, classes in obj.items():
        if not isinstance(classes, list):
            not_list.append(key)
            continue
        # bool is an int subclass in Python but true/false is not a class index; 3.0 is not an int either
        is_integer = [isinstance(c, int) and not isinstance(c, bool) for c in classes]
        integers = [c for c, ok in zip(classes, is_integer) if ok]
        if not all(is_integer):
            non_integer.append((key, classes[is_integer.index(False)]))
        bad = [c for c in integers if not 0 <= c < num_classes]
        if bad:
            out_of_range.append((key, bad[0]))
        if len(set(integers)) != len(integers):
            duplicated.append(key)
    if not_list:
        errors["not_list"] = (f"{len(not_list)} values are not lists of class indices "
                              f"(first keys: {_examples(not_list)})")
    if non_integer:
        errors["non_integer"] = (f"{len(non_integer)} lists hold non-integer values (first: "
                                 + ", ".join(f"{k!r}: {v!r}" for k, v in non_integer[:_SHOW]) + ")")
    if out_of_range:
        errors["out_of_range"] = (f"{len(out_of_range)} lists hold class indices outside 0..{num_classes - 1} "
                                  "(first: " + ", ".join(f"{k!r}: {v!r}" for k, v in out_of_range[:_SHOW]) + ")")
    if duplicated:
        errors["duplicated"] = f"{len(duplicated)} lists repeat a class index (first keys: {_examples(duplicated)})"
    return errors


def write_predictions(path, predictions: Mapping, expected_stems: Iterable[str] | None = None,
                      num_classes: int | None = None) -> Path:
    """Validate ``predictions`` (raises :class:`PredictionsError` listing every fault), then write them as
    the course shows (``json.dump(..., indent=2)``, keys sorted, class lists sorted) atomically
    (``files.write_atomic``), so a crash never leaves half a file."""
    path = Path(path)
    predictions = dict(predictions)
    errors = validate_predictions(predictions, expected_stems, num_classes)
    if errors:
        raise PredictionsError(errors, str(path))
    clean = {str(stem): sorted(int(c) for c in predictions[stem]) for stem in sorted(predictions)}
    files.write_text(path, json.dumps(clean, indent=2) + "\n")
    return path


def load_predictions(path):
    """Parse a predictions file; :class:`PredictionsError` if it is unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PredictionsError([f"cannot read the file: {error}"], str(path)) from error
    repeated = []

    def refuse_duplicates(pairs):
        # json keeps the last of two equal keys without a word; the leaderboard would see one list of the two
        counts = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
        repeated.extend(key for key, count in counts.items() if count > 1)
        return dict(pairs)

    try:
        obj = json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as error:
        raise PredictionsError(
            [f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"], str(path)
        ) from error
    if repeated:
        raise PredictionsError([f"{len(repeated)} key(s) appear more than once (first: {_examples(repeated)}); "
                                "each test image must appear exactly once"], str(path))
    return obj


def test_stems(test_dir) -> list[str]:
    """Sorted stems of the test images in ``test_dir`` (listed by ``dataset.COCOTestImageDataset``, so
    exactly the images predict() sees). A course data root (holding ``images/test-resized``) works too."""
    dataset = _dataset()
    test_dir = Path(test_dir)
    if (test_dir / "images" / "test-resized").is_dir():
        test_dir = dataset.course_dirs(test_dir)["test_images"]
    return dataset.COCOTestImageDataset(test_dir).stems


test_stems.__test__ = False  # a helper named test_*, not a pytest test


def load_and_validate(path, test_dir, num_classes: int | None = None) -> dict:
    """Load a predictions file and check it against the test images of ``test_dir``; returns the dict or
    raises :class:`PredictionsError` listing every fault."""
    predictions = load_predictions(path)
    errors = validate_predictions(predictions, test_stems(test_dir), num_classes)
    if errors:
        raise PredictionsError(errors, str(path))
    return predictions


def read_labels(path_or_dir, num_classes: int | None = None) -> dict[str, list[int]]:
    """Ground truth ``{stem: sorted classes}`` from a folder of ``.cls`` files (parsed by
    ``dataset.read_label_file``) or from a JSON file ``{stem: [classes]}`` (checked like predictions)."""
    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(path.glob("*.cls"))
        if not files:
            raise FileNotFoundError(f"{path}: no .cls label files in this folder")
        read_label_file = _dataset().read_label_file
        return {file.stem: read_label_file(file) for file in files}
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels not found (give a folder of .cls files or a JSON file)")
    labels = load_predictions(path)
    errors = validate_predictions(labels, None, num_classes)
    if errors:
        raise PredictionsError(errors, str(path))
    return {stem: sorted(classes) for stem, classes in labels.items()}


def _multi_hot(rows: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    matrix = np.zeros((len(rows), num_classes), dtype=bool)
    lengths = [len(r) for r in rows]
    row_index = np.repeat(np.arange(len(rows)), lengths)
    col_index = np.fromiter((c for r in rows for c in r), dtype=np.int64, count=sum(lengths))
    matrix[row_index, col_index] = True
    return matrix


def score_predictions(predictions: Mapping, labels: Mapping, num_classes: int | None = None,
                      *, warn: bool = True) -> dict:
    """Leaderboard numbers of ``predictions`` against ``labels`` (both ``{stem: [classes]}``).

    The labelled stems are the evaluated set: a labelled stem missing from the predictions predicts
    nothing; predicted stems without labels are not scored; a class listed twice for an image counts once
    (a multi-hot row cannot hold it twice; ``validate`` still rejects such a file). The counts are returned
    (``n_missing_predictions``, ``n_unlabelled_predictions``, ``n_lists_with_duplicates``) next to
    :func:`leaderboard_scores`' keys, with ``n_images``. Raises :class:`PredictionsError` for any other
    format fault (non-integer or out-of-range classes, file extensions in keys, ...).
    """
    preds, targets = _score_matrices(predictions, labels, num_classes)
    scores = leaderboard_scores(preds, targets, warn=warn)
    scores["n_images"] = len(labels)
    scores["n_missing_predictions"] = sum(1 for s in labels if s not in predictions)
    scores["n_unlabelled_predictions"] = sum(1 for s in predictions if s not in labels)
    scores["n_lists_with_duplicates"] = sum(1 for v in predictions.values() if len(set(v)) != len(v))
    return scores


def _score_matrices(predictions: Mapping, labels: Mapping, num_classes: int | None):
    """(preds, targets) boolean matrices over the sorted labelled stems."""
    num_classes = _num_classes(num_classes)
    faults = _format_faults(predictions, None, num_classes)
    faults.pop("duplicated", None)  # harmless for scoring: the class is simply on
    if faults:
        raise PredictionsError(list(faults.values()))
    stems = sorted(labels)
    targets = _multi_hot([labels[s] for s in stems], num_classes)
    preds = _multi_hot([predictions.get(s, []) for s in stems], num_classes)
    return preds, targets


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
SCORE_KEYS = ("f1", "precision", "recall", "accuracy", "micro_f1", "macro_f1")


def _cmd_validate(args) -> int:
    predictions = load_and_validate(args.predictions, args.test_dir)
    n_labels = sum(len(v) for v in predictions.values())
    print(f"OK: {args.predictions} is a valid submission: {len(predictions)} test stems, "
          f"{n_labels} predicted labels ({n_labels / max(len(predictions), 1):.2f} per image)")
    return 0


def _cmd_score(args) -> int:
    predictions = load_predictions(args.predictions)
    if not isinstance(predictions, dict):
        raise PredictionsError(validate_predictions(predictions), str(args.predictions))
    labels = read_labels(args.labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingClassWarning)
        try:
            scores = score_predictions(predictions, labels)
        except PredictionsError as error:
            raise PredictionsError(error.errors, str(args.predictions)) from None
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if scores["n_missing_predictions"]:
        print(f"note: {scores['n_missing_predictions']} labelled stems have no prediction and count as "
              "predicting nothing", file=sys.stderr)
    if scores["n_lists_with_duplicates"]:
        print(f"note: {scores['n_lists_with_duplicates']} class lists repeat a class index; each class counts "
              "once (validate rejects such a file)", file=sys.stderr)
    if scores["n_unlabelled_predictions"]:
        print(f"note: {scores['n_unlabelled_predictions']} predicted stems have no label and are not scored",
              file=sys.stderr)
    if args.json:
        print(json.dumps({key: scores[key] for key in SCORE_KEYS}))
        return 0
    print(f"{scores['n_images']} labelled images")
    for key in SCORE_KEYS:
        print(f"{key:<10} {scores[key]:.4f}")
    if args.per_class:
        tp, fp, pos = per_class_counts(*_score_matrices(predictions, labels, None))
        print(f"\n{'index':>5}  {'class':<16}{'support':>8}{'precision':>10}{'recall':>8}{'f1':>8}")
        for row in _class_rows(tp, fp, pos, _class_names(len(pos), None)):
            print(f"{row['index']:>5}  {row['name']:<16}{row['support']:>8}{row['precision']:>10.4f}"
                  f"{row['recall']:>8.4f}{row['f1']:>8.4f}")
    return 0


def _time(function, repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def _cmd_bench(args) -> int:
    rng = np.random.default_rng(args.seed)
    prevalence = np.exp(rng.uniform(np.log(0.002), np.log(0.5), args.classes))
    targets = rng.random((args.images, args.classes)) < prevalence
    logits = rng.normal(-3.0, 1.5, targets.shape) + 3.5 * targets
    probs = 1.0 / (1.0 + np.exp(-logits))
    grid = np.linspace(0.005, 0.995, args.thresholds)
    print(f"{args.images} images x {args.classes} classes x {args.thresholds} thresholds, best of {args.repeat} runs")
    cases = {
        "leaderboard_scores (one threshold)": lambda: leaderboard_scores(probs > 0.5, targets, warn=False),
        "sweep_global_threshold": lambda: sweep_global_threshold(probs, targets, grid),
        "tune_class_thresholds": lambda: tune_class_thresholds(probs, targets, candidates=grid),
        "tune_thresholds (all steps)": lambda: tune_thresholds(probs, targets, grid),
        "average_precision": lambda: average_precision(probs, targets),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingClassWarning)
        for name, function in cases.items():
            print(f"{name:<38} {1000 * _time(function, args.repeat):9.1f} ms")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metrics",
        description="Check, score and benchmark MS-COCO challenge predictions with the leaderboard's metric.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{validate,score,bench}")

    validate = commands.add_parser(
        "validate", help="check a predictions JSON against the test images (exit 0 if valid, 1 otherwise)",
        description="Check that a predictions JSON is a valid submission: a JSON object with every test stem "
                    "exactly once and lists of distinct integer class indices in 0..79.")
    validate.add_argument("predictions", type=Path, help="predictions JSON file {stem: [class indices]}")
    validate.add_argument("--test-dir", type=Path, required=True,
                          help="folder of the test images (e.g. ms-coco/images/test-resized); their stems "
                               "are the keys the file must hold")
    validate.set_defaults(run=_cmd_validate)

    score = commands.add_parser(
        "score", help="score a predictions JSON against labels with the leaderboard metric",
        description="Print the leaderboard F1, precision, recall and accuracy (plus micro/macro F1) of a "
                    "predictions JSON. Labelled stems missing from the predictions count as predicting "
                    "nothing; predicted stems without labels are not scored.")
    score.add_argument("predictions", type=Path, help="predictions JSON file {stem: [class indices]}")
    score.add_argument("--labels", type=Path, required=True,
                       help="ground truth: a folder of <stem>.cls files or a JSON file {stem: [class indices]}")
    score.add_argument("--json", action="store_true",
                       help="print one JSON object with keys " + ", ".join(SCORE_KEYS) + " instead of a table")
    score.add_argument("--per-class", action="store_true",
                       help="also print support, precision, recall and F1 of every class (ignored with --json)")
    score.set_defaults(run=_cmd_score)

    bench = commands.add_parser(
        "bench", help="time the metric and threshold tuning on random data",
        description="Print timings of the metric, threshold sweep, per-class tuning and AP on random data.")
    bench.add_argument("--images", type=int, default=6500, help="number of images (default: 6500, a 10%% split)")
    bench.add_argument("--classes", type=int, default=80, help="number of classes (default: 80)")
    bench.add_argument("--thresholds", type=int, default=100, help="candidate thresholds (default: 100)")
    bench.add_argument("--repeat", type=int, default=5, help="runs per case; the best is shown (default: 5)")
    bench.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PredictionsError as error:
        print(f"error: {error.source}: invalid predictions:", file=sys.stderr)
        for message in error.errors:
            print(f"  - {message}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
