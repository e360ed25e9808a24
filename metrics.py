"""The course's ``metrics`` module: the leaderboard's metric, threshold tuning, and the predictions JSON.

* ``leaderboard_scores(preds, targets)``: per-class precision and recall (a class without a true positive scores 0
  for both), each averaged over classes with weights proportional to 1 / positives, F1 = their harmonic mean;
  ``mean_average_precision`` for ranking quality, independent of thresholds.
* ``tune_thresholds(probs, targets)``: a global threshold, then one per class, picked on validation
  probabilities (``ThresholdResult.apply`` turns probabilities into labels); ``held_out_gains`` and
  ``mock_test_scores`` say how much of the tuned score survives on images the tuning never saw.
* ``write_predictions`` / ``load_and_validate`` / ``score_predictions``: the ``{"<stem>": [class indices]}`` file
  the leaderboard scores, checked strictly (every test image once, indices 0-79).

Command line, without loading torch::

    python -m metrics validate predictions.json --test-dir ms-coco/images/test-resized
    python -m metrics score predictions.json --labels LABELS_DIR_OR_JSON [--json]

The code lives in the ``coco`` package: ``coco/leaderboard.py`` (the metric), ``coco/thresholds.py`` (tuning and
its held-out checks), ``coco/submission.py`` (the predictions file), ``coco/metrics_cli.py`` (the command line).
"""
import sys

from coco.exits import quiet_interrupt

with quiet_interrupt(__name__):  # Ctrl-C while numpy loads: one line, not a traceback (python -m metrics)
    from coco.leaderboard import (MissingClassWarning, apply_thresholds, average_precision, class_weights,
                                  leaderboard_scores, mean_average_precision, per_class_counts, per_class_table)
    from coco.metrics_cli import main
    from coco.submission import (PredictionsError, load_and_validate, load_predictions, predictions_to_dict,
                                 read_labels, score_predictions, test_stems, validate_predictions, write_predictions)
    from coco.thresholds import (ThresholdResult, f1_by_rule, held_out_gains, mock_test_scores, prior_f1,
                                 sweep_global_threshold, tune_class_thresholds, tune_thresholds)

__all__ = ["leaderboard_scores", "mean_average_precision", "average_precision", "per_class_counts",
           "class_weights", "per_class_table", "apply_thresholds", "MissingClassWarning", "tune_thresholds",
           "tune_class_thresholds", "sweep_global_threshold", "ThresholdResult", "f1_by_rule", "prior_f1",
           "held_out_gains", "mock_test_scores", "predictions_to_dict", "write_predictions", "load_predictions",
           "validate_predictions", "load_and_validate", "test_stems", "read_labels", "score_predictions",
           "PredictionsError", "main"]

test_stems.__test__ = False  # a helper named test_*, not a pytest test

if __name__ == "__main__":
    sys.exit(main())
