"""Study helper: how fast training steps and forward-only passes run on this CPU in float32 and in bfloat16
autocast, each with and without channels_last; the measurements behind ``runtime.amp_settings``.

Each setting is timed in alternating rounds (so that a change of background load hits all settings alike) with
the project's own ``engine.train_one_epoch`` on one batch already in memory (AdamW as ``recipe.build_optimizer``
makes it, the run's loss), and ``features.compute`` for the forward-only pass of the feature cache.

    python -m study.cpu_precision                       # EfficientNet-Lite0 224 / 160 px, ShuffleNet V2 224 px
    python -m study.cpu_precision --models efficientnet_lite0:224:64 --rounds 5
"""
import argparse
import time

import numpy as np
import torch

from coco import engine, features, recipe, runtime
from coco.config import Config

SETTINGS = {"float32": (None, False), "float32 + channels_last": (None, True), "bfloat16": (torch.bfloat16, False),
            "bfloat16 + channels_last": (torch.bfloat16, True)}


def _train_rate(config: Config, amp_dtype, channels_last: bool, steps: int) -> float:
    net = recipe.build_net(config)
    optimizer = recipe.build_optimizer(net, config)
    recipe.set_trainable(net, config, epoch=0)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    size = config.image_size
    images, targets = torch.randn(config.batch_size, 3, size, size), (torch.rand(config.batch_size, 80) < 0.05).float()
    criterion = recipe.build_criterion(config, targets.numpy())
    batches = [(images, targets)]
    engine.train_one_epoch(net, batches, criterion, optimizer, "cpu", amp_dtype=amp_dtype, channels_last=channels_last,
                           progress=False)  # warm-up
    start = time.perf_counter()
    engine.train_one_epoch(net, batches * steps, criterion, optimizer, "cpu", amp_dtype=amp_dtype,
                           channels_last=channels_last, progress=False)
    return steps * config.batch_size / (time.perf_counter() - start)


def _forward_rate(config: Config, amp_dtype, channels_last: bool, steps: int) -> float:
    net = recipe.build_net(config).eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    images = torch.randn(2 * config.batch_size, 3, config.image_size, config.image_size)
    k = len(net.stages)
    with torch.inference_mode():
        features.compute(net, k, images, device=torch.device("cpu"), amp_dtype=amp_dtype, channels_last=channels_last)
        start = time.perf_counter()
        for _ in range(steps):
            features.compute(net, k, images, device=torch.device("cpu"), amp_dtype=amp_dtype,
                             channels_last=channels_last)
    return steps * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0:224:32", "efficientnet_lite0:160:64",
                                                         "shufflenet_v2_x1_0:224:64"],
                        help="MODEL:IMAGE_SIZE:BATCH_SIZE (random weights: the same speed as pretrained ones)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    parser.add_argument("--steps", type=int, default=3, help="timed batches per round")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bfloat16: "
          f"{runtime.cpu_has_native_bf16()}")
    for spec in args.models:
        model, size, batch = spec.split(":")
        config = Config(model=model, pretrained=False, image_size=int(size), batch_size=int(batch))
        for kind, rate in (("training step", _train_rate), ("forward only", _forward_rate)):
            rates = {name: [] for name in SETTINGS}
            for _ in range(args.rounds):
                for name, (amp_dtype, channels_last) in SETTINGS.items():
                    rates[name].append(rate(config, amp_dtype, channels_last, args.steps))
            base = np.median(rates["float32"])
            print(f"{model} {size} px, batch {batch if kind == 'training step' else 2 * int(batch)}, {kind}:")
            for name, values in rates.items():
                print(f"  {name:26s} {np.median(values):7.1f} img/s  ({np.median(values) / base:.2f} x float32; "
                      f"rounds: {' '.join(f'{v:.1f}' for v in values)})", flush=True)


if __name__ == "__main__":
    main()
