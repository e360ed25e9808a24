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

Several feature folders (same images, same views): their features are concatenated per view and one head trains
on the concatenation (multi-scale: one backbone at two input sizes; multi-backbone: Lite0 + Lite1 + Lite2).
``--fold-average`` adds a third way, ``cross-fit fold-avg``: the mean probability of the K cross-fit fold heads
(the ones whose out-of-fold probabilities tuned the thresholds) instead of the final head; same heads, same
thresholds, no extra training. ``--one-view``: train and evaluate on the evaluation view alone (no mirror).

    python -m study.recipe_cv study-cache/efficientnet_lite2_384_avgmax study-cache/efficientnet_lite2_512_avgmax
"""
import argparse
import contextlib
import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from coco import course, features, leaderboard, networks, recipe, thresholds
from coco.config import config_from_preset
from coco.runtime import seed_everything


def load_features(folders):
    """(features, targets, fingerprint of the first folder): one FeatureStore, or with several folders a float16
    array (views, images, sum of the widths) of their features side by side."""
    stores = [features.FeatureStore.open(folder) for folder in folders]
    targets = np.load(Path(folders[0]) / "targets.npy")
    for folder, store in zip(folders[1:], stores[1:]):
        if store.shape[:2] != stores[0].shape[:2] or store.fingerprint["stems"] != stores[0].fingerprint["stems"] \
                or not np.array_equal(np.load(Path(folder) / "targets.npy"), targets):
            raise ValueError(f"{folder}: other images or views than {folders[0]}")
    if len(stores) == 1:
        return stores[0], targets, stores[0].fingerprint
    return np.concatenate([store.array for store in stores], axis=-1), targets, stores[0].fingerprint


@contextlib.contextmanager
def fold_heads_on(rows, views, device):
    """While active, every head ``features.cross_fit`` trains for one of its folds also predicts ``rows``
    (``views`` averaged); yields the list those probabilities are appended to. The heads are the engine's own
    (``features.train_head`` is wrapped, not replaced), so the cross-fit itself is unchanged."""
    train_head, probs = features.train_head, []

    def recording(*args, desc="head", **kwargs):
        module = train_head(*args, desc=desc, **kwargs)
        if desc.startswith("cross-fit fold"):
            probs.append(features.view_probs(module, args[3], rows, views, 128, device))
        return module

    features.train_head = recording
    try:
        yield probs
    finally:
        features.train_head = train_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", nargs="+", help="folder(s) written by extract_features.py (several: their "
                                                    "features concatenated per view)")
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
    parser.add_argument("--ways", nargs="+", default=["split", "cross-fit"], choices=("split", "cross-fit"),
                        help="which ways to run (default: both; the cross-fit row does not depend on the split's)")
    parser.add_argument("--fold-average", action="store_true",
                        help="also score the mean of the K cross-fit fold heads (row 'cross-fit fold-avg')")
    parser.add_argument("--one-view", action="store_true",
                        help="the evaluation view alone: no mirror view in training, no flip TTA")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s; 0: torch's)")
    parser.add_argument("--json-out", help="also write the summary with the per-fold scores to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", leaderboard.MissingClassWarning)
    store, targets, made = load_features(args.features)
    views = {"cache_views": 1, "tta_hflip": False} if args.one_view else {}
    config = config_from_preset("cpu", model=made["model"], image_size=made["image_size"], pool=made["pool"],
                                loss=args.loss, head_hidden=args.hidden, head_dropout=args.dropout,
                                epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, pretrained=False,
                                amp=not args.no_amp, progress=False, seed=args.seed, **views)
    device = torch.device("cpu")
    seed_everything(config.seed)
    net = recipe.build_net(config)  # head weights drawn as a run draws them; the backbone is in the cache
    width = store.shape[-1]
    if width != net.num_features:  # concatenated features: a wider head
        net.head = networks.make_head(width, net.num_classes, dropout=config.head_dropout, hidden_dim=config.head_hidden)
    initial_state = copy.deepcopy(net.state_dict())
    criterion = recipe.build_criterion(config, targets)
    eval_views = features.cache_views(config)[2]
    tuning = config.tuning_options()

    def scores(probs, held, tuned):
        return leaderboard.leaderboard_scores(tuned.apply(probs), targets[held], warn=False)["f1"], \
            leaderboard.mean_average_precision(probs, targets[held])

    start = time.perf_counter()
    outer_folds = course.kfold_assignments(targets, args.outer, seed=args.seed)
    results = {way: [] for way in args.ways}
    if args.fold_average and "cross-fit" in args.ways:
        results["cross-fit fold-avg"] = []
    for outer in range(args.outer):
        held, rest = np.flatnonzero(outer_folds == outer), np.flatnonzero(outer_folds != outer)
        if "split" in args.ways:
            split_way(net, initial_state, criterion, store, targets, rest, held, config, device, eval_views, tuning,
                      outer, scores, results)
        if "cross-fit" not in args.ways:
            continue
        # cross-fit: out-of-fold thresholds over the whole rest, a head trained on all of it
        with fold_heads_on(held, eval_views, device) as fold_probs:
            crossed = features.cross_fit(net, store, initial_state, criterion, targets, config, device, rows=rest)
        final = features.Tail(crossed.final_net, config.cache_stages)
        results["cross-fit"].append(scores(features.view_probs(final, store, held, eval_views, 128, device), held,
                                           crossed.thresholds))
        if args.fold_average:
            results["cross-fit fold-avg"].append(scores(np.mean(fold_probs, axis=0), held, crossed.thresholds))
    print(f"{' + '.join(Path(f).name for f in args.features)} loss={args.loss} hidden={args.hidden} "
          f"dropout={args.dropout} epochs={args.epochs} lr={args.lr} wd={args.weight_decay} amp={config.amp} "
          f"seed={args.seed} views={'1' if args.one_view else '2'} ({time.perf_counter() - start:.0f} s)")
    summary = {}
    for name, rows in results.items():
        f1s, maps = np.array(rows).T
        summary[name] = {"f1": float(f1s.mean()), "f1_se": float(f1s.std() / np.sqrt(len(f1s))),
                         "map": float(maps.mean()), "fold_f1": f1s.round(5).tolist(),
                         "fold_map": maps.round(5).tolist()}
        print(f"  {name:18s} held-out F1 {f1s.mean():.4f} +- {f1s.std() / np.sqrt(len(f1s)):.4f}  mAP "
              f"{maps.mean():.4f}   per fold: {' '.join(f'{s:.3f}' for s in f1s)}", flush=True)
    summary["wall_time_s"] = round(time.perf_counter() - start)
    print(json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1), encoding="utf-8")


def split_way(net, initial_state, criterion, store, targets, rest, held, config, device, eval_views, tuning, outer,
              scores, results) -> None:
    """The 80/20 way: a head on 80 % of ``rest``, thresholds on the other 20 %, scored on ``held``."""
    fit_idx, tune_idx = course.split_train_val(targets[rest], config.val_fraction, seed=outer, stratify=True)
    module = features.train_head(net, initial_state, criterion, store, targets, rest[fit_idx], config, device,
                                 seed=config.seed)
    tuned = thresholds.tune_thresholds(
        features.view_probs(module, store, rest[tune_idx], eval_views, 128, device), targets[rest[tune_idx]],
        **tuning)
    results["split"].append(scores(features.view_probs(module, store, held, eval_views, 128, device), held, tuned))


if __name__ == "__main__":
    main()
