"""The transform presets: what a photo goes through before the network, as picklable classes.

``TrainPreset`` (random resized crop within the padded square, aspect and colour jitter, mirror) and
``EvalPreset`` (resize the long side, pad to a square) follow torchvision's ``presets.py``: keyword-only
arguments, a ``__call__``, defined at module level so that spawn workers can unpickle them; the normalisation
constants come from the network's spec. ``long_side_size`` is the one resize formula, also used by the GPU path.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
from torchvision.transforms import functional as TF


# --------------------------------------------------------------------------------------------
# Transform presets
# --------------------------------------------------------------------------------------------
def _as_uint8_tensor(image) -> torch.Tensor:
    """PIL image or uint8 CHW tensor -> uint8 CHW tensor (on the tensor's own device)."""
    if isinstance(image, torch.Tensor):
        return image
    return TF.pil_to_tensor(image)


def long_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing so that the long side is ``size``, aspect ratio kept (rounding included)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    new_hw = long_side_size(height, width, size)
    if new_hw == (height, width):
        return image
    return TF.resize(image, list(new_hw), antialias=True)


def _normalise_and_pad(image: torch.Tensor, size: int, mean, std, offset: tuple[float, float]) -> torch.Tensor:
    """uint8 CHW -> normalised float, padded to ``size`` x ``size``.

    Padding happens after normalisation with zeros, i.e. with the dataset mean colour, which
    the pretrained network treats as "nothing here".  ``offset`` (0..1 each) places the image
    in the square: 0.5 centres it.
    """
    image = TF.normalize(image.float().div_(255.0), mean, std)
    height, width = image.shape[-2:]
    pad_h, pad_w = size - height, size - width
    top, left = round(pad_h * offset[0]), round(pad_w * offset[1])
    if pad_h or pad_w:
        image = torch.nn.functional.pad(image, (left, pad_w - left, top, pad_h - top))
    return image


class EvalPreset:
    """Deterministic evaluation transform.

    ``mode="pad"`` (default) resizes the long side to ``image_size`` and pads the short side
    with the mean colour: nothing is cut off and nothing is stretched.  Course photos have their
    long side at 224 px already, so at 224 this is a pure pad; objects at the border (a multi-
    label image's labels can sit anywhere) stay visible, which a centre crop would not
    guarantee.  ``mode="crop"`` resizes the short side and centre-crops (the ImageNet habit);
    ``mode="stretch"`` reproduces the course's ``Resize((s, s))``.
    """

    MODES = ("pad", "crop", "stretch")

    def __init__(self, *, image_size: int = 224, mean: Sequence[float], std: Sequence[float], mode: str = "pad"):
        if mode not in self.MODES:
            raise ValueError(f"EvalPreset mode must be one of {self.MODES}, got {mode!r}")
        self.image_size, self.mean, self.std, self.mode = int(image_size), list(mean), list(std), mode

    def __call__(self, image) -> torch.Tensor:
        image = _as_uint8_tensor(image)
        size = self.image_size
        if self.mode == "stretch":
            image = TF.resize(image, [size, size], antialias=True)
        elif self.mode == "crop":
            image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
        else:
            image = _resize_long_side(image, size)
        return _normalise_and_pad(image, size, self.mean, self.std, (0.5, 0.5))

    def __repr__(self) -> str:
        return f"EvalPreset(image_size={self.image_size}, mode={self.mode!r}, mean={self.mean}, std={self.std})"


class TrainPreset:
    """Training augmentation for photos whose long side is 224 px, aspect ratio kept.

    1. a random crop covering ``scale`` of the image area, its aspect ratio jittered by
       ``ratio`` around the photo's own (so objects are not squashed the way a square
       RandomResizedCrop squashes a 4:3 photo); a mild ``scale`` lower bound because a
       multi-label image's labels sit anywhere and a tight crop drops them,
    2. resize so the long side is ``image_size``,
    3. horizontal flip with probability ``hflip`` (COCO has no left/right classes),
    4. brightness / contrast / saturation jitter of +-``color_jitter``,
    5. normalise, then pad to a square at a random position (the evaluation preset pads
       centrally, so train and test see objects at the same scale).

    Randomness comes from Python's ``random`` module, which PyTorch seeds per DataLoader worker.
    ``sample_params`` / ``apply`` are separate so that a GPU pipeline can draw the same
    augmentation distribution.
    """

    def __init__(self, *, image_size: int = 224, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, color_jitter: float = 0.2):
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.image_size, self.mean, self.std = int(image_size), list(mean), list(std)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip, self.color_jitter = float(hflip), float(color_jitter)

    def sample_params(self, height: int, width: int, rng: random.Random | None = None) -> dict:
        rng = rng or random
        area = height * width * rng.uniform(*self.scale)
        log_ratio = rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]))
        aspect = (width / height) * float(np.exp(log_ratio))
        crop_w = int(round(min(width, (area * aspect) ** 0.5)))
        crop_h = int(round(min(height, (area / aspect) ** 0.5)))
        crop_w, crop_h = max(1, crop_w), max(1, crop_h)
        jitter = self.color_jitter
        return {
            "top": rng.randint(0, height - crop_h), "left": rng.randint(0, width - crop_w),
            "height": crop_h, "width": crop_w,
            "flip": rng.random() < self.hflip,
            "brightness": rng.uniform(1 - jitter, 1 + jitter),
            "contrast": rng.uniform(1 - jitter, 1 + jitter),
            "saturation": rng.uniform(1 - jitter, 1 + jitter),
            "offset": (rng.random(), rng.random()),
        }

    def apply(self, image: torch.Tensor, params: dict) -> torch.Tensor:
        image = image[..., params["top"]:params["top"] + params["height"],
                      params["left"]:params["left"] + params["width"]]
        image = _resize_long_side(image, self.image_size)
        if params["flip"]:
            image = image.flip(-1)
        if self.color_jitter > 0:
            image = TF.adjust_brightness(image, params["brightness"])
            image = TF.adjust_contrast(image, params["contrast"])
            image = TF.adjust_saturation(image, params["saturation"])
        return _normalise_and_pad(image, self.image_size, self.mean, self.std, params["offset"])

    def __call__(self, image) -> torch.Tensor:
        image = _as_uint8_tensor(image)
        return self.apply(image, self.sample_params(*image.shape[-2:]))

    def __repr__(self) -> str:
        return (f"TrainPreset(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, color_jitter={self.color_jitter})")


def denormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the normalisation for display: float images in 0..1 (CHW or BCHW)."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)
