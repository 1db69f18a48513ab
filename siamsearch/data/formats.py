"""Loaders for the dataset layouts the trainer reads, and format auto-detection.

Layouts (``format`` names):

- ``folders``: ``ROOT/<identity>/<image files>``; one sub-folder per identity,
  images may sit in deeper sub-folders of it; extensions compared
  case-insensitively (:data:`siamsearch.core.images.IMAGE_EXTENSIONS`). Image files
  directly in ``ROOT`` belong to no identity and are ignored with a warning.
- ``idx``: a folder with the MNIST / Fashion-MNIST IDX files under their
  original names (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-...``; gzip or raw; ``.idx3-ubyte`` spelling accepted). ``split`` is
  ``"train"`` (default), ``"test"`` or ``"all"``. Identity names are the class
  names: Fashion-MNIST's when the format is given as ``"fashion-mnist"`` or the
  folder path contains "fashion", digits ``"0"``..``"9"`` otherwise (force
  with ``format="mnist"``).
- ``omniglot``: ``.../<Alphabet>/characterNN/*.png`` inside zip files and/or
  unpacked folders; several roots at once (a folder holding such zips reads
  every one of them). Each character is one identity named
  ``"Alphabet/characterNN"``; a character found under several roots is one
  identity and its byte-identical files are kept once (the two minimal
  background splits share Greek and Latin).
- ``celeba``: a folder with ``img_align_celeba/`` and ``identity_CelebA.txt``
  (optionally ``list_eval_partition.txt``; the ``Img/``, ``Anno/``, ``Eval/``
  sub-folders of the original release are searched too). Identities come
  from the identity file (names are CelebA's identity numbers). ``split`` is
  ``"train"``, ``"valid"``, ``"test"`` or ``"all"``; the default is
  ``"train"`` when the partition file exists, else ``"all"``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..core.choices import FORMATS  # noqa: F401  (defined once there, torch-free)
from ..core.errors import SiamsearchError
from ..core.files import PathLike
from ..core.images import iter_images, list_images
from .base import ACCEPTED_LAYOUTS, EntryBackend, ImageDataset, as_paths
from .celeba import celeba_files, open_celeba
from .idx import FASHION_MNIST_CLASSES, IDX_RE, idx_files, open_idx, read_idx  # noqa: F401  (re-exported)
from .omniglot import dir_has_omniglot, omniglot_zips_in, open_omniglot, zip_has_omniglot
from .identity import identity_of, loose_files_note

__all__ = ["ACCEPTED_LAYOUTS", "FASHION_MNIST_CLASSES", "FORMATS", "detect_format", "open_celeba", "open_dataset",
           "open_folders", "open_idx", "open_omniglot", "read_idx"]


# --------------------------------------------------------------------------- detection
def _has_identity_folders(folder: Path) -> bool:
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.is_dir() and not e.name.startswith("."):
            if next(iter_images(Path(e.path)), None) is not None:
                return True
    return False


def detect_format(path: Union[PathLike, Sequence[PathLike]]) -> str:
    """Which layout ``path`` (or a list of Omniglot roots) holds.

    Returns:
        ``"idx"``, ``"celeba"``, ``"omniglot"`` or ``"folders"`` (checked in that order).

    Raises:
        SiamsearchError: when nothing matches; the message lists the accepted layouts.
    """
    paths = as_paths(path)
    if len(paths) > 1:
        kinds = {p: detect_format(p) for p in paths}
        if set(kinds.values()) == {"omniglot"}:
            return "omniglot"
        raise SiamsearchError(
            "several dataset paths are only supported for Omniglot roots; got "
            + ", ".join(f"{p} ({k})" for p, k in kinds.items()) + ". Give one path.")
    p = paths[0]
    if p.is_file():
        if p.suffix.lower() == ".zip":
            if zip_has_omniglot(p):
                return "omniglot"
            raise SiamsearchError(f"{p} is a zip file without the Omniglot layout "
                                  f"(.../<Alphabet>/characterNN/*.png); unpack it and give the folder.\n"
                                  f"{ACCEPTED_LAYOUTS}")
        if IDX_RE.match(p.name):
            raise SiamsearchError(f"{p} is one IDX file; give the folder that holds the images and labels "
                                  f"files ({p.parent})")
        raise SiamsearchError(f"{p} is a file, not a dataset.\n{ACCEPTED_LAYOUTS}")
    idx = idx_files(p)
    if any(kind == "images" for _, kind in idx):
        return "idx"
    if celeba_files(p) is not None:
        return "celeba"
    if dir_has_omniglot(p) or omniglot_zips_in(p):
        return "omniglot"
    if _has_identity_folders(p):
        return "folders"
    raise SiamsearchError(f"{p}: no dataset found (no identity sub-folders with images, no IDX, "
                          f"Omniglot or CelebA files).\n{ACCEPTED_LAYOUTS}")


# --------------------------------------------------------------------------- folders
def open_folders(root: PathLike) -> ImageDataset:
    """Identity folders ``ROOT/<identity>/<images>``; ids follow the sorted folder names."""
    root = Path(root)
    files = list_images(root)
    rels, idents, loose = [], [], []
    for f in files:
        rel = f.relative_to(root)
        ident = identity_of(rel)  # the one rule: the first folder below the root (bob/2019/x.jpg is bob)
        if ident is None:
            loose.append(rel.as_posix())
            continue
        rels.append(str(rel))
        idents.append(ident)
    if loose:
        loose_note = loose_files_note(root, loose, "they belong to no identity and are ignored")
        warnings.warn(loose_note)
    if not rels:
        raise SiamsearchError(f"{root}: no images in identity sub-folders.\n{ACCEPTED_LAYOUTS}")
    names, ids = np.unique(np.asarray(idents, dtype=str), return_inverse=True)
    backend = EntryBackend([str(root)], ["dir"], np.zeros(len(rels), np.int32), rels)
    ds = ImageDataset(backend, np.arange(len(rels)), ids.reshape(-1), [str(n) for n in names],
                      "folders", root=str(root))
    if loose:
        ds.notes.append(loose_note)
    return ds


# --------------------------------------------------------------------------- entry point
def open_dataset(path: Union[PathLike, Sequence[PathLike]], format: str = "auto",
                 split: Optional[str] = None) -> ImageDataset:
    """Open a dataset in any supported layout (see the module docstring).

    Args:
        path: a dataset folder or file; for Omniglot also a list of zips/folders.
        format: one of :data:`FORMATS`; ``"auto"`` uses :func:`detect_format`.
            ``"mnist"`` and ``"fashion-mnist"`` read IDX files with digit or
            Fashion-MNIST class names.
        split: IDX: ``"train"`` (default) | ``"test"`` | ``"all"``; CelebA:
            ``"train"`` (default when partitioned) | ``"valid"`` | ``"test"`` |
            ``"all"``. Folders and Omniglot have no split (``None`` or ``"all"``);
            make train/validation splits with :func:`siamsearch.data.split_by_identity`.

    Returns:
        An :class:`ImageDataset` yielding ``(PIL image, identity)`` until given a transform.
    """
    fmt = (format or "auto").lower()
    if fmt not in FORMATS:
        raise SiamsearchError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    paths = as_paths(path)
    if fmt == "auto":
        fmt = detect_format(paths)
    if fmt != "omniglot" and len(paths) > 1:
        raise SiamsearchError(f"several paths are only supported for Omniglot; give one {fmt} folder")
    if fmt in ("folders", "omniglot") and split not in (None, "all"):
        raise SiamsearchError(f"{fmt} data has no predefined split (got split={split!r}); "
                              f"use split_by_identity for class-disjoint train/validation sets")
    p = paths[0]
    if fmt == "folders":
        return open_folders(p)
    if fmt == "omniglot":
        return open_omniglot(paths)
    if fmt == "celeba":
        return open_celeba(p, split)
    names = {"mnist": [str(d) for d in range(10)], "fashion-mnist": FASHION_MNIST_CLASSES}.get(fmt)
    return open_idx(p, split, class_names=names)
