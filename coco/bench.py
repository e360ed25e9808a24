"""The benchmark, ``python -m loops bench``: how fast each part of training runs here, on generated photos.

Two questions, two modes:

* ``python -m loops bench [--model NAME] [--device cpu|cuda] ...``: images per second of the input pipeline alone,
  the training step alone (one batch already on the device), end to end, and inference; the end-to-end / step
  ratio says whether the input pipeline keeps up with the model. The step and inference are
  ``engine.train_one_epoch`` and ``engine.predict``, the very code that trains and predicts.
* ``python -m loops bench --recipe NAME --images 500 2500``: whole runs of a preset (``fit.fit`` and
  ``predict.predict_run``, in a fresh process per size so that its peak memory is its own) on generated JPEGs of
  the course's size, the time of each phase and the peak resident memory, extrapolated to the course's
  65,000 + 4,952 images. Beside it, what the run's own estimate (``costs.py``) says for the course's size.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from coco import costs, engine, fit, losses, networks, predict, recipe, synthetic
from coco.config import CACHE_MODES, LOADER_MODES, PRESETS, config_from_preset
from coco.course import course_dirs
from coco.data import COCOTestImageDataset, COCOTrainImageDataset, TransformSubset
from coco.image_cache import CachedImageDataset, cache_dataset
from coco.loaders import loader_description, make_loader
from coco.run_dir import RunDir
from coco.runtime import amp_settings, cpu_count, peak_memory_bytes, resolve_device, seed_everything
from coco.transforms import EvalPreset, TrainPreset


def _log(message: str) -> None:
    # stderr, so that `bench --json` leaves exactly one JSON object on stdout
    print(message, file=sys.stderr, flush=True)


def make_bench_data(root, n_train: int, n_test: int, *, distinct: int = 1000, seed: int = 0) -> Path:
    """A course-layout folder of ``n_train`` + ``n_test`` synthetic photos, long side 224 px.

    Up to ``distinct`` images are drawn by :mod:`synthetic`; the rest are links (or copies) of
    them under new stems, so that a 65,000-image epoch is ready in seconds.  Every file is still
    read, decoded and augmented on its own.
    """
    root = Path(root)
    data = root / f"bench-{n_train}-{n_test}"
    marker = data / "BENCH.json"
    settings = {"n_train": n_train, "n_test": n_test, "distinct": distinct, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return data
    if data.exists():
        shutil.rmtree(data)
    # synthetic's label sampler needs enough images to give every class a few
    n_distinct_train, n_distinct_test = max(min(n_train, distinct), 200), max(min(n_test, distinct), 100)
    source = synthetic.make_demo_dataset(root / f"distinct-{n_distinct_train}-{n_distinct_test}-{seed}",
                                         n_train=n_distinct_train, n_test=n_distinct_test, seed=seed, long_side=224)
    src, dst = course_dirs(source), course_dirs(data)
    for path in dst.values():
        path.mkdir(parents=True)

    def link(a: Path, b: Path) -> None:
        try:
            os.link(a, b)
        except OSError:  # file systems without hard links
            shutil.copyfile(a, b)

    for kind, count in (("train", n_train), ("test", n_test)):
        images = sorted(src[f"{kind}_images"].glob("*.jpg"))
        for i in range(count):
            stem = f"{i + (1 if kind == 'train' else 500_001):012d}"
            original = images[i % len(images)]
            link(original, dst[f"{kind}_images"] / f"{stem}.jpg")
            if kind == "train":
                link(src["train_labels"] / f"{original.stem}.cls", dst["train_labels"] / f"{stem}.cls")
    marker.write_text(json.dumps(settings))
    return data


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Timed:
    """Passes ``batches`` through and times them: the clock starts (device drained) after ``warmup``
    batches, and the iteration ends early once ``min_batches`` were timed and ``max_seconds``
    passed (0: no limit).  ``ips()`` (device drained again) is images per second."""

    def __init__(self, batches, device, *, warmup: int, min_batches: int, max_seconds: float):
        self.batches, self.device = batches, torch.device(device)
        self.warmup, self.min_batches, self.max_seconds = warmup, min_batches, max_seconds
        self.images = self.timed = 0

    def __iter__(self):
        batches = iter(self.batches)
        try:
            for k, batch in enumerate(batches):
                if k == self.warmup:
                    _sync(self.device)
                    self.start = time.perf_counter()
                elif k > self.warmup and self.max_seconds and self.timed >= self.min_batches \
                        and time.perf_counter() - self.start > self.max_seconds:
                    return
                yield batch
                if k >= self.warmup:
                    self.images += len(batch[0])
                    self.timed += 1
        finally:
            if hasattr(batches, "close"):  # a BatchLoader epoch left early stops its thread
                batches.close()

    def ips(self) -> float:
        _sync(self.device)
        if self.timed == 0:
            raise ValueError("benchmark: no batch left after the warm-up; use more images or a smaller batch size")
        return self.images / (time.perf_counter() - self.start)


def _endless(loader):
    """Batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


