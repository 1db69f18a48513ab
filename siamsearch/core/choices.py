"""The named choices of the library, in one torch-free module.

Each tuple is defined here once; the modules that act on a choice import it from
here (and re-export it under their old names, e.g. ``siamsearch.training.losses.LOSSES``),
and the command line builds its ``click.Choice`` lists from here, so that
``siamsearch --help`` and every subcommand's ``--help`` load no torch, Faiss,
h5py, scikit-learn or matplotlib.

This module imports nothing: keep it so.
"""
from __future__ import annotations

#: Backbones :class:`siamsearch.core.model.EmbeddingNet` can build.
BACKBONES = ("smallcnn", "resnet18", "resnet34", "resnet50", "efficientnet_b0")

#: Where the embedding is read: the projection head or the backbone's pooled features.
EMBED_FROM = ("head", "backbone")

#: Losses of :mod:`siamsearch.training.losses`.
LOSSES = ("contrastive", "triplet", "arcface", "cosface")

#: Training presets of :mod:`siamsearch.core.presets`.
PRESET_NAMES = ("faces", "characters", "products")

#: How an image reaches ``input_size x input_size`` (:class:`siamsearch.core.config.ModelConfig`): ``squash``
#: resizes both sides (what configs written before the field mean), ``short_side`` resizes the short side and
#: centre-crops the long one (aspect ratio kept; what new models use).
RESIZE = ("squash", "short_side")

#: Training augmentation: ``affine`` (small rotation, shift, scale, shear: characters, digits) or ``photo``
#: (random resized crop, brightness/contrast/colour jitter, random grey: photographs).
AUGMENTATIONS = ("affine", "photo")

#: Triplet mining strategies of :class:`siamsearch.training.losses.TripletLoss`.
MINING = ("all", "hard")

#: Dataset format names accepted by :func:`siamsearch.data.open_dataset` (``auto`` detects).
FORMATS = ("auto", "folders", "idx", "mnist", "fashion-mnist", "omniglot", "celeba")

#: Threshold rules of the calibration (:mod:`siamsearch.evaluation.calibrate`).
RULES = ("far", "eer", "max-accuracy")

#: What :func:`siamsearch.evaluation.evaluate.evaluate` measures; ``all`` = everything the data allows.
PROTOCOLS = ("verification", "identification", "oneshot", "all")

#: How a gallery labels its images: by the image's folder, or not at all.
LABEL_MODES = ("from-folder", "none")

#: Devices every command accepts; ``auto`` picks CUDA when a GPU is visible.
DEVICES = ("auto", "cpu", "cuda")

#: Inference precisions (:mod:`siamsearch.core.inference`); ``auto`` = bf16 where the CPU has it natively.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
