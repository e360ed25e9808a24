"""Study helper: nested cross-validation of whole recipes (head training + threshold tuning) on the cached
features of extract_features.py, scored like the leaderboard on images that no part of the recipe has seen.

Everything a recipe does is the run engine's own code: heads are trained by ``features.train_head`` (the cpu
preset's optimiser, schedule, views and precision, with the head options given here), cross-fitting is
``features.cross_fit``, folds come from ``course.kfold_assignments`` and thresholds from
``thresholds.tune_thresholds`` with the preset's settings.

Outer 5 folds, stratified: each holds out a fifth of the labelled images (479 of coco-mini's 2,395; its test set
has 834). On the other four fifths two ways of getting a predictor and its thresholds are compared:

* ``split``: the 80/20 way: train the head on a stratified 80 %, tune thresholds on the other 20 %.
* ``cross-fit``: the cpu preset's way (``Config.cross_fit_folds``): out-of-fold probabilities of all of them
  from 5 inner heads, thresholds tuned on those, and a head trained on all of them predicts.

    python -m study.recipe_cv study-cache/efficientnet_lite2_384_avgmax
    python -m study.recipe_cv study-cache/efficientnet_lite0_224_avg --hidden 0 --loss bce --dropout 0.2
"""
import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from coco import course, features, leaderboard, recipe, thresholds
from coco.config import config_from_preset
from coco.runtime import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", help="a folder written by extract_features.py")
    parser.add_argument("--loss", default="asl", choices=("asl", "bce"))
    parser.add_argument("--hidden", type=int, default=1024, help="hidden units of the head (0: linear)")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the outer folds and of the heads (default: %(default)s, the rows of results.csv)")
    parser.add_argument("--no-amp", action="store_true", help="train the heads in float32 (default: as the preset, "
                                                              "bfloat16 where the CPU has it natively)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", leaderboard.MissingClassWarning)
    folder = Path(args.features)
    store = features.FeatureStore.open(folder)
    targets = np.load(folder / "targets.npy")
    made = store.fingerprint
    config = config_from_preset("cpu", model=made["model"], image_size=made["image_size"], pool=made["pool"],
                                loss=args.loss, head_hidden=args.hidden, head_dropout=args.dropout,
                                epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, pretrained=False,
                                amp=not args.no_amp, progress=False, seed=args.seed)
    device = torch.device("cpu")
    seed_everything(config.seed)
    net = recipe.build_net(config)  # head weights drawn as a run draws them; the backbone is in the cache
    initial_state = copy.deepcopy(net.state_dict())
    criterion = recipe.build_criterion(config, targets)
    eval_views = features.cache_views(config)[2]
    tuning = config.tuning_options()

    def scores(probs, held, tuned):
        return leaderboard.leaderboard_scores(tuned.apply(probs), targets[held], warn=False)["f1"], \
            leaderboard.mean_average_precision(probs, targets[held])

    start = time.perf_counter()
    outer_folds = course.kfold_assignments(targets, args.outer, seed=args.seed)
    results = {"split": [], "cross-fit": []}
    for outer in range(args.outer):
        held, rest = np.flatnonzero(outer_folds == outer), np.flatnonzero(outer_folds != outer)
        # split: a head on 80 % of the rest, thresholds on the other 20 %
        fit_idx, tune_idx = course.split_train_val(targets[rest], config.val_fraction, seed=outer, stratify=True)
        module = features.train_head(net, initial_state, criterion, store, targets, rest[fit_idx], config, device,
                                     seed=config.seed)
        tuned = thresholds.tune_thresholds(
            features.view_probs(module, store, rest[tune_idx], eval_views, 128, device), targets[rest[tune_idx]],
            **tuning)
        results["split"].append(scores(features.view_probs(module, store, held, eval_views, 128, device), held,
                                       tuned))
        # cross-fit: out-of-fold thresholds over the whole rest, a head trained on all of it
        crossed = features.cross_fit(net, store, initial_state, criterion, targets, config, device, rows=rest)
        final = features.Tail(crossed.final_net, config.cache_stages)
        results["cross-fit"].append(scores(features.view_probs(final, store, held, eval_views, 128, device), held,
                                           crossed.thresholds))
    print(f"{folder.name} loss={args.loss} hidden={args.hidden} dropout={args.dropout} epochs={args.epochs} "
          f"lr={args.lr} wd={args.weight_decay} amp={config.amp} seed={args.seed} "
          f"({time.perf_counter() - start:.0f} s)")
    summary = {}
    for name, rows in results.items():
        f1s, maps = np.array(rows).T
        summary[name] = {"f1": float(f1s.mean()), "f1_se": float(f1s.std() / np.sqrt(len(f1s))),
                         "map": float(maps.mean())}
        print(f"  {name:10s} held-out F1 {f1s.mean():.4f} +- {f1s.std() / np.sqrt(len(f1s)):.4f}  mAP "
              f"{maps.mean():.4f}   per fold: {' '.join(f'{s:.3f}' for s in f1s)}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
