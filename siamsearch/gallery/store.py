"""A gallery folder and the interface its row store offers: what build, update and search use.

Layout of ``index/NAME/`` (see index/README.md for a reader's guide):

* the row store: ``gallery.h5`` (one HDF5 file, :mod:`siamsearch.gallery.hdf5`) or
  Parquet shards with ``shards.json`` (:mod:`siamsearch.gallery.shards`), one row per
  embedded image; both read through :class:`GalleryReader` (:func:`open_reader`).
* ``faiss.index``: the Faiss index; its ids are the store's row ids.
* ``manifest.json``: a human-readable summary (index choice and parameters,
  counts, skipped files); derived, rewritten after every commit.
* ``.pending/``: journal of an unfinished build or update (removed on commit).

Crash safety. The row store and ``faiss.index`` are only ever replaced whole:
a new version is written under a temporary name, fsynced, then renamed over
the old one (POSIX rename is atomic), so a crash leaves either the old or the
new file, never a torn one. An HDF5 file appended in place can be left
unreadable by a kill at the wrong moment, which is why rows embedded during a
build go first to the journal: every ``CHUNK_ROWS`` rows one segment file
(``seg-NNNNNN.npz``) is written atomically. A killed build re-run finds the
segments, keeps the rows whose files are unchanged, and embeds only the rest.
The index is tied to the store it was built from by ``index_sha256``; a
mismatch (a crash between the two renames) marks the index stale and the next
build or update rebuilds it from the embeddings.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from ..core.errors import GalleryError
from ..core.files import atomic_path, fsync_path, write_json_atomic
from ..core.images import sha256_file
from . import hdf5
from .ann import AnnIndex
from .hdf5 import BLOCK_ROWS, FORMAT, FORMAT_VERSION, H5_NAME, GalleryFile, GalleryWriter, rebuild_hint
from .shards import ShardedReader, is_sharded

__all__ = ["GalleryReader", "RowBlock", "PendingLog", "FolderLock", "GalleryFile", "GalleryWriter", "commit",
           "open_reader", "index_is_current", "BLOCK_ROWS", "CHUNK_ROWS", "FORMAT", "FORMAT_VERSION", "H5_NAME",
           "INDEX_NAME", "MANIFEST_NAME", "PENDING_NAME", "rebuild_hint"]

INDEX_NAME = "faiss.index"
MANIFEST_NAME = "manifest.json"
PENDING_NAME = ".pending"
LOCK_NAME = ".lock"
#: Rows per journal segment (a killed build loses at most this many embeddings).
CHUNK_ROWS = 2048


def now_iso() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class RowBlock:
    """Rows about to be stored: ``b`` images and their embeddings ``[b, d]``."""

    relpaths: list
    labels: list  # label names; "" = no label
    sha256: list
    mtime: np.ndarray  # float64 seconds
    size: np.ndarray  # int64 bytes
    embeddings: np.ndarray  # float32 [b, d]

    def __len__(self) -> int:
        return len(self.relpaths)


# --------------------------------------------------------------------------- the row store interface


class GalleryReader(Protocol):
    """What the gallery reads from its row store (``gallery.h5`` or a sharded store).

    Rows have dense int64 ids ``0..n_rows-1`` (the Faiss ids); deleted rows stay
    until a compaction renumbers them. Per-row arrays cover all rows, deleted ones included.
    """

    path: Path

    @property
    def attrs(self) -> dict:
        """Store attributes as plain values: model_fingerprint, model_config, source_dir, label_mode, ..."""
        ...

    @property
    def n_rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def deleted(self) -> np.ndarray:
        """``[N]`` bool tombstones."""
        ...

    def live_ids(self) -> np.ndarray:
        """``[n_live]`` int64 ids of rows not deleted, ascending."""
        ...

    def relpaths(self) -> list: ...

    def labels(self) -> np.ndarray:
        """``[N]`` int64 codes into :meth:`label_names` (-1 = none)."""
        ...

    def label_names(self) -> list: ...

    def sha256(self) -> list: ...

    def mtime(self) -> np.ndarray: ...

    def size(self) -> np.ndarray: ...

    def skipped(self) -> list:
        """``[(relative path, reason)]`` of files the last build/update could not read."""
        ...

    def embeddings(self, ids: Optional[np.ndarray] = None) -> np.ndarray:
        """``[m, d]`` float32 embeddings of rows ``ids`` (any order), or of all rows."""
        ...

    def source(self, ids: Optional[np.ndarray] = None):
        """A :class:`~siamsearch.gallery.ann.VectorSource` streaming rows ``ids`` (default: live rows)."""
        ...

    def close(self) -> None: ...


def open_reader(folder: os.PathLike | str) -> GalleryReader:
    """The row store of the gallery folder ``folder``, validated.

    Raises:
        GalleryError: no gallery there, or it is damaged (the message says how to rebuild).
    """
    if is_sharded(folder):
        return ShardedReader(folder)
    if not (Path(folder) / H5_NAME).is_file() and (Path(folder) / PENDING_NAME).is_dir():
        raise GalleryError(f"{folder} holds no gallery yet: its first build was interrupted before it published; "
                           f"re-run that `siamsearch index build IMAGE_DIR --model MODEL.pt --out {folder}` to "
                           "finish it (what it embedded is kept)")
    return GalleryFile(Path(folder) / H5_NAME)


def has_store(folder: os.PathLike | str) -> bool:
    """True when ``folder`` holds a committed row store (of any format)."""
    return (Path(folder) / H5_NAME).exists() or is_sharded(folder)


def temp_store_path(folder: Path) -> str:
    """A fresh temporary name for the next ``gallery.h5``, in the gallery folder."""
    return str(folder / f".{H5_NAME}.{uuid.uuid4().hex[:8]}.tmp")


# --------------------------------------------------------------------------- the journal


def same_session(stored: Any, session: dict) -> bool:
    """Whether a journal's recorded session is ``session``; one written before journals recorded the
    precision (no ``precision`` key) matches on the rest, as it did then."""
    if isinstance(stored, dict) and "precision" not in stored:
        session = {k: v for k, v in session.items() if k != "precision"}
    return stored == session


class PendingLog:
    """Rows embedded by an unfinished build/update, in atomically written segment files.

    The journal belongs to one model, source folder, label mode and precision (``session.json``);
    a journal left by another is discarded (rows of another precision would make the gallery's
    recorded precision untrue).
    """

    def __init__(self, folder: os.PathLike | str, fingerprint: str, source_dir: str, dim: int, label_mode: str,
                 precision: str = "fp32"):
        self.dir = Path(folder) / PENDING_NAME
        self.session = {"fingerprint": fingerprint, "source_dir": source_dir, "dim": int(dim),
                        "label_mode": label_mode, "precision": precision}
        info = self.dir / "session.json"
        if self.dir.exists():
            try:
                same = same_session(json.loads(info.read_text(encoding="utf-8")), self.session)
            except (OSError, ValueError):
                same = False
            if not same:
                self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not info.exists():
            write_json_atomic(info, self.session)
        for stray in self.dir.glob(".*.tmp"):  # left by a kill during a segment write
            stray.unlink()

    def segments(self) -> list:
        return sorted(self.dir.glob("seg-*.npz"))

    def write(self, rows: RowBlock) -> None:
        """Store ``rows`` as the next segment, atomically."""
        if not len(rows):
            return
        segs = self.segments()
        number = int(segs[-1].stem.split("-")[1]) + 1 if segs else 1
        target = self.dir / f"seg-{number:06d}.npz"
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, relpaths=np.asarray(rows.relpaths, dtype=str), labels=np.asarray(rows.labels, dtype=str),
                         sha256=np.asarray(rows.sha256, dtype="S64"), mtime=np.asarray(rows.mtime, "float64"),
                         size=np.asarray(rows.size, "int64"), embeddings=np.asarray(rows.embeddings, "float32"))

    def read(self, segment: Path, embeddings: bool = True) -> Optional[RowBlock]:
        """One segment's rows (``None`` when the file is unreadable: it is then ignored and re-embedded)."""
        try:
            with np.load(segment, allow_pickle=False) as z:
                emb = z["embeddings"] if embeddings else np.zeros((len(z["relpaths"]), 0), "float32")
                return RowBlock([str(p) for p in z["relpaths"]], [str(x) for x in z["labels"]],
                                [s.decode("ascii") for s in z["sha256"]], z["mtime"], z["size"], emb)
        except (OSError, ValueError, KeyError):
            return None

    def clear(self) -> None:
        clear_pending(self.dir.parent)


