"""The loops: one training epoch, one evaluation pass, predictions, and the course's functions built on them.

What happens inside an epoch and nothing else, in the manner of torchvision's reference ``engine.py``: each
function takes the model, a loader and the few settings it needs, and returns a plain dict. Building those
objects from a ``Config`` is ``recipe.py``'s job; running epochs into a run folder is ``runs.py``'s.

* :func:`train_one_epoch`, :func:`evaluate` and :func:`predict`: mixed precision through an autocast dtype,
  an optional gradient scaler and clipping, channels_last, an optional :class:`ModelEma` of the weights.
* The course's :func:`train_loop`, :func:`validation_loop` and :func:`update_graphs` keep their names and
  arguments, with the leaderboard metric of ``metrics.py`` and probabilities (never logits) thresholded.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

import dataset
import metrics
from runtime import autocast, to_device

__all__ = ["ModelEma", "train_one_epoch", "evaluate", "predict", "train_loop", "validation_loop", "update_graphs"]


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
        """One averaging step towards ``model``'s weights. A module that trains part of a network on cached
        features (``features.Tail``) holds that network as ``.net``: the network is what is averaged."""
        model = getattr(model, "net", model)
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
    """Probabilities for a loader of (images, stems) (``dataset.COCOTestImageDataset``).

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
