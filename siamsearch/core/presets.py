"""Training presets: one word that sets the preprocessing spec and the recipe for a kind of image.

Torch-free (the CLI reads it for ``--help``). Every value is a default: an option given
explicitly wins. The chosen preset and where it came from are recorded in the training card.

- ``characters``: characters, digits, sketches (grey, small): the squash-free resize, the small
  random affine, no flips, batch-hard triplets, smallcnn at 32 px (small images) or 64 px.
  What the Omniglot and Fashion-MNIST benchmarks use.
- ``products``: photographs of objects: colour, photo augmentation (random resized crop,
  brightness/contrast/colour jitter, random grey), flips, batch-hard triplets in batches of 2 images
  per identity; identities with a single image take part as two augmented copies.
- ``faces``: ``products`` plus the crop of LFW-style frames (a face detection enlarged ~2.2x: the
  face is the centre half of the image, ``crop=0.5``). For tight face crops pass ``crop=None``
  (CLI ``--crop 1``).

Without a preset the trainer guesses one from the images: colour -> ``products``, grey -> ``characters``.
"""
from __future__ import annotations

from typing import Optional

from .choices import PRESET_NAMES  # noqa: F401  (defined once there)

# triplets rather than a margin softmax: on LFW DevTrain with a few CPU minutes, CosFace over ~3,600
# identities was still below raw pixels (52.8 % View 1) where batch-hard triplets reached 69.6 %
# (docs/faces.md lists every recipe tried); pass loss="cosface" for long runs or a GPU
_PHOTO = dict(
    loss="triplet", mining="hard", backbone="smallcnn", input_size=64, in_channels=3, embedding_dim=128,
    embed_from="head", hflip=True, crop=None, resize="short_side", augmentation="photo",
    batch_size=128, m_per_class=2, lr=2e-3, weight_decay=5e-4, margin=None, singletons=True,
)

#: Preset name -> default value of each :func:`siamsearch.train` option it sets. ``input_size`` or
#: ``in_channels`` ``None``: guessed from the images (32 px for images of 32 px or less, else 64;
#: grey unless colour).
PRESETS: dict[str, dict] = {
    "characters": dict(
        loss="triplet", mining="hard", backbone="smallcnn", input_size=None, in_channels=None,
        embedding_dim=128, embed_from="head", hflip=False, crop=None, resize="short_side",
        augmentation="affine", batch_size=64, m_per_class=4, lr=1e-3, weight_decay=5e-4, margin=None,
        singletons=False,
    ),
    "products": dict(_PHOTO),
    "faces": dict(_PHOTO, crop=(0.5,)),
}


def guess_preset(in_channels: int) -> str:
    """The preset used when none is given: ``products`` for colour images, ``characters`` for grey ones."""
    return "products" if in_channels == 3 else "characters"


def resolve_preset(preset: Optional[str], guessed_channels: int) -> tuple[str, str]:
    """``(name, source)``: the preset asked for (``source="given"``) or the guess from the images.

    Raises:
        ValueError: an unknown name (the trainer turns it into a SiamsearchError).
    """
    if preset is None:
        kind = "colour" if guessed_channels == 3 else "grey"
        return guess_preset(guessed_channels), f"guessed from the images ({kind})"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    return preset, "given"


def preset_values(preset: str, guessed_channels: int, guessed_size: int, **given) -> dict:
    """The preset's values with the ``given`` options (those not ``None``) applied on top, and
    ``input_size``/``in_channels`` filled from the guesses where the preset leaves them open."""
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in given.items() if v is not None})
    if values.get("in_channels") is None:
        values["in_channels"] = guessed_channels
    if values.get("input_size") is None:
        values["input_size"] = guessed_size
    return values


def preset_config_fields(values: dict) -> dict:
    """The :class:`siamsearch.core.config.ModelConfig` keyword arguments among ``values``."""
    keys = ("backbone", "input_size", "embedding_dim", "embed_from", "hflip", "crop", "resize", "augmentation")
    return {k: values[k] for k in keys}
