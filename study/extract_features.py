"""Study helper: the cpu preset's feature cache for another backbone, input size or pool, for recipe_cv.py.

The same extraction as a run of the preset (``features.extract`` into a ``features.FeatureStore``: pooled
vectors of the frozen backbone, the evaluation view and its mirror image, bfloat16 + channels_last where the CPU
has native bfloat16), for every labelled image of the data folder; written to ``OUT/<model>_<size>_<pool>/`` with
the targets beside it.

    python -m study.extract_features efficientnet_lite2 384 --data-root ../shared/coco-mini --out study-cache
    python -m study.extract_features efficientnet_lite0 224 --pool avg
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from coco import course, data, features, recipe, runtime
from coco.config import config_from_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("image_size", type=int)
    parser.add_argument("--pool", default="avgmax", choices=("avg", "avgmax"))
    parser.add_argument("--data-root", default="../shared/coco-mini")
    parser.add_argument("--out", default="study-cache")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: %(default)s, the per-thread speed; 0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_preset("cpu", model=args.model, image_size=args.image_size, pool=args.pool,
                                data_root=args.data_root, progress=False)
    dirs = course.course_dirs(args.data_root)
    source = data.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    device = torch.device("cpu")
    net = recipe.build_net(config)
    views = features.cache_views(config)[0]
    shape = (len(views), len(source), *features.feature_shape(net, config.cache_stages, args.image_size, device))
    folder = Path(args.out) / f"{args.model}_{args.image_size}_{args.pool}"
    store = features.FeatureStore(folder, features.fingerprint(config, source.stems, device), shape)
    start = time.perf_counter()
    features.extract(net, config.cache_stages, source, np.arange(len(source)), views, store, device=device,
                     batch_size=runtime.inference_batch_size(device, args.image_size, config.batch_size),
                     num_workers=config.num_workers, amp=config.amp, seed=config.seed,
                     progress=False, desc=folder.name)
    np.save(folder / "targets.npy", source.targets)
    seconds = time.perf_counter() - start
    print(f"{folder}: {shape} in {seconds:.0f} s, {shape[0] * shape[1] / seconds:.2f} view-images/s on "
          f"{torch.get_num_threads()} torch thread(s)")


if __name__ == "__main__":
    main()
