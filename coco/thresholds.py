"""Threshold tuning for the leaderboard's metric, and how much of it survives on images it never saw.

``tune_thresholds`` picks a global threshold (``sweep_global_threshold``), then one per class by coordinate
ascent on the global F1 (``tune_class_thresholds``), then keeps the at-least-one-label rule only if it helps;
``ThresholdResult`` records the choice and applies it. ``held_out_gains`` (tune on one half, score on the other)
and ``mock_test_scores`` (tune on the rest, score on mock test sets of the test set's size) measure what the
tuning is worth on new images. No torch.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from coco import course
from coco.config import TUNE_MIN_POSITIVES, TUNE_ROUNDS, TUNE_SHRINK, TUNE_SMOOTH
from coco.leaderboard import (
    MissingClassWarning,
    _binary,
    _class_precision_recall,
    _f1,
    _pair,
    _probabilities,
    _warn_missing,
    apply_thresholds,
    class_weights,
    leaderboard_from_counts,
    leaderboard_scores,
    mean_average_precision,
    per_class_counts,
)

# Candidate thresholds for the sweeps: 0.01 .. 0.99 in steps of 0.01 (99 values). Probabilities are
# compared with ``probs > threshold`` (strictly greater, as the course's skeleton compares).
DEFAULT_CANDIDATES = np.round(np.arange(1, 100) / 100.0, 2)

# Overfitting guards of tune_class_thresholds, chosen on held-out data (numbers in its docstring):


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
                          min_positives: int = TUNE_MIN_POSITIVES, shrink: float = TUNE_SHRINK,
                          n_rounds: int = TUNE_ROUNDS, smooth: int = TUNE_SMOOTH) -> np.ndarray:
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

    The held-out measurements behind these defaults are in ``study/threshold_tuning.md``.
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


def tune_thresholds(probs, targets, candidates=None, *, min_positives: int = TUNE_MIN_POSITIVES,
                    shrink: float = TUNE_SHRINK, n_rounds: int = TUNE_ROUNDS, smooth: int = TUNE_SMOOTH,
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
            half_a, half_b = course.split_train_val(targets, 0.5, seed=seed + repeat, stratify=True)
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
            yield course.split_train_val(targets, test_size / len(targets), seed=seed + repeat)

    return [{**scores, "mAP": mean_average_precision(probs[held], targets[held]),
             "labels_per_image": float(result.apply(probs[held]).sum(axis=1).mean())}
            for held, probs, targets, result, scores in _tuned_elsewhere(probs, targets, draws, tuning)]
