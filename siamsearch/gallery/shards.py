"""The sharded gallery format: Parquet shards plus a manifest, readable without siamsearch.

Layout of a sharded ``index/NAME/`` (see index/README.md):

* ``shards.json``: the store manifest and the commit point: format, the model
  attributes (as in ``gallery.h5``), ``dim``, ``next_id`` (the id allocator),
  the committed shards (file, rows, id range, the nodes that embedded them),
  label names, skipped files and the tombstone file.
* ``shards/shard-NNNNNN.parquet``: one row per image. Columns ``id`` int64 (dense
  ids from the allocator; the Faiss ids), ``path`` string (relative to
  ``source_dir``), ``label`` string (``""`` = none), ``content_sha256`` string,
  ``mtime`` float64, ``size`` int64, ``embedding`` fixed_size_list<float32>[d].
* ``deleted-<generation>.parquet``: ids of rows whose file was removed or replaced
  (``id`` int64, ``in_index`` bool: still stored in the Faiss index, filtered at search).

Every file is written under a temporary name and renamed; shards.json is
rewritten last, so a reader sees the old or the new gallery, never a mix.
:class:`ShardedReader` implements :class:`siamsearch.gallery.store.GalleryReader`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..core.errors import GalleryError, SiamsearchError
from ..core.files import atomic_path, write_json_atomic

FORMAT = "siamsearch.shards"
FORMAT_VERSION = 1
STORE_NAME = "shards.json"
SHARDS_DIR = "shards"
META_COLUMNS = ("id", "path", "label", "content_sha256", "mtime", "size")


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SiamsearchError("sharded galleries need pyarrow: pip install 'siamsearch[ray]'") from None
    return pa, pq


#: Parquet compression per column: zstd for paths, labels and hashes (they shrink several-fold); none for the
#: embeddings, which are near-random floats (zstd saved ~6 % of their bytes and took ~30 ms more CPU per
#: 2,000-row shard, on the driver's core, while the embedding actors ran).
SHARD_COMPRESSION = {"id": "zstd", "path": "zstd", "label": "zstd", "content_sha256": "zstd", "mtime": "zstd",
                     "size": "zstd", "embedding": "none"}


def shard_schema(dim: int):
    """The Parquet schema of a shard with ``dim``-float embeddings."""
    pa, _ = _pa()
    return pa.schema([("id", pa.int64()), ("path", pa.string()), ("label", pa.string()),
                      ("content_sha256", pa.string()), ("mtime", pa.float64()), ("size", pa.int64()),
                      ("embedding", pa.list_(pa.float32(), int(dim)))])


def write_shard(path: os.PathLike | str, ids: np.ndarray, relpaths: list, labels: list, sha256: list,
                mtime: np.ndarray, size: np.ndarray, embeddings: np.ndarray) -> int:
    """Write one shard atomically (temporary name, fsync, rename); returns its row count.

    Args:
        ids: ``[b]`` int64. embeddings: ``[b, d]`` float32. The other lists/arrays have ``b`` entries.
    """
    pa, pq = _pa()
    emb = np.ascontiguousarray(embeddings, dtype="float32")
    dim = int(emb.shape[1])
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    table = pa.Table.from_arrays(
        [pa.array(np.asarray(ids, "int64")), pa.array(list(relpaths), pa.string()),
         pa.array(list(labels), pa.string()), pa.array(list(sha256), pa.string()),
         pa.array(np.asarray(mtime, "float64")), pa.array(np.asarray(size, "int64")),
         pa.FixedSizeListArray.from_arrays(flat, dim)], schema=shard_schema(dim))
    with atomic_path(path) as tmp:
        # dictionary encoding only where values repeat (labels): on the unique paths and hashes and the float
        # embeddings it only cost time (a 2,000-row shard: ~11 ms to write with it everywhere, ~3 ms without)
        pq.write_table(table, tmp, compression=SHARD_COMPRESSION, row_group_size=16384, use_dictionary=["label"])
    return len(ids)


def _read_shard(path: os.PathLike | str, columns: list):
    """The ``columns`` of one shard as a pyarrow Table.

    Raises:
        GalleryError: the file is missing, truncated or not Parquet; says how to rebuild the gallery.
    """
    pa, pq = _pa()
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        why = "missing" if not Path(path).is_file() else str(e).strip().splitlines()[0]
        folder = Path(path).parent.parent
        raise GalleryError(f"shard {path} cannot be read ({why}); rebuild the gallery with `siamsearch index build "
                           f"IMAGE_DIR --model MODEL.pt --out {folder} --overwrite`") from None


def read_shard_meta(path: os.PathLike | str) -> dict:
    """The non-embedding columns of a shard as numpy arrays / lists (keys: :data:`META_COLUMNS`)."""
    t = _read_shard(path, list(META_COLUMNS))
    return {"id": t["id"].to_numpy().astype("int64"), "path": t["path"].to_pylist(),
            "label": t["label"].to_pylist(), "content_sha256": t["content_sha256"].to_pylist(),
            "mtime": t["mtime"].to_numpy().astype("float64"), "size": t["size"].to_numpy().astype("int64")}


def read_shard_vectors(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [b] int64, embeddings [b, d] float32)`` of one shard."""
    t = _read_shard(path, ["id", "embedding"])
    col = t["embedding"].combine_chunks()
    dim = col.type.list_size
    emb = col.flatten().to_numpy(zero_copy_only=False).astype("float32", copy=False).reshape(-1, dim)
    return t["id"].to_numpy().astype("int64"), emb


