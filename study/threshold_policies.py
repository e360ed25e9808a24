"""Study helper: threshold-tuning policies compared on images they were not tuned on.

Reads the out-of-fold probabilities of a cross-fitted run (``oof.npz``, one row per labelled image) and scores
each policy with ``thresholds.mock_test_scores``, the protocol of the notebook's expected score: stratified mock test
sets of the test set's size, thresholds tuned on the other images. Every policy meets the same mock test sets, so
the differences to the default are paired.

    python -m study.threshold_policies runs/<timestamp>-cpu/oof.npz --repeats 20
"""
import argparse
from pathlib import Path

import numpy as np

from coco import thresholds
from coco.config import config_from_preset

POLICIES = {
    "default": {},
    "floor 0.05": {"candidates": np.round(np.arange(5, 100) / 100, 2)},
    "floor 0.10": {"candidates": np.round(np.arange(10, 100) / 100, 2)},
    "floor 0.20": {"candidates": np.round(np.arange(20, 100) / 100, 2)},
    "min_positives 10": {"min_positives": 10},
    "shrink 0.3": {"shrink": 0.3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("oof")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--test-size", type=int, default=834, help="coco-mini's test images (default: %(default)s)")
    args = parser.parse_args()
    saved = np.load(args.oof)
    probs, targets = saved["probs"], saved["targets"]
    tuning = config_from_preset("cpu").tuning_options()
    scores = {name: thresholds.mock_test_scores(probs, targets, args.test_size, repeats=args.repeats,
                                             **{**tuning, **options})
              for name, options in POLICIES.items()}
    base = np.array([s["final"] for s in scores["default"]])
    print(f"{Path(args.oof).parent.name}: {args.repeats} stratified mock test sets of {args.test_size} images; "
          f"one global threshold: F1 {np.mean([s['global'] for s in scores['default']]):.4f}")
    for name, rows in scores.items():
        f1 = np.array([s["final"] for s in rows])
        diff = f1 - base
        print(f"  {name:17s} F1 {f1.mean():.4f}  vs default {diff.mean():+.4f} "
              f"(se {diff.std() / np.sqrt(len(diff)):.4f})  labels per image {np.mean([s['labels_per_image'] for s in rows]):.1f}")


if __name__ == "__main__":
    main()
