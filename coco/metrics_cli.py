"""The ``metrics`` command line: ``python -m metrics validate|score|bench``.

``validate`` checks a predictions file against the test images, ``score`` scores it against labels (a folder
of ``.cls`` files or a JSON file), ``bench`` times the metric and the tuning. Exit status 0: done (a valid file);
1: the predictions file is not a valid submission (``error: FILE: invalid predictions:`` and one line per fault);
2: the command could not run (a missing file or folder, a broken label file, a bad argument), in one ``error:``
line (``--debug``: the traceback); Ctrl-C: one line, 130 (``coco.exits``). No torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from coco import exits
from coco.leaderboard import (
    MissingClassWarning,
    _class_names,
    _class_rows,
    average_precision,
    leaderboard_scores,
    per_class_counts,
)
from coco.submission import (
    PredictionsError,
    _score_matrices,
    load_and_validate,
    load_predictions,
    read_labels,
    score_predictions,
    validate_predictions,
)
from coco.thresholds import sweep_global_threshold, tune_class_thresholds, tune_thresholds

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
        "validate", help="check a predictions JSON against the test images (exit 0 if valid, 1 if not, 2 if the "
                         "check cannot run)",
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
    for command in (validate, score, bench):
        command.add_argument("--debug", action="store_true",
                             help="on failure, show the Python traceback instead of one error line")
    return parser


INVALID = 1  # the predictions file is not a valid submission: the verdict of validate (and of score)


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PredictionsError as error:
        if args.debug:
            raise
        print(f"error: {error.source}: invalid predictions:", file=sys.stderr)
        for message in error.errors:
            print(f"  - {message}", file=sys.stderr)
        return INVALID


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metrics``: see the module's docstring for the exit statuses."""
    return exits.run(_command, argv, lambda err: exits.describe(err, (OSError, ValueError)))