def write_deleted(path: os.PathLike | str, ids: np.ndarray, in_index: np.ndarray) -> None:
    """Write the tombstone file atomically: ``id`` int64, ``in_index`` bool."""
    pa, pq = _pa()
    table = pa.table({"id": pa.array(np.asarray(ids, "int64")), "in_index": pa.array(np.asarray(in_index, bool))})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@dataclass
class ShardEntry:
    """A committed shard: its file (relative to the gallery folder), rows and reserved id range."""

    file: str
    rows: int
    first_id: int
    id_end: int  # ids first_id <= id < id_end are reserved for this shard (gaps = unreadable files)
    nodes: list = field(default_factory=list)  # Ray node ids that embedded its rows ([] for local)
    skipped: list = field(default_factory=list)  # [(relpath, reason)] of files of this shard that failed

    def to_dict(self) -> dict:
        return {"file": self.file, "rows": self.rows, "first_id": self.first_id, "id_end": self.id_end,
                "nodes": list(self.nodes), "skipped": [list(s) for s in self.skipped]}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardEntry":
        return cls(d["file"], int(d["rows"]), int(d["first_id"]), int(d["id_end"]), list(d.get("nodes", [])),
                   [tuple(s) for s in d.get("skipped", [])])


def is_sharded(folder: os.PathLike | str) -> bool:
    """True when ``folder`` holds a sharded gallery (``shards.json``)."""
    return (Path(folder) / STORE_NAME).is_file()


def write_store_manifest(folder: Path, manifest: dict) -> None:
    """Write ``shards.json`` atomically: the commit point of a sharded gallery."""
    write_json_atomic(folder / STORE_NAME, dict(manifest, format=FORMAT, format_version=FORMAT_VERSION))


def _check_id_ranges(shards: list, next_id: int) -> None:
    """Raise ValueError unless the shards' id ranges are in order, disjoint and below ``next_id``."""
    end = 0
    for s in shards:
        if not end <= s.first_id <= s.id_end or s.rows > s.id_end - s.first_id:
            raise ValueError(f"{s.file}: ids {s.first_id}..{s.id_end} ({s.rows} rows) overlap the shard before "
                             "or are out of order")
        end = s.id_end
    if end > next_id:
        raise ValueError(f"next_id {next_id} is below the shards' last id {end - 1}")


