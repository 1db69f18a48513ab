"""The local gallery format: one ``gallery.h5`` per gallery (HDF5, read with h5py).

One row per embedded image, rows never reordered except by compaction.
Datasets (all ``[N]`` unless said): ``embeddings [N, d] float32`` (chunked,
resizable), ``ids`` int64 (``ids[i] == i``, the Faiss ids), ``paths`` UTF-8
(relative to the ``source_dir`` attribute, ``/``-separated), ``labels`` int64
(index into ``label_names``, -1 = none), ``label_names [L]``,
``content_sha256`` (64 hex chars), ``mtime`` float64 seconds, ``size`` int64
bytes, ``deleted`` uint8 (1 = the file was removed or replaced; not searched),
``skipped_paths`` / ``skipped_reasons`` (files that could not be read).
Attributes: format, format_version, siamsearch_version, created, updated (ISO
8601 UTC), model_fingerprint, model_config (JSON), model_path, source_dir,
label_mode, requested_factory, index_sha256, generation, rewrite_bytes and
rewrite_rows (size and rows when last written complete; see :mod:`siamsearch.gallery.write`).

:class:`GalleryFile` reads it (it implements :class:`siamsearch.gallery.store.GalleryReader`),
:class:`GalleryWriter` streams a complete new file under a temporary name, or patches a byte
copy of the committed file there (:meth:`GalleryWriter.patch_copy`, what an update does);
:func:`siamsearch.gallery.store.commit` publishes it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence

import h5py
import numpy as np

from ..core.errors import GalleryError

FORMAT = "siamsearch.gallery"
FORMAT_VERSION = 1
H5_NAME = "gallery.h5"
#: Rows per HDF5 chunk (and per journal segment, see :mod:`siamsearch.gallery.store`).
CHUNK_ROWS = 2048
#: Rows read or copied per block when streaming (bounds memory: 64k x 128 floats = 32 MB).
BLOCK_ROWS = 65536

_STR = h5py.string_dtype("utf-8")
ROW_DATASETS = ("embeddings", "ids", "paths", "labels", "content_sha256", "mtime", "size", "deleted")


def rebuild_hint(folder: os.PathLike | str) -> str:
    """The sentence every damaged-gallery error ends with: the rebuild command, with the image folder and
    model the gallery's ``manifest.json`` records (placeholders only when it is unreadable too)."""
    import json

    source, model = "IMAGE_DIR", "MODEL.pt"
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
        source = str(manifest.get("source_dir") or source)
        model = str((manifest.get("model") or {}).get("path") or model)
    except (OSError, ValueError, AttributeError):
        pass
    return (f"rebuild it with `siamsearch index build {source} --model {model} --out {folder} --overwrite` "
            f"(or delete {folder} and build again)")


# --------------------------------------------------------------------------- reading gallery.h5


