"""The one configuration of a training run, the named recipes, and the command-line flags made from it.

* :class:`Config` holds every hyperparameter and path, each field with a comment saying why its default is
  what it is and a help text (the ``--help`` of ``python -m loops train`` is generated from it, so the two
  cannot drift). ``dataclasses.asdict(config)`` goes into ``config.json`` and every checkpoint.
* :data:`PRESETS` names complete recipes as overrides of the defaults (:func:`config_from_preset`), so a
  value is written once.
* :func:`add_config_flags` / :func:`overrides_from_args`: one ``--flag`` per field.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

# Choices and defaults that other modules share: decided here, on the ground floor, and imported from here.
DEFAULT_MODEL = "shufflenet_v2_x1_0"  # the course's baseline architecture (coco.networks builds it)
POOL_MODES = ("avg", "avgmax")  # global pooling before the head (coco.networks.GlobalPool)
LOADER_MODES = ("auto", "workers", "gpu")  # input paths (coco.loaders.make_loader)
CACHE_MODES = ("auto", "none", "jpeg", "decoded")  # in-memory image caches (coco.image_cache.cache_dataset)
# Threshold tuning (coco.thresholds.tune_class_thresholds); each value measured on held-out data:
# study/threshold_tuning.md.
TUNE_MIN_POSITIVES = 5  # classes with fewer validation positives keep the global threshold
TUNE_SMOOTH = 2  # pick each class's threshold on its F1 curve averaged over +-2 grid steps
TUNE_SHRINK = 0.0  # pulling thresholds towards the global one lost F1 on held-out data: off
TUNE_ROUNDS = 3  # rounds of coordinate ascent; 1 round was measurably worse, 10 no better than 3


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
    # None: course.find_data_root decides ($MSCOCO_ROOT, else ./ms-coco), so one config runs anywhere.
    data_root: str | None = _field(None, "course data folder (images/, labels/); none: $MSCOCO_ROOT, else ./ms-coco")
    # None = every image; a number makes quick experiments (the first N stems in sorted order).
    max_train_images: int | None = _field(None, "use only the first N labelled images (none: all)")
    # 10 % of 65,000 = 6,500 validation images: enough positives to tune most per-class thresholds.
    val_fraction: float = _field(0.1, "fraction of the labelled images held out for validation")
    # Separate from `seed` so runs with different training seeds are compared on the same images.
    split_seed: int = _field(0, "seed of the train/validation split")
    # Rare classes (toaster, hair drier) would otherwise often miss the validation split entirely.
    stratify: bool = _field(True, "stratified split: every class with >= 2 images gets validation images")
    # On: a broken file found after an hour of feature caching costs that hour; decoding every image first takes
    # about a minute for the course's 65,000 (data.unreadable_images, two cores).
    check_images: bool = _field(True, "decode every image before training and predicting, so that an unreadable "
                                      "file stops the run at once, named, instead of halfway")
    # Off: a broken or missing file is more often a bad unzip than a photo to do without; say so and stop.
    skip_bad_files: bool = _field(False, "leave out unreadable images, images or label files without their "
                                         "partner, and empty label files, printing how many (default: stop with an "
                                         "error naming them)")

    # ---- model ----
    # The course's baseline architecture: 2.3 M parameters, fast on a laptop GPU.
    model: str = _field(DEFAULT_MODEL, "backbone (python -m loops train --help lists them: "
                                       "coco.networks.list_models())")
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
                       choices=POOL_MODES)
    # Bias = logit(class frequency): epoch 1 starts at the base rates instead of learning them first.
    prior_from_data: bool = _field(True, "initialise the output biases from the training split's class rates")
    # On: normalising with the pretrained statistics while fine-tuning, instead of each batch's, lifted the default
    # recipe's validation mAP after 4 epochs from 0.316 to 0.444 (coco-mini, Lite0 stand-in, 160 px, study/
    # results.csv): batch statistics of padded, upsampled COCO photos drift from the ImageNet ones the pretrained
    # layers expect, and the model that trained on the former is evaluated with the latter.
    freeze_bn_stats: bool = _field(True, "keep the pretrained BatchNorm statistics while training (their scales "
                                         "and shifts still learn)")
    # None: each pretrained network's own (torchvision's 0.1; the EfficientNet-Lite package ports TensorFlow's 0.01).
    # Only matters with freeze_bn_stats off; 0.1 for Lite0 did not help there (study/results.csv, fine-tuning).
    bn_momentum: float | None = _field(None, "BatchNorm momentum while training (none: the network's own)")

    # ---- optimisation ----
    # 15 one-cycle epochs over 58,500 images = ~14,000 steps at batch 64: a common fine-tuning length for a
    # dataset this size. Not measured on the course data (no GPU was lent); on coco-mini (2,155 images, Lite0
    # stand-in) see study/results.csv for the learning curve.
    epochs: int = _field(15, "number of epochs")
    # 64 at 224 px keeps ShuffleNet's activations within a 4 GB laptop GPU (with mixed precision).
    batch_size: int = _field(64, "images per training step (validation uses twice as many)")
    # Peak learning rate of the new head. Measured with the default recipe on coco-mini (EfficientNet-Lite0 stand-in,
    # 160 px, 4 epochs, study/results.csv): a head at 3e-3 over a backbone at 3e-4 reached validation mAP 0.465,
    # the head and backbone at 1e-3 and 3e-4 0.444, both at 3e-4 and 9e-5 0.326: the new head needs the larger steps.
    lr: float = _field(3e-3, "peak learning rate of the head (OneCycle maximum)")
    # Pretrained layers take smaller steps than the randomly initialised head, so they are not wrecked early:
    # 3e-4 for the backbone (see lr).
    backbone_lr_mult: float = _field(0.1, "backbone learning rate = lr x this")
    # AdamW's decoupled decay; norms and biases are excluded (networks.param_groups).
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

    # ---- thresholds and model selection (thresholds.tune_thresholds) ----
    # The leaderboard ranks by F1 after thresholding, so the checkpoint that scores best there is kept.
    select_metric: str = _field("f1", "what 'best' means: tuned validation F1, validation loss or mAP",
                                choices=("f1", "loss", "map"))
    # 0 = off: a one-cycle schedule is meant to run to its end; set e.g. 3 for constant learning rates.
    patience: int = _field(0, "stop after N epochs without improvement of select_metric (0: never)")
    # The tuner's measured defaults (above; study/threshold_tuning.md).
    tune_min_positives: int = _field(TUNE_MIN_POSITIVES,
                                     "classes with fewer validation positives keep the global threshold")
    tune_shrink: float = _field(TUNE_SHRINK, "pull per-class thresholds towards the global one")
    tune_rounds: int = _field(TUNE_ROUNDS, "coordinate-ascent rounds of per-class tuning")
    # Every course image has a label: the rule is kept only when it raises the validation F1.
    try_at_least_one: bool = _field(True, "try giving label-less images their most probable class")

    # ---- runtime ----
    device: str = _field("auto", "cuda, mps, cpu, or auto (first available of these)")
    # Mixed precision: on CUDA it halves memory and raises speed; on CPUs with native bfloat16 (AMX, AVX512-BF16)
    # bfloat16 autocast trains and extracts features faster than float32 (measured: study/cpu_precision.txt). CPUs
    # without it keep float32, where autocast is slower (runtime.amp_settings, runtime.inference_settings).
    amp: bool = _field(True, "mixed precision: on CUDA bf16 if supported, else fp16 with a gradient scaler; on CPUs "
                             "with native bfloat16, bf16; float32 elsewhere")
    # NHWC is what tensor cores read fastest; on the CPU it speeds up EfficientNet-Lite training and inference
    # too (study/cpu_precision.txt). Not on Apple's MPS.
    channels_last: bool = _field(True, "channels_last memory format for convolutions (CUDA and CPU)")
    # None: runtime.loader_settings (none on CPU-only machines up to 4 cores, most cores with a GPU).
    num_workers: int | None = _field(None, "DataLoader worker processes (none: chosen from the hardware)")
    # auto: the gpu path on CUDA (training images cached as JPEG bytes, decoded and augmented on the GPU in
    # the main process: no worker start-up, no CPU decode bottleneck); DataLoader workers elsewhere, where
    # the model, not the input, sets the pace (python -m loops bench measures both).
    loader: str = _field("auto", "input pipeline: gpu (decode + augment on the device), workers, or auto",
                         choices=LOADER_MODES)
    # auto: jpeg bytes with the gpu path, no cache with workers; decoded arrays trade ~7 GB RAM for no decode.
    image_cache: str = _field("auto", "keep training images in memory: none, jpeg bytes, decoded pixels, or auto",
                              choices=CACHE_MODES)
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

    def tuning_options(self) -> dict:
        """The keyword arguments of ``thresholds.tune_thresholds`` that this config sets (the one place mapping them)."""
        return {"min_positives": self.tune_min_positives, "shrink": self.tune_shrink, "n_rounds": self.tune_rounds,
                "try_at_least_one": self.try_at_least_one}

    def validate(self) -> "Config":
        """Raise ValueError naming the first field with an impossible value, its command-line flag and what it
        allows (``Config.epochs=0 (--epochs) is out of range: it must be 1 or more``)."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"Config.{f.name}={value!r} ({flag_of(f.name)}): choose one of {', '.join(choices)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Config.{f.name}={value!r}: must be a finite number ({flag_of(f.name)})")
        checks = [
            ("epochs", self.epochs >= 1, "1 or more"), ("batch_size", self.batch_size >= 1, "1 or more"),
            ("lr", self.lr > 0, "a number above 0, e.g. 3e-3"),
            ("backbone_lr_mult", self.backbone_lr_mult >= 0, "0 or more"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("pct_start", 0 < self.pct_start < 1, "between 0 and 1 (both excluded)"),
            ("grad_clip", self.grad_clip >= 0, "0 (off) or more"),
            ("ema_decay", 0 <= self.ema_decay < 1, "at least 0 (off) and below 1, e.g. 0.999"),
            ("val_fraction", 0 < self.val_fraction < 1, "between 0 and 1 (both excluded), e.g. 0.1"),
            ("freeze_epochs", self.freeze_epochs >= 0, "0 or more"),
            ("cache_stages", self.cache_stages >= 0, "0 (off) or more"),
            ("cache_views", self.cache_views >= 1, "1 or more"), ("patience", self.patience >= 0, "0 (off) or more"),
            ("image_size", self.image_size is None or self.image_size >= 16, "16 (pixels) or more, or none"),
            ("max_train_images", self.max_train_images is None or self.max_train_images >= 2,
             "2 or more (one to train on, one to validate), or none (all)"),
            ("unfreeze_stages", self.unfreeze_stages is None or self.unfreeze_stages >= 0, "0 or more, or none"),
            ("bn_momentum", self.bn_momentum is None or 0 < self.bn_momentum <= 1, "above 0 and at most 1, or none"),
            ("num_workers", self.num_workers is None or self.num_workers >= 0, "0 or more, or none"),
            ("crop_scale_min", 0 < self.crop_scale_min <= 1, "above 0 and at most 1"),
            ("color_jitter", 0 <= self.color_jitter < 1, "at least 0 (off) and below 1"),
            ("device", self.device == "auto" or self.device.split(":")[0] in ("cuda", "mps", "cpu"),
             "cuda, cuda:N, mps, cpu or auto"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"Config.{name}={getattr(self, name)!r} ({flag_of(name)}) is out of range: it must "
                                 f"be {allowed}")
        if self.cross_fit_folds == 1 or self.cross_fit_folds < 0:
            raise ValueError(f"Config.cross_fit_folds={self.cross_fit_folds} ({flag_of('cross_fit_folds')}): use 0 "
                             "(off) or K >= 2 folds")
        if self.pos_weight and self.loss != "bce":
            raise ValueError("Config.pos_weight=True needs loss='bce' (ASL balances with gamma_neg/gamma_pos/asl_clip)")
        return self


# Named recipes: each is a set of overrides of Config's defaults, so a value is written once.
PRESETS: dict[str, dict[str, Any]] = {
    # Config's defaults: ShuffleNet V2 x1.0, ImageNet weights, AdamW + OneCycleLR, ASL, full course data, GPU.
    "shufflenet": {},
    # The synthetic demo data on a CPU in about a minute. EfficientNet-Lite0's ImageNet weights ship in a pip
    # package (no download); its first 3 stages run once over the images (feature cache, 4 views each) and only the
    # last 2 stages + head train, at 64 px (the shapes are large), for 10 epochs. Measured on 2 cores: 29 s for 500
    # + 38 generated images (python -m loops bench --recipe demo, study/measurements/); on 600 synthetic images (60
    # for validation) best validation F1 0.35 and mAP 0.56 against 0.018 and 0.031 for a model that ignores the
    # image (tests/test_runs.py::test_demo_preset_learns_the_synthetic_data).
    "demo": {
        "model": "efficientnet_lite0", "image_size": 64, "epochs": 10, "batch_size": 32, "lr": 3e-3,
        "cache_stages": 3, "run_name": "demo",
    },
    # Real photos on a CPU. Every choice was measured on coco-mini by nested cross-validation with the project's own
    # head training and threshold tuning (python -m study.recipe_cv; rows "nested CV" in study/results.csv, the
    # frontier of F1 against hours at 65,000 images in study/frontier.md). EfficientNet-Lite2, the strongest ImageNet
    # network whose weights install offline, frozen and run once over each image and its mirror (cache_stages=5: only
    # the pooled vectors are cached), on the 224 px photos upsampled to 384 px: upsampling was the strongest lever
    # up to 384; 448 and 512 px raise mAP but not the F1, at up to 1.8x the extraction time. An MLP head on average +
    # max pooled features with ASL; cross-fitting (thresholds tuned on out-of-fold probabilities of every labelled
    # image, the final head trained on all of them) beat thresholds from an 80/20 split; averaging the fold heads
    # raised mAP but lost F1 (the thresholds were tuned on single heads' probabilities). Selection by mAP: on a few
    # hundred validation images the tuned F1 jumps from one epoch to the next while mAP moves smoothly. Cost at the
    # course's 65,000 + 4,952 images: study/measurements/bench_recipe_cpu.json (README, "What a run costs").
    "cpu": {
        "model": "efficientnet_lite2", "image_size": 384, "pool": "avgmax", "epochs": 30, "batch_size": 64,
        "lr": 1e-3, "weight_decay": 1e-4, "cache_stages": 5, "cache_views": 2, "head_hidden": 1024,
        "head_dropout": 0.3, "tta_hflip": True, "val_fraction": 0.2, "select_metric": "map",
        "cross_fit_folds": 5, "run_name": "cpu",
    },
    # A first submission within half an hour at 65,000 images on a 2-core CPU: the best recipe of the frontier
    # (study/frontier.md) within that budget, still cross-fitting its thresholds. EfficientNet-Lite0 at the photos'
    # own 224 px, one cached view per image (the mirror view and flip TTA would double the extraction, which is most
    # of the time), a linear head, 15 epochs (30 epochs measured no better and cost 34 min: study/results.csv,
    # "cpu-fast candidate" rows). Cost: study/measurements/bench_recipe_cpu-fast.json.
    "cpu-fast": {
        "model": "efficientnet_lite0", "image_size": 224, "pool": "avgmax", "epochs": 15, "batch_size": 64,
        "lr": 1e-3, "weight_decay": 1e-4, "cache_stages": 5, "cache_views": 1, "head_hidden": 0,
        "head_dropout": 0.2, "tta_hflip": False, "val_fraction": 0.2, "select_metric": "map",
        "cross_fit_folds": 5, "run_name": "cpu-fast",
    },
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    "shufflenet": "the default: ShuffleNet V2 x1.0 with ImageNet weights, every layer fine-tuned (pretrained BatchNorm "
                  "statistics kept) with AdamW + OneCycleLR and the asymmetric loss; for a GPU and the full course "
                  "data",
    "demo": "EfficientNet-Lite0 (ImageNet weights from its pip package) at 64 px, last 2 stages + head trained "
            "on cached features for 10 epochs: learns the synthetic demo data in about a CPU minute",
    "cpu": "EfficientNet-Lite2 (ImageNet weights from its pip package) at 384 px, frozen and cached (image + "
           "mirror, pooled features), MLP head on average + max pooled features, flip TTA, thresholds cross-fitted "
           "on all labelled images (final.pt): real photos on a CPU",
    "cpu-fast": "EfficientNet-Lite0 (ImageNet weights from its pip package) at 224 px, frozen and cached (one view, "
                "pooled features), linear head, thresholds cross-fitted on all labelled images (final.pt): a first "
                "submission in under half an hour on a CPU",
}


# Settings that may change when a run is resumed (where and how fast it runs, not what it computes).
RESUME_MUTABLE = ("device", "num_workers", "progress", "data_root", "out_dir", "check_images")


def config_from_preset(name: str, **overrides) -> Config:
    """The Config of preset ``name`` with ``overrides`` applied (explicit values win over the preset)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name], **overrides})


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


_FLAG_ALIASES = {"out_dir": ("--out",)}  # the short spelling used throughout the README


def flag_of(name: str) -> str:
    """The command-line flag of Config field ``name`` (``batch_size`` -> ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, choices_of: Mapping[str, Sequence[str]] | None = None) -> None:
    """One flag per Config field; defaults are not set on the parser so that only explicit flags override.

    ``choices_of``: allowed values of fields whose list lives above the configuration (``{"model":
    coco.networks.list_models()}`` from the command line), so that ``--model`` lists them."""
    hints = typing.get_type_hints(Config)
    defaults = Config()
    group = parser.add_argument_group("configuration (Config fields; the defaults shown are Config's, i.e. the "
                                      "shufflenet preset; --preset changes them, explicit flags win)")
    for f in fields(Config):
        flags = [flag_of(f.name)] + list(_FLAG_ALIASES.get(f.name, ()))
        kind, optional = _field_type(hints[f.name])
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default: {'none' if default is None else default})"
        choices = (choices_of or {}).get(f.name, f.metadata.get("choices"))
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


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The Config fields given explicitly on a command line parsed with :func:`add_config_flags`."""
    return {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
