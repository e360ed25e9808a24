"""The submission file: ``{"<stem>": [class indices], ...}`` for every test image, written, read, checked, scored.

``write_predictions`` validates before it writes (atomically); ``load_and_validate`` lists every fault of a
file (missing or extra stems, duplicate keys, indices outside 0-79, not integers); ``score_predictions`` scores
a file against known labels with the leaderboard's metric. No torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from coco import atomic, course
from coco.leaderboard import _SHOW, _binary, _num_classes, leaderboard_scores

# Extensions (besides course.IMAGE_EXTENSIONS) that betray a file name used as a key instead of a stem.
_OTHER_KEY_SUFFIXES = (".cls", ".txt", ".json")


class PredictionsError(ValueError):
    """A predictions file or object breaks the submission format; ``.errors`` lists every fault found."""

    def __init__(self, errors: Sequence[str], source: str = "predictions"):
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.errors))


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
    return os.path.splitext(key)[1].lower() in course.IMAGE_EXTENSIONS + _OTHER_KEY_SUFFIXES


def validate_predictions(obj, expected_stems: Iterable[str] | None = None,
                         num_classes: int | None = None) -> list[str]:
    """Every way ``obj`` breaks the submission format, one message per kind of fault (empty list: valid).

    Format: a dict ``{stem: [class indices]}``; keys are stems (no file extension); values are lists of
    distinct ints in 0..num_classes-1 (default ``course.NUM_CLASSES``). With ``expected_stems`` every
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
    (``atomic.write_atomic``), so a crash never leaves half a file."""
    path = Path(path)
    predictions = dict(predictions)
    errors = validate_predictions(predictions, expected_stems, num_classes)
    if errors:
        raise PredictionsError(errors, str(path))
    clean = {str(stem): sorted(int(c) for c in predictions[stem]) for stem in sorted(predictions)}
    atomic.write_text(path, json.dumps(clean, indent=2) + "\n")
    return path


def load_predictions(path):
    """Parse a predictions file; :class:`PredictionsError` if it is unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found" + (" (a folder)" if path.is_dir() else ""))
    try:
        text = course.read_text_file(path)  # a UTF-8 byte-order mark is fine; UTF-16 is named
    except ValueError as error:
        raise PredictionsError([str(error).removeprefix(f"{path}: ")], str(path)) from error
    except OSError as error:
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
    """Sorted stems of the test images in ``test_dir`` (listed by ``course.list_images``, as the test dataset
    lists them, so exactly the images predict() sees). A course data root (holding ``images/test-resized``)
    works too."""
    test_dir = Path(test_dir)
    if (test_dir / "images" / "test-resized").is_dir():
        test_dir = course.course_dirs(test_dir)["test_images"]
    stems = sorted(course.list_images(test_dir))
    if not stems:
        raise FileNotFoundError(f"no images in {test_dir}")
    return stems


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
    ``course.read_label_file``) or from a JSON file ``{stem: [classes]}`` (checked like predictions)."""
    path = Path(path_or_dir)
    if path.is_dir():
        files = course.list_label_files(path)
        if not files:
            raise FileNotFoundError(f"{path}: no .cls label files in this folder")
        return {stem: course.read_label_file(files[stem]) for stem in sorted(files)}
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
