"""CelebA: the ``celeba`` dataset format.

``celeba``: a folder with ``img_align_celeba/`` and ``identity_CelebA.txt``
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
from typing import Optional

import numpy as np

from ..core.errors import SiamsearchError
from ..core.files import PathLike
from .base import EntryBackend, ImageDataset


def celeba_files(folder: Path) -> Optional[dict]:
    """Paths of CelebA's parts under ``folder`` or ``None`` when it is not CelebA."""
    def first(*cands: Path) -> Optional[Path]:
        return next((c for c in cands if c.exists()), None)

    ident = first(folder / "identity_CelebA.txt", folder / "Anno" / "identity_CelebA.txt")
    imgs = first(folder / "img_align_celeba", folder / "Img" / "img_align_celeba")
    if ident is None or imgs is None or not imgs.is_dir():
        return None
    if (imgs / "img_align_celeba").is_dir():  # some mirrors nest the folder twice
        imgs = imgs / "img_align_celeba"
    part = first(folder / "list_eval_partition.txt", folder / "Eval" / "list_eval_partition.txt",
                 folder / "list_eval_partition.csv")
    return {"identity": ident, "images": imgs, "partition": part}


def _read_two_columns(path: Path, what: str) -> list[tuple[str, int]]:
    rows = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                if lineno == 1:  # header (e.g. the csv variant)
                    continue
                raise SiamsearchError(f"{path}:{lineno}: expected 'IMAGE {what}', got {line.strip()!r}")
            rows.append((parts[0], int(parts[1])))
    return rows


_CELEBA_SPLITS = {"train": 0, "valid": 1, "val": 1, "test": 2}


def open_celeba(folder: PathLike, split: Optional[str] = None) -> ImageDataset:
    """CelebA aligned faces with identities from ``identity_CelebA.txt``.

    Args:
        split: ``"train"``, ``"valid"`` (or ``"val"``), ``"test"`` (from
            ``list_eval_partition.txt``) or ``"all"``; default ``"train"`` when the
            partition file exists, else ``"all"``.

    Images listed in the identity file but absent from ``img_align_celeba/`` are
    dropped with one warning giving their count.
    """
    folder = Path(folder)
    parts = celeba_files(folder)
    if parts is None:
        raise SiamsearchError(f"{folder} is not a CelebA folder (needs img_align_celeba/ and identity_CelebA.txt)")
    rows = _read_two_columns(parts["identity"], "IDENTITY")
    if split is None:
        split = "train" if parts["partition"] is not None else "all"
    split = split.lower()
    if split != "all":
        if split not in _CELEBA_SPLITS:
            raise SiamsearchError(f"unknown CelebA split {split!r}; use train, valid, test or all")
        if parts["partition"] is None:
            raise SiamsearchError(f"{folder}: split {split!r} needs list_eval_partition.txt; "
                                  f"add it or use split='all'")
        part = dict(_read_two_columns(parts["partition"], "PARTITION"))
        want = _CELEBA_SPLITS[split]
        rows = [r for r in rows if part.get(r[0]) == want]
    present = set(os.listdir(parts["images"]))
    missing = [name for name, _ in rows if name not in present]
    notes = []
    if missing:
        notes.append(f"{folder}: {len(missing)} image(s) listed in {parts['identity'].name} are missing from "
                     f"{parts['images']} (e.g. {missing[0]}); they are skipped")
        warnings.warn(notes[-1])
        rows = [r for r in rows if r[0] in present]
    if not rows:
        raise SiamsearchError(f"{folder}: no CelebA images for split {split!r}")
    rows.sort()
    labels = np.asarray([r[1] for r in rows], np.int64)
    used, ids = np.unique(labels, return_inverse=True)
    backend = EntryBackend([str(parts["images"])], ["dir"], np.zeros(len(rows), np.int32), [r[0] for r in rows])
    ds = ImageDataset(backend, np.arange(len(rows)), ids.reshape(-1), [str(u) for u in used], "celeba",
                      root=str(folder))
    ds.notes.extend(notes)
    return ds
