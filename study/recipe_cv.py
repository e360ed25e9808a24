"""Study helper: nested cross-validation of whole recipes (head training + threshold tuning) on frozen
features from extract_features.py, scored like the leaderboard on images no part of the recipe has seen.

Outer 5 folds: each holds out 479 images (the size of the cpu preset's validation split; coco-mini's test
has 834). On the other 1,916 images three ways of getting a predictor and its thresholds are compared:

* ``split``: the cpu preset's way: train the head on 80 %, tune thresholds on the other 20 %.
* ``oof-full``: inner 5-fold heads give out-of-fold probabilities for all 1,916 images, thresholds are tuned
  on them; then one head trained on all 1,916 predicts the held-out images.
* ``oof-ensemble``: the same thresholds; the mean of the 5 inner heads predicts.

    python study/recipe_cv.py study-cache/efficientnet_lite2_260.pt --hidden 1024
    python study/recipe_cv.py study-cache/efficientnet_lite0_224.pt study-cache/efficientnet_lite2_260.pt
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402
import models  # noqa: E402


def folds_of(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % k


def train_head(x, x_flip, y, rows, args, seed):
    """A head trained on ``rows`` (mirror features as augmentation); returns a predict(x, x_flip) function."""
    mean, std = x[rows].mean(0), x[rows].std(0) + 1e-6
    torch.manual_seed(seed)
    head = models.make_head(x.shape[1], y.shape[1], dropout=args.dropout, hidden_dim=args.hidden)
    with torch.no_grad():
        head[-1].bias.copy_(models.prior_logits(y[rows].mean(0), y.shape[1]))
    criterion = models.build_loss(args.loss)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(rows) + args.batch - 1) // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    rows = torch.as_tensor(rows)
    for _ in range(args.epochs):
        order = rows[torch.randperm(len(rows))]
        head.train()
        for i in range(0, len(order), args.batch):
            batch = order[i:i + args.batch]
            mirrored = torch.rand(len(batch)) < 0.5
            inputs = torch.where(mirrored[:, None], x_flip[batch], x[batch])
            loss = criterion(head((inputs - mean) / std), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    head.eval()

    @torch.no_grad()
    def predict(idx):
        return ((torch.sigmoid(head((x[idx] - mean) / std)) + torch.sigmoid(head((x_flip[idx] - mean) / std))) / 2).numpy()
    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", nargs="+", help="feature files; several are concatenated")
    parser.add_argument("--loss", default="asl", choices=("asl", "bce"))
    parser.add_argument("--pool", default="both", choices=("avg", "max", "both"))
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imagenet", choices=("none", "add", "only"), default="none",
                        help="add (or use only) the backbone's own 1000 ImageNet logits as features")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xs, xfs, y = [], [], None
    for path in args.features:
        saved = torch.load(path)
        width = saved["train"]["pooled"].shape[1] // 2
        part = {"avg": slice(0, width), "max": slice(width, None), "both": slice(None)}[args.pool]
        pooled, pooled_flip = saved["train"]["pooled"].float(), saved["train"]["pooled_flip"].float()
        if args.imagenet != "only":
            xs.append(pooled[:, part])
            xfs.append(pooled_flip[:, part])
        if args.imagenet != "none":  # the pretrained classifier on the average-pooled features
            classifier = models._lite_net(models.get_spec(Path(path).stem.rsplit("_", 1)[0]), True, None)._fc
            with torch.no_grad():
                xs.append(classifier(pooled[:, :width]))
                xfs.append(classifier(pooled_flip[:, :width]))
        y = saved["targets"].float()
    x, x_flip = torch.cat(xs, 1), torch.cat(xfs, 1)
    truth = y.numpy()
    n = len(x)
    start = time.perf_counter()
    scores = {name: [] for name in ("split", "oof-full", "oof-ensemble")}
    maps = {name: [] for name in scores}
    for outer, outer_folds in enumerate([folds_of(n, args.outer, 0)] * args.outer):
        held = np.flatnonzero(outer_folds == outer)
        rest = np.flatnonzero(outer_folds != outer)
        # split: 80 / 20 of the rest
        inner = folds_of(len(rest), 5, 1 + outer)
        fit_rows, tune_rows = rest[inner != 0], rest[inner == 0]
        predict = train_head(x, x_flip, y, fit_rows, args, seed=outer)
        tuned = metrics.tune_thresholds(predict(tune_rows), truth[tune_rows])
        probs = predict(held)
        scores["split"].append(metrics.leaderboard_scores(tuned.apply(probs), truth[held], warn=False)["f1"])
        maps["split"].append(metrics.mean_average_precision(probs, truth[held]))
        # out-of-fold thresholds over the whole rest
        oof = np.zeros((len(rest), y.shape[1]), dtype=np.float32)
        held_probs = []
        for fold in range(5):
            predict = train_head(x, x_flip, y, rest[inner != fold], args, seed=10 * outer + fold)
            oof[inner == fold] = predict(rest[inner == fold])
            held_probs.append(predict(held))
        tuned = metrics.tune_thresholds(oof, truth[rest])
        for name, probs in (("oof-full", train_head(x, x_flip, y, rest, args, seed=outer)(held)),
                            ("oof-ensemble", np.mean(held_probs, axis=0))):
            scores[name].append(metrics.leaderboard_scores(tuned.apply(probs), truth[held], warn=False)["f1"])
            maps[name].append(metrics.mean_average_precision(probs, truth[held]))
    names = "+".join(Path(p).stem for p in args.features)
    print(f"{names} imagenet={args.imagenet} loss={args.loss} pool={args.pool} hidden={args.hidden} dropout={args.dropout} "
          f"epochs={args.epochs} lr={args.lr} wd={args.weight_decay} ({time.perf_counter() - start:.0f} s)")
    for name in scores:
        print(f"  {name:13s} held-out F1 {np.mean(scores[name]):.4f} +- {np.std(scores[name]) / np.sqrt(len(scores[name])):.4f}"
              f"  mAP {np.mean(maps[name]):.4f}   per fold: {' '.join(f'{s:.3f}' for s in scores[name])}", flush=True)


if __name__ == "__main__":
    main()
