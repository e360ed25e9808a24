"""The loops: one training epoch, one evaluation pass, predictions, and the weight EMA.

What happens inside an epoch and nothing else, in the manner of torchvision's reference ``engine.py``: each
function takes the model, a loader and the few settings it needs, and returns a plain dict. Building those
objects from a ``Config`` is ``coco.recipe``'s job; running epochs into a run folder is ``coco.fit``'s; the
course's ``train_loop`` and ``validation_loop`` (in ``loops.py``) are built on these.

* :func:`train_one_epoch`, :func:`evaluate` and :func:`predict`: mixed precision through an autocast dtype,
  an optional gradient scaler and clipping, channels_last, an optional :class:`ModelEma` of the weights.
* :func:`update_graphs`: the course's TensorBoard graphs (``coco.fit`` draws them every epoch).
"""
from __future__ import annotations

import math
import time
from typing import Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from coco import course
from coco.runtime import autocast, to_device


def _warmup_ema(decay: float):
    """The averaging function of :class:`ModelEma`: ``averaged = lerp(averaged, current, 1 - d)`` with
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates; integer buffers (BatchNorm's batch counter) are
    copied, not averaged."""

    def average(averaged: list, current: list, num_averaged) -> None:
        if not averaged[0].dtype.is_floating_point:
            torch._foreach_copy_(averaged, current)
            return
        n = int(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return average


class ModelEma(AveragedModel):
    """Exponential moving average of a model's weights and float buffers: torch's ``AveragedModel`` (as
    torchvision's references use it) with a warm-up in its averaging function.

    ``decay`` ramps up as (1 + n) / (10 + n) over the first updates, so a short run is not dominated by the
    random initial weights. Evaluate ``ema.module``; ``state_dict`` holds its weights and the update count.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=_warmup_ema(float(decay)), use_buffers=True)
        self.decay = float(decay)
        self.n_averaged += 1  # the copy made here is the start: the first update averages, with decay 2/11
        self.module.eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @property
    def updates(self) -> int:
        return int(self.n_averaged) - 1

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s weights. A module that trains part of a network on cached
        features (``features.Tail``) holds that network as ``.net``: the network is what is averaged."""
        self.update_parameters(getattr(model, "net", model))

    def state_dict(self, *args, **kwargs) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Mapping, *args, **kwargs) -> None:
        self.module.load_state_dict(state["module"])
        self.n_averaged.fill_(int(state["updates"]) + 1)


# ----------------------------------------------------------------------------------------------------------
# The loops
# ----------------------------------------------------------------------------------------------------------
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
        images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
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
            ema.update(model)
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
    with autocast(device, amp_dtype):
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
        images = to_device(images, device, channels_last)
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
    """Probabilities for a loader of (images, stems) (``data.COCOTestImageDataset``).

    Returns ``stems`` (list of str, loader order) and ``probs`` (float32 CPU tensor N x classes).
    """
    device = torch.device(device)
    model.eval()
    stems, probs_list = [], []
    for images, batch_stems in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        _, probs = _probs_and_logits(model, to_device(images, device, channels_last), device, amp_dtype, tta_hflip)
        probs_list.append(probs.cpu())
        stems.extend(str(stem) for stem in batch_stems)
    return {"stems": stems, "probs": torch.cat(probs_list) if probs_list else torch.zeros((0, 0))}


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
            class_names = (course.CLASSES if len(train_class_results) == course.NUM_CLASSES
                           else [str(i) for i in range(len(train_class_results))])
        for name, train_class, test_class in zip(class_names, train_class_results, test_class_results):
            for _, key, label in _COURSE_GRAPHS[:3]:
                summary_writer.add_scalars(f"Class Metrics/{name}/Train {label} vs Test {label}",
                                           {f"Train {label}": train_class[key], f"Test {label}": test_class[key]}, step)
    summary_writer.flush()
