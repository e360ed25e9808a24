"""Study helper: threshold-tuning policies compared on images they were not tuned on.

Reads the out-of-fold probabilities of a cross-fitted run (``oof.npz``, one row per labelled image). Each
repeat scores a random mock test set of 834 images (coco-mini's test size) with thresholds tuned on the other
images' out-of-fold probabilities, under each policy; differences to the default policy are paired.

    python study/threshold_policies.py runs/<timestamp>-cpu/oof.npz --repeats 20
"""
import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402

POLICIES = {
    "default": {},
    "floor 0.05": {"candidates": np.round(np.arange(5, 100) / 100, 2)},
    "floor 0.10": {"candidates": np.round(np.arange(10, 100) / 100, 2)},
    "floor 0.20": {"candidates": np.round(np.arange(20, 100) / 100, 2)},
    "min_positives 10": {"min_positives": 10},
    "shrink 0.3": {"shrink": 0.3},
    "smooth 4": {"smooth": 4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("oof")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--test-size", type=int, default=834)
    args = parser.parse_args()
    warnings.simplefilter("ignore", metrics.MissingClassWarning)
    saved = np.load(args.oof)
    probs, targets = saved["probs"], saved["targets"]
    scores = {name: [] for name in POLICIES}
    labels = {name: [] for name in POLICIES}
    global_only = []
    for repeat in range(args.repeats):
        order = np.random.default_rng(1000 + repeat).permutation(len(probs))
        test, rest = order[:args.test_size], order[args.test_size:]
        for name, options in POLICIES.items():
            tuned = metrics.tune_thresholds(probs[rest], targets[rest], **options)
            preds = tuned.apply(probs[test])
            scores[name].append(metrics.leaderboard_scores(preds, targets[test], warn=False)["f1"])
            labels[name].append(preds.sum(axis=1).mean())
            if name == "default":
                global_only.append(metrics.leaderboard_scores(probs[test] > tuned.global_threshold, targets[test],
                                                              warn=False)["f1"])
    print(f"{Path(args.oof).parent.name}: {args.repeats} mock test sets of {args.test_size} images; "
          f"one global threshold: F1 {np.mean(global_only):.4f}")
    base = np.asarray(scores["default"])
    for name in POLICIES:
        diff = np.asarray(scores[name]) - base
        print(f"  {name:17s} F1 {np.mean(scores[name]):.4f}  vs default {diff.mean():+.4f} "
              f"(se {diff.std() / np.sqrt(len(diff)):.4f})  labels per image {np.mean(labels[name]):.1f}")


if __name__ == "__main__":
    main()
