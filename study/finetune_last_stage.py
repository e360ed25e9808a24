"""Study helper: fine-tune the last backbone stage + head on cached stage-k features (extract_features.py),
one 80/20 split (fold 0 of head_cv.py's folds); prints validation mAP and tuned F1 after every epoch.

    python study/finetune_last_stage.py study-cache/efficientnet_lite0_224_k4.pt --epochs 6 --stage-lr 3e-4
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
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--stage", type=int, default=4, help="the stage the cached features come from")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--stage-lr", type=float, default=3e-4)
    args = parser.parse_args()
    saved = torch.load(args.features)
    targets, feats = saved["targets"].float(), saved["train"]["feats"]
    folds = np.random.default_rng(0).permutation(len(targets)) % 5
    train_idx, val_idx = (torch.from_numpy(np.flatnonzero(folds != 0)), torch.from_numpy(np.flatnonzero(folds == 0)))
    torch.manual_seed(0)
    net = models.build_model(args.model, pretrained=True, dropout=0.3,
                             prior=targets[train_idx].mean(0).clamp(1e-3).numpy())
    k = args.stage
    models.unfreeze_last_stages(net, len(net.stages) - k)
    groups = models.param_groups(net, lr=1e-3, weight_decay=1e-4, backbone_lr_mult=args.stage_lr / 1e-3)
    optimizer = torch.optim.AdamW(groups)
    criterion = models.build_loss("asl")
    batch = 32
    steps = args.epochs * ((len(train_idx) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                   pct_start=0.15)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            inputs = feats[rows].float()
            mirrored = torch.rand(len(rows)) < 0.5  # mirrored feature maps as a cheap flip augmentation
            inputs = torch.where(mirrored[:, None, None, None], inputs.flip(-1), inputs)
            loss = criterion(net.forward_from(k, inputs), targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            val = feats[val_idx].float()
            probs = ((torch.sigmoid(net.forward_from(k, val)) + torch.sigmoid(net.forward_from(k, val.flip(-1)))) / 2)
        probs, truth = probs.numpy(), targets[val_idx].numpy()
        tuned = metrics.tune_thresholds(probs, truth)
        print(f"epoch {epoch + 1}/{args.epochs}: mAP={metrics.mean_average_precision(probs, truth):.4f} "
              f"F1 by step {({name: round(value, 4) for name, value in tuned.f1_by_step.items()})} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
