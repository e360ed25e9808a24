"""metrics.py: the leaderboard metric (hand-computed cases and a plain reference), AP, threshold tuning,
predictions export/validation and the command line."""
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from coco import leaderboard, metrics_cli, submission
from coco.course import CLASSES, NUM_CLASSES
from coco.thresholds import (
    DEFAULT_CANDIDATES,
    ThresholdResult,
    apply_thresholds,
    sweep_global_threshold,
    tune_class_thresholds,
    tune_thresholds,
)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# a plain, loop-based reference of the course's scorer (validation_loop), zero-positive classes at weight 0
# ----------------------------------------------------------------------------------------------------------
def reference_scores(preds, targets):
    preds = np.asarray(preds).astype(int).tolist()
    targets = np.asarray(targets).astype(int).tolist()
    n_classes = len(targets[0])
    tp, fp, pos = [0] * n_classes, [0] * n_classes, [0] * n_classes
    for pred_row, target_row in zip(preds, targets):
        for c in range(n_classes):
            tp[c] += pred_row[c] and target_row[c]
            fp[c] += pred_row[c] and not target_row[c]
            pos[c] += target_row[c]
    precision = [0.0 if tp[c] == 0 else tp[c] / (tp[c] + fp[c]) for c in range(n_classes)]
    recall = [0.0 if tp[c] == 0 else tp[c] / pos[c] for c in range(n_classes)]
    inverse = [1.0 / pos[c] if pos[c] else 0.0 for c in range(n_classes)]
    weights = [w / sum(inverse) for w in inverse]
    p = sum(w * x for w, x in zip(weights, precision))
    r = sum(w * x for w, x in zip(weights, recall))
    f1 = 0.0 if p == 0 or r == 0 else 2.0 / (1.0 / p + 1.0 / r)
    fn = [pos[c] - tp[c] for c in range(n_classes)]
    class_f1 = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) if tp[c] else 0.0 for c in range(n_classes)]
    present = [c for c in range(n_classes) if pos[c]]
    return {
        "f1": f1, "precision": p, "recall": r, "accuracy": sum(tp) / sum(pos),
        "micro_f1": 2 * sum(tp) / (2 * sum(tp) + sum(fp) + sum(fn)),
        "macro_f1": sum(class_f1[c] for c in present) / len(present),
    }


def random_problem(seed, n_images=300, n_classes=12, missing=()):
    """Probabilities with a learnable signal and long-tailed class frequencies."""
    rng = np.random.default_rng(seed)
    prevalence = np.exp(rng.uniform(np.log(0.02), np.log(0.5), n_classes))
    targets = rng.random((n_images, n_classes)) < prevalence
    targets[:, list(missing)] = False
    logits = rng.normal(-2.0, 1.5, targets.shape) + rng.uniform(1.0, 4.0, n_classes) * targets
    return 1.0 / (1.0 + np.exp(-logits)), targets


def quiet_scores(preds, targets):
    return leaderboard.leaderboard_scores(preds, targets, warn=False)


# ----------------------------------------------------------------------------------------------------------
# the leaderboard metric: hand-computed cases
# ----------------------------------------------------------------------------------------------------------
# class 0: 3 positives, TP 2, FP 1 -> precision 2/3, recall 2/3
# class 1: 2 positives, TP 0, FP 1 -> precision 0, recall 0 (no true positive)
# class 2: no positives, 1 FP      -> weight 0, warned about
HAND_TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]])
HAND_PREDS = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]])


