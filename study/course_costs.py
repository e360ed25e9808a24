"""the engine's own cost estimate (``costs.estimate``: time per phase, memory, disk) of
the cpu preset with another backbone, input size, head or views, at the course's size (65,000 labelled images,
80/20 split as the preset's val_fraction, 4,952 test images), on this machine with the given torch threads.
The speeds are measured on the run's own network (random inputs; image decoding timed on coco-mini's photos).

    python -m study.course_costs efficientnet_lite2 512 --data-root ../shared/coco-mini
    python -m study.course_costs efficientnet_lite0 224 --hidden 0 --one-view --no-cross-fit
"""
import argparse
import json
from pathlib import Path

import torch

from coco import costs, course, data, recipe
from coco.config import config_from_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("image_size", type=int)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--one-view", action="store_true", help="no mirror view (cache_views 1, no flip TTA)")
    parser.add_argument("--no-cross-fit", action="store_true", help="thresholds from the 80/20 split only")
    parser.add_argument("--labelled", type=int, default=65_000)
    parser.add_argument("--test", type=int, default=4_952)
    parser.add_argument("--data-root", default="../shared/coco-mini")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views = {"cache_views": 1, "tta_hflip": False} if args.one_view else {}
    config = config_from_preset("cpu", model=args.model, image_size=args.image_size, head_hidden=args.hidden,
                                cross_fit_folds=0 if args.no_cross_fit else 5, data_root=args.data_root,
                                progress=False, **views)
    dirs = course.course_dirs(args.data_root)
    source = data.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    n_val = round(args.labelled * config.val_fraction)
    result = costs.estimate(config, recipe.build_net(config), source, n_train=args.labelled - n_val, n_val=n_val,
                            n_test=args.test, device=torch.device("cpu"), out_dir=Path("."))
    print(f"{args.model} {args.image_size} px, hidden {args.hidden}, views {1 if args.one_view else 2}, "
          f"cross-fit {not args.no_cross_fit}, {torch.get_num_threads()} thread(s):\n{result.describe()}")
    print(json.dumps({key: result.to_dict()[key] for key in ("seconds", "total_s", "peak_bytes", "disk_bytes",
                                                             "speeds")}))


if __name__ == "__main__":
    main()
