"""ModelConfig: the architecture and the preprocessing spec, saved in every checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from .errors import SiamsearchError
from .choices import AUGMENTATIONS, BACKBONES, EMBED_FROM, RESIZE  # noqa: F401  (defined once there, torch-free)

# fields omitted from to_dict() at these values, so configs written before a field existed keep their
# meaning and their fingerprint
_OMIT_AT = {"embed_from": "head", "crop": None, "resize": "squash", "augmentation": "affine"}


def _check_crop(crop: Any) -> Optional[tuple]:
    """``None``; a centre fraction ``f`` in (0, 1] (as a float or a 1-tuple); or a box
    ``(left, top, right, bottom)`` in fractions of the width and height. Returns a tuple or None."""
    if crop is None:
        return None
    values = (crop,) if isinstance(crop, (int, float)) else tuple(crop)
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SiamsearchError(f"crop must be a centre fraction or a box of 4 fractions, got {crop!r}") from None
    if len(values) == 1:
        if not 0 < values[0] <= 1:
            raise SiamsearchError(f"a centre crop fraction must be in (0, 1], got {values[0]}")
        return values
    if len(values) != 4:
        raise SiamsearchError(f"a crop box is (left, top, right, bottom) in fractions of the image, got {crop!r}")
    left, top, right, bottom = values
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise SiamsearchError(f"crop box {values} needs 0 <= left < right <= 1 and 0 <= top < bottom <= 1 "
                              "(fractions of the width and height)")
    return values


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network and feed it images.

    Attributes:
        backbone: one of :data:`BACKBONES`.
        input_size: images are resized to ``input_size x input_size`` pixels.
        in_channels: 1 (grey) or 3 (RGB); every image is converted to this.
        embedding_dim: output size of the projection head (the embedding's
            length ``d`` when ``embed_from="head"``).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1];
            one value per input channel.
        hflip: whether horizontal flips are a valid augmentation for this data
            (faces, products: yes; characters and digits: no).
        embed_from: ``"head"`` (default): the embedding is the projection
            head's output. ``"backbone"``: the embedding is the backbone's
            pooled features (L2-normalised; smallcnn 1024-d, resnet18/34 512,
            resnet50 2048, efficientnet_b0 1280) and the head is used only by
            the training loss. Features before a projection head keep more of
            what the loss does not need, so they transfer better to
            identities unlike the training ones when there are few of those
            (SimCLR, Chen et al. 2020, section 4.2).
        crop: applied first, before the resize: ``None`` (whole image), ``(f,)``
            a centre crop keeping the fraction ``f`` of each side (faces in
            LFW-style frames, where the face is the centre half: 0.5), or a box
            ``(left, top, right, bottom)`` in fractions of the width and height.
        resize: one of :data:`RESIZE`; ``"squash"`` is the default of the
            dataclass (configs written before the field), the trainer writes
            ``"short_side"``.
        augmentation: one of :data:`AUGMENTATIONS`, the training augmentation
            (only training pipelines use it).
    """

    backbone: str = "smallcnn"
    input_size: int = 64
    in_channels: int = 1
    embedding_dim: int = 128
    mean: tuple = (0.5,)
    std: tuple = (0.5,)
    hflip: bool = False
    embed_from: str = "head"
    crop: Optional[tuple] = None
    resize: str = "squash"
    augmentation: str = "affine"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise SiamsearchError(
                f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}"
            )
        if self.embed_from not in EMBED_FROM:
            raise SiamsearchError(f"embed_from must be one of {', '.join(EMBED_FROM)}, got {self.embed_from!r}")
        if self.resize not in RESIZE:
            raise SiamsearchError(f"resize must be one of {', '.join(RESIZE)}, got {self.resize!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise SiamsearchError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        object.__setattr__(self, "crop", _check_crop(self.crop))
        if self.in_channels not in (1, 3):
            raise SiamsearchError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if not (8 <= int(self.input_size) <= 1024):
            raise SiamsearchError(f"input_size must be between 8 and 1024 pixels, got {self.input_size}")
        if not (2 <= int(self.embedding_dim) <= 4096):
            raise SiamsearchError(f"embedding_dim must be between 2 and 4096, got {self.embedding_dim}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise SiamsearchError(
                f"mean and std need one value per channel ({self.in_channels}); "
                f"got mean={self.mean}, std={self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise SiamsearchError(f"std values must be positive, got {self.std}")

    @classmethod
    def for_channels(cls, in_channels: int, **kwargs: Any) -> "ModelConfig":
        """A config with neutral normalisation (mean 0.5, std 0.5) for 1 or 3 channels."""
        kwargs.setdefault("mean", (0.5,) * in_channels)
        kwargs.setdefault("std", (0.5,) * in_channels)
        return cls(in_channels=in_channels, **kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["crop"] is not None:
            d["crop"] = list(d["crop"])
        for name, default in _OMIT_AT.items():  # checkpoints written before the field keep their fingerprint
            if d[name] == default:
                del d[name]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SiamsearchError(
                f"model config has unknown fields {sorted(unknown)}; "
                "was it written by a newer siamsearch? Upgrade siamsearch."
            )
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))
