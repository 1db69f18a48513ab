"""Gallery: a folder of images embedded by one model, stored in HDF5 with a Faiss index, searchable.

Python API::

    from siamsearch import Gallery
    g = Gallery.build("photos/", model="model.pt")          # -> index/photos/
    g = Gallery.open("index/photos")                         # later, e.g. in another process
    report = g.update()                                      # re-scan: new, changed, removed files
    result = g.search(["query.jpg"], k=5)                    # distances [1, 5], ids, paths, labels
    g.embeddings, g.paths, g.labels, g.info()

Building and updating share one procedure (:func:`_sync`): scan the folder,
keep rows whose files are unchanged (size and mtime, else content hash),
embed new and changed files in streamed batches into the journal, drop rows of
removed files, then publish a new ``gallery.h5`` and ``faiss.index`` atomically
(see :mod:`siamsearch.gallery.store`). A killed build re-run resumes from the
journal.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .._version import __version__
from ..core.errors import FingerprintMismatch, GalleryError, SiamsearchError
from ..core.images import list_images, sha256_file
from . import ann as _ann
from . import store as _store
from .store import GalleryFile, RowBlock

PathLike = Union[str, os.PathLike]
LABEL_MODES = ("from-folder", "none")
#: Embedding norms farther than this from 1 are refused as query embeddings.
NORM_TOLERANCE = 1e-3
#: An approximate index is rebuilt (re-trained, re-tuned) when the gallery has grown or shrunk by this factor.
RETUNE_FACTOR = 2.0


def default_workers() -> int:
    """DataLoader workers used when none are given: one per spare core, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SearchResult:
    """The k nearest gallery entries of each query; validated and read-only.

    Attributes:
        distances: ``[Q, k]`` float32 Euclidean distances in [0, 2], ascending in each row.
        ids: ``[Q, k]`` int64 gallery row ids (``gallery.h5`` rows), unique in each row.
        paths: ``Q`` tuples of ``k`` absolute image paths.
        labels: ``Q`` tuples of ``k`` label names (``None`` for unlabelled entries).
        label_ids: ``[Q, k]`` int64 label codes (-1 = none), indexes into ``Gallery.label_names``.

    ``k`` is ``min(requested k, live gallery size)``.
    """

    distances: np.ndarray
    ids: np.ndarray
    paths: tuple
    labels: tuple
    label_ids: np.ndarray

    def __post_init__(self) -> None:
        d, i, lab = self.distances, self.ids, self.label_ids
        if d.ndim != 2 or d.shape != i.shape or d.shape != lab.shape or d.dtype != np.float32 or i.dtype != np.int64:
            raise ValueError(f"SearchResult: inconsistent arrays {d.shape}/{d.dtype}, {i.shape}/{i.dtype}, {lab.shape}")
        if len(self.paths) != d.shape[0] or any(len(r) != d.shape[1] for r in self.paths):
            raise ValueError("SearchResult: paths do not match the id array")
        if len(self.labels) != d.shape[0] or any(len(r) != d.shape[1] for r in self.labels):
            raise ValueError("SearchResult: labels do not match the id array")
        if d.size:
            if not np.isfinite(d).all() or d.min() < 0 or d.max() > 2.0 + 1e-3:
                raise ValueError("SearchResult: distances must be finite and in [0, 2]")
            if (np.diff(d, axis=1) < 0).any():
                raise ValueError("SearchResult: distances must be sorted ascending in each row")
            if i.min() < 0:
                raise ValueError("SearchResult: missing neighbours (-1 ids)")
            srt = np.sort(i, axis=1)
            if (srt[:, 1:] == srt[:, :-1]).any():
                raise ValueError("SearchResult: ids must be unique in each row")
        for a in (d, i, lab):
            a.flags.writeable = False

    @property
    def k(self) -> int:
        return int(self.distances.shape[1])

    def __len__(self) -> int:
        """Number of queries."""
        return int(self.distances.shape[0])

    def neighbours(self, q: int = 0) -> list[dict]:
        """The neighbours of query ``q`` as dicts: rank, id, distance, path, label."""
        return [{"rank": r + 1, "id": int(self.ids[q, r]), "distance": float(self.distances[q, r]),
                 "path": self.paths[q][r], "label": self.labels[q][r]} for r in range(self.k)]

    def to_dict(self) -> dict:
        """JSON-ready: ``{"k": k, "queries": [[neighbour, ...], ...]}``."""
        return {"k": self.k, "queries": [self.neighbours(q) for q in range(len(self))]}