class GalleryFile:
    """Read-only access to a ``gallery.h5``, validated on open.

    Raises:
        GalleryError: when the file is missing, not HDF5, not a siamsearch
            gallery, written by a newer version, or internally inconsistent;
            the message says how to rebuild.
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        folder = self.path.parent
        if not self.path.is_file():
            raise GalleryError(f"{folder} is not a gallery (no {H5_NAME}); build one with "
                               f"`siamsearch index build IMAGE_DIR --model MODEL.pt --out {folder}`")
        try:
            self.h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise GalleryError(f"{self.path} is damaged or not an HDF5 file ({_first_line(e)}); "
                               f"{rebuild_hint(folder)}") from None
        self._attrs: Optional[dict] = None
        try:
            self._validate()
            self._shape = tuple(int(v) for v in self.h5["embeddings"].shape)
        except GalleryError:
            self.h5.close()
            raise
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as e:
            self.h5.close()
            raise GalleryError(f"{self.path} is damaged ({type(e).__name__}: {_first_line(e)}); "
                               f"{rebuild_hint(folder)}") from None

    def _validate(self) -> None:
        a = self.h5.attrs
        folder = self.path.parent
        if a.get("format") != FORMAT:
            raise GalleryError(f"{self.path} is an HDF5 file but not a siamsearch gallery; {rebuild_hint(folder)}")
        if int(a.get("format_version", 0)) > FORMAT_VERSION:
            raise GalleryError(f"{self.path} was written by a newer siamsearch (format {a['format_version']}); "
                               "upgrade siamsearch")
        missing = [k for k in ROW_DATASETS + ("label_names", "skipped_paths", "skipped_reasons") if k not in self.h5]
        if missing:
            raise GalleryError(f"{self.path} is damaged (missing {', '.join(missing)}); {rebuild_hint(folder)}")
        n, d = self.h5["embeddings"].shape
        bad = [k for k in ROW_DATASETS[1:] if self.h5[k].shape != (n,)]
        if bad or d != int(a["embedding_dim"]):
            raise GalleryError(f"{self.path} is damaged (datasets {', '.join(bad) or 'embeddings'} disagree in "
                               f"length or width); {rebuild_hint(folder)}")
        for key in ("model_fingerprint", "model_config", "source_dir", "index_sha256", "generation"):
            if key not in a:
                raise GalleryError(f"{self.path} is damaged (attribute {key} missing); {rebuild_hint(folder)}")

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> "GalleryFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def attrs(self) -> dict:
        """The file attributes as plain Python values (a copy; read once: the file is open read-only, and a
        gallery is changed by writing a new file, so they cannot change under this handle. Reading them
        through h5py took ~1 ms, a third of a served search's own CPU when it was done per request)."""
        if self._attrs is None:
            self._attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in self.h5.attrs.items()}
        return dict(self._attrs)

    @property
    def n_rows(self) -> int:
        """Rows stored, deleted ones included."""
        return self._shape[0]

    @property
    def dim(self) -> int:
        return self._shape[1]

    def deleted(self) -> np.ndarray:
        """``[N]`` bool: rows whose file was removed or replaced (kept as tombstones until compaction)."""
        return self.h5["deleted"][:].astype(bool)

    def live_ids(self) -> np.ndarray:
        """Row ids not deleted, ascending, int64."""
        return np.flatnonzero(~self.deleted()).astype("int64")

    def relpaths(self) -> list:
        return list(self.h5["paths"].asstr()[:])

    def labels(self) -> np.ndarray:
        return self.h5["labels"][:].astype("int64")

    def label_names(self) -> list:
        return list(self.h5["label_names"].asstr()[:])

    def sha256(self) -> list:
        return [s.decode("ascii") for s in self.h5["content_sha256"][:]]

    def mtime(self) -> np.ndarray:
        return self.h5["mtime"][:]

    def size(self) -> np.ndarray:
        return self.h5["size"][:]

    def skipped(self) -> list:
        """``[(relative path, reason)]`` of files that could not be read at the last build/update."""
        return list(zip(self.h5["skipped_paths"].asstr()[:], self.h5["skipped_reasons"].asstr()[:]))

    def embeddings(self, ids: Optional[np.ndarray] = None) -> np.ndarray:
        """Embeddings ``[m, d]`` float32 of row ``ids`` (any order, repeats allowed), or of all rows."""
        ds = self.h5["embeddings"]
        if ids is None:
            return ds[:]
        ids = np.asarray(ids, dtype="int64").reshape(-1)
        if not len(ids):
            return np.zeros((0, self.dim), dtype="float32")
        if ids.min() < 0 or ids.max() >= self.n_rows:
            raise GalleryError(f"row ids out of range 0..{self.n_rows - 1}")
        uniq, inverse = np.unique(ids, return_inverse=True)
        if len(uniq) > self.n_rows // 8:  # many rows: one sequential pass beats scattered reads
            table = np.concatenate([ds[s:s + BLOCK_ROWS] for s in range(0, self.n_rows, BLOCK_ROWS)])[uniq]
        else:
            table = ds[uniq]
        return table[inverse]

    def source(self, ids: Optional[np.ndarray] = None) -> "H5Source":
        """A :class:`~siamsearch.gallery.ann.VectorSource` over rows ``ids`` (default: live rows)."""
        return H5Source(self, self.live_ids() if ids is None else np.asarray(ids, dtype="int64"))


