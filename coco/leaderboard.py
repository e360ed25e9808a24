"""The leaderboard's metric, computed exactly the way the course's reference scorer computes it, vectorised.

On binary predictions and targets (N x C):

* per class c: TP_c, FP_c and positives n_c;
* precision_c = TP_c / (TP_c + FP_c) and recall_c = TP_c / n_c, both 0 when TP_c = 0;
* class weights w_c = (1 / n_c) / sum_k (1 / n_k): rare classes weigh the most;
* precision P = sum_c w_c precision_c, recall R = sum_c w_c recall_c, F1 = 2 P R / (P + R) (0 when P or R is 0);
* accuracy = sum_c TP_c / sum_c n_c.

Also ``mean_average_precision`` (threshold-free ranking quality), ``per_class_table`` and ``apply_thresholds``.
No torch.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np

from coco import course


class MissingClassWarning(UserWarning):
    """Some classes have no positives in the evaluated set; they get weight 0 in the leaderboard F1."""




_SHOW = 5  # how many culprits an error message lists


def _num_classes(num_classes: int | None) -> int:
    return course.NUM_CLASSES if num_classes is None else int(num_classes)


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
    if num_classes == course.NUM_CLASSES:
        names = course.CLASSES
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
        if num_classes != course.NUM_CLASSES:
            return [str(i) for i in range(num_classes)]
        class_names = course.CLASSES
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
    ``class_names`` defaults to ``course.CLASSES``. Feed it to ``pandas.DataFrame`` for display."""
    probs, targets = _pair(probs, targets, "probs", _probabilities)
    n_classes = probs.shape[1]
    names = _class_names(n_classes, class_names)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_classes,))
    preds = apply_thresholds(probs, thresholds, at_least_one=at_least_one)
    tp, fp, pos = per_class_counts(preds, targets)
    return _class_rows(tp, fp, pos, names, thresholds, average_precision(probs, targets))


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
