"""The losses: binary cross-entropy and the asymmetric loss, each with the reductions the engine uses.

``AsymmetricLoss`` (Ridnik et al., ICCV 2021) focuses positives and negatives differently (``gamma_pos``,
``gamma_neg``) and discards the easiest negatives below a probability margin (``clip``): an image holds about 3
of the 80 classes, so the many easy negatives would otherwise dominate the gradient. ``build_loss`` builds either
from a name.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    # "mean": sum over classes (last dim), mean over samples, so the value does not depend on the
    # batch size and is comparable between the two losses.
    if reduction == "mean":
        return loss.sum(dim=-1).mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")


class MultiLabelBCELoss(nn.Module):
    """Binary cross-entropy on logits, optionally with ``pos_weight`` (one weight per class, or a scalar)
    multiplying the positive term. Reduction "mean": sum over classes, mean over samples
    (= torch's BCEWithLogitsLoss mean x num_classes); "sum"; "none": per element."""

    def __init__(self, pos_weight=None, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        if pos_weight is not None:
            pos_weight = torch.as_tensor(np.asarray(pos_weight, dtype=np.float32))
            if not bool(torch.all(pos_weight > 0)):
                raise ValueError("pos_weight values must be > 0")
        # A buffer follows the module to the GPU; not persistent: it is a setting, not learned state.
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, targets)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight,
                                                  reduction="none")
        return _reduce(loss, self.reduction)


class AsymmetricLoss(nn.Module):
    """Asymmetric Loss for multi-label classification (Ridnik et al., ICCV 2021).

    With p = sigmoid(logit) and the shifted probability p_m = max(p - clip, 0), per element

        loss = -[ y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m) ]

    Easy negatives (p < clip) contribute nothing; gamma_neg > gamma_pos down-weights the many
    negatives more than the few positives. gamma_pos = gamma_neg = clip = 0 is plain BCE.
    Reduction "mean": sum over classes, mean over samples (the authors' code returns the sum over
    both; dividing by the batch size keeps the value independent of it); "sum": that total;
    "none": per element. Computed in float32 from log-sigmoids, so it is stable for
    large |logits| and under autocast; ``eps`` only floors the bases of the focusing powers.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "mean"):
        super().__init__()
        if gamma_pos < 0 or gamma_neg < 0:
            raise ValueError(f"gamma_pos and gamma_neg must be >= 0, got {gamma_pos}, {gamma_neg}")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip must be in [0, 1), got {clip}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma_pos, self.gamma_neg, self.clip = float(gamma_pos), float(gamma_neg), float(clip)
        self.eps, self.reduction = float(eps), reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, targets)
        logits = logits.float()
        targets = targets.float()
        # Positive part: log p and 1 - p = sigmoid(-x), both exact for large |x|.
        positive = F.logsigmoid(logits)
        if self.gamma_pos > 0:
            # The floor keeps pow's gradient finite where sigmoid(-x) underflows to 0.
            positive = positive * torch.sigmoid(-logits).clamp_min(self.eps).pow(self.gamma_pos)
        # Negative part: log(1 - p_m) where 1 - p_m = min(1 - p + clip, 1).
        if self.clip > 0:
            shifted_probs = (torch.sigmoid(logits) - self.clip).clamp_min(0.0)
            negative = torch.log((torch.sigmoid(-logits) + self.clip).clamp_max(1.0))
        else:
            shifted_probs = torch.sigmoid(logits)
            negative = F.logsigmoid(-logits)
        if self.gamma_neg > 0:
            # Where p_m = 0 the log term is exactly 0, so flooring the base changes no value but avoids
            # 0 * inf gradients for fractional gamma_neg.
            negative = negative * shifted_probs.clamp_min(self.eps).pow(self.gamma_neg)
        loss = -(targets * positive + (1.0 - targets) * negative)
        return _reduce(loss, self.reduction)


def build_loss(name: str, *, pos_weight=None, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
               reduction: str = "mean") -> nn.Module:
    """"bce" -> MultiLabelBCELoss(pos_weight); "asl" -> AsymmetricLoss(gamma_pos, gamma_neg, clip).

    Both reduce as sum over classes, mean over samples. ASL has no pos_weight: passing one is an error.
    """
    if name == "bce":
        return MultiLabelBCELoss(pos_weight=pos_weight, reduction=reduction)
    if name == "asl":
        if pos_weight is not None:
            raise ValueError("pos_weight applies to the 'bce' loss only; AsymmetricLoss balances with "
                             "gamma_pos / gamma_neg / clip")
        return AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, reduction=reduction)
    raise ValueError(f"unknown loss {name!r}; choose 'bce' or 'asl'")