class H5Source:
    """Rows of a :class:`GalleryFile` streamed in blocks (a :class:`~siamsearch.gallery.ann.VectorSource`)."""

    def __init__(self, file: GalleryFile, ids: np.ndarray):
        self.file = file
        self.ids = np.sort(ids)
        self.dim = file.dim

    def __len__(self) -> int:
        return len(self.ids)

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ds = self.file.h5["embeddings"]
        rows = max(int(rows), 1)
        for s in range(0, self.file.n_rows, rows):
            lo, hi = np.searchsorted(self.ids, [s, s + rows])
            if hi > lo:
                want = self.ids[lo:hi]
                yield want, ds[s:s + rows][want - s]

    def sample(self, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pick = np.sort(np.random.default_rng(seed).choice(len(self.ids), min(m, len(self.ids)), replace=False))
        chosen = self.ids[pick]
        parts = [x[np.isin(ids, chosen)] for ids, x in self.blocks(BLOCK_ROWS)]
        return chosen, (np.concatenate(parts) if parts else np.zeros((0, self.dim), "float32"))


# --------------------------------------------------------------------------- writing gallery.h5


class GalleryWriter:
    """Streams a complete new ``gallery.h5`` into ``path`` (a temporary name), block by block."""

    def __init__(self, path: os.PathLike | str, dim: int, attrs: dict, expected_rows: int = CHUNK_ROWS):
        self.path = os.fspath(path)
        self.dim = int(dim)
        self.n = 0
        self.h5 = h5py.File(self.path, "w")
        c = int(min(CHUNK_ROWS, max(64, expected_rows)))  # small galleries get small chunks
        self.h5.create_dataset("embeddings", shape=(0, self.dim), maxshape=(None, self.dim), dtype="float32",
                               chunks=(c, self.dim))
        for name, dtype in (("ids", "int64"), ("paths", _STR), ("labels", "int64"), ("content_sha256", "S64"),
                            ("mtime", "float64"), ("size", "int64"), ("deleted", "uint8")):
            self.h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(c,))
        for key, value in attrs.items():
            self.h5.attrs[key] = value
        self.h5.attrs["format"] = FORMAT
        self.h5.attrs["format_version"] = FORMAT_VERSION
        self.h5.attrs["embedding_dim"] = self.dim

    def append(self, relpaths: Sequence[str], labels: np.ndarray, sha256: Sequence[str], mtime: np.ndarray,
               size: np.ndarray, embeddings: np.ndarray, deleted: np.ndarray) -> np.ndarray:
        """Append ``b`` rows; returns their row ids ``[b]``."""
        b = len(relpaths)
        if not b:
            return np.zeros(0, dtype="int64")
        lo, hi = self.n, self.n + b
        values = {"embeddings": np.ascontiguousarray(embeddings, dtype="float32"),
                  "ids": np.arange(lo, hi, dtype="int64"), "paths": list(relpaths),
                  "labels": np.asarray(labels, dtype="int64"),
                  "content_sha256": np.asarray([s.encode("ascii") for s in sha256], dtype="S64"),
                  "mtime": np.asarray(mtime, dtype="float64"), "size": np.asarray(size, dtype="int64"),
                  "deleted": np.asarray(deleted, dtype="uint8")}
        for name, v in values.items():
            ds = self.h5[name]
            ds.resize(hi, axis=0)
            ds[lo:hi] = v
        self.n = hi
        return values["ids"]

    @classmethod
    def patch_copy(cls, committed: os.PathLike | str, path: os.PathLike | str,
                   rows_after: int) -> Optional["GalleryWriter"]:
        """A writer over a byte copy of the ``committed`` file at ``path``, to patch instead of rewriting.

        An update then writes only what changes (new rows appended, the ``deleted`` and ``mtime``
        columns, label names and skipped files when they differ); the committed file is never opened
        for writing, so a crash still leaves the published gallery intact.

        Returns:
            the writer (:attr:`n` = the rows already there), or ``None`` when the file cannot be patched
            (datasets not resizable, or chunks too small for ``rows_after`` rows: a full rewrite
            chooses the chunk size again); ``path`` is then removed.
        """
        shutil.copyfile(committed, path)
        self = cls.__new__(cls)
        self.path = os.fspath(path)
        try:
            self.h5 = h5py.File(self.path, "a")
        except OSError:
            os.unlink(self.path)
            return None
        try:
            emb = self.h5["embeddings"]
            self.dim, self.n = int(emb.shape[1]), int(emb.shape[0])
            ok = all(self.h5[k].maxshape[0] is None and self.h5[k].chunks is not None for k in ROW_DATASETS)
            if ok and emb.chunks[0] >= min(CHUNK_ROWS, rows_after):
                return self
        except (OSError, KeyError, ValueError):
            pass
        self.abort()
        return None

    def set_column(self, name: str, values: np.ndarray) -> None:
        """Overwrite the first ``len(values)`` entries of row dataset ``name`` (``deleted``, ``mtime``)."""
        ds = self.h5[name]
        ds[: len(values)] = np.asarray(values, dtype=ds.dtype)

    def _replace(self, name: str, values: list) -> None:
        if name in self.h5:
            if list(self.h5[name].asstr()[:]) == values:
                return  # unchanged (a patched copy): not rewritten
            del self.h5[name]
        self.h5.create_dataset(name, data=values, dtype=_STR)

    def finish(self, label_names: Sequence[str], skipped: Sequence[tuple], attrs: dict) -> None:
        """Write the label names, the skipped files and the final attributes, then close."""
        self._replace("label_names", list(label_names))
        self._replace("skipped_paths", [p for p, _ in skipped])
        self._replace("skipped_reasons", [r for _, r in skipped])
        for key, value in attrs.items():
            self.h5.attrs[key] = value
        self.h5.close()

    def abort(self) -> None:
        try:
            self.h5.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


def stamp(path: os.PathLike | str, attrs: dict) -> None:
    """Set attributes on a closed ``gallery.h5`` written by :class:`GalleryWriter` (before it is published)."""
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            f.attrs[key] = value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
