"""Gallery: a folder of images embedded by one model, stored with a Faiss index, searchable.

Python API::

    from siamsearch import Gallery
    g = Gallery.build("photos/", model="model.pt")          # -> index/photos/
    g = Gallery.open("index/photos")                         # later, e.g. in another process
    report = g.update()                                      # re-scan: new, changed, removed files
    result = g.search(["query.jpg"], k=5)                    # distances [1, 5], ids, paths, labels
    g.embeddings, g.paths, g.labels, g.info()

This module is the facade. Building and updating share one procedure,
:func:`siamsearch.gallery.sync.sync` (plan -> embed -> write -> index -> commit);
the rows are read through :class:`siamsearch.gallery.store.GalleryReader`; the
folder scan is :mod:`siamsearch.gallery.scan`; result types are in
:mod:`siamsearch.gallery.results`. A killed build re-run resumes from the journal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..core.errors import GalleryError, SiamsearchError
from . import ann as _ann
from . import store as _store
from .resolve import (check_gallery_model, is_embedder, load_embedder, rebuild_command, recorded_model,
                      update_precision)
from .results import BuildReport, SearchResult
from .scan import LABEL_MODES
from .store import GalleryReader
from .sharded import load_sharded_index, sync_sharded
from .shards import SHARDS_DIR, STORE_NAME, ShardedReader
from .engines import default_workers
from .sync import json_or_raw, load_index, sync
from ..core.files import PathLike, local_path

__all__ = ["Gallery", "SearchResult", "BuildReport", "update_gallery", "default_workers", "LABEL_MODES"]

#: Embedding norms farther than this from 1 are refused as query embeddings.
NORM_TOLERANCE = 1e-3


class Gallery:
    """A searchable gallery folder (``gallery.h5`` + ``faiss.index`` + ``manifest.json``).

    Create with :meth:`build`, reopen with :meth:`open`. Arrays cover the live
    (not deleted) rows, in row order, aligned with :attr:`ids`.
    """

    def __init__(self, folder: PathLike, file: GalleryReader, index: _ann.AnnIndex, model: Any = None,
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
              overwrite: bool = False, engine: str = "local", address: Optional[str] = None,
              shard_size: Optional[int] = None, max_index_memory: Union[int, str, None] = None) -> "Gallery":
        """Embed every image below ``image_dir`` and index it.

        Args:
            image_dir: folder scanned recursively (extensions of :data:`siamsearch.core.images.IMAGE_EXTENSIONS`).
            model: checkpoint path or a loaded :class:`~siamsearch.core.embedder.Embedder`.
            out: gallery folder; default ``index/<name of image_dir>``.
            factory: ``auto``, ``Flat``, ``HNSW32``, ``IVF``, ``IVF4096`` or a Faiss factory string.
            batch_size: images per forward pass. workers: image-decoding processes (``None``: chosen
                per machine by :func:`~siamsearch.gallery.engines.embedding_layout`, which on two cores runs
                a large job of small files in two processes that each decode and embed).
                device: ``auto``, ``cpu`` or ``cuda`` (for a path ``model``).
            labels: ``"from-folder"`` (label = the image's folder relative to ``image_dir``),
                ``"none"``, or ``None`` to decide: from-folder when every image sits in a subfolder
                and there are at least two.
            strict: raise instead of skipping unreadable files (nothing is published then).
            overwrite: replace an existing gallery made from another folder or model.
            engine: ``local`` (this process) or ``ray`` (a Ray Data pipeline; writes the sharded format).
            address: Ray cluster (``auto`` or ``HOST:PORT``); default: start a local one for the build.
            shard_size: images per Parquet shard; giving it selects the sharded format with either engine.
            max_index_memory: size budget of the sharded gallery's index (bytes or ``"8G"``), which
                picks its codes (Flat, SQ8, PQ).

        If ``out`` already holds a gallery of the same folder and model (or the journal
        of a killed build), the build resumes: only missing or changed files are embedded (a path
        ``model`` in the gallery's recorded precision, as :func:`update_gallery` does).

        Returns:
            The opened :class:`Gallery`; :attr:`last_report` says what was done.

        Raises:
            FingerprintMismatch: ``out`` holds a gallery made by another model (use ``overwrite``).
            GalleryError: ``out`` holds a gallery of another folder, or is damaged (use ``overwrite``).
            SiamsearchError: with ``strict``, when any file could not be read; a folder without images
                (or none readable); a re-build that would remove more than half of ``out``'s images.
            GalleryInterrupted: Ctrl-C; its message says what was kept.
        """
        source = Path(local_path(image_dir, "image folder"))
        if not source.is_dir():
            raise SiamsearchError(f"{source} is not a folder; give the folder of images to index")
        source = source.resolve()
        folder = Path(local_path(out, "gallery folder")) if out is not None else Path("index") / source.name
        if labels is not None and labels not in LABEL_MODES:
            raise SiamsearchError(f"labels must be one of {', '.join(LABEL_MODES)} or None, got {labels!r}")
        embedder = load_embedder(model, device)
        with _store.FolderLock(folder):
            old = None
            if _store.has_store(folder) and not overwrite:
                old = _store.open_reader(folder)
                try:
                    precision = update_precision(old.attrs)
                    if precision not in (None, embedder.precision) and not is_embedder(model):
                        # a build into a gallery updates it: in its precision, as `index update` does
                        embedder = load_embedder(model, device, precision)
                    _check_rebuild(folder, old.attrs, embedder, source, labels)
                except BaseException:
                    old.close()
                    raise
            elif overwrite:
                _store.clear_pending(folder)
            try:
                report = _run(folder, source, embedder, old, factory, labels, strict, batch_size, workers, progress,
                              _Scale(engine, address, shard_size, max_index_memory))
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
        embedder = load_embedder(model, "auto") if model is not None and not is_embedder(model) else model
        return cls._open(Path(local_path(path, "gallery folder")), embedder, None)

    @classmethod
    def _open(cls, folder: Path, model: Any, report: Optional[BuildReport]) -> "Gallery":
        file = _store.open_reader(folder)
        try:
            a = file.attrs
            if model is not None:
                check_gallery_model(folder, a, model.fingerprint, "the given model",
                                    "query with the model that built it, or rebuild the gallery with "
                                    + rebuild_command(folder, a))
            index = load_sharded_index(folder, file) if isinstance(file, ShardedReader) else load_index(folder, file)
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
               strict: bool = False, progress: bool = True, engine: str = "local",
               address: Optional[str] = None, allow_mass_removal: bool = False) -> BuildReport:
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
                                    device=device, strict=strict, progress=progress, engine=engine,
                                    address=address, allow_mass_removal=allow_mass_removal)
        except BaseException:
            self._file = _store.open_reader(self.folder)  # nothing was published: reopen as it was
            raise
        embedder = model if is_embedder(model) else None
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
        return recorded_model(self.folder, self.attrs, device)

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
        files.update({f"{SHARDS_DIR}/{p.name}": p.stat().st_size  # a sharded gallery's Parquet shards
                      for p in sorted((self.folder / SHARDS_DIR).glob("*.parquet"))})
        pending = self.folder / _store.PENDING_NAME
        commits = pending / "committed.jsonl"  # a sharded run's written, unpublished shards
        # stored rows: a sharded gallery's ids also have gaps (files that could not be read), which are not rows
        stored = sum(s.rows for s in self._file.shards) if isinstance(self._file, ShardedReader) else \
            self._file.n_rows
        return {
            "folder": str(self.folder),
            "source_dir": a["source_dir"],
            "size": int(len(self)),
            "rows": self._file.n_rows,
            "deleted_rows": int(stored - len(self)),
            "dim": self.dim,
            "model": {"fingerprint": a["model_fingerprint"], "path": a.get("model_path", ""),
                      "config": json_or_raw(a["model_config"]),
                      "precision": a.get("embedding_precision", "fp32")},
            "index": self.index.meta,
            "labels": {"mode": a.get("label_mode"), "count": len(counts) - ("(none)" in counts),
                       "per_label": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))},
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "disk_bytes": int(sum(files.values())),
            "files": files,
            "interrupted_run_pending": pending.is_dir() and (any(pending.glob("seg-*.npz"))
                                                             or (commits.is_file() and commits.stat().st_size > 0)),
            "created": a.get("created"),
            "updated": a.get("updated"),
            "siamsearch_version": a.get("siamsearch_version"),
        }


def update_gallery(folder: PathLike, model: Any = None, batch_size: int = 64, workers: Optional[int] = None,
                   device: str = "auto", strict: bool = False, progress: bool = True, engine: str = "local",
                   address: Optional[str] = None, allow_mass_removal: bool = False) -> BuildReport:
    """Bring the gallery at ``folder`` in line with its image folder.

    New and changed files (other bytes by SHA-256; files whose size and mtime are
    unchanged are not re-read) are embedded, rows of removed files are dropped,
    the rest is kept. A missing, damaged or stale ``faiss.index`` is rebuilt from
    the stored embeddings, and an interrupted run is finished.

    Args:
        model: checkpoint path or Embedder; default the checkpoint recorded in the gallery.
            Its fingerprint must be the gallery's. A path is loaded in the gallery's recorded precision
            unless the process default precision is set to one (``--precision fp32|bf16|fp16``); an
            Embedder embeds in its own.
        engine, address: as for :meth:`Gallery.build` (``ray`` updates sharded galleries only).
        allow_mass_removal: allow one update to remove more than half of the gallery's images
            (refused otherwise: an unmounted drive looks like every file deleted).

    Raises:
        GalleryError: ``gallery.h5`` is missing or damaged, or the image folder is gone.
        SiamsearchError: the update would remove more than half of the gallery (without
            ``allow_mass_removal``); nothing is changed.
        GalleryInterrupted: Ctrl-C; its message says what was kept.
        FingerprintMismatch: the model is not the one that built the gallery (both named).
    """
    folder = Path(folder)
    with _store.FolderLock(folder):
        old = _store.open_reader(folder)
        try:
            a = old.attrs
            precision = update_precision(a)
            embedder = recorded_model(folder, a, device, precision) if model is None \
                else load_embedder(model, device, precision)
            check_gallery_model(folder, a, embedder.fingerprint, "the model given",
                                "update with the original checkpoint, or rebuild with " + rebuild_command(folder, a))
            source = Path(a["source_dir"])
            if not source.is_dir():
                raise GalleryError(f"the gallery's image folder {source} is gone; rebuild the gallery from its new "
                                   f"location with `siamsearch index build NEW_DIR --model MODEL.pt --out {folder} "
                                   "--overwrite`")
            scale = _Scale(engine, address, None, int(a.get("max_index_memory", 0)) or None)
            return _run(folder, source, embedder, old, a.get("requested_factory", "auto"), a.get("label_mode"),
                        strict, batch_size, workers, progress, scale,
                        allow_mass_removal=allow_mass_removal)
        finally:
            old.close()


def _check_rebuild(folder: Path, attrs: dict, embedder, source: Path, labels: Optional[str]) -> None:
    """A build into an existing gallery resumes it only with the same model, folder and label mode."""
    check_gallery_model(folder, attrs, embedder.fingerprint, embedder.path or "the given model",
                        "use --overwrite to rebuild it with this model, or choose another --out")
    if attrs["source_dir"] != str(source):
        raise GalleryError(f"{folder} indexes {attrs['source_dir']}, not {source}; use --overwrite to "
                           "replace it, or choose another --out")
    if labels is not None and labels != attrs.get("label_mode"):
        raise GalleryError(f"{folder} was built with --labels {attrs.get('label_mode')}; use "
                           f"--overwrite to rebuild with --labels {labels}")


@dataclass(frozen=True)
class _Scale:
    """How to run a build: the engine and the sharded format's options."""

    engine: str = "local"
    address: Optional[str] = None
    shard_size: Optional[int] = None
    max_index_memory: Union[int, str, None] = None

    @property
    def sharded(self) -> bool:
        return self.engine == "ray" or self.shard_size is not None


def _run(folder: Path, source: Path, embedder, old: Optional[GalleryReader], factory: str, labels: Optional[str],
         strict: bool, batch_size: int, workers: Optional[int], progress: bool, scale: _Scale,
         allow_mass_removal: bool = False) -> BuildReport:
    """Build or update in the gallery's format: HDF5 (:func:`sync`) or shards (:func:`sync_sharded`);
    ``allow_mass_removal`` lifts the refusal to remove more than half of the gallery."""
    from .ondisk import parse_memory

    sharded = isinstance(old, ShardedReader) if old is not None else scale.sharded
    if scale.address is not None and scale.engine != "ray":
        raise SiamsearchError(f"--address {scale.address} names a Ray cluster; add --engine ray, or leave --address "
                              "out to embed in this process")
    if scale.max_index_memory is not None and not sharded:
        raise SiamsearchError("--max-index-memory sizes the index of a sharded gallery; add --shard-size N (or "
                              "--engine ray), or leave it out")
    if old is None:  # a new gallery (or --overwrite): the other format's store must not shadow it
        (folder / (_store.H5_NAME if sharded else STORE_NAME)).unlink(missing_ok=True)
    if not sharded:
        if scale.sharded:
            raise GalleryError(f"{folder} is an HDF5 gallery (gallery.h5); --engine ray and --shard-size write the "
                               "sharded format: build it into another --out, or use --overwrite")
        return sync(folder, source, embedder, old, factory=factory, label_mode=labels, strict=strict,
                    batch_size=batch_size, workers=workers, progress=progress, allow_mass_removal=allow_mass_removal)
    return sync_sharded(folder, source, embedder, old, factory, labels, strict, batch_size, workers, progress,
                        engine=scale.engine, address=scale.address, shard_size=scale.shard_size,
                        max_index_memory=parse_memory(scale.max_index_memory), allow_mass_removal=allow_mass_removal)
