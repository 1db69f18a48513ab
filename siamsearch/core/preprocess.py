"""The one preprocessing builder: config -> eval or train pipeline.

No other module declares a resize, a mode conversion or a mean/std; datasets,
the trainer, the indexer and the query layer all take their transform from
:func:`build_transform`.
"""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .config import ModelConfig
from .images import ImageLike, as_pil

Transform = Callable[[ImageLike], torch.Tensor]


def to_mode(img: Image.Image, in_channels: int) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) to 'L' or 'RGB'.

    Transparency is composited on white; 16/32-bit and float images are rescaled
    from their own range to 0..255.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif hi <= 255 and lo >= 0:
            lo, hi = 0.0, 255.0
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    target = "L" if in_channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


class _RandomAffineBorderFill:
    """Small random affine whose fill is the image's own border colour (median of edges)."""

    def __init__(self, degrees: float, translate: float, scale: tuple, shear: float):
        self.affine = T.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, shear=shear)

    def __call__(self, img: Image.Image) -> Image.Image:
        arr = np.asarray(img)
        edges = np.concatenate([arr[0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                                arr[-1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                                arr[:, 0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                                arr[:, -1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1)])
        fill = [int(v) for v in np.median(edges, axis=0)]
        params = self.affine.get_params(self.affine.degrees, self.affine.translate,
                                        self.affine.scale, self.affine.shear, img.size)
        return TF.affine(img, *params, interpolation=T.InterpolationMode.BILINEAR,
                         fill=fill if len(fill) > 1 else fill[0])


def build_transform(config: ModelConfig, train: bool = False, augment: bool = True) -> Transform:
    """Make the pipeline that turns one image into the network's input tensor.

    Args:
        config: the model's config; its ``input_size``, ``in_channels``,
            ``mean``, ``std`` and ``hflip`` fully define preprocessing.
        train: build the training pipeline (with augmentation when ``augment``).
        augment: when training, add a small random affine (rotation ±10°,
            shift ±8 %, scale 0.9–1.1, shear ±8°) and horizontal flips when
            ``config.hflip``.

    Returns:
        A callable taking a path, PIL image or array and returning a float
        tensor ``[in_channels, input_size, input_size]``.
    """
    size = int(config.input_size)
    steps: list = [T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR, antialias=True)]
    if train and augment:
        steps.append(_RandomAffineBorderFill(degrees=10, translate=0.08, scale=(0.9, 1.1), shear=8))
        if config.hflip:
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(config.mean, config.std)]
    pipeline = T.Compose(steps)
    channels = config.in_channels

    def transform(image: ImageLike) -> torch.Tensor:
        return pipeline(to_mode(as_pil(image), channels))

    return transform


def denormalize(x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Invert the normalisation of :func:`build_transform` (for previews): ``[C,H,W]`` in [0, 1]."""
    mean = torch.tensor(config.mean).view(-1, 1, 1)
    std = torch.tensor(config.std).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def seed_augmentation(seed: int) -> None:
    """Seed the RNGs torchvision's random transforms draw from (per worker)."""
    random.seed(seed)
    torch.manual_seed(seed)