# --------------------------------------------------------------------------- the folder


class FolderLock:
    """An exclusive lock on a gallery folder, so two builds cannot interleave."""

    def __init__(self, folder: os.PathLike | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.f = open(self.folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise GalleryError(f"another build or update is running on {self.folder}; wait for it to finish") from None
        except OSError as e:  # ENOSYS, ENOLCK...: the filesystem cannot lock
            self.f.close()
            raise GalleryError(f"cannot lock {self.folder / LOCK_NAME} ({e.strerror}): its filesystem does not "
                               "support flock (Lustre: mount with -o flock); build on a local disk or NFS "
                               "and copy the gallery there, see docs/scale.md") from None

    def release(self) -> None:
        if not self.f.closed:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
            self.f.close()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def index_is_current(folder: Path, attrs: dict) -> bool:
    """True when ``faiss.index`` is the very file ``gallery.h5`` was committed with (by SHA-256)."""
    path = folder / INDEX_NAME
    return path.is_file() and sha256_file(path) == attrs.get("index_sha256")


def commit(folder: Path, h5_tmp: str, ann: AnnIndex, manifest: dict, attrs: Optional[dict] = None) -> dict:
    """Publish a new gallery: index and HDF5 file renamed into place, then the manifest.

    ``h5_tmp`` is a complete ``gallery.h5`` written by :class:`GalleryWriter`; ``attrs`` are
    set on it together with ``index_sha256`` and ``generation`` (returned).
    """
    with atomic_path(folder / INDEX_NAME) as index_tmp:
        ann.save(index_tmp)
        stamp = dict(attrs or {}, index_sha256=sha256_file(index_tmp), generation=uuid.uuid4().hex)
        hdf5.stamp(h5_tmp, stamp)
        fsync_path(h5_tmp)
        # faiss.index is renamed when this block ends; gallery.h5 right after (the commit point).
    os.replace(h5_tmp, folder / H5_NAME)
    _fsync_dir(folder)
    manifest = dict(manifest, generation=stamp["generation"])
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return stamp


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clear_pending(folder: Path) -> None:
    """Drop the journal of an interrupted run (its rows will be embedded again)."""
    shutil.rmtree(Path(folder) / PENDING_NAME, ignore_errors=True)


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files a killed build left behind (never the committed files)."""
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass
