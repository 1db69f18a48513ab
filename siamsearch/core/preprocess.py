"""The one preprocessing builder: config -> eval or train pipeline.

No other module declares a resize, a mode conversion or a mean/std; datasets,
the trainer, the indexer and the query layer all take their transform from
:func:`build_transform`.
"""
from __future__ import annotations

import math
import os
import random
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .config import ModelConfig
from .images import ImageLike, as_pil, read_image

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
        from torchvision import transforms as T

        self.affine = T.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, shear=shear)

    def __call__(self, img: Image.Image) -> Image.Image:
        arr = np.asarray(img)
        edges = np.concatenate([arr[0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                                arr[-1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                                arr[:, 0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                                arr[:, -1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1)])
        fill = [int(v) for v in np.median(edges, axis=0)]
        from torchvision import transforms as T
        from torchvision.transforms import functional as TF

        params = self.affine.get_params(self.affine.degrees, self.affine.translate,
                                        self.affine.scale, self.affine.shear, img.size)
        return TF.affine(img, *params, interpolation=T.InterpolationMode.BILINEAR,
                         fill=fill if len(fill) > 1 else fill[0])


def crop_box(width: int, height: int, crop: tuple) -> tuple[int, int, int, int]:
    """The pixel box ``(left, top, right, bottom)`` of ``config.crop`` on a ``width x height`` image.

    ``(f,)``: the centred box keeping the fraction ``f`` of each side; ``(l, t, r, b)``: fractions of
    the width and height. At least one pixel each way.
    """
    if len(crop) == 1:
        f = crop[0]
        w, h = max(1, round(width * f)), max(1, round(height * f))
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h
    left, top = int(round(crop[0] * width)), int(round(crop[1] * height))
    right = max(left + 1, int(round(crop[2] * width)))
    bottom = max(top + 1, int(round(crop[3] * height)))
    return left, top, right, bottom


class _ToNormalizedTensor:
    """``T.ToTensor()`` then ``T.Normalize(mean, std)`` in one step (half the time on small images; equal to
    ~1e-7): 8-bit ``L``/``RGB`` PIL image ``[H, W(, C)]`` -> float tensor ``[C, H, W]``."""

    def __init__(self, mean: tuple, std: tuple):
        std_arr = np.asarray(std, dtype=np.float32)
        self.scale = torch.from_numpy(1.0 / (255.0 * std_arr)).view(-1, 1, 1)
        self.shift = torch.from_numpy(np.asarray(mean, dtype=np.float32) / std_arr).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, dtype=np.float32))
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1).contiguous()
        return x.mul_(self.scale).sub_(self.shift)


def decode_mode(config: ModelConfig) -> str:
    """The mode a colour JPEG given by path is decoded to: ``"L"`` (its luma plane only) for a one-channel
    model, else ``"RGB"`` (see :func:`~siamsearch.core.images.read_image`)."""
    return "L" if config.in_channels == 1 else "RGB"


def decode_size(config: ModelConfig) -> int:
    """The fewest pixels each side of a decoded image needs so that the resize to ``input_size`` still
    shrinks (or keeps) it after ``config.crop``: ``ceil(input_size / crop fraction)``. JPEG files given by
    path are decoded at a reduced scale down to this size (:func:`~siamsearch.core.images.read_image`)."""
    crop = config.crop
    if crop is None:
        keep = 1.0
    elif len(crop) == 1:
        keep = float(crop[0])
    else:
        keep = min(crop[2] - crop[0], crop[3] - crop[1])
    return int(math.ceil(config.input_size / max(keep, 1e-6)))