@dataclass(frozen=True)
class BuildReport:
    """What a build or update did.

    Attributes:
        files: image files found in the folder.
        added, changed, removed, unchanged: files newly embedded, re-embedded after a
            content change, dropped because they disappeared, kept as they were.
        resumed: rows recovered from an interrupted run's journal instead of re-embedded.
        skipped: ``(relative path, reason)`` for files that could not be read.
        embedded: images embedded in this run; seconds: wall time; index: what happened
            to the Faiss index (``built``, ``rebuilt``, ``updated``, ``unchanged``).
    """

    folder: str
    source_dir: str
    files: int
    added: int
    changed: int
    removed: int
    unchanged: int
    resumed: int
    skipped: tuple
    embedded: int
    seconds: float
    index: str
    factory: str
    rows: int = 0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"folder": self.folder, "source_dir": self.source_dir, "files": self.files, "added": self.added,
                "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged,
                "resumed": self.resumed, "embedded": self.embedded, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 1), "index": self.index,
                "factory": self.factory, "rows": self.rows,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}

    def summary(self) -> str:
        """The end-of-run summary printed by the CLI."""
        lines = [f"{self.folder}: {self.rows} images indexed from {self.source_dir} "
                 f"({self.added} added, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged"
                 + (f", {self.resumed} resumed from an interrupted run" if self.resumed else "") + ")",
                 f"embedded {self.embedded} images in {self.seconds:.1f} s"
                 + (f" ({self.images_per_second:.1f} images/s)" if self.embedded >= 100 else "")
                 + f"; index {self.factory} {self.index}"]
        if self.skipped:
            lines.append(f"warning: skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {p}: {r}" for p, r in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------- the gallery


class Gallery:
    """A searchable gallery folder (``gallery.h5`` + ``faiss.index`` + ``manifest.json``).

    Create with :meth:`build`, reopen with :meth:`open`. Arrays cover the live
    (not deleted) rows, in row order, aligned with :attr:`ids`.
    """

    def __init__(self, folder: PathLike, file: GalleryFile, index: _ann.AnnIndex, model: Any = None,
                 report: Optional[BuildReport] = None):
        self.folder = Path(folder)
        self._file = file
        self.index = index
        self._model = model
        self.last_report = report
        self._cache: dict = {}

    # ---- construction

    @classmethod
    def build(cls, image_dir: PathLike, model: Any, out: Optional[PathLike] = None, factory: str = "auto",
              batch_size: int = 64, workers: Optional[int] = None, device: str = "auto",
              labels: Optional[str] = None, strict: bool = False, progress: bool = True,
              overwrite: bool = False) -> "Gallery":
        """Embed every image below ``image_dir`` and index it.

        Args:
            image_dir: folder scanned recursively (extensions of :data:`siamsearch.core.images.IMAGE_EXTENSIONS`).
            model: checkpoint path or a loaded :class:`~siamsearch.core.embedder.Embedder`.
            out: gallery folder; default ``index/<name of image_dir>``.
            factory: ``auto``, ``Flat``, ``HNSW32``, ``IVF``, ``IVF4096`` or a Faiss factory string.
            batch_size: images per forward pass. workers: image-decoding processes (default
                :func:`default_workers`). device: ``auto``, ``cpu`` or ``cuda`` (for a path ``model``).
            labels: ``"from-folder"`` (label = the image's folder relative to ``image_dir``),
                ``"none"``, or ``None`` to decide: from-folder when every image sits in a subfolder
                and there are at least two.
            strict: raise instead of skipping unreadable files (nothing is published then).
            overwrite: replace an existing gallery made from another folder or model.

        If ``out`` already holds a gallery of the same folder and model (or the journal
        of a killed build), the build resumes: only missing or changed files are embedded.

        Returns:
            The opened :class:`Gallery`; :attr:`last_report` says what was done.

        Raises:
            FingerprintMismatch: ``out`` holds a gallery made by another model (use ``overwrite``).
            GalleryError: ``out`` holds a gallery of another folder, or is damaged (use ``overwrite``).
            SiamsearchError: with ``strict``, when any file could not be read.
        """
        source = Path(image_dir)
        if not source.is_dir():
            raise SiamsearchError(f"{source} is not a folder; give the folder of images to index")
        source = source.resolve()
        folder = Path(out) if out is not None else Path("index") / source.name
        if labels is not None and labels not in LABEL_MODES:
            raise SiamsearchError(f"labels must be one of {', '.join(LABEL_MODES)} or None, got {labels!r}")
        embedder = _load_embedder(model, device)
        with _store.FolderLock(folder):
            old = None
            if (folder / _store.H5_NAME).exists() and not overwrite:
                old = GalleryFile(folder / _store.H5_NAME)
                a = old.attrs
                try:
                    if a["model_fingerprint"] != embedder.fingerprint:
                        raise FingerprintMismatch(
                            f"{folder} was built with model {a['model_fingerprint']}, not {embedder.fingerprint} "
                            f"({embedder.path or 'the given model'}); use --overwrite to rebuild it with this "
                            "model, or choose another --out")
                    if a["source_dir"] != str(source):
                        raise GalleryError(f"{folder} indexes {a['source_dir']}, not {source}; use --overwrite to "
                                           "replace it, or choose another --out")
                    if labels is not None and labels != a.get("label_mode"):
                        raise GalleryError(f"{folder} was built with --labels {a.get('label_mode')}; use "
                                           f"--overwrite to rebuild with --labels {labels}")
                except SiamsearchError:
                    old.close()
                    raise
            elif overwrite:
                _store.clear_pending(folder)
            try:
                report = _sync(folder, source, embedder, old, factory=factory, label_mode=labels, strict=strict,
                               batch_size=batch_size, workers=workers, progress=progress)
            finally:
                if old is not None:
                    old.close()
        return cls._open(folder, embedder, report)

    @classmethod
    def open(cls, path: PathLike, model: Any = None) -> "Gallery":
        """Open a gallery folder for reading and searching.

        Args:
            path: the gallery folder (``index/NAME``).
            model: optional checkpoint path or :class:`~siamsearch.core.embedder.Embedder`; it must be the
                model that built the gallery. Without it, :meth:`search` of images loads the
                checkpoint recorded in the gallery.

        Raises:
            GalleryError: the folder is not a gallery, or ``gallery.h5`` / ``faiss.index`` is damaged
                or stale; the message says how to rebuild.
            FingerprintMismatch: ``model`` is not the model that built the gallery (both named).
        """
        embedder = _load_embedder(model, "auto") if model is not None and not _is_embedder(model) else model
        return cls._open(Path(path), embedder, None)

    @classmethod
    def _open(cls, folder: Path, model: Any, report: Optional[BuildReport]) -> "Gallery":
        file = GalleryFile(folder / _store.H5_NAME)
        try:
            a = file.attrs
            if model is not None and model.fingerprint != a["model_fingerprint"]:
                raise FingerprintMismatch(
                    f"{folder} was built with model {a['model_fingerprint']} but the given model is "
                    f"{model.fingerprint}; query with the model that built it, or rebuild the gallery with "
                    f"`siamsearch index build {a['source_dir']} --model MODEL.pt --out {folder} --overwrite`")
            index = _load_index(folder, file)
        except BaseException:
            file.close()
            raise
        return cls(folder, file, index, model, report)

    def close(self) -> None:
        """Close the HDF5 file (the object is unusable afterwards)."""
        self._file.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        """Live entries (images currently indexed)."""
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Gallery({str(self.folder)!r}, {len(self)} images, d={self.dim}, index={self.index.factory})"

    # ---- update

    def update(self, model: Any = None, batch_size: int = 64, workers: Optional[int] = None, device: str = "auto",
               strict: bool = False, progress: bool = True) -> BuildReport:
        """Re-scan the gallery's folder: embed new and changed files, drop removed ones, keep the rest.

        See :func:`update_gallery`; the model defaults to the one this gallery was opened with.
        The gallery is reopened afterwards.

        Returns:
            The :class:`BuildReport` (also kept as :attr:`last_report`).
        """
        model = self._model if model is None else model
        self._file.close()
        try:
            report = update_gallery(self.folder, model=model, batch_size=batch_size, workers=workers,
                                    device=device, strict=strict, progress=progress)
        except BaseException:
            self._file = GalleryFile(self.folder / _store.H5_NAME)  # nothing was published: reopen as it was
            raise
        embedder = model if _is_embedder(model) else None
        fresh = Gallery._open(self.folder, embedder, report)
        self._file, self.index, self._model, self.last_report = fresh._file, fresh.index, embedder, report
        self._cache = {}
        return report

    # ---- contents

    @property
    def attrs(self) -> dict:
        """``gallery.h5`` attributes (model fingerprint, config JSON, source folder, times...)."""
        return self._file.attrs

    @property
    def dim(self) -> int:
        return self._file.dim

    @property
    def fingerprint(self) -> str:
        return str(self.attrs["model_fingerprint"])

    @property
    def model_path(self) -> str:
        """The checkpoint the gallery was built with (as recorded; it may have moved since)."""
        return str(self.attrs.get("model_path", ""))

    @property
    def source_dir(self) -> Path:
        return Path(self.attrs["source_dir"])

    def _cached(self, key: str, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def ids(self) -> np.ndarray:
        """``[N]`` int64 row ids of the live entries (the Faiss ids), ascending."""
        return self._cached("ids", self._file.live_ids)

    @property
    def embeddings(self) -> np.ndarray:
        """``[N, d]`` float32 L2-normalised embeddings of the live entries (read from disk on first use)."""
        return self._cached("emb", lambda: self._file.embeddings(self.ids))

    @property
    def relpaths(self) -> list:
        """Image paths relative to :attr:`source_dir` (``/``-separated), live entries."""
        return self._cached("rel", lambda: [self._all_relpaths()[i] for i in self.ids])

    @property
    def paths(self) -> list:
        """Absolute image paths of the live entries."""
        root = self.source_dir
        return self._cached("paths", lambda: [str(root / r) for r in self.relpaths])

    @property
    def label_names(self) -> list:
        """Label names; :attr:`labels` index into this list."""
        return self._cached("names", self._file.label_names)

    @property
    def labels(self) -> np.ndarray:
        """``[N]`` int64 label codes of the live entries (-1 = unlabelled), see :attr:`label_names`."""
        return self._cached("labels", lambda: self._all_labels()[self.ids])

    def _all_relpaths(self) -> list:
        return self._cached("all_rel", self._file.relpaths)

    def _all_labels(self) -> np.ndarray:
        return self._cached("all_labels", self._file.labels)

    @property
    def skipped(self) -> list:
        """``[(relative path, reason)]`` of files the last build/update could not read."""
        return self._file.skipped()

    @property
    def model(self):
        """The :class:`~siamsearch.core.embedder.Embedder` (loaded from the recorded checkpoint on first use)."""
        if self._model is None:
            self._model = self._recorded_model("auto")
        return self._model

    def _recorded_model(self, device: str):
        return _recorded_model(self.folder, self.attrs, device)

    # ---- search

    def search(self, queries: Any, k: int = 10, batch_size: int = 64) -> SearchResult:
        """The ``k`` nearest gallery images of each query, by Euclidean distance.

        Args:
            queries: images (a path, PIL image or ``uint8`` array, or a list of them), embedded
                with the gallery's model; or embeddings, a float array ``[Q, d]`` / ``[d]`` of
                L2-normalised rows (a float image array must be passed inside a list).
            k: neighbours per query (capped at the number of live entries).
            batch_size: images per forward pass when embedding.

        Returns:
            A read-only :class:`SearchResult` (distances ascending, ids unique per row).

        Raises:
            SiamsearchError: k < 1, embeddings of the wrong width or not unit-norm.
            UnreadableImage: a query file cannot be decoded.
        """
        if int(k) < 1:
            raise SiamsearchError(f"k must be at least 1, got {k}")
        emb = self._query_embeddings(queries, batch_size)
        kk = min(int(k), len(self))
        if kk == 0:
            raise SiamsearchError(f"{self.folder} holds no images; add some and run `siamsearch index update`")
        dist, ids = self.index.search(emb, kk, vectors=self._file.embeddings)
        rel, codes, names = self._all_relpaths(), self._all_labels(), self.label_names
        root = self.source_dir
        label_ids = codes[ids]
        return SearchResult(
            distances=np.ascontiguousarray(dist, dtype=np.float32), ids=np.ascontiguousarray(ids, dtype=np.int64),
            paths=tuple(tuple(str(root / rel[j]) for j in row) for row in ids.tolist()),
            labels=tuple(tuple(names[c] if c >= 0 else None for c in row) for row in label_ids.tolist()),
            label_ids=label_ids)

    def _query_embeddings(self, queries: Any, batch_size: int) -> np.ndarray:
        if isinstance(queries, np.ndarray) and queries.dtype.kind == "f" and queries.ndim in (1, 2) \
                and queries.shape[-1] == self.dim:
            emb = _ann.as_vectors(queries, self.dim, "query embeddings")
            norms = np.linalg.norm(emb, axis=1)
            if emb.size and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
                raise SiamsearchError(
                    f"query embeddings must be L2-normalised (norms {norms.min():.3f}..{norms.max():.3f}); "
                    "use Embedder.embed, or pass images")
            return emb
        return self.model.embed(queries, batch_size=batch_size)

    # ---- description

    def info(self) -> dict:
        """Everything ``siamsearch index info`` shows, as a JSON-ready dict."""
        a = self.attrs
        labels = self.labels
        names = self.label_names
        counts: dict = {}
        if len(labels):
            values, n = np.unique(labels, return_counts=True)
            counts = {(names[v] if v >= 0 else "(none)"): int(c) for v, c in zip(values.tolist(), n.tolist())}
        files = {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.is_file()
                 and not p.name.startswith(".")}
        pending = self.folder / _store.PENDING_NAME
        return {
            "folder": str(self.folder),
            "source_dir": a["source_dir"],
            "size": int(len(self)),
            "rows": self._file.n_rows,
            "deleted_rows": int(self._file.n_rows - len(self)),
            "dim": self.dim,
            "model": {"fingerprint": a["model_fingerprint"], "path": a.get("model_path", ""),
                      "config": _json_or_raw(a["model_config"])},
            "index": self.index.meta,
            "labels": {"mode": a.get("label_mode"), "count": len(counts) - ("(none)" in counts),
                       "per_label": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))},
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "disk_bytes": int(sum(files.values())),
            "files": files,
            "interrupted_run_pending": pending.is_dir() and any(pending.glob("seg-*.npz")),
            "created": a.get("created"),
            "updated": a.get("updated"),
            "siamsearch_version": a.get("siamsearch_version"),
        }


