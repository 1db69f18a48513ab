"""The folder scan: which images a gallery's folder holds now, their size, mtime and label."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import SiamsearchError
from ..core.images import walk_image_dirs
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
    _stat: Optional[dict] = field(default=None, repr=False, compare=False)

    def stat(self) -> dict:
        """``relpath -> (size, mtime)`` (built once; do not modify it)."""
        if self._stat is None:
            self._stat = dict(zip(self.relpaths, zip(self.size.tolist(), self.mtime.tolist())))
        return self._stat


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
    if not source.is_dir():
        raise SiamsearchError(f"{source} is not a folder; give a folder of images")
    rels, sizes, mtimes, folder_labels, skipped = [], [], [], [], []
    for rel, full, label in _listing(source):
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            skipped.append((rel.encode("utf-8", "backslashreplace").decode("utf-8"),
                            "file name is not valid UTF-8; rename the file"))
            continue
        try:
            st = os.stat(full)
        except OSError as e:
            skipped.append((rel, f"missing or not readable ({e.strerror})"))
            continue
        rels.append(rel)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime)
        folder_labels.append(label)
    if label_mode is None:
        label_mode = "from-folder" if len(set(folder_labels) - {""}) >= 2 else "none"
    loose = [r for r, lab in zip(rels, folder_labels) if not lab]
    if label_mode == "from-folder" and loose:
        warnings.warn(loose_files_note(source, loose, "they are indexed without a label (searchable, but never "
                                                      "a prediction)"), stacklevel=3)
    labels = folder_labels if label_mode == "from-folder" else [""] * len(rels)
    return Scan(rels, np.asarray(sizes, "int64"), np.asarray(mtimes, "float64"), labels, skipped), label_mode


def _listing(source: Path) -> list:
    """``[(relative path, full path, label from the folder)]`` of the images below ``source``, in
    :func:`~siamsearch.core.images.list_images` order (sorted by path components). Built from strings,
    one folder at a time (the label is the folder's): a scan of a large folder stats every file, and is
    not slowed down further by work per file that a folder shares."""
    root = os.fspath(source)
    out = []
    for dirpath, names in walk_image_dirs(root):
        reldir = dirpath[len(root) + 1:] if dirpath.startswith(root + os.sep) else ""
        if os.sep != "/":
            reldir = reldir.replace(os.sep, "/")
        prefix = reldir + "/" if reldir else ""
        label = label_of(prefix + "file")
        key_prefix = prefix.replace("/", "\0")  # NUL sorts below every character of a name: the order of
        out += [(key_prefix + n, prefix + n, dirpath + os.sep + n, label) for n in names]  # path components
    out.sort()  # by the first element (unique): C string comparisons, no key function per file
    return [item[1:] for item in out]


def same_stat(size_a, mtime_a, size_b, mtime_b) -> bool:
    """True when two (size, mtime) pairs describe the same file version (mtime to the microsecond)."""
    return int(size_a) == int(size_b) and abs(float(mtime_a) - float(mtime_b)) < 1e-6
