"""The folder scan: which images a gallery's folder holds now, their size, mtime and label."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.images import list_images
from ..core.choices import LABEL_MODES  # noqa: F401  (defined once there, torch-free)


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
    """The label of a relative path with ``--labels from-folder``: its folder (``""`` at the top)."""
    return rel.rpartition("/")[0]


def scan_folder(source: Path, label_mode: Optional[str]) -> tuple[Scan, str]:
    """List the images below ``source`` and decide the label mode.

    Args:
        label_mode: ``from-folder``, ``none``, or ``None``: from-folder when every image
            sits in a subfolder and there are at least two subfolders.

    Returns:
        The :class:`Scan` and the label mode used.
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
        parents = {label_of(r) for r in rels}
        label_mode = "from-folder" if rels and "" not in parents and len(parents) >= 2 else "none"
    labels = [label_of(r) for r in rels] if label_mode == "from-folder" else [""] * len(rels)
    return Scan(rels, np.asarray(sizes, "int64"), np.asarray(mtimes, "float64"), labels, skipped), label_mode


def same_stat(size_a, mtime_a, size_b, mtime_b) -> bool:
    """True when two (size, mtime) pairs describe the same file version (mtime to the microsecond)."""
    return int(size_a) == int(size_b) and abs(float(mtime_a) - float(mtime_b)) < 1e-6
