"""MNIST / Fashion-MNIST IDX files: the ``idx`` dataset format.

``idx``: a folder with the MNIST / Fashion-MNIST IDX files under their
  original names (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-...``; gzip or raw; ``.idx3-ubyte`` spelling accepted). ``split`` is
  ``"train"`` (default), ``"test"`` or ``"all"``. Identity names are the class
  names: Fashion-MNIST's when the format is given as ``"fashion-mnist"`` or the
  folder path contains "fashion", digits ``"0"``..``"9"`` otherwise (force
  with ``format="mnist"``).
"""
from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import SiamsearchError
from ..core.files import PathLike
from .base import ArrayBackend, ImageDataset

#: Fashion-MNIST class names, index = label.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

IDX_RE = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$", re.IGNORECASE)


def idx_files(folder: Path) -> dict:
    """{(split 'train'|'t10k', kind 'images'|'labels'): path} for IDX files in ``folder``."""
    found: dict = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for name in names:
        m = IDX_RE.match(name)
        if m:
            found.setdefault((m.group(1).lower(), m.group(2).lower()), folder / name)
    return found


def read_idx(path: PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip or raw) into an array of its stated shape."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SiamsearchError(f"{path}: cannot read IDX file ({e}); download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SiamsearchError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise SiamsearchError(f"{path}: IDX element type 0x{data[2]:02x} is not supported (only unsigned bytes)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise SiamsearchError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    count = int(np.prod(dims)) if dims else 0
    if len(data) - 4 - 4 * ndim < count:
        raise SiamsearchError(f"{path}: truncated IDX file ({len(data) - 4 - 4 * ndim} of {count} bytes); "
                              f"download it again")
    return np.frombuffer(data, np.uint8, count=count, offset=4 + 4 * ndim).reshape(dims)


def open_idx(folder: PathLike, split: Optional[str] = None,
             class_names: Optional[Sequence[str]] = None) -> ImageDataset:
    """MNIST / Fashion-MNIST IDX files in ``folder``.

    Args:
        split: ``"train"`` (default, the 60,000 training images), ``"test"``
            (``t10k``) or ``"all"`` (train then test).
        class_names: names for labels 0..; default: Fashion-MNIST names when the
            folder path contains "fashion", else the digits.
    """
    folder = Path(folder)
    split = (split or "train").lower()
    wanted = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}.get(split)
    if wanted is None:
        raise SiamsearchError(f"unknown split {split!r} for IDX data; use train, test or all")
    files = idx_files(folder)
    images, labels, names, file_of, offsets = [], [], [], [], []
    for part in wanted:
        img_p, lab_p = files.get((part, "images")), files.get((part, "labels"))
        if img_p is None or lab_p is None:
            have = sorted({s for s, _ in files}) or ["none"]
            raise SiamsearchError(
                f"{folder}: the {part} IDX pair ({part}-images-idx3-ubyte[.gz] and {part}-labels-idx1-ubyte[.gz]) "
                f"is missing (found splits: {', '.join('test' if h == 't10k' else h for h in have)}); "
                f"choose another split")
        x, y = read_idx(img_p), read_idx(lab_p)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise SiamsearchError(f"{folder}: {img_p.name} {x.shape} and {lab_p.name} {y.shape} do not match "
                                  f"(need [N, H, W] images and [N] labels)")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise SiamsearchError(f"{folder}: train and test images differ in size")
        file_of.append(np.full(len(x), len(names), np.int32))
        offsets.append(np.arange(len(x)))
        images.append(x)
        labels.append(y)
        names.append(img_p.name)
    x = images[0] if len(images) == 1 else np.concatenate(images)
    y = np.concatenate(labels).astype(np.int64)
    if class_names is None:
        fashion = "fashion" in str(folder.resolve()).lower()
        class_names = FASHION_MNIST_CLASSES if fashion else [str(d) for d in range(10)]
    used, ids = np.unique(y, return_inverse=True)
    ident_names = [class_names[u] if u < len(class_names) else str(u) for u in used]
    backend = ArrayBackend(x, str(folder), names, np.concatenate(file_of), np.concatenate(offsets))
    return ImageDataset(backend, np.arange(len(x)), ids.reshape(-1), ident_names, "idx", root=str(folder))