def test_hand_case_with_no_tp_class_and_missing_class():
    with pytest.warns(leaderboard.MissingClassWarning, match=r"1 of 3 classes.*: 2$"):
        scores = leaderboard.leaderboard_scores(HAND_PREDS, HAND_TARGETS)
    # weights (1/3, 1/2) normalised -> (0.4, 0.6); P = R = 0.4 * 2/3
    assert scores["precision"] == pytest.approx(4 / 15, abs=1e-12)
    assert scores["recall"] == pytest.approx(4 / 15, abs=1e-12)
    assert scores["f1"] == pytest.approx(4 / 15, abs=1e-12)
    assert scores["accuracy"] == pytest.approx(2 / 5, abs=1e-12)
    # micro: TP 2, FP 3 (one per class), FN 3 -> 4 / 10; macro over the two present classes: (2/3 + 0) / 2
    assert scores["micro_f1"] == pytest.approx(0.4, abs=1e-12)
    assert scores["macro_f1"] == pytest.approx(1 / 3, abs=1e-12)
    assert scores["n_missing_classes"] == 1
    tp, fp, pos = leaderboard.per_class_counts(HAND_PREDS, HAND_TARGETS)
    assert tp.tolist() == [2, 0, 0] and fp.tolist() == [1, 1, 1] and pos.tolist() == [3, 2, 0]


def test_hand_case_with_different_precision_and_recall():
    # class 0: 4 positives, TP 2, FP 1 -> P 2/3, R 1/2 ; class 1: 1 positive, TP 1, FP 1 -> P 1/2, R 1
    targets = np.array([[1, 0], [1, 0], [1, 1], [1, 0], [0, 0]])
    preds = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class has positives: no warning may be raised
        scores = leaderboard.leaderboard_scores(preds, targets)
    precision, recall = 0.2 * 2 / 3 + 0.8 * 0.5, 0.2 * 0.5 + 0.8 * 1.0  # weights (1/4, 1) -> (0.2, 0.8)
    assert scores["precision"] == pytest.approx(8 / 15, abs=1e-12)
    assert scores["recall"] == pytest.approx(0.9, abs=1e-12)
    assert scores["f1"] == pytest.approx(2 / (1 / precision + 1 / recall), abs=1e-12)
    assert scores["f1"] == pytest.approx(28.8 / 43, abs=1e-12)
    assert scores["accuracy"] == pytest.approx(3 / 5, abs=1e-12)


def test_nothing_predicted_scores_zero_without_dividing_by_zero():
    targets = np.eye(4, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = leaderboard.leaderboard_scores(np.zeros((4, 4), bool), targets)
    assert scores == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.0, "micro_f1": 0.0,
                      "macro_f1": 0.0, "n_missing_classes": 0}


def test_missing_class_warning_names_course_classes():
    targets = np.zeros((3, NUM_CLASSES), bool)
    targets[:, :78] = True  # hair drier (78) and toothbrush (79) have no positives
    with pytest.warns(leaderboard.MissingClassWarning, match=r"2 of 80 classes.*78 \(hair drier\), 79 \(toothbrush\)"):
        scores = leaderboard.leaderboard_scores(targets, targets)
    assert scores["f1"] == pytest.approx(1.0) and scores["n_missing_classes"] == 2


def test_false_positives_of_a_missing_class_do_not_move_the_leaderboard_f1():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    clean = np.array([[1, 0], [0, 0], [0, 0]])
    noisy = np.array([[1, 1], [0, 1], [0, 1]])
    with pytest.warns(leaderboard.MissingClassWarning):
        a = leaderboard.leaderboard_scores(clean, targets)
    with pytest.warns(leaderboard.MissingClassWarning):
        b = leaderboard.leaderboard_scores(noisy, targets)
    assert a["f1"] == b["f1"] == pytest.approx(2 / 3)
    assert b["micro_f1"] < a["micro_f1"]  # micro F1 still counts them


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_plain_reference_on_random_data(seed):
    probs, targets = random_problem(seed, n_images=150, n_classes=9, missing=(4,) if seed % 2 else ())
    preds = probs > np.random.default_rng(seed).uniform(0.2, 0.7, 9)
    scores = quiet_scores(preds, targets)
    expected = reference_scores(preds, targets)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key