def _train_alternating(train_epoch, fixed_batch, train_loader, device, *, warmup: int, block: int,
                       max_seconds: float) -> dict:
    """Images/s of the training step alone (``fixed_batch`` over and over) and end to end (batches of
    ``train_loader``), timed in alternating blocks of ``block`` batches.

    Alternating makes a change in background load (other programs on a shared machine) hit both
    figures alike, so their ratio stays meaningful.  After a warm-up block of each, rounds go on
    until ``max_seconds`` per figure have passed (0: one round), at least two rounds when a block
    is shorter than an epoch.
    """
    stream = _endless(train_loader)
    totals = {"step": [0.0, 0], "end_to_end": [0.0, 0]}

    def run(kind: str, n_batches: int, timed: bool) -> float:
        batches = [fixed_batch] * n_batches if kind == "step" else itertools.islice(stream, n_batches)
        _sync(device)
        start = time.perf_counter()
        images = train_epoch(batches)["images"]
        _sync(device)
        seconds = time.perf_counter() - start
        if timed:
            totals[kind][0] += seconds
            totals[kind][1] += images
        return images / seconds

    run("step", warmup, timed=False)
    run("end_to_end", warmup, timed=False)
    round_ratios = []
    min_rounds = 1 if block >= len(train_loader) else 2
    while len(round_ratios) < min_rounds or (max_seconds and totals["step"][0] < max_seconds):
        step_ips = run("step", block, timed=True)
        round_ratios.append(run("end_to_end", block, timed=True) / step_ips)
    return {"step_ips": totals["step"][1] / totals["step"][0],
            "end_to_end_ips": totals["end_to_end"][1] / totals["end_to_end"][0],
            "rounds": len(round_ratios), "round_ratio_median": float(np.median(round_ratios)),
            "timed_images": totals["end_to_end"][1]}


