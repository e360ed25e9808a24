"""Training engine: the one configuration, the loops, run folders, checkpoints and the command line.

* :class:`Config` holds every hyperparameter and path; :data:`PRESETS` names complete recipes
  (:func:`config_from_preset`). ``dataclasses.asdict(config)`` goes into ``config.json`` and every checkpoint.
* :func:`train_one_epoch`, :func:`evaluate` and :func:`predict` return plain dicts. Mixed precision on CUDA
  (bf16 where supported, else fp16 with a gradient scaler), channels_last, optional gradient clipping and an
  optional EMA of the weights.
* The course's :func:`train_loop`, :func:`validation_loop` and :func:`update_graphs` keep their names and
  arguments, with the leaderboard metric of ``metrics.py`` and probabilities (never logits) thresholded.
* :func:`fit` trains one run into ``runs/<timestamp>-<name>/`` (config, split, per-epoch CSV, TensorBoard
  events, ``last.pt`` / ``best.pt``, ``summary.json``) and resumes one with ``fit(resume=RUN_DIR)``.
  :func:`load_run` gives back (model, config, thresholds) for the notebook and for predictions.

Command line (``python -m loops --help``)::

    python -m loops train --data-root DIR [--preset NAME] [--model NAME] [--epochs N] ...   # last line: run folder
    python -m loops train --resume RUN_DIR
    python -m loops predict --run RUN_DIR --data-root DIR --out PREDICTIONS.json
    python -m loops bench ...                                                   # see pipeline.py
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime as dt
import io
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

import dataset
import metrics
import models
import pipeline  # loader settings and per-epoch seeds (it imports loops lazily, for its benchmark)

__all__ = [
    "Config", "PRESETS", "PRESET_DESCRIPTIONS", "config_from_preset",
    "resolve_device", "amp_settings", "seed_everything",
    "ModelEma", "EpochShuffleSampler", "FeatureBank",
    "train_one_epoch", "evaluate", "predict",
    "train_loop", "validation_loop", "update_graphs",
    "build_net", "set_trainable", "make_scheduler", "steps_per_epoch",
    "save_checkpoint", "load_checkpoint", "load_run", "fit", "predict_run", "build_parser", "config_from_args", "main",
    "tune_thresholds", "inference_settings", "cpu_has_native_bf16", "evaluation_module", "resolve_checkpoint",
]


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------
def _field(default, help: str, choices: Sequence[str] | None = None):
    """A Config field with its help text (the CLI's --help is generated from it, so they cannot drift)."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """Every setting of a training run. The defaults are the ``"shufflenet"`` recipe (GPU, full course data).

    Build one directly (``Config(epochs=3)``), from a preset (``config_from_preset("demo", epochs=3)``) or
    from a saved dict (``Config.from_dict(json.load(...))``). Comments say why each default is what it is.
    """

    # ---- data ----
    # None: dataset.find_data_root decides ($MSCOCO_ROOT, else ./ms-coco), so one config runs anywhere.
    data_root: str | None = _field(None, "course data folder (images/, labels/); none: $MSCOCO_ROOT, else ./ms-coco")
    # None = every image; a number makes quick experiments (the first N stems in sorted order).
    max_train_images: int | None = _field(None, "use only the first N labelled images (none: all)")
    # 10 % of 65,000 = 6,500 validation images: enough positives to tune most per-class thresholds.
    val_fraction: float = _field(0.1, "fraction of the labelled images held out for validation")
    # Separate from `seed` so runs with different training seeds are compared on the same images.
    split_seed: int = _field(0, "seed of the train/validation split")
    # Rare classes (toaster, hair drier) would otherwise often miss the validation split entirely.
    stratify: bool = _field(True, "stratified split: every class with >= 2 images gets validation images")

    # ---- model ----
    # The course's baseline architecture: 2.3 M parameters, fast on a laptop GPU.
    model: str = _field(models.DEFAULT_MODEL, "backbone (models.list_models())",
                        choices=models.list_models())
    # ImageNet features: 65,000 images are far too few to learn good features from scratch.
    pretrained: bool = _field(True, "start from ImageNet weights (never silently replaced by random ones)")
    # None: the size the pretrained weights were evaluated at (model spec); the course photos are 224 px.
    image_size: int | None = _field(None, "square input size in pixels (none: the model's own)")
    # A little dropout before the new head: the head sees 58,500 images, the features are generic.
    head_dropout: float = _field(0.2, "dropout before the classifier head")
    # 0 = a single linear layer: enough on top of pretrained features, and the fastest to fit.
    head_hidden: int = _field(0, "hidden units of the head (0: linear head)")
    # avg: the pretrained networks' own pooling. avgmax adds a max pool (small objects), doubling the width.
    pool: str = _field("avg", "global pooling before the head: avg, or avg and max side by side",
                       choices=models.POOL_MODES)
    # Bias = logit(class frequency): epoch 1 starts at the base rates instead of learning them first.
    prior_from_data: bool = _field(True, "initialise the output biases from the training split's class rates")

    # ---- optimisation ----
    # 15 one-cycle epochs over 58,500 images = ~14,000 steps at batch 64: a common fine-tuning length for a
    # dataset this size. Not yet measured on the course data (no GPU was available when it was written).
    epochs: int = _field(15, "number of epochs")
    # 64 at 224 px keeps ShuffleNet's activations within a 4 GB laptop GPU (with mixed precision).
    batch_size: int = _field(64, "images per training step (validation uses twice as many)")
    # Peak learning rate of the new head; 1e-3 is AdamW's conventional peak for fine-tuning small CNNs.
    lr: float = _field(1e-3, "peak learning rate of the head (OneCycle maximum)")
    # Pretrained layers take smaller steps than the randomly initialised head, so they are not wrecked early.
    backbone_lr_mult: float = _field(0.3, "backbone learning rate = lr x this")
    # AdamW's decoupled decay; norms and biases are excluded (models.param_groups).
    weight_decay: float = _field(1e-2, "AdamW weight decay (not applied to norms and biases)")
    # OneCycle stepped per batch: a warm-up protects pretrained features from the head's first, random
    # gradients, then cosine annealing to ~0 replaces hand-made step schedules.
    scheduler: str = _field("onecycle", "learning-rate schedule, stepped per batch", choices=("onecycle", "constant"))
    # 20 % warm-up: long enough for the head to settle before the backbone moves much.
    pct_start: float = _field(0.2, "fraction of the steps spent warming up (OneCycle)")
    # 0 = off: AdamW normalises step sizes already; set ~1-5 if the loss spikes.
    grad_clip: float = _field(0.0, "clip the gradient norm to this value (0: off)")
    # 0 = off: a weight average helps long runs; it costs a model copy and slows early epochs' scores.
    ema_decay: float = _field(0.0, "exponential moving average of the weights, e.g. 0.999 (0: off)")

    # ---- loss ----
    # ASL: most of the 80 labels of an image are easy negatives; ASL down-weights them (Ridnik et al. 2021).
    loss: str = _field("asl", "training loss", choices=("asl", "bce"))
    # gamma_neg=4, gamma_pos=0, clip=0.05: the ASL paper's setting for MS-COCO.
    gamma_neg: float = _field(4.0, "ASL focusing exponent of the negatives")
    gamma_pos: float = _field(0.0, "ASL focusing exponent of the positives")
    asl_clip: float = _field(0.05, "ASL probability margin: negatives below it cost nothing")
    # Off: ASL balances already; for bce, weights n_neg / n_pos per class (from the training split).
    pos_weight: bool = _field(False, "bce only: weight each class's positives by n_negative / n_positive")

    # ---- freezing and feature caching ----
    # 0 = no frozen phase: the warm-up of OneCycle already protects the pretrained features.
    freeze_epochs: int = _field(0, "train only the head for the first N epochs, then unfreeze")
    # None = all stages after the frozen phase; a number trains only the last N backbone stages.
    unfreeze_stages: int | None = _field(None, "backbone stages trained after the frozen phase (none: all)")
    # 0 = off. k > 0 runs stages[:k] once, caches their output, and trains the rest on the cache (CPU).
    cache_stages: int = _field(0, "freeze the first k stages and train on their cached output (0: off)")
    # 4 views: the evaluation view, its mirror image and 2 random crops; a random one is used per epoch.
    cache_views: int = _field(4, "views per training image in the feature cache (eval, flipped, crops...)")
    # 0 = off. With the whole backbone cached a head trains in seconds, so after the run K more heads (same
    # epochs, each on K-1 folds of *all* labelled images) give out-of-fold probabilities for every image: the
    # thresholds are tuned on all of them instead of the validation split, and final.pt, the model that
    # predict uses, is a head trained on every labelled image (see _cross_fit).
    cross_fit_folds: int = _field(0, "K >= 2: thresholds from K-fold out-of-fold probabilities of all labelled "
                                     "images and a final head trained on all of them (needs the whole backbone "
                                     "cached; 0: off)")

    # ---- augmentation ----
    # A mild crop: a multi-label image's objects sit anywhere, and a tight crop drops labels.
    crop_scale_min: float = _field(0.5, "smallest crop area fraction of the training augmentation")
    # Mild colour jitter: COCO classes do not depend on colour, but they are not colour-free either.
    color_jitter: float = _field(0.2, "brightness/contrast/saturation jitter of the training augmentation")
    # Off: mirrored predictions double evaluation and prediction time for a small gain.
    tta_hflip: bool = _field(False, "average the probabilities of each image and its mirror image")

    # ---- thresholds and model selection (metrics.tune_thresholds) ----
    # The leaderboard ranks by F1 after thresholding, so the checkpoint that scores best there is kept.
    select_metric: str = _field("f1", "what 'best' means: tuned validation F1, validation loss or mAP",
                                choices=("f1", "loss", "map"))
    # 0 = off: a one-cycle schedule is meant to run to its end; set e.g. 3 for constant learning rates.
    patience: int = _field(0, "stop after N epochs without improvement of select_metric (0: never)")
    # The metrics helper's measured defaults (see metrics.tune_class_thresholds).
    tune_min_positives: int = _field(metrics.DEFAULT_MIN_POSITIVES,
                                     "classes with fewer validation positives keep the global threshold")
    tune_shrink: float = _field(metrics.DEFAULT_SHRINK, "pull per-class thresholds towards the global one")
    tune_rounds: int = _field(metrics.DEFAULT_ROUNDS, "coordinate-ascent rounds of per-class tuning")
    # Every course image has a label: the rule is kept only when it raises the validation F1.
    try_at_least_one: bool = _field(True, "try giving label-less images their most probable class")

    # ---- runtime ----
    device: str = _field("auto", "cuda, mps, cpu, or auto (first available of these)")
    # Mixed precision on CUDA, where it halves memory and doubles speed. On a CPU only the forward-only passes
    # (feature cache, predict) use it, and only where the CPU has native bfloat16 (AMX, AVX512-BF16): measured
    # 4x faster there; elsewhere CPU autocast is slower than float32 (see inference_settings).
    amp: bool = _field(True, "mixed precision: CUDA training and inference (bf16 if supported, else fp16 with a "
                             "gradient scaler); CPU feature caching and prediction where the CPU has native bf16")
    # NHWC is what tensor cores read fastest. CPU forward-only passes always use it (1.7x measured for
    # EfficientNet-Lite0 in float32); CPU training does not (not measured).
    channels_last: bool = _field(True, "channels_last memory format for CUDA convolutions")
    # None: pipeline.auto_loader_settings (none on CPU-only machines up to 4 cores, most cores with a GPU).
    num_workers: int | None = _field(None, "DataLoader worker processes (none: chosen from the hardware)")
    # auto: the gpu path on CUDA (training images cached as JPEG bytes, decoded and augmented on the GPU in
    # the main process: no worker start-up, no CPU decode bottleneck); DataLoader workers elsewhere, where
    # the model, not the input, sets the pace (python -m loops bench measures both).
    loader: str = _field("auto", "input pipeline: gpu (decode + augment on the device), workers, or auto",
                         choices=pipeline.LOADER_MODES)
    # auto: jpeg bytes with the gpu path, no cache with workers; decoded arrays trade ~7 GB RAM for no decode.
    image_cache: str = _field("auto", "keep training images in memory: none, jpeg bytes, decoded pixels, or auto",
                              choices=pipeline.CACHE_MODES)
    # Off by default: compilation takes a minute or more and helps mostly on recent GPUs (bench --compile).
    compile: bool = _field(False, "torch.compile the training module")
    seed: int = _field(0, "seed of initialisation, shuffling, augmentation and dropout")
    # Off: deterministic kernels are slower on GPU; on CPU runs are repeatable either way.
    deterministic: bool = _field(False, "deterministic algorithms (bitwise repeatable; slower on GPU)")
    progress: bool = _field(True, "show progress bars (tqdm)")
    out_dir: str = _field("runs", "folder receiving one sub-folder per run")
    # None: the model name, so the folder says what was trained.
    run_name: str | None = _field(None, "name of the run folder after its timestamp (none: the model name)")
    # Off: 80 classes x 3 metrics x (train, test) = 480 TensorBoard event files per run.
    class_graphs: bool = _field(False, "also write the course's per-class TensorBoard graphs")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """A Config from a dict (config.json, a checkpoint); unknown keys raise, naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Config field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        config = cls(**dict(data))
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        """A copy with ``changes`` applied (unknown names raise)."""
        return Config.from_dict({**self.to_dict(), **changes})

    def validate(self) -> "Config":
        """Raise ValueError naming the first field with an impossible value."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"Config.{f.name}={value!r}: choose one of {', '.join(choices)}")
        checks = [
            ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1), ("lr", self.lr > 0),
            ("backbone_lr_mult", self.backbone_lr_mult >= 0), ("weight_decay", self.weight_decay >= 0),
            ("pct_start", 0 < self.pct_start < 1), ("grad_clip", self.grad_clip >= 0),
            ("ema_decay", 0 <= self.ema_decay < 1), ("val_fraction", 0 < self.val_fraction < 1),
            ("freeze_epochs", self.freeze_epochs >= 0), ("cache_stages", self.cache_stages >= 0),
            ("cache_views", self.cache_views >= 1), ("patience", self.patience >= 0),
            ("image_size", self.image_size is None or self.image_size >= 16),
            ("max_train_images", self.max_train_images is None or self.max_train_images >= 2),
            ("unfreeze_stages", self.unfreeze_stages is None or self.unfreeze_stages >= 0),
            ("num_workers", self.num_workers is None or self.num_workers >= 0),
            ("crop_scale_min", 0 < self.crop_scale_min <= 1), ("color_jitter", 0 <= self.color_jitter < 1),
            ("device", self.device == "auto" or self.device.split(":")[0] in ("cuda", "mps", "cpu")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"Config.{name}={getattr(self, name)!r} is out of range")
        if self.cross_fit_folds == 1 or self.cross_fit_folds < 0:
            raise ValueError(f"Config.cross_fit_folds={self.cross_fit_folds}: use 0 (off) or K >= 2 folds")
        if self.pos_weight and self.loss != "bce":
            raise ValueError("Config.pos_weight=True needs loss='bce' (ASL balances with gamma_neg/gamma_pos/asl_clip)")
        return self


# Named recipes: each is a set of overrides of Config's defaults, so a value is written once.
PRESETS: dict[str, dict[str, Any]] = {
    # Config's defaults: ShuffleNet V2 x1.0, ImageNet weights, AdamW + OneCycleLR, ASL, full course data, GPU.
    "shufflenet": {},
    # The synthetic demo data on a CPU in about a minute. EfficientNet-Lite0's ImageNet weights ship in a pip
    # package (no download); its first 3 stages run once over the images (feature cache, 4 views each) and
    # only the last 2 stages + head train, at 64 px (the shapes are large), for 10 epochs. Measured on
    # 540 + 60 synthetic images, one contended CPU thread: 60-80 s, validation F1 0.26-0.34 (a model that
    # ignores the image: 0.02); ShuffleNet x0.5 from scratch reached only 0.10-0.15 in the same time.
    "demo": {
        "model": "efficientnet_lite0", "image_size": 64, "epochs": 10, "batch_size": 32, "lr": 3e-3,
        "cache_stages": 3, "run_name": "demo",
    },
    # Real photos on a CPU (coco-mini in under 30 minutes on 2 cores), every choice measured on coco-mini by
    # nested cross-validation (study/recipe_cv.py, rows in study/results.csv): EfficientNet-Lite2 with the
    # ImageNet weights from its pip package, frozen and run once per view (cache_stages=5: all its stages; on
    # CPUs with native bfloat16 in bf16 + channels_last, ~4x faster), an MLP head on average + max pooled
    # features (max pooling keeps small objects: +0.008 F1), then cross-fitting: thresholds tuned on
    # out-of-fold probabilities of all 2,395 labelled images and a final head trained on all of them (+0.007
    # to +0.021 F1 and +0.01 mAP over the 479-image validation split at 224-320 px, a tie in F1 at 384 px, still
    # +0.01 mAP; the split's thresholds showed no held-out gain at all). The 224 px photos are upsampled to
    # 384 px: the strongest lever measured (Lite2 at 320 px vs its native 260: +0.038 held-out F1, +0.024 mAP;
    # 384 vs 320: +0.009 F1, +0.015 mAP; Lite2 vs Lite0 at native sizes: +0.02 mAP). Fine-tuning the last stage from cached stage-4 features
    # reached no better mAP than the frozen head at ~4x the CPU time. Selection by mAP: on 479 images the
    # tuned F1 of one epoch jumps by +-0.05 from the next while mAP moves smoothly.
    "cpu": {
        "model": "efficientnet_lite2", "image_size": 384, "pool": "avgmax", "epochs": 30, "batch_size": 64,
        "lr": 1e-3, "weight_decay": 1e-4, "cache_stages": 5, "cache_views": 2, "head_hidden": 1024,
        "head_dropout": 0.3, "tta_hflip": True, "val_fraction": 0.2, "select_metric": "map",
        "cross_fit_folds": 5, "run_name": "cpu",
    },
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    "shufflenet": "the default: ShuffleNet V2 x1.0 with ImageNet weights, AdamW + OneCycleLR, ASL; "
                  "for a GPU and the full course data",
    "demo": "EfficientNet-Lite0 (ImageNet weights from its pip package) at 64 px, last 2 stages + head trained "
            "on cached features for 10 epochs: learns the synthetic demo data in about a CPU minute",
    "cpu": "EfficientNet-Lite2 (ImageNet weights from its pip package) at 384 px, frozen and cached (image + "
           "mirror), MLP head on average + max pooled features, flip TTA, thresholds cross-fitted on all "
           "labelled images (final.pt): real photos on a 2-core CPU",
}


def config_from_preset(name: str, **overrides) -> Config:
    """The Config of preset ``name`` with ``overrides`` applied (explicit values win over the preset)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------
# Hardware, precision, seeding
# ----------------------------------------------------------------------------------------------------------
def tune_thresholds(probs, targets, config: Config) -> metrics.ThresholdResult:
    """``metrics.tune_thresholds`` with the tuning settings of ``config`` (the one place that maps them)."""
    return metrics.tune_thresholds(probs, targets, min_positives=config.tune_min_positives, shrink=config.tune_shrink,
                                   n_rounds=config.tune_rounds, try_at_least_one=config.try_at_least_one)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple's MPS, else the CPU. An unavailable explicit device raises."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine (use --device auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available on this machine (use --device auto)")
    return device


def amp_settings(device: torch.device, enabled: bool = True):
    """(autocast dtype or None, GradScaler or None): bf16 on CUDA where supported, else fp16 + scaler.

    Only CUDA gets mixed precision: CPU autocast is slower than float32 on most CPUs and MPS support varies.
    """
    if not enabled or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None  # bf16 has float32's range: no loss scaling needed
    return torch.float16, torch.amp.GradScaler("cuda")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), so oneDNN runs it fast."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(probe() for probe in probes if probe is not None)
    except RuntimeError:
        return False