def _check_dim(dim: int, attrs: dict) -> None:
    """Raise ValueError when ``dim`` is not the embedding size of the model recorded in ``attrs``."""
    config = attrs.get("model_config")
    if not config:
        return
    model_dim = json.loads(config).get("embedding_dim") if isinstance(config, str) else None
    if model_dim is not None and int(model_dim) != dim:
        raise ValueError(f"dim {dim} is not the embedding size {model_dim} of the model that built it")


class ShardedReader:
    """Read-only access to a sharded gallery (a :class:`~siamsearch.gallery.store.GalleryReader`).

    Ids are ``0..next_id-1``; ids of no stored row (unreadable files) count as deleted.
    Per-row metadata is read once from the shards' small columns; embeddings on demand.

    Raises:
        GalleryError: missing or damaged ``shards.json`` or shard files (the message says how to rebuild).
    """

    def __init__(self, folder: os.PathLike | str, manifest: Optional[dict] = None,
                 deleted: Optional[tuple] = None):
        self.folder = Path(folder)
        self.path = self.folder / STORE_NAME
        try:
            m = json.loads(self.path.read_text(encoding="utf-8")) if manifest is None else \
                dict(manifest, format=FORMAT, format_version=FORMAT_VERSION)
            if m.get("format") != FORMAT:
                raise ValueError("not a siamsearch sharded gallery")
            if int(m.get("format_version", 0)) > FORMAT_VERSION:
                raise GalleryError(f"{self.path} was written by a newer siamsearch; upgrade siamsearch")
            self.manifest = m
            self.shards = [ShardEntry.from_dict(s) for s in m["shards"]]
            self._dim = int(m["dim"])
            self._n = int(m["next_id"])
            _check_id_ranges(self.shards, self._n)
            _check_dim(self._dim, m.get("attrs", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GalleryError(f"{self.path} is missing or damaged ({e}); rebuild it with `siamsearch index build "
                               f"IMAGE_DIR --model MODEL.pt --out {self.folder} --overwrite`") from None
        self._meta: Optional[dict] = None
        self._deleted_ids, self._in_index = self._read_deleted() if deleted is None else deleted

    def _read_deleted(self) -> tuple[np.ndarray, np.ndarray]:
        name = self.manifest.get("deleted")
        if not name:
            return np.zeros(0, "int64"), np.zeros(0, bool)
        _, pq = _pa()
        try:
            t = pq.read_table(self.folder / name)
        except OSError as e:
            raise GalleryError(f"{self.folder / name} cannot be read ({e}); rebuild the gallery with --overwrite") \
                from None
        return t["id"].to_numpy().astype("int64"), t["in_index"].to_numpy(zero_copy_only=False).astype(bool)

    def close(self) -> None:
        self._meta = None

    def __enter__(self) -> "ShardedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def attrs(self) -> dict:
        return dict(self.manifest["attrs"])

    @property
    def n_rows(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    def _metadata(self) -> dict:
        """All rows' small columns, laid out by id (gaps: empty path, -1 label, deleted)."""
        if self._meta is None:
            n = self._n
            meta = {"path": [""] * n, "sha": [""] * n, "mtime": np.zeros(n, "float64"),
                    "size": np.zeros(n, "int64"), "labels": np.full(n, -1, "int64"), "present": np.zeros(n, bool)}
            code = {name: i for i, name in enumerate(self.label_names())}
            for s in self.shards:
                part = read_shard_meta(self.folder / s.file)
                ids = part["id"]
                for i, p, h, lab in zip(ids.tolist(), part["path"], part["content_sha256"], part["label"]):
                    meta["path"][i], meta["sha"][i] = p, h
                    meta["labels"][i] = code.get(lab, -1) if lab else -1
                meta["mtime"][ids], meta["size"][ids], meta["present"][ids] = part["mtime"], part["size"], True
            self._meta = meta
        return self._meta

    def deleted(self) -> np.ndarray:
        d = ~self._metadata()["present"]
        d[self._deleted_ids] = True
        return d

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(~self.deleted()).astype("int64")

    def index_tombstones(self) -> np.ndarray:
        """Deleted ids still stored in the Faiss index (filtered at search time)."""
        return self._deleted_ids[self._in_index]

    def relpaths(self) -> list:
        return list(self._metadata()["path"])

    def labels(self) -> np.ndarray:
        return self._metadata()["labels"].copy()

    def label_names(self) -> list:
        return list(self.manifest.get("label_names", []))

    def sha256(self) -> list:
        return list(self._metadata()["sha"])

    def mtime(self) -> np.ndarray:
        return self._metadata()["mtime"].copy()

    def size(self) -> np.ndarray:
        return self._metadata()["size"].copy()

    def skipped(self) -> list:
        return [tuple(s) for s in self.manifest.get("skipped", [])]

    def _shard_of(self, ids: np.ndarray) -> np.ndarray:
        firsts = np.asarray([s.first_id for s in self.shards], "int64")
        return np.searchsorted(firsts, ids, side="right") - 1

    def embeddings(self, ids: Optional[np.ndarray] = None) -> np.ndarray:
        """``[m, d]`` float32 embeddings of rows ``ids`` (any order; deleted rows too while stored)."""
        if ids is None:
            ids = np.arange(self._n, dtype="int64")
        ids = np.asarray(ids, dtype="int64").reshape(-1)
        out = np.zeros((len(ids), self._dim), "float32")
        if not len(ids):
            return out
        if ids.min() < 0 or ids.max() >= self._n:
            raise GalleryError(f"row ids out of range 0..{self._n - 1}")
        which = self._shard_of(ids)
        for s in np.unique(which).tolist():
            sid, x = read_shard_vectors(self.folder / self.shards[s].file)
            sel = np.flatnonzero(which == s)
            pos = np.searchsorted(sid, ids[sel])
            pos = np.minimum(pos, len(sid) - 1)
            found = sid[pos] == ids[sel]
            out[sel[found]] = x[pos[found]]
        return out

    def source(self, ids: Optional[np.ndarray] = None) -> "ShardSource":
        return ShardSource(self, self.live_ids() if ids is None else np.asarray(ids, dtype="int64"))


class ShardSource:
    """Rows of a sharded gallery streamed shard by shard (a :class:`~siamsearch.gallery.ann.VectorSource`).

    Memory is bounded by one shard's embeddings.
    """

    def __init__(self, reader: ShardedReader, ids: np.ndarray):
        self.reader = reader
        self.ids = np.sort(np.asarray(ids, "int64"))
        self.dim = reader.dim

    def __len__(self) -> int:
        return len(self.ids)

    def shard_blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(shard number, ids [b], vectors [b, d])`` for the wanted rows of each shard, in shard order."""
        for k, s in enumerate(self.reader.shards):
            lo, hi = np.searchsorted(self.ids, [s.first_id, s.id_end])
            if hi <= lo:
                continue
            sid, x = read_shard_vectors(self.reader.folder / s.file)
            keep = np.isin(sid, self.ids[lo:hi])
            yield k, sid[keep], x[keep]

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = max(int(rows), 1)
        for _, ids, x in self.shard_blocks():
            for s in range(0, len(ids), rows):
                yield ids[s:s + rows], x[s:s + rows]

    def sample(self, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``min(m, len)`` distinct rows drawn uniformly across all shards with ``seed``."""
        pick = np.sort(np.random.default_rng(seed).choice(len(self.ids), min(m, len(self.ids)), replace=False))
        chosen = self.ids[pick]
        got_ids, parts = [], []
        for _, ids, x in self.shard_blocks():
            keep = np.isin(ids, chosen)
            got_ids.append(ids[keep])
            parts.append(x[keep])
        if not parts:
            return np.zeros(0, "int64"), np.zeros((0, self.dim), "float32")
        return np.concatenate(got_ids), np.concatenate(parts)
