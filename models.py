"""The course's ``models`` module: ``build_model`` and the losses.

* ``build_model(name, num_classes=80, pretrained=True, ...)``: an ImageNet backbone (``list_models()``: ShuffleNet
  V2, ResNet, MobileNet V3, EfficientNet-B0 from torchvision, EfficientNet-Lite0/1/2 from their pip packages)
  with a new 80-logit head, its stages named so they can be frozen and unfrozen (``unfreeze_last_stages``) and
  its parameters grouped for AdamW (``param_groups``: head and backbone learning rates, no decay on norms and
  biases). Pretrained weights that cannot be had raise ``PretrainedWeightsUnavailable`` with what to do: they are
  never silently replaced by random ones.
* ``build_loss("bce" | "asl", ...)``: binary cross-entropy, or the asymmetric loss (Ridnik et al., ICCV 2021) that
  down-weights the many easy negatives of a multi-label problem.

The code lives in the ``coco`` package: ``coco/networks.py`` (backbones, head, freezing, parameter groups) and
``coco/losses.py``.
"""
from coco.losses import AsymmetricLoss, MultiLabelBCELoss, build_loss
from coco.networks import (MultiLabelNet, PretrainedWeightsUnavailable, build_model, count_parameters, get_spec,
                           list_models, param_groups, unfreeze_last_stages)

__all__ = ["build_model", "list_models", "get_spec", "MultiLabelNet", "PretrainedWeightsUnavailable",
           "unfreeze_last_stages", "param_groups", "count_parameters", "build_loss", "MultiLabelBCELoss",
           "AsymmetricLoss"]