def inference_settings(device: torch.device, enabled: bool = True) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for forward-only passes (feature caching, prediction).

    CUDA: as :func:`amp_settings`, channels_last. CPU: bfloat16 + channels_last where the CPU has native
    bfloat16 (measured on a 2-core Xeon with AMX: EfficientNet-Lite0 at 224 px 27 img/s in float32, 108 img/s
    this way), float32 + channels_last elsewhere (47 img/s there); float32 on MPS.
    """
    if device.type == "cuda":
        return amp_settings(device, enabled)[0], True
    if device.type == "cpu":
        return (torch.bfloat16 if enabled and cpu_has_native_bf16() else None), True
    return None, False


def _autocast(device: torch.device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (all devices) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device):
    """Deterministic kernels inside the block when ``enabled``; the previous global settings come back after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable sums
        # warn_only: a few CUDA backward kernels have no deterministic version; warn rather than stop.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input size: autotuning pays off
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


# ----------------------------------------------------------------------------------------------------------
# Small building blocks: EMA, sampler, feature cache
# ----------------------------------------------------------------------------------------------------------
class ModelEma:
    """Exponential moving average of a model's weights (buffers such as BatchNorm statistics are averaged too).

    ``decay`` ramps up as (1 + n) / (10 + n) over the first updates, so a short run is not dominated by the
    random initial weights. Evaluate ``ema.module``; ``state_dict`` holds its weights and the update count.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = [], []
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                averaged.append(ema_value)
                current.append(value.detach())
            else:
                ema_value.copy_(value)  # integer buffers (BatchNorm's batch counter) are copied
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Mapping) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


class EpochShuffleSampler(Sampler):
    """A random order per epoch drawn from (seed, epoch) alone (call ``set_epoch`` before each epoch).

    The order does not depend on how many epochs ran before in this process, so a resumed run sees the same
    batches as an uninterrupted one, and it works with persistent DataLoader workers.
    """

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(pipeline.epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.length, generator=generator).tolist())


class FlippedView:
    """A transform followed by a horizontal flip (the second view of the feature cache and of TTA)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image).flip(-1)