def test_micro_and_macro_agree_with_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    probs, targets = random_problem(3, missing=(2,))
    preds = probs > 0.4
    scores = quiet_scores(preds, targets)
    present = np.flatnonzero(targets.any(axis=0))
    assert scores["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(targets, preds, average="micro"))
    assert scores["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(targets, preds, average="macro", labels=present, zero_division=0))


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    probs, targets = random_problem(1)
    from_numpy = quiet_scores(probs > 0.5, targets)
    from_torch = quiet_scores(torch.tensor(probs > 0.5), torch.tensor(targets, dtype=torch.float32))
    assert from_numpy == from_torch
    assert apply_thresholds(torch.tensor(probs), 0.5).tolist() == (probs > 0.5).tolist()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        leaderboard.leaderboard_scores(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0/1"):
        leaderboard.leaderboard_scores(np.array([[0.7, 0.0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="sigmoid"):  # logits are not probabilities
        sweep_global_threshold(np.array([[-2.0, 3.0]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="NaN"):
        apply_thresholds(np.array([[np.nan, 0.5]]), 0.5)


# ----------------------------------------------------------------------------------------------------------
# average precision and the per-class table
# ----------------------------------------------------------------------------------------------------------
def test_average_precision_hand_cases():
    probs = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.2, 0.1], [0.6, 0.1, 0.4]])
    targets = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    ap = leaderboard.average_precision(probs, targets)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)  # positives at ranks 1 and 3
    assert ap[1] == pytest.approx((1 / 2 + 2 / 3) / 2)  # tie at 0.5: one threshold, precision 1/2
    assert math.isnan(ap[2])  # no positives
    assert leaderboard.mean_average_precision(probs, targets) == pytest.approx((ap[0] + ap[1]) / 2)


@pytest.mark.parametrize("seed", range(3))
def test_average_precision_equals_sklearn_with_ties(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    probs, targets = random_problem(seed, n_images=400, missing=(5,))
    probs = np.round(probs, 2)  # many tied scores
    ap = leaderboard.average_precision(probs, targets)
    for c in range(targets.shape[1]):
        if targets[:, c].any():
            assert ap[c] == pytest.approx(sklearn_metrics.average_precision_score(targets[:, c], probs[:, c]),
                                          abs=1e-12)
        else:
            assert math.isnan(ap[c])


def test_per_class_table():
    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.7, 0.6], [0.1, 0.3]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    rows = leaderboard.per_class_table(probs, targets, np.array([0.5, 0.5]), class_names=["a", "b"])
    assert [row["name"] for row in rows] == ["a", "b"]
    # class a: predicted rows 0, 2 -> TP 1, FP 1, 2 positives
    assert rows[0] == pytest.approx({"name": "a", "index": 0, "support": 2, "precision": 0.5, "recall": 0.5,
                                     "f1": 0.5, "ap": (1 + 2 / 3) / 2, "threshold": 0.5})
    assert rows[1]["precision"] == 1.0 and rows[1]["recall"] == 1.0 and rows[1]["ap"] == 1.0
    course = leaderboard.per_class_table(np.full((2, NUM_CLASSES), 0.6), np.eye(2, NUM_CLASSES), 0.5)
    assert [row["name"] for row in course] == list(CLASSES)
    assert course[79]["support"] == 0 and math.isnan(course[79]["ap"])
    with pytest.raises(ValueError, match="3 names for 2 classes"):
        leaderboard.per_class_table(probs, targets, 0.5, class_names=["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------------
# threshold sweep and tuning
# ----------------------------------------------------------------------------------------------------------
def test_sweep_matches_thresholding_one_by_one_including_exact_ties():
    probs, targets = random_problem(7, missing=(3,))
    probs[:20] = 0.5  # values equal to a threshold: "probs > threshold" must not predict them
    thresholds = np.array([0.5, 0.1, 0.3, 0.05, 0.9, 0.7])
    best, grid, curve = sweep_global_threshold(probs, targets, thresholds)
    assert grid.tolist() == sorted(thresholds.tolist())
    expected = [quiet_scores(probs > t, targets)["f1"] for t in grid]
    np.testing.assert_allclose(curve, expected, rtol=0, atol=1e-12)
    assert best == grid[int(np.argmax(expected))]


def test_sweep_default_grid():
    probs, targets = random_problem(8)
    best, grid, curve = sweep_global_threshold(probs, targets)
    assert grid.tolist() == DEFAULT_CANDIDATES.tolist() and curve.shape == grid.shape
    assert 0.01 <= best <= 0.99


def leaderboard_f1(probs, targets, thresholds, at_least_one=False):
    return quiet_scores(apply_thresholds(probs, thresholds, at_least_one), targets)["f1"]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("guard", [dict(min_positives=1, smooth=0), dict(),
                                   dict(min_positives=1, smooth=6), dict(min_positives=1, smooth=0, shrink=10)])
def test_tuning_never_ends_below_its_start(seed, guard):
    # small sets give jagged F1 curves, where a smoothed or shrunk choice can be worse than staying put
    probs, targets = random_problem(seed, n_images=40 if seed % 2 else 300, n_classes=6 if seed % 2 else 12,
                                    missing=(0,) if seed == 4 else ())
    rng = np.random.default_rng(seed)
    starts = [None, 0.5, 0.537, rng.choice(DEFAULT_CANDIDATES, targets.shape[1])]
    for init in starts:
        start = sweep_global_threshold(probs, targets)[0] if init is None else init
        tuned = tune_class_thresholds(probs, targets, init, **guard)
        assert tuned.shape == (targets.shape[1],)
        assert leaderboard_f1(probs, targets, tuned) >= leaderboard_f1(probs, targets, start) - 1e-12


def test_tuning_finds_class_specific_thresholds():
    # class 0 separates between 0.25 and 0.35, class 1 between 0.65 and 0.75: no global threshold
    # is perfect, per-class thresholds are
    targets = np.zeros((40, 2), bool)
    targets[:10, 0] = True
    targets[10:20, 1] = True
    probs = np.where(targets, [0.35, 0.75], [0.25, 0.65])
    _, _, curve = sweep_global_threshold(probs, targets)
    assert curve.max() < 0.99
    tuned = tune_class_thresholds(probs, targets)
    assert 0.25 <= tuned[0] < 0.35 and 0.65 <= tuned[1] < 0.75
    assert leaderboard_f1(probs, targets, tuned) == pytest.approx(1.0)


def test_rare_classes_keep_the_starting_threshold():
    probs, targets = random_problem(2, n_images=400)
    targets[:, 1] = False
    targets[:3, 1] = True  # 3 positives: below min_positives
    tuned = tune_class_thresholds(probs, targets, init=0.5, min_positives=5)
    assert tuned[1] == 0.5
    assert (tuned != 0.5).any()  # the others did move
    unguarded = tune_class_thresholds(probs, targets, init=0.5, min_positives=1, smooth=0)
    assert unguarded[1] != 0.5  # without the guard the rare class gets fitted to its 3 images


def test_apply_thresholds_at_least_one():
    probs = np.array([[0.2, 0.4, 0.1], [0.9, 0.1, 0.8], [0.1, 0.3, 0.45]])
    assert apply_thresholds(probs, 0.5).tolist() == [[0, 0, 0], [1, 0, 1], [0, 0, 0]]
    forced = apply_thresholds(probs, 0.5, at_least_one=True)
    assert forced.tolist() == [[0, 1, 0], [1, 0, 1], [0, 0, 1]]
    per_class = apply_thresholds(probs, np.array([0.15, 0.5, 0.5]))
    assert per_class.tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="shape"):
        apply_thresholds(probs, np.array([0.5, 0.5]))


def test_tune_thresholds_keeps_at_least_one_only_when_it_helps():
    # every image has one class; half of them score it below every allowed threshold, but it is their argmax
    targets = np.zeros((40, 4), bool)
    targets[np.arange(40), np.arange(40) % 4] = True
    low = np.arange(40) >= 20
    probs = np.where(targets, np.where(low[:, None], 0.3, 0.9), 0.1)
    helped = tune_thresholds(probs, targets, candidates=[0.5])
    assert helped.at_least_one
    assert helped.f1_by_step["at_least_one"] > helped.f1_by_step["per_class"]
    # now the argmax of those images is a wrong class: forcing it on only adds false positives
    probs_wrong = probs.copy()
    probs_wrong[low] = np.where(targets[low], 0.2, np.roll(np.where(targets[low], 0.4, 0.1), 1, axis=1))
    hurt = tune_thresholds(probs_wrong, targets, candidates=[0.5])
    assert not hurt.at_least_one
    assert hurt.f1_by_step["at_least_one"] <= hurt.f1_by_step["per_class"]


def test_tune_thresholds_result_and_serialisation():
    probs, targets = random_problem(4, n_images=500)
    result = tune_thresholds(probs, targets)
    steps = result.f1_by_step
    assert set(steps) == {"0.5", "global", "per_class", "at_least_one"}
    assert steps["global"] >= steps["0.5"] - 1e-12 and steps["per_class"] >= steps["global"] - 1e-12
    assert steps["per_class"] == pytest.approx(leaderboard_f1(probs, targets, result.class_thresholds))
    assert result.apply(probs).tolist() == apply_thresholds(
        probs, result.class_thresholds, result.at_least_one).tolist()
    record = json.loads(json.dumps(result.to_dict()))
    back = ThresholdResult.from_dict(record)
    assert back.global_threshold == result.global_threshold and back.at_least_one == result.at_least_one
    np.testing.assert_array_equal(back.class_thresholds, result.class_thresholds)
    assert back.f1_by_step == steps
    with pytest.raises(ValueError, match="class_thresholds"):
        ThresholdResult.from_dict({"global_threshold": 0.3})


# ----------------------------------------------------------------------------------------------------------
# export and validation
# ----------------------------------------------------------------------------------------------------------
STEMS = ["000000000001", "000000000002", "000000000003"]


def test_predictions_to_dict():
    preds = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    result = submission.predictions_to_dict(STEMS, preds)
    assert result == {"000000000001": [1, 3], "000000000002": [], "000000000003": [0]}
    assert all(type(c) is int for classes in result.values() for c in classes)
    with pytest.raises(ValueError, match="2 stems for 3"):
        submission.predictions_to_dict(STEMS[:2], preds)


def test_write_predictions_is_course_format_and_atomic(tmp_path):
    path = tmp_path / "predictions.json"
    predictions = {"000000000002": [], "000000000001": [62, 56, 60], "000000000003": [21]}
    submission.write_predictions(path, predictions, expected_stems=STEMS)
    expected = {"000000000001": [56, 60, 62], "000000000002": [], "000000000003": [21]}
    assert path.read_text() == json.dumps(expected, indent=2) + "\n"
    assert json.loads(path.read_text()) == expected
    assert os.listdir(tmp_path) == ["predictions.json"]  # no temp file left behind
    before = path.read_text()
    with pytest.raises(submission.PredictionsError, match="missing"):
        submission.write_predictions(path, {"000000000001": [1]}, expected_stems=STEMS)
    assert path.read_text() == before and os.listdir(tmp_path) == ["predictions.json"]


def errors_for(obj, expected=STEMS):
    return submission.validate_predictions(obj, expected)


def single_error(obj, expected=STEMS):
    errors = errors_for(obj, expected)
    assert len(errors) == 1, errors
    return errors[0]


def test_validate_accepts_a_valid_submission():
    assert errors_for({"000000000001": [0, 79], "000000000002": [], "000000000003": [5]}) == []
    assert errors_for({"000000000001": [7, 3], "000000000002": [], "000000000003": [5]}) == []  # unsorted is fine


def test_validate_not_an_object():
    assert "must be a JSON object" in single_error([["000000000001", [1]]])
    assert "got list" in single_error([1, 2])


def test_validate_missing_stems_reports_count_and_first_ones():
    expected = [f"{i:012d}" for i in range(10)]
    message = single_error({expected[0]: [1]}, expected)
    assert message.startswith("9 of 10 test stems are missing")
    assert "'000000000001', '000000000002'" in message and "..." in message


def test_validate_unknown_stems():
    obj = {stem: [1] for stem in STEMS} | {"999999999999": [2]}
    assert single_error(obj) == "1 keys are not test stems (first: '999999999999')"


def test_validate_key_with_file_extension():
    obj = {"000000000001.jpg": [1], "000000000002": [], "000000000003": []}
    errors = errors_for(obj)
    assert any("include a file extension" in e and "'000000000001.jpg'" in e and "'000000000001'" in e
               for e in errors), errors
    assert any("1 of 3 test stems are missing" in e for e in errors)
    assert not any("not test stems" in e for e in errors)  # reported once, as an extension
    assert "file extension" in single_error({"000000000001.cls": [1]}, None)


@pytest.mark.parametrize("value, kind", [
    (["3"], "non-integer"), ([2.0], "non-integer"), ([True], "non-integer"), ([None], "non-integer"),
    ([80], "outside 0..79"), ([-1], "outside 0..79"),
    ([3, 3], "repeat a class index"),
    (3, "not lists"), ("1,2", "not lists"),
])
def test_validate_bad_class_values(value, kind):
    obj = {"000000000001": value, "000000000002": [], "000000000003": [1]}
    message = single_error(obj)
    assert kind in message and "000000000001" in message


def test_validate_reports_every_kind_of_fault_at_once():
    obj = {"000000000001": [1, 1], "000000000002": [99], "x.png": [], "000000000004": ["a"]}
    errors = errors_for(obj)
    assert len(errors) == 6, errors  # extension, missing, unknown, non-integer, out of range, duplicate


# ----------------------------------------------------------------------------------------------------------
# files, scoring and the command line
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture()
def challenge(tmp_path):
    """A tiny test folder, labels as .cls files and as JSON, and a valid predictions file."""
    test_dir = tmp_path / "test-resized"
    label_dir = tmp_path / "labels"
    test_dir.mkdir()
    label_dir.mkdir()
    labels = {"000000000001": [0, 5], "000000000002": [5], "000000000003": [0, 79], "000000000004": [12]}
    for stem, classes in labels.items():
        (test_dir / f"{stem}.jpg").write_bytes(b"")  # only the names matter here
        (label_dir / f"{stem}.cls").write_text("".join(f"{c}\n" for c in classes))
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    predictions = {"000000000001": [0], "000000000002": [5, 7], "000000000003": [0, 79], "000000000004": []}
    submission.write_predictions(tmp_path / "predictions.json", predictions, labels.keys())
    return tmp_path, labels, predictions


def expected_scores(labels, predictions):
    stems = sorted(labels)
    targets = np.zeros((len(stems), NUM_CLASSES), bool)
    preds = np.zeros_like(targets)
    for row, stem in enumerate(stems):
        targets[row, labels[stem]] = True
        preds[row, predictions.get(stem, [])] = True
    return reference_scores(preds, targets)


def test_read_labels_from_folder_and_json(challenge):
    root, labels, _ = challenge
    assert submission.read_labels(root / "labels") == labels
    assert submission.read_labels(root / "labels.json") == labels
    with pytest.raises(FileNotFoundError, match="no .cls"):
        submission.read_labels(root / "test-resized")


def test_score_predictions_counts_missing_stems_as_empty(challenge):
    _, labels, predictions = challenge
    partial = {k: v for k, v in predictions.items() if k != "000000000003"} | {"000000000099": [1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", leaderboard.MissingClassWarning)  # 76 of 80 classes are absent here
        scores = submission.score_predictions(partial, labels)
    for key, value in expected_scores(labels, partial).items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert scores["n_missing_predictions"] == 1 and scores["n_unlabelled_predictions"] == 1
    assert scores["n_images"] == 4


def test_score_counts_a_repeated_class_once_but_refuses_other_faults(challenge):
    _, labels, predictions = challenge
    repeated = predictions | {"000000000002": [5, 7, 5]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", leaderboard.MissingClassWarning)
        scores = submission.score_predictions(repeated, labels)
        clean = submission.score_predictions(predictions, labels)
    assert scores["n_lists_with_duplicates"] == 1 and clean["n_lists_with_duplicates"] == 0
    assert all(scores[key] == clean[key] for key in metrics_cli.SCORE_KEYS)
    with pytest.raises(submission.PredictionsError, match="outside 0..79"):
        submission.score_predictions(predictions | {"000000000002": [80]}, labels)
    with pytest.raises(submission.PredictionsError, match="file extension"):
        submission.score_predictions({"000000000002.jpg": [5]}, labels)


def test_load_and_validate(challenge, tmp_path):
    root, labels, predictions = challenge
    assert submission.load_and_validate(root / "predictions.json", root / "test-resized") == predictions
    broken = tmp_path / "broken.json"
    broken.write_text('{"000000000001": [1,]}')
    with pytest.raises(submission.PredictionsError, match=r"not valid JSON \(line 1"):
        submission.load_and_validate(broken, root / "test-resized")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "metrics", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_validate_valid_and_faulty_files(challenge, capsys):
    root, _, predictions = challenge
    # the valid case in-process (each subprocess pays the torch import that dataset brings)
    assert metrics_cli.main(["validate", str(root / "predictions.json"), "--test-dir", str(root / "test-resized")]) == 0
    assert "4 test stems" in capsys.readouterr().out
    # no images: the check cannot run (2), unlike a file that fails it (1)
    assert metrics_cli.main(["validate", str(root / "predictions.json"), "--test-dir", str(root)]) == 2
    assert "no images" in capsys.readouterr().err
    faulty = dict(predictions)
    del faulty["000000000004"]
    faulty["000000000001"] = [0, 0, 80, 1.5]
    (root / "faulty.json").write_text(json.dumps(faulty))
    done = run_cli("validate", root / "faulty.json", "--test-dir", root / "test-resized")
    assert done.returncode == 1
    for message in ("1 of 4 test stems are missing (first: '000000000004')", "non-integer",
                    "outside 0..79", "repeat a class index"):
        assert message in done.stderr, done.stderr


def test_cli_score_json(challenge):
    root, labels, predictions = challenge
    done = run_cli("score", root / "predictions.json", "--labels", root / "labels", "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert list(scores) == ["f1", "precision", "recall", "accuracy", "micro_f1", "macro_f1"]
    for key, value in expected_scores(labels, predictions).items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert "classes have no positives" in done.stderr  # 76 classes absent from 4 images: warned


def test_cli_in_process_faults(challenge, capsys):
    root, _, _ = challenge
    test_dir = root / "test-resized"
    cases = {
        "notjson.json": ("{not json", "not valid JSON"),
        "list.json": ("[1, 2]", "must be a JSON object"),
        "ext.json": (json.dumps({f"{s}.jpg": [] for s in ["000000000001", "000000000002", "000000000003",
                                                          "000000000004"]}), "include a file extension"),
        "unknown.json": (json.dumps({s: [] for s in ["000000000001", "000000000002", "000000000003",
                                                     "000000000004", "000000000005"]}), "not test stems"),
    }
    for name, (text, message) in cases.items():
        (root / name).write_text(text)
        assert metrics_cli.main(["validate", str(root / name), "--test-dir", str(test_dir)]) == 1
        err = capsys.readouterr().err
        assert message in err and name in err, err
    assert metrics_cli.main(["validate", str(root / "absent.json"), "--test-dir", str(test_dir)]) == 2
    assert "absent.json: predictions file not found" in capsys.readouterr().err
    assert metrics_cli.main(["score", str(root / "notjson.json"), "--labels", str(root / "labels")]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_score_table_with_json_labels(challenge, capsys):
    root, labels, predictions = challenge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", leaderboard.MissingClassWarning)
        assert metrics_cli.main(["score", str(root / "predictions.json"), "--labels", str(root / "labels.json"),
                             "--per-class"]) == 0
    out = capsys.readouterr().out
    f1 = expected_scores(labels, predictions)["f1"]
    assert f"f1         {f1:.4f}" in out and "micro_f1" in out and "toothbrush" in out


def test_cli_usage_and_help(capsys):
    with pytest.raises(SystemExit) as usage:
        metrics_cli.main(["validate", "predictions.json"])  # --test-dir is required
    assert usage.value.code == 2 and "--test-dir" in capsys.readouterr().err
    for command, options in {"validate": ["--test-dir"], "score": ["--labels", "--json", "--per-class"],
                             "bench": ["--images", "--classes", "--thresholds", "--repeat", "--seed"]}.items():
        with pytest.raises(SystemExit) as shown:
            metrics_cli.main([command, "--help"])
        assert shown.value.code == 0
        text = capsys.readouterr().out
        assert all(option in text for option in options), (command, text)
