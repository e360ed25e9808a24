"""feature-extraction speed of frozen backbones, per CPU second of this process as well as
per wall second, so that it holds when other jobs share the cores. ``features.compute`` in the preset's
precision (bfloat16 + channels_last where the CPU has it) on photos of the data folder through the preset's
evaluation transform (decoding and resizing included), in batches of the preset's inference batch size.

    python -m study.extract_speed efficientnet_lite2:384 efficientnet_lite2:512 --images 96
"""
import argparse
import time

import numpy as np
import torch

from coco import course, data, features, recipe, runtime
from coco.config import config_from_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backbones", nargs="+", help="model:size")
    parser.add_argument("--images", type=int, default=96, help="images timed per backbone (after a warm-up batch)")
    parser.add_argument("--data-root", default="../shared/coco-mini")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dirs = course.course_dirs(args.data_root)
    source = data.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    device = torch.device("cpu")
    for spec in args.backbones:
        model, size = spec.split(":")
        config = config_from_preset("cpu", model=model, image_size=int(size), data_root=args.data_root)
        net = recipe.build_net(config)
        eval_tf = recipe.presets_for(config)[1]
        batch = runtime.inference_batch_size(device, int(size), config.batch_size)
        rows = np.linspace(0, len(source) - 1, args.images + batch).astype(int)
        with features.InferenceFormat(net, device, config.amp) as fmt, torch.inference_mode():
            def run(chunk):
                images = torch.stack([eval_tf(source.load_image(int(row))) for row in chunk])
                features.compute(net, 5, images, device=device, amp_dtype=fmt.amp_dtype,
                                 channels_last=fmt.channels_last)
            run(rows[:batch])  # warm-up
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(batch, len(rows), batch):
                run(rows[start:start + batch])
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{model} {size} px: {args.images / cpu:.2f} images per CPU second, {args.images / wall:.2f} per wall "
              f"second ({torch.get_num_threads()} thread(s), batch {batch})", flush=True)


if __name__ == "__main__":
    main()
