"""Study helper: 5-fold cross-validation of a head on frozen features from extract_features.py.

Prints out-of-fold mAP, leaderboard F1 at 0.5, and the held-out F1 after threshold tuning (tuned on one
half of the out-of-fold probabilities, scored on the other, both ways, 6 random halvings).

    python study/head_cv.py study-cache/efficientnet_lite0_224_k4.pt --loss asl --pool both --hidden 1024
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features")
    parser.add_argument("--loss", default="asl", choices=("asl", "bce"))
    parser.add_argument("--pool", default="avg", choices=("avg", "max", "both"))
    parser.add_argument("--hidden", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    saved = torch.load(args.features)
    targets = saved["targets"].float()
    width = saved["train"]["pooled"].shape[1] // 2
    part = {"avg": slice(0, width), "max": slice(width, None), "both": slice(None)}[args.pool]
    feats, feats_flip = saved["train"]["pooled"][:, part].float(), saved["train"]["pooled_flip"][:, part].float()
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    feats, feats_flip = (feats - mean) / std, (feats_flip - mean) / std
    n = len(feats)
    folds = np.random.default_rng(0).permutation(n) % 5
    oof = torch.zeros_like(targets)
    start = time.perf_counter()
    for fold in range(5):
        train_idx = torch.from_numpy(np.flatnonzero(folds != fold))
        val_idx = torch.from_numpy(np.flatnonzero(folds == fold))
        torch.manual_seed(fold)
        head = models.make_head(feats.shape[1], 80, dropout=0.3 if args.hidden else 0.2, hidden_dim=args.hidden)
        with torch.no_grad():
            head[-1].bias.copy_(models.prior_logits(targets[train_idx].mean(0).clamp(1e-3), 80))
        criterion = models.build_loss(args.loss)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=args.weight_decay)
        batch = 64
        steps = args.epochs * ((len(train_idx) + batch - 1) // batch)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
        for _ in range(args.epochs):
            order = train_idx[torch.randperm(len(train_idx))]
            head.train()
            for i in range(0, len(order), batch):
                rows = order[i:i + batch]
                mirrored = torch.rand(len(rows)) < 0.5  # the mirror image's features as augmentation
                inputs = torch.where(mirrored[:, None], feats_flip[rows], feats[rows])
                loss = criterion(head(inputs), targets[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        head.eval()
        with torch.no_grad():
            oof[val_idx] = (torch.sigmoid(head(feats[val_idx])) + torch.sigmoid(head(feats_flip[val_idx]))) / 2
    probs, truth = oof.numpy(), targets.numpy()
    held_out = []
    for seed in range(6):
        half = np.random.default_rng(100 + seed).permutation(n) % 2 == 0
        for fit_rows, score_rows in ((half, ~half), (~half, half)):
            tuned = metrics.tune_thresholds(probs[fit_rows], truth[fit_rows])
            held_out.append((
                metrics.leaderboard_scores(probs[score_rows] > tuned.global_threshold, truth[score_rows], warn=False)["f1"],
                metrics.leaderboard_scores(tuned.apply(probs[score_rows]), truth[score_rows], warn=False)["f1"]))
    global_f1, per_class_f1 = np.mean(held_out, axis=0)
    print(f"{Path(args.features).name} loss={args.loss} pool={args.pool} hidden={args.hidden} epochs={args.epochs}: "
          f"OOF mAP={metrics.mean_average_precision(probs, truth):.4f} "
          f"F1@0.5={metrics.leaderboard_scores(probs > 0.5, truth, warn=False)['f1']:.4f} "
          f"held-out F1 global={global_f1:.4f} per-class={per_class_f1:.4f} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