def update_gallery(folder: PathLike, model: Any = None, batch_size: int = 64, workers: Optional[int] = None,
                   device: str = "auto", strict: bool = False, progress: bool = True) -> BuildReport:
    """Bring the gallery at ``folder`` in line with its image folder.

    New and changed files (other bytes by SHA-256; files whose size and mtime are
    unchanged are not re-read) are embedded, rows of removed files are dropped,
    the rest is kept. A missing, damaged or stale ``faiss.index`` is rebuilt from
    the stored embeddings, and an interrupted run is finished.

    Args:
        model: checkpoint path or Embedder; default the checkpoint recorded in the gallery.
            Its fingerprint must be the gallery's.

    Raises:
        GalleryError: ``gallery.h5`` is missing or damaged, or the image folder is gone.
        FingerprintMismatch: the model is not the one that built the gallery (both named).
    """
    folder = Path(folder)
    with _store.FolderLock(folder):
        old = GalleryFile(folder / _store.H5_NAME)
        try:
            a = old.attrs
            embedder = _recorded_model(folder, a, device) if model is None else _load_embedder(model, device)
            if embedder.fingerprint != a["model_fingerprint"]:
                raise FingerprintMismatch(
                    f"{folder} was built with model {a['model_fingerprint']} but the model given is "
                    f"{embedder.fingerprint}; update with the original checkpoint, or rebuild with "
                    f"`siamsearch index build {a['source_dir']} --model MODEL.pt --out {folder} --overwrite`")
            source = Path(a["source_dir"])
            if not source.is_dir():
                raise GalleryError(f"the gallery's image folder {source} is gone; rebuild the gallery from its new "
                                   f"location with `siamsearch index build NEW_DIR --model MODEL.pt --out {folder} "
                                   "--overwrite`")
            return _sync(folder, source, embedder, old, factory=a.get("requested_factory", "auto"),
                         label_mode=a.get("label_mode"), strict=strict, batch_size=batch_size, workers=workers,
                         progress=progress)
        finally:
            old.close()


