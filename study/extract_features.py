"""Study helper: run a frozen pretrained backbone once over coco-mini (image + mirror image) and save
stage-k features and pooled (average + max) final features, for the head experiments of head_cv.py.

    python study/extract_features.py efficientnet_lite0 224 4 --data-root ../shared/coco-mini --out study-cache/
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dataset  # noqa: E402
import models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model"), parser.add_argument("image_size", type=int)
    parser.add_argument("stage", type=int, help="also keep the output of stages[:stage] (unpooled)")
    parser.add_argument("--data-root", default="../shared/coco-mini")
    parser.add_argument("--out", default="study-cache")
    args = parser.parse_args()
    dirs = dataset.course_dirs(args.data_root)
    net = models.build_model(args.model, pretrained=True).eval()
    preset = dataset.EvalPreset(image_size=args.image_size, mean=net.spec.mean, std=net.spec.std)
    saved = {}
    for split, data in (("train", dataset.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], transform=preset)),
                        ("test", dataset.COCOTestImageDataset(dirs["test_images"], transform=preset))):
        pooled, pooled_flip, feats = [], [], []
        start = time.perf_counter()
        with torch.inference_mode():
            for images, _ in torch.utils.data.DataLoader(data, batch_size=64):
                for flip in (False, True):
                    stage_out = net.features_until(args.stage, images.flip(-1) if flip else images)
                    final = stage_out
                    for stage in net.stages[args.stage:]:
                        final = stage(final)
                    both = torch.cat([final.mean((2, 3)), final.amax((2, 3))], 1)
                    (pooled_flip if flip else pooled).append(both)
                    if not flip:
                        feats.append(stage_out.half())
        print(f"{split}: {len(data)} images, {2 * len(data) / (time.perf_counter() - start):.1f} img/s (2 views)")
        saved[split] = dict(pooled=torch.cat(pooled), pooled_flip=torch.cat(pooled_flip), feats=torch.cat(feats))
        if split == "train":
            saved["targets"], saved["stems"] = torch.from_numpy(data.targets), data.stems
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(saved, Path(args.out) / f"{args.model}_{args.image_size}_k{args.stage}.pt")


if __name__ == "__main__":
    main()