class _Resize:
    """Bilinear (antialiased) resize of a PIL image: to ``(size, size)`` (``squash``), or the short side to
    ``size`` and the long one in proportion, then a centre crop to ``size x size`` (``short_side``). The same
    pixels as torchvision's ``Resize`` / ``CenterCrop`` on PIL images (tested), without importing
    torchvision (about a second of every command's start, and of every Ray worker's)."""

    def __init__(self, size: int, short_side: bool):
        self.size, self.short_side = int(size), bool(short_side)

    def __call__(self, img: Image.Image) -> Image.Image:
        s = self.size
        if not self.short_side:
            return img.resize((s, s), Image.BILINEAR)
        w, h = img.size
        new = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        img = img.resize(new, Image.BILINEAR)
        left, top = int(round((new[0] - s) / 2.0)), int(round((new[1] - s) / 2.0))
        return img.crop((left, top, left + s, top + s))


def _resize_steps(config: ModelConfig) -> list:
    """Resize to ``input_size`` square: both sides (``squash``) or the short side, then a centre crop."""
    return [_Resize(config.input_size, config.resize == "short_side")]


def _photo_steps(config: ModelConfig) -> list:
    """Photo augmentation on the resized square: random resized crop (64-100 % of the area, a
    mild aspect change: shifts and zooms), flips when ``hflip``, brightness/contrast (and colour) jitter
    and, for colour input, random grey conversion."""
    from torchvision import transforms as T

    size = int(config.input_size)
    steps: list = [T.RandomResizedCrop(size, scale=(0.64, 1.0), ratio=(0.85, 1.18), antialias=True)]
    if config.hflip:
        steps.append(T.RandomHorizontalFlip())
    if config.in_channels == 3:
        steps += [T.RandomApply([T.ColorJitter(0.3, 0.3, 0.3, 0.03)], p=0.8), T.RandomGrayscale(p=0.15)]
    else:
        steps.append(T.RandomApply([T.ColorJitter(0.3, 0.3)], p=0.8))
    return steps


def build_transform(config: ModelConfig, train: bool = False, augment: bool = True) -> Transform:
    """Make the pipeline that turns one image into the network's input tensor.

    Order: mode conversion to ``in_channels``, ``config.crop`` (before any resize), the resize
    (``config.resize``: squash or short side + centre crop), training augmentation, tensor,
    normalisation with ``config.mean``/``config.std``.

    Args:
        config: the model's config; its ``input_size``, ``in_channels``, ``crop``, ``resize``,
            ``augmentation``, ``hflip``, ``mean`` and ``std`` fully define preprocessing.
        train: build the training pipeline (with augmentation when ``augment``).
        augment: when training, add ``config.augmentation``: ``"affine"``, a small random affine
            (rotation ±10°, shift ±8 %, scale 0.9–1.1, shear ±8°) filled with the border colour,
            or ``"photo"`` (see :func:`_photo_steps`); plus horizontal flips when ``config.hflip``.

    Returns:
        A callable taking a path, PIL image or array and returning a float
        tensor ``[in_channels, input_size, input_size]``. A JPEG given by path that is at least twice
        :func:`decode_size` on its short side is decoded at 1/2, 1/4 or 1/8 scale (and straight to grey
        for one channel); the result differs from a full decode + resize by resampling only.
    """
    steps: list = _resize_steps(config)
    if train and augment:
        if config.augmentation == "photo":
            steps += _photo_steps(config)
        else:
            steps.append(_RandomAffineBorderFill(degrees=10, translate=0.08, scale=(0.9, 1.1), shear=8))
            if config.hflip:
                from torchvision import transforms as T

                steps.append(T.RandomHorizontalFlip())
    steps.append(_ToNormalizedTensor(config.mean, config.std))

    def pipeline(img):
        for step in steps:
            img = step(img)
        return img

    channels, crop = config.in_channels, config.crop
    min_size, mode = decode_size(config), decode_mode(config)

    def transform(image: ImageLike) -> torch.Tensor:
        if isinstance(image, (str, os.PathLike)):  # a file: JPEGs decode at reduced scale (Image.draft)
            image = read_image(image, min_size, mode)
        img = to_mode(as_pil(image), channels)
        if crop is not None:
            img = img.crop(crop_box(img.width, img.height, crop))
        return pipeline(img)

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