# --------------------------------------------------------------------------- helpers


def _recorded_model(folder: Path, attrs: dict, device: str):
    """The Embedder of the checkpoint recorded in a gallery, checked against its fingerprint."""
    path = str(attrs.get("model_path", ""))
    if not path or not Path(path).is_file():
        raise SiamsearchError(f"the model that built {folder} ({path or 'no path recorded'}) is not "
                              "available; pass it with --model (Gallery.open(path, model=...))")
    embedder = _load_embedder(path, device)
    if embedder.fingerprint != attrs["model_fingerprint"]:
        raise FingerprintMismatch(
            f"{folder} was built with model {attrs['model_fingerprint']}, but {path} is now model "
            f"{embedder.fingerprint}; pass the original checkpoint with --model, or rebuild with --overwrite")
    return embedder



def _is_embedder(obj: Any) -> bool:
    return hasattr(obj, "fingerprint") and hasattr(obj, "embed_files")


def _load_embedder(model: Any, device: str):
    if _is_embedder(model):
        return model
    if model is None:
        raise SiamsearchError("a model is needed: give the checkpoint with --model MODEL.pt")
    from ..core.embedder import load_model

    return load_model(model, device=device)


def _json_or_raw(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _load_index(folder: Path, file: GalleryFile) -> _ann.AnnIndex:
    a = file.attrs
    if not (folder / _store.INDEX_NAME).is_file():
        raise GalleryError(f"{folder / _store.INDEX_NAME} is missing; run `siamsearch index update {folder}` to "
                           f"rebuild it from the stored embeddings, or {_store.rebuild_hint(folder)}")
    if not _store.index_is_current(folder, a):
        raise GalleryError(f"{folder / _store.INDEX_NAME} is damaged or does not belong to {_store.H5_NAME} "
                           f"(an interrupted update?); run `siamsearch index update {folder}` to rebuild it from "
                           f"the stored embeddings, or {_store.rebuild_hint(folder)}")
    try:
        params = _json_or_raw(a.get("index_params", "{}"))
        index = _ann.AnnIndex.load(folder / _store.INDEX_NAME, a["index_factory"], params,
                                   tombstones=np.flatnonzero(file.deleted()))
    except (SiamsearchError, KeyError) as e:
        raise GalleryError(f"{folder / _store.INDEX_NAME} cannot be read ({e}); run `siamsearch index update "
                           f"{folder}` to rebuild it, or {_store.rebuild_hint(folder)}") from None
    if index.dim != file.dim:
        raise GalleryError(f"{folder / _store.INDEX_NAME} holds {index.dim}-d vectors but the gallery {file.dim}-d; "
                           f"{_store.rebuild_hint(folder)}")
    return index


@dataclass
class _Scan:
    relpaths: list
    size: np.ndarray
    mtime: np.ndarray
    labels: list
    skipped: list = field(default_factory=list)


def _label_of(rel: str) -> str:
    parent = rel.rpartition("/")[0]
    return parent


def _scan(source: Path, label_mode: Optional[str]) -> tuple[_Scan, str]:
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
        parents = {_label_of(r) for r in rels}
        label_mode = "from-folder" if rels and "" not in parents and len(parents) >= 2 else "none"
    labels = [_label_of(r) for r in rels] if label_mode == "from-folder" else [""] * len(rels)
    return _Scan(rels, np.asarray(sizes, "int64"), np.asarray(mtimes, "float64"), labels, skipped), label_mode


def _same_stat(size_a, mtime_a, size_b, mtime_b) -> bool:
    return int(size_a) == int(size_b) and abs(float(mtime_a) - float(mtime_b)) < 1e-6


def _sync(folder: Path, source: Path, embedder, old: Optional[GalleryFile], factory: str,
          label_mode: Optional[str], strict: bool, batch_size: int, workers: Optional[int],
          progress: bool) -> BuildReport:
    """Bring ``folder`` in line with the images of ``source`` (the shared core of build and update)."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    _store.remove_stale_temps(folder)
    if batch_size < 1:
        raise SiamsearchError(f"batch size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else int(workers)
    dim = embedder.dim
    if old is not None and old.dim != dim:
        raise GalleryError(f"{folder} holds {old.dim}-d embeddings but the model makes {dim}-d; "
                           f"{_store.rebuild_hint(folder)}")
    scan, label_mode = _scan(source, label_mode if old is None else old.attrs.get("label_mode", label_mode))
    pending = _store.PendingLog(folder, embedder.fingerprint, str(source), dim, label_mode)

    # --- what the current gallery already has
    n_old = old.n_rows if old is not None else 0
    old_deleted = old.deleted() if old is not None else np.zeros(0, bool)
    old_rel = old.relpaths() if old is not None else []
    old_sha = old.sha256() if old is not None else []
    old_size = old.size() if old is not None else np.zeros(0, "int64")
    old_mtime = old.mtime().copy() if old is not None else np.zeros(0, "float64")
    live_row = {old_rel[i]: i for i in np.flatnonzero(~old_deleted)}

    # --- rows recovered from an interrupted run: the last record of each file whose stat still matches
    stat_now = {r: (s, m) for r, s, m in zip(scan.relpaths, scan.size, scan.mtime)}
    journal = _journal_records(pending, stat_now)

    # --- classify every file
    needed: set = set()  # files that need a new row (new or changed content)
    replaced: dict = {}  # relpath -> old row, for changed files
    unchanged = resumed = touched = 0
    to_embed: list = []
    for r, s, m in zip(scan.relpaths, scan.size, scan.mtime):
        row = live_row.get(r)
        if row is not None:
            if _same_stat(s, m, old_size[row], old_mtime[row]):
                unchanged += 1
                continue
            try:
                same = sha256_file(source / r) == old_sha[row]
            except OSError:
                same = False
            if same:
                old_mtime[row] = m  # touched, same bytes: keep the row, remember the new mtime
                touched += 1
                unchanged += 1
                continue
            replaced[r] = row
        needed.add(r)
        if r in journal:
            resumed += 1
        else:
            to_embed.append(r)
    current = set(scan.relpaths)
    removed_rows = [i for r, i in live_row.items() if r not in current]

    # --- embed what is missing, streamed into journal segments
    skipped = list(scan.skipped)
    label_of = dict(zip(scan.relpaths, scan.labels))
    embedded = 0
    if to_embed:
        buf: list = []
        buf_emb: list = []

        def flush() -> None:
            if not buf:
                return
            rows = RowBlock([b[0] for b in buf], [b[1] for b in buf], [b[2] for b in buf],
                            np.asarray([b[3] for b in buf], "float64"), np.asarray([b[4] for b in buf], "int64"),
                            np.concatenate(buf_emb))
            pending.write(rows)
            buf.clear()
            buf_emb.clear()

        paths = [str(source / r) for r in to_embed]
        for batch in embedder.embed_files(paths, batch_size=batch_size, workers=workers, progress=progress):
            for pos, reason in batch.failures:
                skipped.append((to_embed[pos], reason))
            good = []
            for j, pos in enumerate(batch.positions.tolist()):
                r = to_embed[pos]
                try:
                    sha = sha256_file(paths[pos])
                except OSError as e:
                    skipped.append((r, f"missing or not readable ({e.strerror})"))
                    continue
                s, m = stat_now[r]
                buf.append((r, label_of[r], sha, m, s))
                good.append(j)
            if good:
                buf_emb.append(np.asarray(batch.embeddings[good], dtype="float32"))
                embedded += len(good)
            if len(buf) >= _store.CHUNK_ROWS:
                flush()
        flush()
        journal = _journal_records(pending, stat_now)
    # only files that need a row: a journal left by a run killed after its commit holds rows already stored
    journal = {r: loc for r, loc in journal.items() if r in needed}
    skipped.sort()
    # a changed file loses its old row whether or not its new content could be read
    newly_deleted = removed_rows + list(replaced.values())
    added = sum(1 for r in journal if r not in replaced)
    changed = sum(1 for r in journal if r in replaced)
    lost = len(replaced) - changed  # changed files that are now unreadable
    if strict and skipped:
        listing = "\n".join(f"  {p}: {r}" for p, r in skipped)
        raise SiamsearchError(f"--strict: {len(skipped)} file(s) could not be read, nothing was published "
                              f"(rows embedded so far are kept for the next run):\n{listing}")
    if (old is not None and not journal and not newly_deleted and not touched and skipped == sorted(old.skipped())
            and old.attrs.get("requested_factory") == factory and _store.index_is_current(folder, old.attrs)):
        pending.clear()  # nothing changed: the published gallery stands as it is
        return BuildReport(folder=str(folder), source_dir=str(source), files=len(scan.relpaths) + len(scan.skipped),
                           added=0, changed=0, removed=0, unchanged=unchanged, resumed=0, skipped=tuple(skipped),
                           embedded=0, seconds=time.perf_counter() - t0, index="unchanged",
                           factory=str(old.attrs.get("index_factory", "")), rows=int(len(live_row)))

    # --- write the new gallery.h5 (temporary name), old rows first, then the journal's rows
    deleted = old_deleted.copy()
    deleted[newly_deleted] = True
    n_journal = len(journal)
    compact = old is not None and deleted.sum() > _ann.REBUILD_SHARE * max(n_old + n_journal, 1)
    names = old.label_names() if old is not None else []
    code = {nm: i for i, nm in enumerate(names)}
    for nm in sorted({label_of[r] for r in journal} - set(code) - {""}):
        code[nm] = len(names)
        names.append(nm)
    a_old = old.attrs if old is not None else {}
    created = a_old.get("created", _store.now_iso())
    attrs = {"siamsearch_version": __version__, "created": created, "updated": _store.now_iso(),
             "model_fingerprint": embedder.fingerprint, "model_config": embedder.config.to_json(),
             "model_path": os.path.abspath(embedder.path) if embedder.path else "",
             "source_dir": str(source), "label_mode": label_mode, "requested_factory": factory,
             "index_sha256": "", "generation": "", "index_factory": "", "index_params": "{}"}
    tmp = _store.temp_h5_path(folder)
    writer = _store.GalleryWriter(tmp, dim, attrs, expected_rows=n_old + n_journal)
    try:
        keep_old = np.flatnonzero(~deleted) if compact else np.arange(n_old)
        for s in range(0, len(keep_old), _store.BLOCK_ROWS):
            rows = keep_old[s:s + _store.BLOCK_ROWS]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            emb = old.h5["embeddings"][lo:hi][rows - lo]
            lab = old.h5["labels"][lo:hi][rows - lo]
            writer.append([old_rel[i] for i in rows], lab, [old_sha[i] for i in rows], old_mtime[rows],
                          old_size[rows], emb, deleted[rows])
        first_new = writer.n
        by_seg: dict = {}
        for r, (seg, j) in journal.items():
            by_seg.setdefault(seg, []).append(j)
        for seg in sorted(by_seg):
            rows = pending.read(seg)
            take = sorted(by_seg[seg])
            writer.append([rows.relpaths[j] for j in take],
                          np.asarray([code.get(rows.labels[j], -1) if rows.labels[j] else -1 for j in take], "int64"),
                          [rows.sha256[j] for j in take], rows.mtime[take], rows.size[take],
                          rows.embeddings[take], np.zeros(len(take), "uint8"))
        writer.finish(names, skipped, {})
    except BaseException:
        writer.abort()
        raise

    # --- the index: updated in place when possible, else built from the stored embeddings
    new = GalleryFile(tmp)
    try:
        live = new.live_ids()
        index_state = "built" if old is None else "rebuilt"
        ann = None
        if old is not None and not compact:
            ann = _reusable_index(folder, old, factory, len(live), dim)
            if ann is not None:
                ids_new = np.arange(first_new, new.n_rows, dtype="int64")
                for s in range(0, len(ids_new), _store.BLOCK_ROWS):
                    part = ids_new[s:s + _store.BLOCK_ROWS]
                    ann.add(new.h5["embeddings"][int(part[0]):int(part[-1]) + 1], part)
                ann.remove(np.asarray(sorted(set(newly_deleted)), "int64"))
                index_state = "updated" if (len(ids_new) or newly_deleted) else "unchanged"
                if ann.needs_rebuild:
                    ann, index_state = None, "rebuilt"
        if ann is None:
            bar = _progress_bar(progress, len(live), "indexing")
            ann = _ann.build_index(new.source(live), factory=factory,
                                   progress=(lambda n: bar.update(n)) if bar is not None else None)
            if bar is not None:
                bar.close()
    finally:
        new.close()
    report = BuildReport(folder=str(folder), source_dir=str(source), files=len(scan.relpaths) + len(scan.skipped),
                         added=added, changed=changed, removed=len(removed_rows) + lost, unchanged=unchanged,
                         resumed=resumed, skipped=tuple(skipped), embedded=embedded,
                         seconds=time.perf_counter() - t0, index=index_state, factory=ann.factory,
                         rows=int(len(live)))
    manifest = _manifest(attrs, ann, report, n_rows=writer.n, live=int(len(live)), label_count=len(names))
    _store.commit(folder, tmp, ann, manifest, {"index_factory": ann.factory, "index_params": _dumps(ann.params)})
    pending.clear()
    return report


def _journal_records(pending: _store.PendingLog, stat_now: dict) -> dict:
    """``relpath -> (segment, row)``: the last journal record of each file whose size and mtime still match."""
    records: dict = {}
    for seg in pending.segments():
        rows = pending.read(seg, embeddings=False)
        if rows is None:  # unreadable segment: its files are embedded again
            seg.unlink()
            continue
        for j, (r, s, m) in enumerate(zip(rows.relpaths, rows.size, rows.mtime)):
            if r in stat_now and _same_stat(s, m, *stat_now[r]):
                records[r] = (seg, j)
    return records


def _reusable_index(folder: Path, old: GalleryFile, factory: str, n_live: int, dim: int) -> Optional[_ann.AnnIndex]:
    """The committed index, when it is intact and still the right kind for ``n_live`` entries; else None."""
    a = old.attrs
    if a.get("requested_factory") != factory or not _store.index_is_current(folder, a):
        return None
    try:
        ann = _load_index(folder, old)
    except GalleryError:
        return None
    wanted = _ann.resolve_factory(factory, max(n_live, 1), dim) if factory.lower() == "auto" else ann.factory
    if wanted != ann.factory:
        return None
    tuned_on = ann.params.get("tuned_on")
    if isinstance(tuned_on, int) and tuned_on > 0 and not (
            tuned_on / RETUNE_FACTOR <= n_live <= tuned_on * RETUNE_FACTOR):
        return None
    return ann


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", leave=False)


def _manifest(attrs: dict, ann: _ann.AnnIndex, report: BuildReport, n_rows: int, live: int,
              label_count: int) -> dict:
    return {
        "format": _store.FORMAT,
        "format_version": _store.FORMAT_VERSION,
        "siamsearch_version": __version__,
        "created": attrs["created"],
        "updated": attrs["updated"],
        "source_dir": attrs["source_dir"],
        "model": {"fingerprint": attrs["model_fingerprint"], "path": attrs["model_path"],
                  "config": _json_or_raw(attrs["model_config"])},
        "size": live,
        "rows": n_rows,
        "dim": ann.dim,
        "labels": {"mode": attrs["label_mode"], "count": label_count},
        "index": ann.meta,
        "files": {"embeddings": _store.H5_NAME, "index": _store.INDEX_NAME},
        "last_run": {k: v for k, v in report.to_dict().items() if k != "skipped"},
        "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
    }
