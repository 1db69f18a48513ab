"""The folder scan: which images a gallery's folder holds now, their size, mtime and label."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.images import list_images
from ..core.choices import LABEL_MODES  # noqa: F401  (defined once there, torch-free)
from ..data.identity import identity_of, loose_files_note


@dataclass
class Scan:
    """The images below a folder: parallel lists of ``n`` entries, plus the files that were skipped.

    Attributes:
        relpaths: paths relative to the folder, ``/``-separated.
        size: ``[n]`` int64 bytes. mtime: ``[n]`` float64 seconds since the epoch.
        labels: label name per file (``""`` = none).
        skipped: ``(relative path, reason)`` of files that cannot be listed.
    """

    relpaths: list
    size: np.ndarray
    mtime: np.ndarray
    labels: list
    skipped: list = field(default_factory=list)

    def stat(self) -> dict:
        """``relpath -> (size, mtime)``."""
        return {r: (s, m) for r, s, m in zip(self.relpaths, self.size, self.mtime)}


def label_of(rel: str) -> str:
    """The label of a relative path with ``--labels from-folder``: its identity by the one rule datasets
    use too (:func:`siamsearch.data.identity.identity_of`: ``bob/2019/summer/x.jpg`` is ``bob``);
    ``""`` for a file at the top of the folder."""
    return identity_of(rel) or ""


def scan_folder(source: Path, label_mode: Optional[str]) -> tuple[Scan, str]:
    """List the images below ``source`` and decide the label mode.

    Args:
        label_mode: ``from-folder``, ``none``, or ``None``: from-folder when the images lie in at
            least two identity sub-folders (images at the top of the folder then stay unlabelled,
            with a warning naming them, instead of unlabelling the whole gallery).

    Returns:
        The :class:`Scan` and the label mode used.

    Warns:
        UserWarning: with labels from folders, for image files at the top of ``source``.
    """
    rels, sizes, mtimes, skipped = [], [], [], []
    for p in list_images(source):
        rel = p.relative_to(source).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            skipped.append((rel.encode("utf-8", "backslashreplace").decode("utf-8"),
                            "file name is not valid UTF-8; rename the file"))
            continue
        try:
            st = p.stat()
        except OSError as e:
            skipped.append((rel, f"missing or not readable ({e.strerror})"))
            continue
        rels.append(rel)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime)
    if label_mode is None:
        parents = {label_of(r) for r in rels} - {""}
        label_mode = "from-folder" if len(parents) >= 2 else "none"
    loose = [r for r in rels if not label_of(r)]
    if label_mode == "from-folder" and loose:
        warnings.warn(loose_files_note(source, loose, "they are indexed without a label (searchable, but never "
                                                      "a prediction)"), stacklevel=3)
    labels = [label_of(r) for r in rels] if label_mode == "from-folder" else [""] * len(rels)
    return Scan(rels, np.asarray(sizes, "int64"), np.asarray(mtimes, "float64"), labels, skipped), label_mode


def same_stat(size_a, mtime_a, size_b, mtime_b) -> bool:
    """True when two (size, mtime) pairs describe the same file version (mtime to the microsecond)."""
    return int(size_a) == int(size_b) and abs(float(mtime_a) - float(mtime_b)) < 1e-6