def _parse_bench_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m loops bench",
        description="Images/s of the input pipeline, the training step, end-to-end training and inference.")
    parser.add_argument("--model", default="shufflenet_v2_x1_0", help="networks.build_model name (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="default: 256 on CUDA, 64 on CPU")
    parser.add_argument("--image-size", type=int, default=224, help="default: %(default)s")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--data-root", help="a folder in the course layout; default: generated photos")
    parser.add_argument("--images", type=int, help="generated training images (default: 65000 on CUDA, 512 on CPU)")
    parser.add_argument("--test-images", type=int, help="generated test images (default: 4952 on CUDA, 128 on CPU)")
    parser.add_argument("--work-dir", help="where generated images are kept for the next run (default: a temp folder)")
    parser.add_argument("--cache", choices=CACHE_MODES, default="auto", help="image cache (default: %(default)s)")
    parser.add_argument("--mode", choices=LOADER_MODES, default="auto", help="loader path (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the workers path (default: automatic)")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision (default: on for CUDA)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="memory format (default: auto = on for CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--max-seconds", type=float,
                        help="timed seconds per figure; 0 = one block (default: 0 on CUDA, 30 on CPU)")
    parser.add_argument("--block", type=int,
                        help="batches per block when the training step alone and end to end are timed in turns "
                             "(default: an epoch on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed batches per phase (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    cuda = args.device == "cuda"
    if args.block is None and not cuda:
        args.block = 1  # on CPU a batch takes seconds: alternate often
    defaults = {"batch_size": (256, 64), "images": (65000, 512), "test_images": (4952, 128),
                "max_seconds": (0.0, 30.0), "warmup": (5, 1)}
    for name, (on_cuda, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    return args


def run_bench(args) -> dict:
    """The measurements of :func:`bench_main` as a dict.  The training step and inference are
    ``engine.train_one_epoch`` and ``engine.predict``, the very code that trains and predicts."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    seed_everything(args.seed)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if args.data_root:
            root, source = Path(args.data_root), f"course folder {args.data_root}"
        else:
            start = time.perf_counter()
            root = make_bench_data(args.work_dir or tmp, args.images, args.test_images, seed=args.seed)
            source = f"{args.images} + {args.test_images} generated JPEGs, long side 224 px"
            _log(f"bench: data ready in {time.perf_counter() - start:.1f} s ({root})")
        dirs = course_dirs(root)
        start = time.perf_counter()
        train_data = cache_dataset(COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"]), args.cache,
                                   device=device)
        test_data = cache_dataset(COCOTestImageDataset(dirs["test_images"]), args.cache, device=device)
        cache_seconds = time.perf_counter() - start
        cache = train_data.cache if isinstance(train_data, CachedImageDataset) else None

        model = networks.build_model(args.model, pretrained=False)  # random weights: the same speed, no download
        channels_last = cuda if args.channels_last == "auto" else args.channels_last == "on"
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        spec = model.spec
        amp_dtype, scaler = amp_settings(device, not args.no_amp)
        criterion = losses.build_loss("bce").to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        network = torch.compile(model) if args.compile else model

        train_preset = TrainPreset(image_size=args.image_size, mean=spec.mean, std=spec.std)
        test_data.transform = EvalPreset(image_size=args.image_size, mean=spec.mean, std=spec.std)
        options = dict(device=device, mode=args.mode, num_workers=args.workers, channels_last=channels_last,
                       seed=args.seed)
        train_loader = make_loader(TransformSubset(train_data, np.arange(len(train_data)), train_preset),
                                   batch_size=args.batch_size, train=True, **options)
        test_loader = make_loader(test_data, batch_size=args.batch_size, train=False, **options)
        if len(train_loader) <= args.warmup:
            raise ValueError(f"benchmark: {len(train_data)} training images make {len(train_loader)} batches of "
                             f"{args.batch_size}, not more than the {args.warmup} warm-up batches")
        limits = {"warmup": args.warmup, "min_batches": 2, "max_seconds": args.max_seconds}
        train = dict(criterion=criterion, optimizer=optimizer, device=device, scaler=scaler, amp_dtype=amp_dtype,
                     channels_last=channels_last, progress=False)

        _log(f"bench: input pipeline alone ({loader_description(train_loader)})...")
        pipeline_alone = _Timed(train_loader, device, **limits)
        for _ in pipeline_alone:
            pass
        pipeline_ips = pipeline_alone.ips()

        _log("bench: training step alone (one batch already on the device) and end to end, in turns...")
        training = _train_alternating(lambda batches: engine.train_one_epoch(network, batches, **train),
                                      next(iter(train_loader)), train_loader, device, warmup=args.warmup,
                                      block=args.block or len(train_loader), max_seconds=args.max_seconds)
        step_ips, e2e_ips = training["step_ips"], training["end_to_end_ips"]

        _log("bench: inference (test images, evaluation preset)...")
        inference = _Timed(test_loader, device, **{**limits, "warmup": min(args.warmup, len(test_loader) - 1)})
        engine.predict(network, inference, device, amp_dtype=amp_dtype, channels_last=channels_last, progress=False)
        inference_ips = inference.ips()

    return {
        "pipeline_ips": round(pipeline_ips, 1), "step_ips": round(step_ips, 1), "end_to_end_ips": round(e2e_ips, 1),
        "inference_ips": round(inference_ips, 1), "end_to_end_over_step": round(e2e_ips / step_ips, 3),
        "peak_mem_mb": round(peak_memory_bytes(device) / 2**20, 1),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({cpu_count()} cores)",
        "pipeline_over_step": round(pipeline_ips / step_ips, 2),
        "epoch_65000_s": round(65000 / e2e_ips, 1), "test_4952_s": round(4952 / inference_ips, 1),
        "model": args.model, "pretrained": False, "batch_size": args.batch_size, "image_size": args.image_size,
        "train_images": len(train_data), "test_images": len(test_data), "data": source,
        "rounds": training["rounds"], "end_to_end_over_step_round_median": round(training["round_ratio_median"], 3),
        "end_to_end_timed_images": training["timed_images"],
        "loader": loader_description(train_loader), "cache": cache.mode if cache else "none",
        "cache_mb": round(cache.nbytes / 2**20, 1) if cache else 0.0, "cache_build_s": round(cache_seconds, 1),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "channels_last": channels_last,
        "compile": args.compile, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def bench_main(argv=None) -> int:
    """``python -m loops bench``: print the figures (a table, or one JSON object with ``--json``);
    returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--recipe" in argv:
        return recipe_main(argv)
    args = _parse_bench_args(argv)
    result = run_bench(args)
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [("input pipeline alone", f"{result['pipeline_ips']:.1f} images/s"),
            ("training step alone", f"{result['step_ips']:.1f} images/s"),
            ("end to end training", f"{result['end_to_end_ips']:.1f} images/s"),
            ("inference", f"{result['inference_ips']:.1f} images/s"),
            ("end to end / step alone", f"{result['end_to_end_over_step']:.3f} (median of {result['rounds']} "
                                        f"rounds: {result['end_to_end_over_step_round_median']:.3f})"),
            ("pipeline / step alone", f"{result['pipeline_over_step']:.2f}"),
            ("epoch of 65,000 images", f"{result['epoch_65000_s']:.1f} s"),
            ("test set of 4,952 images", f"{result['test_4952_s']:.1f} s"),
            ("peak memory", f"{result['peak_mem_mb']:.0f} MiB"
                            f" ({'GPU tensors' if args.device == 'cuda' else 'process RSS'})")]
    print(f"{result['model']} (random weights), batch {result['batch_size']}, {result['image_size']} px, "
          f"{result['device']}, amp={result['amp']}, channels_last={result['channels_last']}, "
          f"compile={result['compile']}")
    print(f"data: {result['data']}; cache: {result['cache']} ({result['cache_mb']:.0f} MiB, "
          f"{result['cache_build_s']:.1f} s); loader: {result['loader']}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------------------------
# Whole recipes at course scale
# --------------------------------------------------------------------------------------------
COURSE_TRAIN, COURSE_TEST = 65_000, 4_952
_PHASES = (("features", "inputs_s"), ("epochs", "epochs_s"), ("cross-fit", "cross_fit_s"), ("predict", "predict_s"))


def _test_images(n_train: int) -> int:
    return max(20, round(n_train * COURSE_TEST / COURSE_TRAIN))


def _recipe_config(recipe_name: str, data_root, out_dir, epochs: int | None, random_weights: bool = False):
    overrides = {"data_root": str(data_root), "out_dir": str(out_dir), "progress": False}
    if epochs is not None:
        overrides["epochs"] = epochs
    if random_weights:
        overrides["pretrained"] = False
    return config_from_preset(recipe_name, **overrides)


def _recipe_child(argv) -> int:
    """One size, in its own process: a whole run and its predictions; one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench _recipe_child")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--random-weights", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = _recipe_config(args.recipe, args.data, args.out, args.epochs, args.random_weights)
    result = fit.fit(config)
    predicted = predict.predict_run(result["run_dir"], Path(args.out) / "predictions.json", progress=False)
    run = RunDir(result["run_dir"])
    summary = run.summary()
    print(json.dumps({"phases": {**summary["phases"], "predict_s": predicted["time_s"]},
                      "wall_s": time.perf_counter() - start, "peak_rss_bytes": peak_memory_bytes(),
                      "estimate": summary["estimate"], "epochs": config.epochs,
                      "train_images": len(run.split_record()["train"]),
                      "best": summary["best"]}))
    return 0


def _linear(sizes, values, at: float) -> float:
    """``values`` against ``sizes`` by least squares (a line through the origin for one size), at ``at``."""
    sizes, values = np.asarray(sizes, dtype=float), np.asarray(values, dtype=float)
    if len(sizes) == 1:
        return float(values[0] * at / sizes[0])
    slope, intercept = np.polyfit(sizes, values, 1)
    return float(max(intercept + slope * at, 0.0))


def recipe_main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loops bench --recipe NAME",
        description="Time per phase and peak memory of whole runs of a preset on generated course-size photos, "
                    "extrapolated to the course's 65,000 training + 4,952 test images.")
    parser.add_argument("--recipe", required=True, choices=list(PRESETS))
    parser.add_argument("--images", type=int, nargs="+", default=[500, 2500],
                        help="labelled images per measured run (test images in the course's proportion); "
                             "default: %(default)s")
    parser.add_argument("--epochs", type=int,
                        help="epochs per measured run, scaled to the preset's afterwards (default: the preset's for "
                             "recipes on a feature cache, 1 for recipes that train on images)")
    parser.add_argument("--work-dir", help="where generated images and runs are kept (default: a temp folder)")
    parser.add_argument("--random-weights", action="store_true",
                        help="start from random weights instead of the pretrained ones (the same time and memory), "
                             "for a preset whose pretrained weights are not on this machine")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    preset = config_from_preset(args.recipe)
    if preset.pretrained and not args.random_weights and not networks.weights_on_disk(preset.model):
        raise ValueError(f"bench --recipe {args.recipe}: the pretrained weights of {preset.model} are not on this "
                         f"machine; download them first (python -c \"import models; "
                         f"networks.build_model('{preset.model}')\" says how) or add --random-weights to time the "
                         f"recipe from random weights, which costs the same time and memory")
    epochs = args.epochs or (None if preset.cache_stages else 1)
    measured = []
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        work = Path(args.work_dir or tmp)
        for n_images in sorted(args.images):
            data = make_bench_data(work, n_images, _test_images(n_images))
            out = work / f"runs-{args.recipe}-{n_images}"
            shutil.rmtree(out, ignore_errors=True)
            _log(f"bench: {args.recipe} on {n_images:,} + {_test_images(n_images):,} generated images...")
            command = [sys.executable, "-m", "coco.bench", "_recipe_child", "--recipe", args.recipe, "--data", str(data),
                       "--out", str(out)] + (["--epochs", str(epochs)] if epochs else []) \
                + (["--random-weights"] if args.random_weights else [])
            child = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if child.returncode != 0:
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"bench: the {args.recipe} run on {n_images} images failed (exit "
                                   f"{child.returncode}): {last}")
            measured.append({"images": n_images, **json.loads(child.stdout.strip().splitlines()[-1])})
        # what the run's own estimate says for the course's size, on this machine
        config = _recipe_config(args.recipe, make_bench_data(work, min(args.images), _test_images(min(args.images))),
                                work / "estimate", None, args.random_weights)
        source = COCOTrainImageDataset(*list(course_dirs(config.data_root).values())[:2])
        n_val = round(COURSE_TRAIN * config.val_fraction)
        course_estimate = costs.estimate(config, recipe.build_net(config), source, n_train=COURSE_TRAIN - n_val,
                                         n_val=n_val, n_test=COURSE_TEST, device=resolve_device(config.device),
                                         out_dir=work)
    result = {**_recipe_summary(args.recipe, preset, measured, course_estimate),
              "weights": "random (--random-weights)" if args.random_weights else "pretrained"}
    if args.json:
        print(json.dumps(result))
    else:
        _print_recipe(result)
    return 0


def _recipe_summary(name: str, preset, measured: list[dict], course_estimate) -> dict:
    sizes = [m["images"] for m in measured]
    rows = []
    for m in measured:
        scale = preset.epochs / m["epochs"]  # epochs and cross-fit heads scale with the epochs
        seconds = {phase: m["phases"].get(key, 0.0) * (scale if phase in ("epochs", "cross-fit") else 1.0)
                   for phase, key in _PHASES}
        rows.append({"images": m["images"], "test_images": _test_images(m["images"]), "seconds": seconds,
                     "total_s": sum(seconds.values()), "peak_rss_bytes": m["peak_rss_bytes"],
                     "measured_epochs": m["epochs"], "estimate_total_s": m["estimate"]["total_s"] * (
                         1.0 if m["epochs"] == preset.epochs else float("nan")),
                     "estimate_peak_bytes": m["estimate"]["peak_bytes"]})
    course = {"images": COURSE_TRAIN, "test_images": COURSE_TEST,
              "seconds": {phase: _linear(sizes, [r["seconds"][phase] for r in rows], COURSE_TRAIN)
                          for phase, _ in _PHASES},
              "peak_rss_bytes": _linear(sizes, [r["peak_rss_bytes"] for r in rows], COURSE_TRAIN)}
    course["total_s"] = sum(course["seconds"].values())
    return {"recipe": name, "epochs": preset.epochs, "device": f"cpu ({cpu_count()} cores)"
            if not torch.cuda.is_available() else torch.cuda.get_device_name(0), "torch": torch.__version__,
            "measured": rows, "course": course,
            "course_estimate": {"total_s": course_estimate.seconds, "peak_bytes": course_estimate.peak_bytes,
                                "seconds": {k: v for k, (v, _) in course_estimate.phases.items()}}}


def _print_recipe(result: dict) -> None:
    names = [phase for phase, _ in _PHASES]
    print(f"recipe {result['recipe']} ({result['epochs']} epochs), {result['device']}, torch {result['torch']}; "
          "generated JPEGs, long side 224 px")
    print(f"{'images':>16s} " + " ".join(f"{n:>10s}" for n in names) + f" {'total':>10s} {'peak RSS':>10s}")
    rows = result["measured"] + [{**result["course"], "label": "course (extrap.)"}]
    for row in rows:
        label = row.get("label", f"{row['images']:,} + {row['test_images']:,}")
        print(f"{label:>16s} " + " ".join(f"{costs.format_seconds(row['seconds'][n]):>10s}" for n in names)
              + f" {costs.format_seconds(row['total_s']):>10s} {costs.format_bytes(row['peak_rss_bytes']):>10s}")
    estimate = result["course_estimate"]
    print(f"{'course (estimate)':>16s} " + " ".join(f"{costs.format_seconds(estimate['seconds'].get(n, 0.0)):>10s}"
                                                    for n in ("feature cache", "epochs", "cross-fit", "predict"))
          + f" {costs.format_seconds(estimate['total_s']):>10s} {costs.format_bytes(estimate['peak_bytes']):>10s}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_recipe_child"]:
        sys.exit(_recipe_child(sys.argv[2:]))
    sys.exit(bench_main())
