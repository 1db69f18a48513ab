"""Datasets, splits and samplers: every sample is ``(image, identity: int)``.

- :func:`open_dataset` / :func:`detect_format`: identity folders, MNIST /
  Fashion-MNIST IDX, Omniglot (zips or folders, several roots), CelebA.
- :class:`ImageDataset`: ``.identities``, ``.identity_names``, ``.load(i)``,
  ``.source(i)``, ``.subset(indices, reindex=True)``, ``.with_transform(t)``,
  ``.digest()``; unreadable images become ``None`` items, dropped by
  :func:`collate_skip_none`.
- :func:`split_by_identity`: class-disjoint seeded train / validation split.
- :func:`sample_pairs`, :class:`MPerClassBatchSampler`: seeded samplers.
"""
from .base import ImageDataset, UnreadableImageWarning, collate_skip_none, guess_channels_and_size
from .formats import ACCEPTED_LAYOUTS, FASHION_MNIST_CLASSES, FORMATS, detect_format, open_celeba, open_dataset, open_folders, open_idx, open_omniglot, read_idx
from .samplers import MPerClassBatchSampler, sample_pairs
from .splits import split_by_identity

__all__ = [
    "ImageDataset", "UnreadableImageWarning", "collate_skip_none", "guess_channels_and_size",
    "ACCEPTED_LAYOUTS", "FASHION_MNIST_CLASSES", "FORMATS", "detect_format", "open_dataset",
    "open_folders", "open_idx", "open_omniglot", "open_celeba", "read_idx",
    "sample_pairs", "MPerClassBatchSampler", "split_by_identity",
]
