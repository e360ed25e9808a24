"""What a :class:`config.Config` builds: the network, the transform presets, the loss, the optimiser and its
learning-rate schedule, and which stages train in which epoch.

Every part of the project that trains or rebuilds a model asks these functions (the run engine, head training
on cached features, the notebook's figures), so a recipe means the same thing everywhere.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from coco import course, losses, networks, transforms
from coco.config import DEFAULT_MODEL, PRESETS, Config, config_from_preset


def build_net(config: Config, num_classes: int = course.NUM_CLASSES, pretrained: bool | None = None):
    """The network ``config`` describes (``networks.build_model`` with the config's head settings)."""
    net = networks.build_model(config.model, num_classes=num_classes,
                             pretrained=config.pretrained if pretrained is None else pretrained,
                             dropout=config.head_dropout, hidden_dim=config.head_hidden, pool_mode=config.pool)
    networks.set_batchnorm(net, momentum=config.bn_momentum, freeze_stats=config.freeze_bn_stats)
    return net


def presets_for(config: Config) -> tuple[transforms.TrainPreset, transforms.EvalPreset]:
    """(training augmentation, evaluation transform) of a run with ``config``, at its input size and with the
    normalisation its pretrained weights expect."""
    spec = networks.get_spec(config.model)
    image_size = config.image_size or spec.input_size
    train_tf = transforms.TrainPreset(image_size=image_size, mean=spec.mean, std=spec.std,
                                   scale=(config.crop_scale_min, 1.0), color_jitter=config.color_jitter)
    eval_tf = transforms.EvalPreset(image_size=image_size, mean=spec.mean, std=spec.std)
    return train_tf, eval_tf


def build_criterion(config: Config, train_targets: np.ndarray) -> torch.nn.Module:
    """The loss of ``config``; ``pos_weight`` (BCE only) = negatives / positives per class of the training split."""
    pos_weight = None
    if config.pos_weight:
        positives = train_targets.sum(axis=0)
        pos_weight = (len(train_targets) - positives) / np.maximum(positives, 1.0)
    return losses.build_loss(config.loss, pos_weight=pos_weight, gamma_pos=config.gamma_pos,
                             gamma_neg=config.gamma_neg, clip=config.asl_clip)


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
    networks.unfreeze_last_stages(net, trainable)
    return "head only" if trainable == 0 else f"head + last {trainable}/{n_stages} stages"


def build_optimizer(net, config: Config) -> torch.optim.AdamW:
    """AdamW over every parameter that may ever train in this run (frozen ones get no gradient, hence no
    update), so that its state and the schedule keep one shape across the unfreeze milestone. Leaves the
    network as epoch 0 trains it.

    The fused implementation (one kernel for all parameters) on CPUs and CUDA GPUs: measured on a 2-core CPU
    for the ``cpu`` preset's head (2.7 M parameters, batch 64), the optimiser step took 13.8 ms unfused and
    1.6 ms fused, the whole training step 19.5 ms and 11.6 ms.
    """
    set_trainable(net, config.replace(freeze_epochs=0), epoch=0)
    device = next(net.parameters()).device
    optimizer = torch.optim.AdamW(networks.param_groups(net, lr=config.lr, weight_decay=config.weight_decay,
                                                      backbone_lr_mult=config.backbone_lr_mult),
                                  fused=device.type in ("cpu", "cuda"))
    set_trainable(net, config, epoch=0)
    return optimizer


def drop_last(n_train: int, batch_size: int) -> bool:
    """Whether training batches drop the incomplete last one. A last batch of 1-2 images gives BatchNorm
    useless statistics and a noisy step; it is kept when the split is smaller than one batch, so tiny
    experiments still train."""
    return n_train > batch_size


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps per epoch for ``n_train`` training images."""
    return n_train // batch_size if drop_last(n_train, batch_size) else 1


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
    total_steps = phase_epochs * steps_per_epoch
    pct_start = config.pct_start
    if abs(pct_start * total_steps - 1.0) < 1e-9:
        # OneCycleLR cannot ramp up over exactly one step (it divides by pct_start * total_steps - 1): such a short
        # run (5 steps at pct_start 0.2) warms up within its first step instead.
        pct_start = 0.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=list(peak_lrs), total_steps=total_steps,
                                               pct_start=pct_start)


# ----------------------------------------------------------------------------------------------------------
# Which recipes a notebook execution runs, and with which backbone
# ----------------------------------------------------------------------------------------------------------
STAND_IN_MODEL = "efficientnet_lite0"  # ShuffleNet's class of mobile network; its ImageNet weights ship in a pip package


def recipes_to_run(requested, demo: bool, cuda: bool) -> list[str]:
    """The presets a notebook execution trains, in order (the first is the one its analysis is about).
    ``requested``: a list of preset names, one name, or None for automatic: the demo data -> ``["demo"]``;
    real data with a CUDA GPU -> the default recipe ``["shufflenet"]``; real data on a CPU -> ``["cpu"]``."""
    if requested is None:
        return ["demo"] if demo else ["shufflenet"] if cuda else ["cpu"]
    names = [requested] if isinstance(requested, str) else list(requested)
    unknown = [name for name in names if name not in PRESETS]
    if not names or unknown:
        raise ValueError(f"RECIPES={requested!r}: choose one or more of {', '.join(PRESETS)} (or None: automatic)")
    return list(dict.fromkeys(names))


def runnable_config(preset: str, **overrides) -> tuple[Config, str | None]:
    """The Config of ``preset`` (with ``overrides``) that can run on this machine, and a bold note when it differs.

    Where the default backbone's ImageNet weights are neither on disk nor downloadable (``networks.build_model``
    raises :class:`networks.PretrainedWeightsUnavailable`), the backbone becomes :data:`STAND_IN_MODEL` at its own
    input size, every other setting unchanged, and the note names it; elsewhere (a student's machine with the
    weights) the config is the preset's and the note is None. Any other missing weights still raise."""
    config = config_from_preset(preset, **overrides)
    if not config.pretrained or networks.weights_on_disk(config.model):
        return config, None
    try:
        networks.build_model(config.model, num_classes=course.NUM_CLASSES, pretrained=True)
    except networks.PretrainedWeightsUnavailable:
        if config.model != DEFAULT_MODEL:
            raise
        note = (f"**Stand-in backbone: {STAND_IN_MODEL} (EfficientNet-Lite0) instead of {DEFAULT_MODEL}.** "
                f"ShuffleNet V2's ImageNet weights cannot be obtained here, so the `{preset}` recipe runs with "
                f"EfficientNet-Lite0 (a mobile network of the same class, weights in a pip package) at its own input "
                f"size, every other setting unchanged. Where the weights can be had, the same cells run ShuffleNet.")
        return config.replace(model=STAND_IN_MODEL, image_size=None), note
    return config, None