class FeatureBank(Dataset):
    """Cached stage outputs ``feats`` (views, N, C, H, W; float16) with their ``targets`` (N, classes).

    ``view=None`` draws a random view per item from torch's global generator (reseeded every epoch by
    :func:`fit`); an int always serves that view.
    """

    def __init__(self, feats: torch.Tensor, targets, view: int | None = None):
        self.feats = feats
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        self.view = view

    def __len__(self) -> int:
        return self.feats.shape[1]

    def __getitem__(self, idx):
        view = self.view if self.view is not None else int(torch.randint(self.feats.shape[0], ()))
        return self.feats[view, idx].float(), self.targets[idx]


class _Tail(nn.Module):
    """``net.forward_from(start, x)`` as a module: trains and evaluates on cached ``features_until`` outputs."""

    def __init__(self, net: nn.Module, start: int):
        super().__init__()
        self.net, self.start = net, int(start)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_from(self.start, feats)


class _CachedPath(nn.Module):
    """A feature-cache run's network computing on images exactly what its run computed on the cache:
    ``stages[:k]`` in the cache's precision (:func:`inference_settings`), rounded to float16 like the cache,
    then the rest in the caller's precision. The run's thresholds were tuned on probabilities computed this way;
    a plain float32 pass shifts them enough to move the tuned F1 of 479 validation images by ~0.03."""

    def __init__(self, net: nn.Module, k: int, device: torch.device, cache_dtype, channels_last: bool):
        super().__init__()
        self.net, self.k, self.device = net, int(k), device
        self.cache_dtype, self.channels_last = cache_dtype, channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.cache_dtype):
            feats = self.net.features_until(self.k, images)
        return self.net.forward_from(self.k, feats.to(torch.float16).float())


def evaluation_module(model: nn.Module, config: Config, device: torch.device):
    """``(module, amp_dtype, channels_last)`` to evaluate a trained ``model`` on images the way its run evaluated
    its validation images (so that the stored thresholds fit the probabilities); moves ``model`` to ``device``."""
    amp_dtype = amp_settings(device, config.amp)[0]
    if config.cache_stages > 0:
        cache_dtype, channels_last = inference_settings(device, config.amp)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        return _CachedPath(model, config.cache_stages, device, cache_dtype, channels_last), amp_dtype, False
    channels_last = config.channels_last and device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    return model, amp_dtype, channels_last


def _core(module: nn.Module) -> nn.Module:
    return module.net if isinstance(module, _Tail) else module


def _cache_features(net, k: int, source, indices, transforms, *, device, batch_size: int, workers: int | None,
                    amp: bool, seed: int, progress: bool, desc: str) -> torch.Tensor:
    """Run ``net.stages[:k]`` once per view over the images; float16 (views, N, C, H, W) on the CPU.

    Forward only, so it runs as :func:`inference_settings` says (on a CPU with native bfloat16: bfloat16 and
    channels_last, ~4x faster); the network is handed back in its original memory format.
    """
    net.eval()
    amp_dtype, channels_last = inference_settings(device, amp)
    conv = next((p for p in net.parameters() if p.dim() == 4), None)
    was_channels_last = conv is not None and conv.is_contiguous(memory_format=torch.channels_last) \
        and not conv.is_contiguous()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    try:
        return _cache_views(net, k, source, indices, transforms, device=device, batch_size=batch_size,
                            workers=workers, amp_dtype=amp_dtype, channels_last=channels_last, seed=seed,
                            progress=progress, desc=desc)
    finally:
        if channels_last and not was_channels_last:
            net.to(memory_format=torch.contiguous_format)


@torch.inference_mode()  # inside only: parameters moved to channels_last under it would become inference tensors
def _cache_views(net, k, source, indices, transforms, *, device, batch_size, workers, amp_dtype, channels_last,
                 seed, progress, desc) -> torch.Tensor:
    bank = None
    for view, transform in enumerate(transforms):
        seed_everything(seed + view)  # each view's random crops are reproducible
        loader = DataLoader(dataset.TransformSubset(source, indices, transform), batch_size=batch_size,
                            shuffle=False, **_loader_options(device, workers, torch.Generator().manual_seed(seed + view)))
        offset = 0
        for images, _ in tqdm(loader, desc=f"{desc} view {view + 1}/{len(transforms)}", disable=not progress,
                              leave=False, dynamic_ncols=True):
            with _autocast(device, amp_dtype):
                feats = net.features_until(k, _to_device(images, device, channels_last))
            if bank is None:
                bank = torch.empty((len(transforms), len(indices), *feats.shape[1:]), dtype=torch.float16)
            bank[view, offset:offset + len(feats)] = feats.to("cpu", torch.float16)
            offset += len(feats)
    return bank


def _loader_options(device: torch.device, num_workers: int | None, generator: torch.Generator | None = None) -> dict:
    """DataLoader keyword arguments: ``pipeline.auto_loader_settings`` (workers chosen from the hardware,
    pinned memory on CUDA, persistent workers) unless ``num_workers`` is given. Worker processes must
    unpickle the dataset and transforms (spawn on Windows/macOS): everything used here is a module-level class."""
    options = pipeline.auto_loader_settings(device)
    if num_workers is not None:
        options.update(num_workers=num_workers, persistent_workers=num_workers > 0,
                       prefetch_factor=options["prefetch_factor"] if num_workers > 0 else None)
        if num_workers > 0 and options["prefetch_factor"] is None:
            options["prefetch_factor"] = 2  # torch's default
    return {**options, "generator": generator}


# ----------------------------------------------------------------------------------------------------------
# The loops
# ----------------------------------------------------------------------------------------------------------
def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _current_lr(optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)


