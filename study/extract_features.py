"""Study helper: run a frozen pretrained backbone once over coco-mini (image + mirror image) and save the
pooled (average + max) final features, and optionally the unpooled output of stages[:k], for head_cv.py.

    python study/extract_features.py efficientnet_lite2 260 --data-root ../shared/coco-mini --out study-cache/
    python study/extract_features.py efficientnet_lite0 224 --keep-stage 4 --no-amp   # stage-4 maps, float32

Runs in bfloat16 with channels_last where the CPU computes bfloat16 natively (runtime.inference_settings).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dataset  # noqa: E402
import runtime  # noqa: E402
import models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model"), parser.add_argument("image_size", type=int)
    parser.add_argument("--keep-stage", type=int, default=0, help="also keep the output of stages[:k] (unpooled)")
    parser.add_argument("--mode", default="pad", choices=("pad", "crop", "stretch"), help="EvalPreset mode")
    parser.add_argument("--no-amp", action="store_true", help="float32 even where the CPU has native bfloat16")
    parser.add_argument("--data-root", default="../shared/coco-mini")
    parser.add_argument("--out", default="study-cache")
    args = parser.parse_args()
    dirs = dataset.course_dirs(args.data_root)
    net = models.build_model(args.model, pretrained=True).eval()
    device = torch.device("cpu")
    amp_dtype, channels_last = runtime.inference_settings(device, enabled=not args.no_amp)
    net.to(memory_format=torch.channels_last if channels_last else torch.preserve_format)
    preset = dataset.EvalPreset(image_size=args.image_size, mean=net.spec.mean, std=net.spec.std, mode=args.mode)
    k = args.keep_stage or len(net.stages)
    saved = {}
    for split, data in (("train", dataset.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], transform=preset)),
                        ("test", dataset.COCOTestImageDataset(dirs["test_images"], transform=preset))):
        pooled, pooled_flip, feats = [], [], []
        start = time.perf_counter()
        with torch.inference_mode(), runtime.autocast(device, amp_dtype):
            for images, _ in torch.utils.data.DataLoader(data, batch_size=64, num_workers=1):
                for flip in (False, True):
                    stage_out = net.features_until(k, runtime.to_device(images.flip(-1) if flip else images,
                                                                       device, channels_last))
                    final = stage_out
                    for stage in net.stages[k:]:
                        final = stage(final)
                    final = final.float()
                    both = torch.cat([final.mean((2, 3)), final.amax((2, 3))], 1)
                    (pooled_flip if flip else pooled).append(both)
                    if not flip and args.keep_stage:
                        feats.append(stage_out.half())
        print(f"{split}: {len(data)} images, {2 * len(data) / (time.perf_counter() - start):.1f} img/s (2 views, "
              f"{amp_dtype or 'float32'}, channels_last={channels_last})", flush=True)
        saved[split] = dict(pooled=torch.cat(pooled), pooled_flip=torch.cat(pooled_flip))
        if feats:
            saved[split]["feats"] = torch.cat(feats)
        if split == "train":
            saved["targets"], saved["stems"] = torch.from_numpy(data.targets), data.stems
        else:
            saved["test_stems"] = data.stems
    Path(args.out).mkdir(parents=True, exist_ok=True)
    suffix = f"_k{args.keep_stage}" if args.keep_stage else ""
    suffix += "" if args.mode == "pad" else f"_{args.mode}"
    torch.save(saved, Path(args.out) / f"{args.model}_{args.image_size}{suffix}.pt")


if __name__ == "__main__":
    main()