def train_one_epoch(model: nn.Module, loader, criterion, optimizer, device, *, scheduler=None, scaler=None,
                    amp_dtype=None, grad_clip: float = 0.0, ema: ModelEma | None = None, channels_last: bool = False,
                    collect_probs: bool = False, progress: bool = True, desc: str = "train") -> dict:
    """One pass over ``loader`` (batches of (images, targets)), updating ``model``.

    ``scheduler`` is stepped after every batch (OneCycleLR). Returns a dict: ``loss`` (mean per image),
    ``batch_losses`` (tensor, one mean loss per batch), ``lr`` (largest group lr at the end), ``images``,
    ``steps``, ``time_s`` and, with ``collect_probs``, ``probs``/``targets`` of the training batches
    (sigmoid of the logits, under augmentation and a moving model: a rough overfitting signal).
    """
    device = torch.device(device)
    model.train()
    start = time.perf_counter()
    batch_losses, probs_list, targets_list = [], [], []
    loss_sum = torch.zeros((), device=device)
    n_images = 0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(_core(model))
        batch_loss = loss.detach()
        batch_losses.append(batch_loss)
        loss_sum += batch_loss * len(images)
        n_images += len(images)
        if collect_probs:  # kept on the device until the end: a copy to the CPU per step would wait for the GPU
            probs_list.append(torch.sigmoid(logits.detach().float()).half())
            targets_list.append(targets.detach().to(torch.uint8))
        if progress and step % 10 == 0:  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{batch_loss.item():.4f}", lr=f"{_current_lr(optimizer):.2e}")
    if n_images == 0:
        raise ValueError("the training loader yielded no batches (fewer images than one batch with drop_last?)")
    mean_loss = float(loss_sum) / n_images
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"the training loss became {mean_loss}: lower the learning rate or set grad_clip")
    result = {"loss": mean_loss, "batch_losses": torch.stack(batch_losses).float().cpu(),
              "lr": _current_lr(optimizer), "images": n_images, "steps": len(batch_losses),
              "time_s": time.perf_counter() - start}
    if collect_probs:
        result["probs"] = torch.cat(probs_list).cpu().float()
        result["targets"] = torch.cat(targets_list).cpu().float()
    return result


def _probs_and_logits(model, images, device, amp_dtype, tta_hflip: bool):
    with _autocast(device, amp_dtype):
        logits = model(images).float()
        probs = torch.sigmoid(logits)
        if tta_hflip:
            probs = (probs + torch.sigmoid(model(images.flip(-1)).float())) / 2
    return logits, probs


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device, *, criterion=None, amp_dtype=None, channels_last: bool = False,
             tta_hflip: bool = False, progress: bool = True, desc: str = "val") -> dict:
    """Probabilities for every batch of (images, targets) in ``loader``, in eval mode.

    Returns ``probs`` (float32 CPU tensor, sigmoid of the logits, averaged with the mirror image's when
    ``tta_hflip``), ``targets`` (as the loader gave them, concatenated), ``loss`` (mean per image of
    ``criterion`` on the un-mirrored logits; NaN without a criterion) and ``time_s``.
    """
    device = torch.device(device)
    model.eval()
    start = time.perf_counter()
    probs_list, targets_list = [], []
    loss_sum, n_images = 0.0, 0
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images = _to_device(images, device, channels_last)
        logits, probs = _probs_and_logits(model, images, device, amp_dtype, tta_hflip)
        if criterion is not None:
            loss_sum += float(criterion(logits, targets.to(device))) * len(images)
        n_images += len(images)
        probs_list.append(probs.cpu())
        targets_list.append(targets.cpu())
    if n_images == 0:
        raise ValueError("the evaluation loader yielded no batches")
    return {"loss": loss_sum / n_images if criterion is not None else float("nan"),
            "probs": torch.cat(probs_list), "targets": torch.cat(targets_list),
            "time_s": time.perf_counter() - start}


@torch.inference_mode()
def predict(model: nn.Module, loader, device, *, amp_dtype=None, channels_last: bool = False,
            tta_hflip: bool = False, progress: bool = True, desc: str = "predict") -> dict:
    """Probabilities for a loader of (images, stems) (``dataset.COCOTestImageDataset``).

    Returns ``stems`` (list of str, loader order) and ``probs`` (float32 CPU tensor N x classes).
    """
    device = torch.device(device)
    model.eval()
    stems, probs_list = [], []
    for images, batch_stems in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        _, probs = _probs_and_logits(model, _to_device(images, device, channels_last), device, amp_dtype, tta_hflip)
        probs_list.append(probs.cpu())
        stems.extend(str(stem) for stem in batch_stems)
    return {"stems": stems, "probs": torch.cat(probs_list) if probs_list else torch.zeros((0, 0))}


# ----------------------------------------------------------------------------------------------------------
# The course's functions, same names and arguments
# ----------------------------------------------------------------------------------------------------------
def train_loop(train_loader, net, criterion, optimizer, device, mbatch_loss_group=-1):
    """The course's training epoch: one pass over ``train_loader`` updating ``net``.

    As in the course, returns the list of mean losses of consecutive groups of ``mbatch_loss_group``
    mini-batches when ``mbatch_loss_group > 0`` (for ``update_graphs``), and None otherwise.
    Full precision, no scheduler: :func:`train_one_epoch` is the same loop with those options.
    """
    result = train_one_epoch(net, train_loader, criterion, optimizer, device, progress=False)
    if mbatch_loss_group <= 0:
        return None
    losses = result["batch_losses"]
    n_groups = len(losses) // mbatch_loss_group  # a last, incomplete group is left out, as in the course
    return losses[: n_groups * mbatch_loss_group].view(n_groups, mbatch_loss_group).mean(dim=1).tolist()


def validation_loop(val_loader, net, criterion, num_classes, device, multi_label=False, th_multi_label=0.5,
                    one_hot=False, class_metrics=False):
    """The course's validation pass, scored with the leaderboard metric (``metrics.leaderboard_scores``).

    Multi-label: a class is predicted when its *probability* ``sigmoid(logit)`` exceeds ``th_multi_label``
    (the course's skeleton compared raw logits with the threshold, which at 0.5 means probability 0.62).
    Single-label: the arg-max class is predicted; targets are class indices, or one-hot rows with
    ``one_hot=True``. Returns ``{"loss", "accuracy", "f1", "precision", "recall"}``; with ``class_metrics``,
    ``(results, class_results)`` where ``class_results[c] = {"f1", "precision", "recall"}``.
    Accuracy: multi-label, the leaderboard's (true positives over positives); single-label, the fraction of
    images whose class is right.
    """
    out = evaluate(net, val_loader, device, criterion=criterion, progress=False)
    probs, targets = out["probs"], out["targets"]
    if multi_label:
        preds = probs > th_multi_label
        targets_hot = targets > 0.5
        threshold = th_multi_label
    else:
        labels = targets.argmax(dim=1) if one_hot else targets.long().view(-1)
        predicted = probs.argmax(dim=1)
        preds = torch.nn.functional.one_hot(predicted, num_classes).bool()
        targets_hot = torch.nn.functional.one_hot(labels, num_classes).bool()
        threshold = 0.5  # preds are 0/1 here
    scores = metrics.leaderboard_scores(preds, targets_hot, warn=False)
    results = {"loss": out["loss"], "accuracy": scores["accuracy"], "f1": scores["f1"],
               "precision": scores["precision"], "recall": scores["recall"]}
    if not multi_label:
        results["accuracy"] = float((predicted == labels).float().mean())
    if not class_metrics:
        return results
    table = metrics.per_class_table(preds.float() if not multi_label else probs, targets_hot, threshold,
                                    class_names=[str(c) for c in range(num_classes)])
    class_results = [{"f1": row["f1"], "precision": row["precision"], "recall": row["recall"]} for row in table]
    return results, class_results


_COURSE_GRAPHS = (("Metrics/Train F1 vs Test F1", "f1", "F1"),
                  ("Metrics/Train Precision vs Test Precision", "precision", "Precision"),
                  ("Metrics/Train Recall vs Test Recall", "recall", "Recall"),
                  ("Metrics/Train Accuracy vs Test Accuracy", "accuracy", "Accuracy"))


def update_graphs(summary_writer, epoch, train_results, test_results, train_class_results=None,
                  test_class_results=None, class_names=None, mbatch_group=-1, mbatch_count=0, mbatch_losses=None):
    """The course's TensorBoard graphs: train vs test loss, F1, precision, recall, accuracy, and per class.

    ``epoch`` counts from 0; points are drawn at ``epoch + 1``, or, when mini-batch losses are logged
    (``mbatch_group > 0``, ``mbatch_count`` batches per epoch), at the number of batches seen, so that both
    kinds of points share one axis. Per-class graphs ("Class Metrics/<name>/...") need both class result lists.
    """
    if mbatch_group > 0:
        for i, loss in enumerate(mbatch_losses or []):
            summary_writer.add_scalar("Losses/Train Mini-batch Loss", loss, epoch * mbatch_count + (i + 1) * mbatch_group)
        step = (epoch + 1) * mbatch_count
    else:
        step = epoch + 1
    summary_writer.add_scalars("Losses/Train Loss vs Test Loss",
                               {"Train Loss": train_results["loss"], "Test Loss": test_results["loss"]}, step)
    for tag, key, label in _COURSE_GRAPHS:
        summary_writer.add_scalars(tag, {f"Train {label}": train_results[key], f"Test {label}": test_results[key]}, step)
    if train_class_results is not None and test_class_results is not None:
        if class_names is None:
            class_names = (dataset.CLASSES if len(train_class_results) == dataset.NUM_CLASSES
                           else [str(i) for i in range(len(train_class_results))])
        for name, train_class, test_class in zip(class_names, train_class_results, test_class_results):
            for _, key, label in _COURSE_GRAPHS[:3]:
                summary_writer.add_scalars(f"Class Metrics/{name}/Train {label} vs Test {label}",
                                           {f"Train {label}": train_class[key], f"Test {label}": test_class[key]}, step)
    summary_writer.flush()


# ----------------------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, runs
# ----------------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file in ``path``'s folder, then rename it over ``path``.

    A crash or Ctrl-C mid-write leaves the previous file intact (os.replace is atomic on one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    done = False
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
        done = True
    finally:
        if not done and os.path.exists(temp_name):
            os.remove(temp_name)


def _write_json(path: Path, obj) -> None:
    _write_atomic(path, lambda file: file.write((json.dumps(obj, indent=2) + "\n").encode("utf-8")))


def save_checkpoint(path, state: Mapping) -> Path:
    """``torch.save(state)`` to ``path`` atomically (temp file in the same folder, then os.replace)."""
    _write_atomic(Path(path), lambda file: torch.save(dict(state), file))
    return Path(path)


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    ``weights_only=False`` because our checkpoints hold NumPy/Python RNG states and plain dicts that the
    restricted unpickler rejects; that unpickler exists to guard against *foreign* files, which can run code
    when loaded: only load checkpoints you (or this project) wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


_CSV_COLUMNS = ("epoch", "lr", "train/loss", "train/f1@0.5", "val/loss", "val/f1", "val/f1@0.5", "val/precision",
                "val/recall", "val/map", "val/accuracy", "time_s")


def _write_csv(path: Path, rows: Sequence[Mapping]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, lambda file: file.write(text.getvalue().encode("utf-8")))


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return [{key: (int(value) if key == "epoch" else float(value)) for key, value in row.items()}
                for row in csv.DictReader(file)]


def _new_run_dir(config: Config) -> Path:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.run_name or config.model
    for attempt in range(1, 1000):  # two runs started within one second get -2, -3, ...
        run_dir = out_dir / (f"{stamp}-{name}" if attempt == 1 else f"{stamp}-{name}-{attempt}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder in {out_dir}")


def build_net(config: Config, num_classes: int = dataset.NUM_CLASSES, pretrained: bool | None = None):
    """The network ``config`` describes (``models.build_model`` with the config's head settings)."""
    return models.build_model(config.model, num_classes=num_classes,
                              pretrained=config.pretrained if pretrained is None else pretrained,
                              dropout=config.head_dropout, hidden_dim=config.head_hidden, pool_mode=config.pool)


def resolve_checkpoint(run_dir, which: str = "auto") -> str:
    """``auto``: ``final`` where the run was cross-fitted (final.pt exists), else ``best``."""
    if which not in ("auto", "final", "best", "last"):
        raise ValueError(f"which must be 'auto', 'final', 'best' or 'last', got {which!r}")
    if which == "auto":
        return "final" if (Path(run_dir) / "final.pt").is_file() else "best"
    return which


def load_run(run_dir, which: str = "best"):
    """``(model, config, thresholds)`` of a run folder's ``best``, ``last`` or ``final`` (cross-fitted) checkpoint
    (``auto``: see :func:`resolve_checkpoint`), model in eval mode.

    The model carries the weights that were evaluated (the EMA weights when the run used an EMA), so the
    stored thresholds fit it; ``thresholds`` is a ``metrics.ThresholdResult``. No pretrained download needed.
    """
    run_dir = Path(run_dir)
    which = resolve_checkpoint(run_dir, which)
    checkpoint = load_checkpoint(run_dir / f"{which}.pt")
    config = Config.from_dict(checkpoint["config"])
    class_names = list(checkpoint["class_names"])
    if class_names != list(dataset.CLASSES):
        raise ValueError(f"{run_dir / (which + '.pt')}: its class names differ from dataset.CLASSES")
    model = build_net(config, num_classes=len(class_names), pretrained=False)  # weights come from the file
    weights = checkpoint["ema"]["module"] if checkpoint.get("ema") else checkpoint["model"]
    model.load_state_dict(weights)
    model.eval()
    return model, config, metrics.ThresholdResult.from_dict(checkpoint["thresholds"])


# ----------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------
# Settings that may change when a run is resumed (where and how fast it runs, not what it computes).
_RESUME_MUTABLE = ("device", "num_workers", "progress", "data_root", "out_dir")


def _resume_config(run_dir: Path, checkpoint: Mapping, config: Config | None) -> Config:
    saved = Config.from_dict(checkpoint["config"])
    if config is None:
        return saved
    changed = [f.name for f in fields(Config)
               if f.name not in _RESUME_MUTABLE and getattr(config, f.name) != getattr(saved, f.name)]
    if changed:
        details = ", ".join(f"{name}: {getattr(saved, name)!r} -> {getattr(config, name)!r}" for name in changed)
        raise ValueError(f"cannot resume {run_dir} with a different configuration ({details}); only "
                         f"{', '.join(_RESUME_MUTABLE)} may change")
    return config


def set_trainable(net, config: Config, epoch: int) -> str:
    """Make trainable what ``config`` trains in ``epoch``: the head alone during the first ``freeze_epochs``,
    then the head and the last ``unfreeze_stages`` stages (default: every stage not in the feature cache).
    Returns a short description ("head only", "head + last 2/5 stages")."""
    n_stages = len(net.stages)
    trainable = n_stages - config.cache_stages  # cached stages never train
    if config.unfreeze_stages is not None:
        if config.unfreeze_stages > trainable:
            raise ValueError(f"Config.unfreeze_stages={config.unfreeze_stages} but {config.model} has {n_stages} "
                             f"stages, {config.cache_stages} of them cached")
        trainable = config.unfreeze_stages
    if epoch < config.freeze_epochs:
        trainable = 0
    models.unfreeze_last_stages(net, trainable)
    return "head only" if trainable == 0 else f"head + last {trainable}/{n_stages} stages"


def _drop_last(n_train: int, batch_size: int) -> bool:
    # A last batch of 1-2 images gives BatchNorm useless statistics and a noisy step; it is kept when the
    # split is smaller than one batch, so tiny experiments still train.
    return n_train > batch_size


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps per epoch of :func:`fit` for ``n_train`` training images."""
    return n_train // batch_size if _drop_last(n_train, batch_size) else 1


def make_scheduler(optimizer, peak_lrs: Sequence[float], config: Config, steps_per_epoch: int, epoch: int):
    """OneCycleLR (peak ``peak_lrs``) over the phase holding ``epoch``, or None for a constant rate.

    Without a frozen phase one cycle spans the run. With ``freeze_epochs`` the head-only epochs get their own
    cycle and the unfrozen rest a fresh one (as fastai's ``fine_tune``): one long cycle would reach its peak
    while only the head trains and meet the newly unfrozen layers at an arbitrary point of its descent.
    """
    if config.scheduler != "onecycle":
        return None
    frozen = min(config.freeze_epochs, config.epochs)
    if frozen == 0 or frozen == config.epochs:
        phase_epochs = config.epochs
    else:
        phase_epochs = frozen if epoch < frozen else config.epochs - frozen
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=list(peak_lrs), total_steps=phase_epochs * steps_per_epoch,
                                               pct_start=config.pct_start)


def _score(row: Mapping, select_metric: str) -> float:
    value = {"f1": row["val/f1"], "map": row["val/map"], "loss": -row["val/loss"]}[select_metric]
    return value if math.isfinite(value) else -math.inf


def _hardware(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fit(config: Config | None = None, resume=None, *, stop_after_epochs: int | None = None) -> dict:
    """Train a model as ``config`` says, into a new run folder; or continue the run folder ``resume``.

    Every epoch: train, evaluate on the validation split, tune thresholds on its probabilities
    (``metrics.tune_thresholds``), append a row to ``metrics.csv`` and TensorBoard, save ``last.pt``, and
    ``best.pt`` when ``config.select_metric`` improved. Ctrl-C keeps the last completed epoch in ``last.pt``
    and prints how to resume. ``stop_after_epochs=N`` stops like Ctrl-C once N epochs are done (tests).
    A resumed run uses its saved config; a ``config`` given with ``resume`` may change only
    ``device``, ``num_workers``, ``progress``, ``data_root`` and ``out_dir``. Resuming reproduces the
    uninterrupted run bit for bit with ``deterministic=True``, ``num_workers=0``, the same device and the same
    number of CPU threads (float sums are ordered differently with more threads); otherwise it continues
    statistically equivalently (same schedule, same shuffling order, different last bits).

    Returns a dict: ``run_dir``, ``status`` ("finished", "early_stopped" or "stopped"), ``best_epoch``,
    ``best`` (that epoch's CSV row), ``thresholds`` (its ``ThresholdResult``), ``history`` (all rows).
    """
    started = time.perf_counter()
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = load_checkpoint(run_dir / "last.pt")
        config = _resume_config(run_dir, checkpoint, config)
    else:
        config = (config or Config()).validate()
    device = resolve_device(config.device)
    with _determinism(config.deterministic, device):
        seed_everything(config.seed)
        data_root = dataset.find_data_root(config.data_root)
        if data_root is None:
            raise FileNotFoundError("no course data: pass data_root (--data-root), set $MSCOCO_ROOT, or put the "
                                    "data in ./ms-coco (python -m synthetic ms-coco makes a demo dataset)")
        # The run records where its data was found, so that resume and predict work from any folder.
        config = config.replace(data_root=str(data_root))
        dirs = dataset.course_dirs(data_root)
        full = dataset.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"],
                                             max_images=config.max_train_images)
        # The network comes before the run folder: missing pretrained weights leave no empty run behind.
        net = build_net(config)
        if resume is None:
            train_idx, val_idx = dataset.split_train_val(full.targets, config.val_fraction, config.split_seed,
                                                         config.stratify)
            run_dir = _new_run_dir(config)
            _write_json(run_dir / "config.json", config.to_dict())
            dataset.save_split(run_dir / "split.json", full.stems, train_idx, val_idx, data_root=str(data_root),
                               seed=config.split_seed, val_fraction=config.val_fraction)
        else:
            train_idx, val_idx = dataset.load_split(run_dir / checkpoint["split"], full.stems)
        print(f"run folder: {run_dir}  ({len(train_idx)} training / {len(val_idx)} validation images, {device})",
              flush=True)
        try:
            return _fit_run(config, run_dir, device, full, train_idx, val_idx, net, checkpoint, stop_after_epochs,
                            started)
        except KeyboardInterrupt:
            if (run_dir / "last.pt").is_file():
                done = load_checkpoint(run_dir / "last.pt")["epoch"]
                print(f"\ninterrupted; {run_dir / 'last.pt'} holds epoch {done}/{config.epochs}.\n"
                      f"resume with:  python -m loops train --resume {run_dir}\n"
                      f"         or:  loops.fit(resume={str(run_dir)!r})", file=sys.stderr, flush=True)
            else:
                print(f"\ninterrupted before the first epoch ended: nothing to resume in {run_dir}",
                      file=sys.stderr, flush=True)
            raise


def _fit_run(config, run_dir, device, full, train_idx, val_idx, net, checkpoint, stop_after_epochs, started) -> dict:
    from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here

    spec = net.spec
    image_size = config.image_size or spec.input_size
    train_tf = dataset.TrainPreset(image_size=image_size, mean=spec.mean, std=spec.std,
                                   scale=(config.crop_scale_min, 1.0), color_jitter=config.color_jitter)
    eval_tf = dataset.EvalPreset(image_size=image_size, mean=spec.mean, std=spec.std)
    train_targets = full.targets[train_idx]
    if config.prior_from_data:
        models.set_head_prior(net, train_targets.mean(axis=0))
    pos_weight = None
    if config.pos_weight:
        positives = train_targets.sum(axis=0)
        pos_weight = (len(train_targets) - positives) / np.maximum(positives, 1.0)
    criterion = models.build_loss(config.loss, pos_weight=pos_weight, gamma_pos=config.gamma_pos,
                                  gamma_neg=config.gamma_neg, clip=config.asl_clip).to(device)
    channels_last = config.channels_last and device.type == "cuda"
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    amp_dtype, scaler = amp_settings(device, config.amp)
    k = config.cache_stages
    # The gpu input path serves images (not cached features) and needs them in an ImageCache.
    gpu_path = k == 0 and (config.loader == "gpu" or (config.loader == "auto" and device.type == "cuda"))

    # Data: images through transform presets, or (cache mode) stage-k features computed once.
    if config.cross_fit_folds and (k != len(net.stages) or config.freeze_epochs or config.unfreeze_stages):
        raise ValueError(f"Config.cross_fit_folds={config.cross_fit_folds} trains heads only: it needs "
                         f"cache_stages={len(net.stages)} (the whole {config.model} backbone cached) and no "
                         f"freeze_epochs/unfreeze_stages; got cache_stages={k}")
    # cross-fitting starts every head from here
    initial_state = copy.deepcopy(net.state_dict()) if config.cross_fit_folds else None
    if k > 0:
        if k > len(net.stages):  # k == len(stages): the whole backbone is cached and only the head trains
            raise ValueError(f"Config.cache_stages={k} exceeds the {len(net.stages)} stages of {config.model}")
        views = [eval_tf, FlippedView(eval_tf)][: config.cache_views]
        views += [train_tf] * (config.cache_views - len(views))
        cache = dict(net=net, k=k, source=full, device=device, batch_size=config.batch_size * 2,
                     workers=config.num_workers, amp=config.amp, progress=config.progress)
        train_feats = _cache_features(indices=train_idx, transforms=views, seed=config.seed, desc="caching train",
                                      **cache)
        eval_views = [eval_tf, FlippedView(eval_tf)][: 1 + config.tta_hflip]
        val_feats = _cache_features(indices=val_idx, transforms=eval_views, seed=config.seed, desc="caching val",
                                    **cache)
        size_mb = (train_feats.numel() + val_feats.numel()) * 2 / 2**20
        print(f"feature cache: stages[:{k}] -> {tuple(train_feats.shape[2:])} x {config.cache_views} views, "
              f"{size_mb:.0f} MiB", flush=True)
        train_set = FeatureBank(train_feats, train_targets)
        val_sets = [FeatureBank(val_feats, full.targets[val_idx], view=v) for v in range(val_feats.shape[0])]
        train_module, loader_workers, channels_last = _Tail(net, k), 0, False  # in memory: no workers needed
    else:
        cache_mode = config.image_cache
        if cache_mode == "auto" or (cache_mode == "none" and gpu_path):
            cache_mode = "jpeg" if gpu_path else "none"
        source = full
        if cache_mode != "none":
            # One file per data folder and mode, reused by later runs (a stale one is rebuilt by pipeline).
            cache_file = Path(config.out_dir) / "image-cache" / f"{full.img_dir.resolve().parents[1].name}-{cache_mode}.pt"
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            source = pipeline.cache_dataset(full, cache_mode, path=cache_file, device=device)
        train_set = dataset.TransformSubset(source, train_idx, train_tf)
        val_sets = [dataset.TransformSubset(source, val_idx, eval_tf)]
        train_module, loader_workers = net, config.num_workers
    sampler = EpochShuffleSampler(len(train_set), config.seed)
    if gpu_path:
        train_loader = pipeline.make_loader(train_set, batch_size=config.batch_size, device=device, train=True,
                                            drop_last=_drop_last(len(train_set), config.batch_size), seed=config.seed,
                                            mode="gpu", channels_last=channels_last)
        val_loaders = [pipeline.make_loader(val_set, batch_size=config.batch_size * 2, device=device, train=False,
                                            mode="gpu", channels_last=channels_last) for val_set in val_sets]
        sampler = train_loader  # BatchLoader draws its order and augmentation from (seed, epoch) via set_epoch
    else:
        train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                                  drop_last=_drop_last(len(train_set), config.batch_size),
                                  **_loader_options(device, loader_workers, torch.Generator().manual_seed(config.seed)))
        val_loaders = [DataLoader(val_set, batch_size=config.batch_size * 2, shuffle=False,
                                  **_loader_options(device, loader_workers)) for val_set in val_sets]
    print(f"input: {pipeline.loader_description(train_loader) if gpu_path else 'DataLoader'}"
          f"{'' if k == 0 else ' over the feature cache'}", flush=True)
    if config.compile:
        train_module = torch.compile(train_module)

    # Optimiser over every parameter that may ever train (frozen ones get no gradient, hence no update), so
    # its state and the schedule keep one shape across the unfreeze milestone.
    set_trainable(net, config.replace(freeze_epochs=0), epoch=0)
    optimizer = torch.optim.AdamW(models.param_groups(net, lr=config.lr, weight_decay=config.weight_decay,
                                                      backbone_lr_mult=config.backbone_lr_mult))
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    start_epoch = int(checkpoint["epoch"]) if checkpoint is not None else 0
    # The schedule of the last completed epoch's phase: its saved state is loaded below.
    scheduler = make_scheduler(optimizer, peak_lrs, config, len(train_loader), max(start_epoch - 1, 0))
    ema = ModelEma(net, config.ema_decay) if config.ema_decay > 0 else None

    history: list[dict] = []
    global_step = 0
    best_score, best_epoch, best_thresholds, bad_epochs = -math.inf, 0, None, 0
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        _set_rng_state(checkpoint["rng"])
        global_step = int(checkpoint["global_step"])
        selection = checkpoint["selection"]
        best_score, best_epoch, bad_epochs = selection["best_score"], selection["best_epoch"], selection["bad_epochs"]
        best_thresholds = selection["best_thresholds"]
        history = [row for row in _read_csv(run_dir / "metrics.csv") if row["epoch"] <= start_epoch]
        print(f"resuming after epoch {start_epoch}/{config.epochs}", flush=True)

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1 if start_epoch else None)
    status = "finished"
    try:
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            seed_everything(pipeline.epoch_seed(config.seed, epoch))  # augmentation and dropout, independent of history
            sampler.set_epoch(epoch)
            trains = set_trainable(net, config, epoch)
            if epoch > 0 and epoch == config.freeze_epochs:  # unfreeze milestone: a fresh cycle for the rest
                scheduler = make_scheduler(optimizer, peak_lrs, config, len(train_loader), epoch)
            train = train_one_epoch(train_module, train_loader, criterion, optimizer, device, scheduler=scheduler,
                                    scaler=scaler, amp_dtype=amp_dtype, grad_clip=config.grad_clip, ema=ema,
                                    channels_last=channels_last, collect_probs=True, progress=config.progress,
                                    desc=f"epoch {epoch + 1}/{config.epochs} train")
            global_step += train["steps"]
            eval_net = ema.module if ema is not None else net
            eval_module = _Tail(eval_net, k) if k > 0 else eval_net
            outs = [evaluate(eval_module, loader, device, criterion=criterion, amp_dtype=amp_dtype,
                             channels_last=channels_last, tta_hflip=config.tta_hflip and k == 0,
                             progress=config.progress, desc=f"epoch {epoch + 1}/{config.epochs} val")
                    for loader in val_loaders]
            probs = torch.stack([out["probs"] for out in outs]).mean(dim=0)  # cache mode: mean over views
            val_targets = outs[0]["targets"]
            thresholds = tune_thresholds(probs, val_targets, config)
            tuned = metrics.leaderboard_scores(thresholds.apply(probs), val_targets, warn=False)
            at_half = metrics.leaderboard_scores(probs > 0.5, val_targets, warn=False)
            train_at_half = metrics.leaderboard_scores(train["probs"] > 0.5, train["targets"], warn=False)
            row = {"epoch": epoch + 1, "lr": train["lr"], "train/loss": train["loss"],
                   "train/f1@0.5": train_at_half["f1"], "val/loss": outs[0]["loss"], "val/f1": tuned["f1"],
                   "val/f1@0.5": at_half["f1"], "val/precision": tuned["precision"], "val/recall": tuned["recall"],
                   "val/map": metrics.mean_average_precision(probs, val_targets), "val/accuracy": tuned["accuracy"],
                   "time_s": time.perf_counter() - epoch_start}
            history.append(row)

            score = _score(row, config.select_metric)
            improved = score > best_score
            if improved:
                best_score, best_epoch, best_thresholds, bad_epochs = score, epoch + 1, thresholds.to_dict(), 0
            else:
                bad_epochs += 1
            _log_epoch(writer, row, train, train_at_half, at_half, probs, val_targets, config.class_graphs)
            _write_csv(run_dir / "metrics.csv", history)
            state = {
                "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch + 1, "global_step": global_step, "config": config.to_dict(),
                "thresholds": thresholds.to_dict(), "class_names": list(dataset.CLASSES), "metrics": row,
                "rng": _rng_state(), "split": "split.json",
                "selection": {"metric": config.select_metric, "best_score": best_score, "best_epoch": best_epoch,
                              "bad_epochs": bad_epochs, "best_thresholds": best_thresholds},
            }
            if improved:
                save_checkpoint(run_dir / "best.pt", state)
                _write_json(run_dir / "thresholds.json", thresholds.to_dict())
            save_checkpoint(run_dir / "last.pt", state)
            tqdm.write(f"epoch {epoch + 1:3d}/{config.epochs}  {trains:<28s} lr {row['lr']:.2e}  "
                       f"train loss {row['train/loss']:.4f}  val loss {row['val/loss']:.4f}  "
                       f"F1 {row['val/f1']:.4f} (@0.5 {row['val/f1@0.5']:.4f})  mAP {row['val/map']:.4f}  "
                       f"{row['time_s']:.0f}s{'  *best' if improved else ''}", file=sys.stdout)
            if config.patience and bad_epochs >= config.patience:
                status = "early_stopped"
                print(f"early stop: {config.select_metric} did not improve for {bad_epochs} epochs", flush=True)
                break
            if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs and epoch + 1 < config.epochs:
                status = "stopped"
                break
    finally:
        writer.close()

    cross_fit = None
    if config.cross_fit_folds and status != "stopped":
        cross_fit = _cross_fit(config, run_dir, device, net, initial_state, criterion, full, train_idx, val_idx,
                               train_feats, val_feats, views, eval_views, cache)
    best_row = next((row for row in history if row["epoch"] == best_epoch), None)
    summary = {"status": status, "epochs_done": len(history), "epochs": config.epochs,
               "select_metric": config.select_metric, "best_epoch": best_epoch, "best": best_row,
               "last": history[-1] if history else None, "time_s": time.perf_counter() - started,
               "hardware": _hardware(device), "model": config.model,
               "parameters": models.count_parameters(net)["total"], "cross_fit": cross_fit}
    _write_json(run_dir / "summary.json", summary)
    if status == "stopped":
        print(f"stopped after epoch {len(history)}; resume with:  python -m loops train --resume {run_dir}", flush=True)
    return {"run_dir": run_dir, "status": status, "best_epoch": best_epoch, "best": best_row,
            "thresholds": metrics.ThresholdResult.from_dict(best_thresholds) if best_thresholds else None,
            "history": history, "cross_fit": cross_fit}


def _train_head(net, initial_state, criterion, bank, targets, rows, config, device, seed: int, desc: str):
    """Train the head from ``initial_state`` on cached whole-backbone features ``bank[:, rows]`` for
    ``config.epochs`` epochs on the run's schedule; returns the module to evaluate (EMA weights with an EMA)."""
    net.load_state_dict(initial_state)
    if config.prior_from_data:
        models.set_head_prior(net, targets[rows].mean(axis=0))
    k = len(net.stages)
    set_trainable(net, config, epoch=0)
    optimizer = torch.optim.AdamW(models.param_groups(net, lr=config.lr, weight_decay=config.weight_decay,
                                                      backbone_lr_mult=config.backbone_lr_mult))
    train_set = FeatureBank(bank[:, rows], targets[rows])
    sampler = EpochShuffleSampler(len(train_set), seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                        drop_last=_drop_last(len(train_set), config.batch_size), num_workers=0)
    scheduler = make_scheduler(optimizer, [group["lr"] for group in optimizer.param_groups], config, len(loader), 0)
    ema = ModelEma(net, config.ema_decay) if config.ema_decay > 0 else None
    for epoch in range(config.epochs):
        seed_everything(pipeline.epoch_seed(seed, epoch))
        sampler.set_epoch(epoch)
        train_one_epoch(_Tail(net, k), loader, criterion, optimizer, device, scheduler=scheduler,
                        grad_clip=config.grad_clip, ema=ema, progress=False, desc=desc)
    return _Tail(ema.module if ema is not None else net, k)


def _eval_probs(module, bank, targets, rows, config, device) -> np.ndarray:
    """Mean over the evaluation views of the probabilities of ``rows`` (float32 NumPy)."""
    outs = []
    for view in range(bank.shape[0]):
        loader = DataLoader(FeatureBank(bank[:, rows], targets[rows], view=view), batch_size=config.batch_size * 2,
                            shuffle=False, num_workers=0)
        outs.append(evaluate(module, loader, device, progress=False)["probs"])
    return torch.stack(outs).mean(dim=0).numpy()


def _cross_fit(config, run_dir, device, net, initial_state, criterion, full, train_idx, val_idx,
               train_feats, val_feats, views, eval_views, cache) -> dict:
    """Out-of-fold thresholds and a head trained on every labelled image (``Config.cross_fit_folds``).

    Why: the validation split holds 1/5 of a small dataset, so each rare class's threshold is fitted on a
    handful of images and the head never sees them. Here K heads, trained exactly like the run's (same
    epochs, schedule, views), each predict the fold they did not see; thresholds are tuned on those
    out-of-fold probabilities of *all* images, and ``final.pt`` holds a head trained on all of them with
    those thresholds (it is what ``predict_run`` uses). Measured on coco-mini by nested cross-validation
    (study/recipe_cv.py): held-out F1 +0.007 to +0.021 and mAP +0.01 over the split's head and thresholds at
    224-320 px; at 384 px a tie in F1 (0.490 vs 0.492), +0.01 mAP.
    ``best.pt`` and the validation analysis stay those of the split run. Writes ``cross_fit.json``.
    """
    started = time.perf_counter()
    n_eval = len(eval_views)
    # Every image needs its training views (for the folds that train on it) and its evaluation views.
    if config.cache_views > n_eval:
        extra = _cache_features(indices=val_idx, transforms=views[n_eval:], seed=config.seed + n_eval,
                                desc="caching val (training views)", **cache)
        val_train = torch.cat([val_feats, extra])
    else:
        val_train = val_feats[:config.cache_views]
    if n_eval > config.cache_views:
        extra = _cache_features(indices=train_idx, transforms=eval_views[config.cache_views:], seed=config.seed,
                                desc="caching train (evaluation views)", **cache)
        train_eval = torch.cat([train_feats, extra])
    else:
        train_eval = train_feats[:n_eval]
    order = np.concatenate([train_idx, val_idx])
    train_bank = torch.cat([train_feats, val_train], dim=1)
    eval_bank = torch.cat([train_eval, val_feats], dim=1)
    targets = full.targets[order]
    folds = dataset.kfold_assignments(targets, config.cross_fit_folds, seed=config.split_seed)
    oof = np.zeros(targets.shape, dtype=np.float32)
    fold_maps = []
    for fold in range(config.cross_fit_folds):
        fit_rows, held_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        module = _train_head(net, initial_state, criterion, train_bank, targets, fit_rows, config, device,
                             seed=config.seed + 1 + fold, desc=f"cross-fit fold {fold + 1}")
        oof[held_rows] = _eval_probs(module, eval_bank, targets, held_rows, config, device)
        fold_maps.append(metrics.mean_average_precision(oof[held_rows], targets[held_rows]))
        print(f"cross-fit fold {fold + 1}/{config.cross_fit_folds}: {len(fit_rows)} images to train, "
              f"{len(held_rows)} held out, mAP {fold_maps[-1]:.4f}", flush=True)
    thresholds = tune_thresholds(oof, targets, config)
    tuned = metrics.leaderboard_scores(thresholds.apply(oof), targets, warn=False)
    module = _train_head(net, initial_state, criterion, train_bank, targets, np.arange(len(order)), config, device,
                         seed=config.seed, desc="cross-fit final head")
    final_net = module.net
    record = {"folds": config.cross_fit_folds, "images": int(len(order)), "epochs": config.epochs,
              "oof_map": metrics.mean_average_precision(oof, targets), "fold_maps": fold_maps,
              "oof_f1": tuned["f1"], "oof_precision": tuned["precision"], "oof_recall": tuned["recall"],
              "oof_f1@0.5": metrics.leaderboard_scores(oof > 0.5, targets, warn=False)["f1"],
              "time_s": time.perf_counter() - started, "thresholds": thresholds.to_dict()}
    save_checkpoint(run_dir / "final.pt", {
        "model": final_net.state_dict(), "ema": None, "epoch": config.epochs, "config": config.to_dict(),
        "thresholds": thresholds.to_dict(), "class_names": list(dataset.CLASSES), "split": "split.json",
        "metrics": {key: value for key, value in record.items() if key != "thresholds"}})
    np.savez_compressed(run_dir / "oof.npz", probs=oof, targets=targets, stems=np.asarray(full.stems)[order],
                        folds=folds)
    _write_json(run_dir / "cross_fit.json", record)
    print(f"cross-fit ({config.cross_fit_folds} folds, {len(order)} images, {record['time_s']:.0f}s): out-of-fold "
          f"mAP {record['oof_map']:.4f}, tuned F1 {tuned['f1']:.4f} (in-sample on the out-of-fold probabilities); "
          f"final.pt = head on all {len(order)} images", flush=True)
    return record


def _log_epoch(writer, row, train, train_at_half, at_half, probs, val_targets, class_graphs: bool) -> None:
    """Namespaced scalars (train/loss, val/f1, ...) plus the course's graphs, where train and validation are
    both thresholded at 0.5 (comparable with each other; the tuned F1 is ``val/f1``)."""
    step = row["epoch"]
    for key in _CSV_COLUMNS[1:]:
        writer.add_scalar(key, row[key], step)
    keys = ("f1", "precision", "recall", "accuracy")
    train_results = {"loss": row["train/loss"], **{key: train_at_half[key] for key in keys}}
    test_results = {"loss": row["val/loss"], **{key: at_half[key] for key in keys}}
    train_class = test_class = None
    if class_graphs:
        train_class = metrics.per_class_table(train["probs"], train["targets"], 0.5)
        test_class = metrics.per_class_table(probs, val_targets, 0.5)
    update_graphs(writer, step - 1, train_results, test_results, train_class, test_class)


# ----------------------------------------------------------------------------------------------------------
# Predictions for the test images
# ----------------------------------------------------------------------------------------------------------
def predict_run(run_dir, out_path, *, data_root=None, which: str = "auto", device: str | None = None,
                batch_size: int | None = None, num_workers: int | None = None, progress: bool = True) -> dict:
    """Predict the test images of ``data_root`` (default: the run's) with a run's checkpoint and its tuned
    thresholds; write the JSON (validated against the test folder's stems) atomically to ``out_path``.

    Returns a summary dict: ``path``, ``images``, ``mean_labels``, ``empty`` (images with no label),
    ``global_threshold``, ``at_least_one``.
    """
    which = resolve_checkpoint(run_dir, which)
    model, config, thresholds = load_run(run_dir, which)
    device = resolve_device(device or config.device)
    root = dataset.find_data_root(data_root or config.data_root)
    if root is None:
        raise FileNotFoundError("no course data: pass --data-root, or set $MSCOCO_ROOT")
    spec = model.spec
    eval_tf = dataset.EvalPreset(image_size=config.image_size or spec.input_size, mean=spec.mean, std=spec.std)
    test_set = dataset.COCOTestImageDataset(dataset.course_dirs(root)["test_images"], transform=eval_tf)
    loader = DataLoader(test_set, batch_size=batch_size or config.batch_size * 2, shuffle=False,
                        **_loader_options(device, num_workers))
    module, amp_dtype, channels_last = evaluation_module(model, config, device)
    out = predict(module, loader, device, amp_dtype=amp_dtype, channels_last=channels_last,
                  tta_hflip=config.tta_hflip, progress=progress)
    preds = thresholds.apply(out["probs"])
    path = metrics.write_predictions(out_path, metrics.predictions_to_dict(out["stems"], preds),
                                     expected_stems=test_set.stems)
    return {"path": str(path), "images": len(out["stems"]), "mean_labels": float(preds.sum(axis=1).mean()),
            "empty": int((preds.sum(axis=1) == 0).sum()), "global_threshold": thresholds.global_threshold,
            "at_least_one": thresholds.at_least_one, "checkpoint": f"{which}.pt"}


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def _field_type(annotation) -> tuple[type, bool]:
    """(base type, optional) of a Config annotation such as ``int | None``."""
    args = typing.get_args(annotation)
    if args:
        base = [a for a in args if a is not type(None)]
        return base[0], True
    return annotation, False


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


_FLAG_ALIASES = {"out_dir": ("--out",)}  # the short spelling of the command line


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults are not set on the parser so that only explicit flags override."""
    hints = typing.get_type_hints(Config)
    defaults = Config()
    group = parser.add_argument_group("configuration (Config fields; the defaults shown are Config's, i.e. the "
                                      "shufflenet preset; --preset changes them, explicit flags win)")
    for f in fields(Config):
        flags = ["--" + f.name.replace("_", "-")] + list(_FLAG_ALIASES.get(f.name, ()))
        kind, optional = _field_type(hints[f.name])
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default: {'none' if default is None else default})"
        choices = f.metadata.get("choices")
        if kind is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
            continue
        if choices and len(choices) > 4:  # a long list reads better in the help text than in the usage line
            metavar, help_text = "NAME", f"{help_text}; one of: {', '.join(choices)}"
        else:
            metavar = None if choices else f.name.upper()
        group.add_argument(*flags, dest=f.name, type=_optional(kind) if optional else kind, default=argparse.SUPPRESS,
                           choices=choices, metavar=metavar, help=help_text + (" ('none' allowed)" if optional else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loops", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,predict,bench}")
    presets = "; ".join(f"{name}: {text}" for name, text in PRESET_DESCRIPTIONS.items())
    train = commands.add_parser("train", help="train a model; prints the run folder as the last line",
                                description="Train a model into a new run folder (or resume one). "
                                            "The last line printed is the run folder's path.",
                                epilog="examples:\n"
                                       "  python -m loops train --data-root ms-coco\n"
                                       "  python -m loops train --preset demo --data-root demo-data --epochs 5\n"
                                       "  python -m loops train --preset cpu --data-root ms-coco --out runs\n"
                                       "  python -m loops train --resume runs/20250101-120000-shufflenet_v2_x1_0",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--preset", choices=list(PRESETS), help=f"named recipe to start from ({presets})")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue this run from its last.pt (its saved config; only device, num-workers, "
                            "progress, data-root and out-dir may be given)")
    train.add_argument("--stop-after-epochs", type=int, metavar="N", help=argparse.SUPPRESS)  # tests: simulate Ctrl-C
    _add_config_flags(train)
    pred = commands.add_parser("predict", help="write test-set predictions (JSON) with a run's tuned thresholds",
                               description="Predict the test images with a run's best checkpoint and its tuned "
                                           "thresholds; writes a validated predictions JSON.")
    pred.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder (holds best.pt)")
    pred.add_argument("--out", required=True, metavar="PREDICTIONS.json", help="output file")
    pred.add_argument("--data-root", metavar="DIR", help="course data folder (default: the run's data root)")
    pred.add_argument("--which", choices=("auto", "final", "best", "last"), default="auto",
                      help="checkpoint to use (default auto: final.pt of a cross-fitted run, else best.pt)")
    pred.add_argument("--device", help="cuda, mps, cpu or auto (default: the run's setting)")
    pred.add_argument("--batch-size", type=int, help="images per batch (default: twice the run's batch size)")
    pred.add_argument("--num-workers", type=int, help="DataLoader workers (default: chosen from the hardware)")
    pred.add_argument("--no-progress", action="store_true", help="no progress bar")
    commands.add_parser("bench", help="input-pipeline benchmark (pipeline.py; `python -m loops bench --help`)",
                        add_help=False)
    return parser


def config_from_args(args: argparse.Namespace) -> Config | None:
    """The Config a parsed ``train`` command asks for: the preset (default "shufflenet") with the explicitly
    given flags on top; with ``--resume``, None (the run's saved config) or the saved config plus the flags."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if args.resume:
        if args.preset:
            raise ValueError("--preset cannot be combined with --resume (the run's saved config is used)")
        if not overrides:
            return None
        return Config.from_dict({**load_checkpoint(Path(args.resume) / "last.pt")["config"], **overrides})
    return config_from_preset(args.preset or "shufflenet", **overrides)


def _bench(argv: Sequence[str]) -> int:
    try:
        import pipeline
    except ModuleNotFoundError as err:
        if err.name != "pipeline":
            raise
        print("error: `bench` lives in pipeline.py, which is not in this checkout yet", file=sys.stderr)
        return 2
    return int(pipeline.bench_main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            try:
                config = config_from_args(args)
            except (ValueError, FileNotFoundError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            result = fit(config, resume=args.resume, stop_after_epochs=args.stop_after_epochs)
            if result["best"] is not None:
                best = result["best"]
                print(f"best epoch {result['best_epoch']}: val F1 {best['val/f1']:.4f}, val loss {best['val/loss']:.4f}, "
                      f"mAP {best['val/map']:.4f} ({result['status']})")
            print(result["run_dir"])
            return 0
        summary = predict_run(args.run, args.out, data_root=args.data_root, which=args.which, device=args.device,
                              batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress)
        print(f"{summary['images']} test images, {summary['mean_labels']:.2f} labels per image on average, "
              f"{summary['empty']} without a label (global threshold {summary['global_threshold']:.2f}, "
              f"at_least_one={summary['at_least_one']}, {summary['checkpoint']})")
        print(summary["path"])
        return 0
    except models.PretrainedWeightsUnavailable as err:
        print(f"error: {err}\n(on the command line, pretrained=False is --no-pretrained)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # fit printed how to resume
    except (FileNotFoundError, metrics.PredictionsError) as err:  # missing data or run files, invalid JSON
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
