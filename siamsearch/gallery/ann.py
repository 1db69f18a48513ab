"""Nearest-neighbour index over gallery embeddings: Faiss, behind one small wrapper.

Independent of torch: it takes float32 arrays ``[N, d]`` and int64 ids ``[N]``
and answers k-nearest-neighbour queries with Euclidean distances (DESIGN.md:
a distance in [0, 2] for unit vectors, smaller = more alike). Every index
searches with squared L2 internally; the conversion to the public distance is
:func:`siamsearch.core.distance.squared_to_distance`, nowhere else.

Index choice (``factory``):

* ``"auto"``: exact search (``Flat``) while one query costs at most
  :data:`EXACT_BUDGET` multiply-adds (``n * d``; 262,144 vectors at d = 128),
  beyond that ``IVF{nlist},Flat`` with ``nlist`` about ``4 * sqrt(n)`` and
  ``nprobe`` tuned on a sample of the data itself until recall@10 against
  exact search reaches :data:`TUNE_RECALL`.
* ``"Flat"``, ``"HNSW"`` / ``"HNSW32"`` (``efSearch`` tuned the same way),
  ``"IVF"`` (``nlist`` chosen as above), ``"IVF4096"``, or any Faiss factory
  string such as ``"IVF4096,PQ32"`` or ``"HNSW32,SQ8"``.

Ids are the caller's (the gallery's HDF5 row ids). Removal works for every
type: ``remove_ids`` where Faiss supports it (Flat, IVF, PQ...), otherwise a
tombstone set filtered at search time (HNSW) and a rebuild once tombstones
exceed :data:`REBUILD_SHARE` of the index.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence

import faiss
import numpy as np

from ..core.distance import squared_to_distance
from ..core.errors import SiamsearchError
from ..core.files import atomic_path

#: Exact search is used while ``n * d`` (multiply-adds per query) stays at or below this.
EXACT_BUDGET = 1 << 25
#: Recall@10 the benchmark and users are promised for the index ``auto`` picks.
TARGET_RECALL = 0.95
#: Recall@10 the tuner aims for on the data's own sample (a margin above TARGET_RECALL).
TUNE_RECALL = 0.97
#: Share of tombstoned entries above which a tombstone-based index should be rebuilt.
REBUILD_SHARE = 0.2
#: Queries drawn from the data to tune nprobe / efSearch.
TUNE_QUERIES = 256
#: Search-parameter ladders tried by the tuner, smallest first.
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EFSEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: k-means iterations and training points per list when training an IVF quantizer.
IVF_TRAIN_ITERATIONS = 10
IVF_TRAIN_PER_LIST = 40
#: Candidates fetched per requested neighbour before exact re-ranking (lossy codes only).
RERANK_FACTOR = 4


def as_vectors(x: np.ndarray, dim: Optional[int] = None, name: str = "vectors") -> np.ndarray:
    """Convert at the boundary: a C-contiguous float32 ``[N, d]`` array (a 1-D vector becomes ``[1, d]``).

    Raises:
        SiamsearchError: for the wrong rank, a dimension other than ``dim``, or non-finite values.
    """
    x = np.ascontiguousarray(x, dtype="float32")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise SiamsearchError(f"{name} must be a [N, d] array; got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise SiamsearchError(
            f"{name} have dimension {x.shape[1]} but the index holds {dim}-dimensional embeddings; "
            "use embeddings from the model that built the gallery"
        )
    if x.size and not np.isfinite(x).all():
        raise SiamsearchError(f"{name} contain NaN or infinite values")
    return x


def as_ids(ids: Sequence[int] | np.ndarray, n: Optional[int] = None) -> np.ndarray:
    """Convert ids to a C-contiguous int64 ``[N]`` array of non-negative values."""
    ids = np.ascontiguousarray(ids, dtype="int64").reshape(-1)
    if n is not None and len(ids) != n:
        raise SiamsearchError(f"got {len(ids)} ids for {n} vectors; give one id per vector")
    if ids.size and ids.min() < 0:
        raise SiamsearchError("ids must be non-negative")
    return ids


# --------------------------------------------------------------------------- sources of vectors


class VectorSource(Protocol):
    """What :func:`build_index` reads: ``len()`` vectors of ``dim`` floats, with ids, in blocks."""

    dim: int

    def __len__(self) -> int: ...

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids [b] int64, vectors [b, d] float32)`` covering every vector once."""
        ...

    def sample(self, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``min(m, len)`` distinct vectors drawn with ``seed``: ``(ids [m], vectors [m, d])``."""
        ...


class ArraySource:
    """A :class:`VectorSource` over arrays in memory: ``x [N, d]`` and ``ids [N]`` (default ``0..N-1``)."""

    def __init__(self, x: np.ndarray, ids: Optional[np.ndarray] = None):
        self.x = as_vectors(x)
        self.dim = int(self.x.shape[1])
        self.ids = np.arange(len(self.x), dtype="int64") if ids is None else as_ids(ids, len(self.x))

    def __len__(self) -> int:
        return len(self.x)

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(self.x), rows):
            yield self.ids[s:s + rows], self.x[s:s + rows]

    def sample(self, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pick = np.sort(np.random.default_rng(seed).choice(len(self.x), min(m, len(self.x)), replace=False))
        return self.ids[pick], self.x[pick]


def exact_knn(source: VectorSource, queries: np.ndarray, k: int, block_rows: int = 65536,
              exclude: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries [Q, d]`` in ``source``, streamed block by block.

    ``exclude`` (ids) are left out of the search.

    Returns:
        ``(squared L2 distances [Q, k] float32, ids [Q, k] int64)``, ascending;
        ``-1`` ids / ``inf`` distances pad rows when the source holds fewer than k vectors.
    """
    queries = as_vectors(queries, source.dim, "queries")
    heap = faiss.ResultHeap(len(queries), k)
    for ids, x in source.blocks(block_rows):
        if exclude is not None and len(exclude):
            keep = ~np.isin(ids, exclude)
            ids, x = ids[keep], x[keep]
            if not len(ids):
                continue
        d2, pos = faiss.knn(queries, as_vectors(x, source.dim), min(k, len(x)))
        found = np.where(pos >= 0, ids[np.clip(pos, 0, None)], -1)
        heap.add_result(d2, found)
    heap.finalize()
    return heap.D, heap.I


# --------------------------------------------------------------------------- factory choice


def ivf_lists(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: a power of two near ``4 * sqrt(n)``, in [16, 65536]."""
    target = 4.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(16, 2 ** round(math.log2(target)))))


def choose_factory(n: int, dim: int) -> str:
    """The factory ``auto`` resolves to for ``n`` vectors of dimension ``dim``.

    Exact ``Flat`` while ``n * dim <= EXACT_BUDGET`` (a query then costs about
    30 M multiply-adds, a few ms on one core); otherwise ``IVF{nlist},Flat``:
    it trains in about a minute at a million vectors, keeps exact distances,
    supports ``remove_ids``, and scales on to on-disk inverted lists.
    """
    if n * dim <= EXACT_BUDGET:
        return "Flat"
    return f"IVF{ivf_lists(n)},Flat"


def resolve_factory(factory: str, n: int, dim: int) -> str:
    """Expand the shorthands ``auto``, ``HNSW``, ``IVF`` and ``IVF<nlist>``; check the rest with Faiss.

    Raises:
        SiamsearchError: for a string Faiss cannot build, or one that manages its own ids.
    """
    f = (factory or "auto").strip()
    if f.lower() == "auto":
        return choose_factory(n, dim)
    if f.lower() == "flat":
        return "Flat"
    if f.upper() == "HNSW":
        return "HNSW32"
    if f.upper() == "IVF":
        return f"IVF{ivf_lists(n)},Flat"
    if f.upper().startswith("IVF") and f[3:].isdigit():
        return f"IVF{int(f[3:])},Flat"
    if f.upper().startswith("IDMAP"):
        raise SiamsearchError(
            f"factory {factory!r}: leave out the IDMap prefix; siamsearch maps ids to gallery rows itself"
        )
    try:
        faiss.index_factory(dim, f, faiss.METRIC_L2)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "not understood"
        raise SiamsearchError(
            f"Faiss cannot build index {factory!r} ({first}); use auto, Flat, HNSW32, IVF, IVF4096 "
            "or another Faiss index_factory string such as IVF4096,PQ32"
        ) from None
    return f


def _kind(base: faiss.Index) -> str:
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    if isinstance(base, faiss.IndexFlat):
        return "flat"
    return "other"


# --------------------------------------------------------------------------- the wrapper


@dataclass
class _Parts:
    owner: faiss.Index  # the Python object that owns the C++ index (keeps it alive)
    index: faiss.Index  # what is searched and saved (IVF itself, or an IndexIDMap2)
    base: faiss.Index  # the downcast inner index
    kind: str


def _parts(owner: faiss.Index) -> _Parts:
    index = owner if type(owner) is not faiss.Index else faiss.downcast_index(owner)
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return _Parts(owner, index, base, _kind(base))


class AnnIndex:
    """An id-mapped Faiss index searched by Euclidean distance, with removal and tuning.

    Create one with :func:`build_index` (choose, train, add, tune) or
    :meth:`AnnIndex.load`; grow it with :meth:`add`, shrink it with
    :meth:`remove`, search with :meth:`search`.

    Attributes:
        factory: the resolved Faiss factory string (``"Flat"``, ``"IVF4096,Flat"``, ``"HNSW32"``...).
        params: search parameters and how they were chosen (``nprobe`` / ``efSearch``,
            ``tuned_recall_at_10``, ``tuned_on``...), recorded in the gallery manifest.
        tombstones: ids removed from an index type without ``remove_ids``; filtered at search time.
    """

    def __init__(self, index: faiss.Index, factory: str, params: Optional[dict] = None,
                 tombstones: Iterable[int] = ()):
        self._p = _parts(index)
        self.factory = factory
        self.params: dict = dict(params or {})
        self.tombstones: set[int] = {int(t) for t in tombstones}
        self._apply_params()

    # ---- construction

    @classmethod
    def empty(cls, dim: int, factory: str) -> "AnnIndex":
        """An untrained, empty index for a resolved ``factory`` (see :func:`resolve_factory`)."""
        inner = faiss.index_factory(int(dim), factory, faiss.METRIC_L2)
        if not isinstance(faiss.downcast_index(inner), faiss.IndexIVF):
            inner = faiss.IndexIDMap2(inner)  # IVF stores ids itself; IDMap2 over IVF breaks remove_ids
        return cls(inner, factory)

    @property
    def index(self) -> faiss.Index:
        """The underlying Faiss index (ids are the caller's); readable with plain faiss."""
        return self._p.index

    @property
    def kind(self) -> str:
        """``"flat"``, ``"ivf"``, ``"hnsw"`` or ``"other"``."""
        return self._p.kind

    @property
    def dim(self) -> int:
        return int(self._p.index.d)

    @property
    def ntotal(self) -> int:
        """Entries stored in the Faiss index, tombstones included."""
        return int(self._p.index.ntotal)

    def __len__(self) -> int:
        """Live entries (stored minus tombstoned)."""
        return self.ntotal - len(self.tombstones)

    @property
    def is_trained(self) -> bool:
        return bool(self._p.index.is_trained)

    @property
    def exact_distances(self) -> bool:
        """True when stored vectors are uncompressed (Flat, HNSW-Flat, IVF-Flat) so distances are exact."""
        return isinstance(self._p.base, (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat))

    @property
    def removal(self) -> str:
        """How :meth:`remove` works for this type: ``"remove_ids"`` or ``"tombstone"``."""
        return "tombstone" if self.kind == "hnsw" or self.params.get("removal") == "tombstone" else "remove_ids"

    @property
    def needs_rebuild(self) -> bool:
        """True once tombstones exceed :data:`REBUILD_SHARE` of the stored entries."""
        return bool(self.tombstones) and len(self.tombstones) > REBUILD_SHARE * max(self.ntotal, 1)

    def train(self, sample: np.ndarray) -> None:
        """Train (IVF quantizers, PQ codebooks) on ``sample [m, d]``; a no-op for Flat and HNSW.

        Raises:
            SiamsearchError: when the sample has fewer vectors than the index has lists.
        """
        if self.is_trained:
            return
        sample = as_vectors(sample, self.dim, "training vectors")
        ivf = faiss.try_extract_index_ivf(self._p.index)
        if ivf is not None:
            if len(sample) < ivf.nlist:
                raise SiamsearchError(
                    f"index {self.factory} has {ivf.nlist} lists but only {len(sample)} vectors to train on; "
                    "use --factory auto or Flat, or fewer lists (e.g. IVF64)"
                )
            ivf.cp.niter = IVF_TRAIN_ITERATIONS
            if isinstance(ivf, faiss.IndexIVFPQ):
                ivf.do_polysemous_training = False  # slow, and only useful for Hamming filtering
        try:
            self._p.index.train(sample)
        except RuntimeError as e:
            raise SiamsearchError(f"could not train index {self.factory}: {str(e).strip().splitlines()[-1]}; "
                                  "use --factory auto or Flat") from None

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors ``x [b, d]`` under ``ids [b]`` (int64, not already present)."""
        x = as_vectors(x, self.dim)
        ids = as_ids(ids, len(x))
        if len(x):
            self._p.index.add_with_ids(x, ids)
            self.tombstones.difference_update(ids.tolist())

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many entries stop being searchable.

        Uses ``remove_ids`` where the index type supports it, otherwise adds the
        ids to :attr:`tombstones` (check :attr:`needs_rebuild` afterwards).
        """
        ids = as_ids(ids)
        if not len(ids):
            return 0
        if self.removal == "remove_ids":
            try:
                return int(self._p.index.remove_ids(faiss.IDSelectorBatch(ids)))
            except RuntimeError:  # not implemented for this type: fall back to tombstones
                self.params["removal"] = "tombstone"
        before = len(self.tombstones)
        present = self._id_set()
        self.tombstones.update(int(i) for i in ids if present is None or int(i) in present)
        return len(self.tombstones) - before

    def _id_set(self) -> Optional[set]:
        """The stored ids (IDMap2 indexes only; ``None`` when the index keeps them internally)."""
        if isinstance(self._p.index, faiss.IndexIDMap2):
            return set(faiss.vector_to_array(self._p.index.id_map).tolist())
        return None

    # ---- search parameters

    def _param_name(self) -> Optional[str]:
        return {"ivf": "nprobe", "hnsw": "efSearch"}.get(self.kind)

    def _param_max(self) -> int:
        if self.kind == "ivf":
            return int(faiss.extract_index_ivf(self._p.index).nlist)
        if self.kind == "hnsw":
            return max(self.ntotal, 16)
        return 0

    def _apply_params(self) -> None:
        name = self._param_name()
        if name and name in self.params:
            self._set_param(int(self.params[name]))

    def _set_param(self, value: int) -> None:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self._p.index).nprobe = int(value)
        elif self.kind == "hnsw":
            self._p.base.hnsw.efSearch = int(value)

    def _get_param(self) -> int:
        if self.kind == "ivf":
            return int(faiss.extract_index_ivf(self._p.index).nprobe)
        if self.kind == "hnsw":
            return int(self._p.base.hnsw.efSearch)
        return 0

    def set_search_param(self, value: int) -> None:
        """Set ``nprobe`` (IVF) or ``efSearch`` (HNSW) by hand; recorded in :attr:`params`."""
        name = self._param_name()
        if name is None:
            raise SiamsearchError(f"index {self.factory} has no nprobe/efSearch to set")
        if int(value) < 1:
            raise SiamsearchError(f"{name} must be at least 1, got {value}")
        self.params[name] = int(value)
        self.params["tuned_on"] = "manual"
        self._set_param(int(value))

    def tune(self, queries: np.ndarray, truth: np.ndarray, target_recall: float = TUNE_RECALL) -> dict:
        """Pick the smallest ``nprobe`` / ``efSearch`` whose recall@k reaches ``target_recall``.

        Args:
            queries: ``[Q, d]`` vectors that are *not* stored in the index (held out),
                so the estimate is that of a new query from the same distribution
                (a stored vector would find its own graph neighbourhood in HNSW and
                flatter the estimate).
            truth: the exact neighbours ``[Q, k]`` of ``queries`` among the stored entries.

        Returns:
            :attr:`params` with the chosen value, the recall it reached
            (``tuned_recall_at_10``), the target and the sample size.
        """
        name = self._param_name()
        if name is None:
            return self.params
        queries = as_vectors(queries, self.dim, "tuning queries")
        truth = np.asarray(truth, dtype="int64")
        k = truth.shape[1]
        ladder = NPROBE_LADDER if self.kind == "ivf" else EFSEARCH_LADDER
        top = self._param_max()
        values = [v for v in ladder if v < top] + [top]
        chosen, recall = values[-1], 0.0
        for v in values:
            _, got = self._raw_search(queries, k, v)
            chosen, recall = v, _recall(got, truth)
            if recall >= target_recall:
                break
        self.params.update({name: int(chosen), "tuned_recall_at_10": round(float(recall), 4),
                            "tuning_target": target_recall, "tuned_on": int(len(self)),
                            "tuning_queries": int(len(queries))})
        self._set_param(chosen)
        return self.params

    # ---- search

    def _search_params(self, value: int) -> tuple:
        """Search parameters filtering out tombstones, or None; plus the objects they point to.

        The selectors are returned too so that they stay alive while Faiss uses them.
        """
        if not self.tombstones:
            return None, ()
        batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype="int64", count=len(self.tombstones)))
        sel = faiss.IDSelectorNot(batch)
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=int(value), sel=sel)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=int(value), sel=sel)
        else:
            params = faiss.SearchParameters(sel=sel)
        return params, (batch, sel)

    def _raw_search(self, x: np.ndarray, k: int, value: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        value = self._get_param() if value is None else value
        params, _keepalive = self._search_params(value)
        if params is None:
            if value != self._get_param():
                old = self._get_param()
                self._set_param(value)
                try:
                    return self._p.index.search(x, k)
                finally:
                    self._set_param(old)
            return self._p.index.search(x, k)
        try:
            return self._p.index.search(x, k, params=params)
        except RuntimeError:  # this type cannot filter during search: over-fetch and filter after
            d2, ids = self._p.index.search(x, k + len(self.tombstones))
            return _filter(d2, ids, self.tombstones, k)

    def search(self, x: np.ndarray, k: int,
               vectors: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live entries of each query, by Euclidean distance.

        Args:
            x: queries ``[Q, d]`` (or one ``[d]``), converted to float32.
            k: neighbours per query; rows are padded with id ``-1`` and distance ``inf``
                only when fewer than ``k`` entries are live.
            vectors: for indexes with lossy codes (PQ, SQ...): a function returning the
                exact stored vectors ``[m, d]`` of ids ``[m]``; candidates are then
                re-ranked by exact distance. Ignored for exact-distance types.

        Returns:
            ``(distances [Q, k] float32 in [0, 2] for unit vectors, ascending; ids [Q, k] int64)``.
        """
        x = as_vectors(x, self.dim, "queries")
        if int(k) < 1:
            raise SiamsearchError(f"k must be at least 1, got {k}")
        k = int(k)
        n_live = len(self)
        if n_live == 0 or len(x) == 0:
            return (np.full((len(x), k), np.inf, dtype="float32"), np.full((len(x), k), -1, dtype="int64"))
        rerank = vectors is not None and not self.exact_distances
        fetch = min(max(k * RERANK_FACTOR, k + 16), self.ntotal) if rerank else k
        d2, ids = self._raw_search(x, fetch)
        # An IVF probe or HNSW walk can come back short of k live entries (small lists, tombstones):
        # widen the search for those rows until they are full or the search is exhaustive.
        need = min(fetch, n_live)
        short = np.flatnonzero((ids[:, :need] < 0).any(axis=1))
        value = self._get_param()
        while len(short) and self._param_name() and value < self._param_max():
            value = min(value * 4, self._param_max())
            d2s, ids_s = self._raw_search(x[short], fetch, value)
            d2[short], ids[short] = d2s, ids_s
            short = short[(ids_s[:, :need] < 0).any(axis=1)]
        if rerank:
            d2, ids = _rerank(x, ids, vectors, k)
        dist = squared_to_distance(d2[:, :k]).astype("float32")
        ids = np.ascontiguousarray(ids[:, :k])
        dist[ids < 0] = np.inf
        return dist, ids

    # ---- persistence

    @property
    def meta(self) -> dict:
        """What the gallery manifest records about this index."""
        return {
            "factory": self.factory,
            "kind": self.kind,
            "metric": "L2 (squared internally; reported as Euclidean distance)",
            "dim": self.dim,
            "ntotal": self.ntotal,
            "live": len(self),
            "removal": self.removal,
            "tombstones": len(self.tombstones),
            "exact_distances": self.exact_distances,
            "params": dict(self.params),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the Faiss index to ``path`` atomically (temporary file in the same folder, then rename)."""
        with atomic_path(path) as tmp:
            faiss.write_index(self._p.index, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, factory: str, params: Optional[dict] = None,
             tombstones: Iterable[int] = ()) -> "AnnIndex":
        """Read a Faiss index written by :meth:`save`.

        Raises:
            SiamsearchError: when the file is missing or not a readable Faiss index.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SiamsearchError(f"{path} is missing")
        try:
            index = faiss.read_index(path)
        except RuntimeError as e:
            raise SiamsearchError(f"{path} is not a readable Faiss index "
                                  f"({str(e).strip().splitlines()[-1][:200]})") from None
        obj = cls(index, factory, params, ())
        tombstones = np.asarray(list(tombstones) if not isinstance(tombstones, np.ndarray) else tombstones)
        if obj.removal == "tombstone" and len(tombstones):
            present = obj._id_set()
            obj.tombstones = {int(t) for t in tombstones if present is None or int(t) in present}
        return obj


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each truth row found in the matching row of ``found``."""
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max((t >= 0).sum(), 1)
            for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Recall@k of approximate ids ``found [Q, k]`` against exact ids ``truth [Q, k]`` (set overlap)."""
    return _recall(np.asarray(found), np.asarray(truth))


def _filter(d2: np.ndarray, ids: np.ndarray, drop: set, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_d = np.full((len(ids), k), np.inf, dtype="float32")
    out_i = np.full((len(ids), k), -1, dtype="int64")
    for r in range(len(ids)):
        keep = [j for j in range(ids.shape[1]) if ids[r, j] >= 0 and int(ids[r, j]) not in drop][:k]
        out_d[r, :len(keep)] = d2[r, keep]
        out_i[r, :len(keep)] = ids[r, keep]
    return out_d, out_i


def _rerank(x: np.ndarray, ids: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray],
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared distances for candidate ``ids [Q, m]``, sorted; keeps the best k (m >= k)."""
    valid = ids >= 0
    uniq = np.unique(ids[valid])
    table = as_vectors(vectors(uniq), x.shape[1], "stored vectors") if len(uniq) else np.zeros((0, x.shape[1]), "float32")
    pos = np.searchsorted(uniq, np.where(valid, ids, uniq[0] if len(uniq) else 0))
    cand = table[pos] if len(uniq) else np.zeros(ids.shape + (x.shape[1],), "float32")
    d2 = ((cand - x[:, None, :]) ** 2).sum(-1).astype("float32")
    d2[~valid] = np.inf
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, order, 1), np.take_along_axis(np.where(valid, ids, -1), order, 1)


# --------------------------------------------------------------------------- building


def build_index(source: VectorSource, factory: str = "auto", tune: bool = True,
                target_recall: float = TUNE_RECALL, block_rows: int = 65536, seed: int = 0,
                progress: Optional[Callable[[int], None]] = None) -> AnnIndex:
    """Choose, train, fill and tune an index over every vector of ``source``.

    For approximate types, :data:`TUNE_QUERIES` vectors are held out while the
    rest are added, the search parameter is tuned on them against exact search
    (see :meth:`AnnIndex.tune`), then they are added too.

    Args:
        source: the vectors and their ids (see :class:`VectorSource`; :class:`ArraySource` for arrays).
        factory: ``"auto"``, a shorthand or a Faiss factory string (see the module docstring).
        tune: pick ``nprobe`` / ``efSearch`` for ``target_recall`` (approximate types only).
        block_rows: vectors added per call, bounding extra memory.
        seed: for the training and tuning samples.
        progress: called with the number of vectors added after each block.

    Returns:
        The filled :class:`AnnIndex`; ``params["requested"]`` keeps ``factory`` as given.
    """
    n, dim = len(source), int(source.dim)
    resolved = resolve_factory(factory, n, dim)
    ann = AnnIndex.empty(dim, resolved)
    ann.params["requested"] = factory
    if not ann.is_trained:
        ivf = faiss.try_extract_index_ivf(ann.index)
        m = max(IVF_TRAIN_PER_LIST * ivf.nlist, 10000) if ivf is not None else 65536
        _, sample = source.sample(m, seed)
        ann.train(sample)
    tuning = tune and ann._param_name() is not None and n > 2 * TUNE_QUERIES
    held_ids, held = source.sample(TUNE_QUERIES, seed + 1) if tuning else (np.zeros(0, "int64"), None)
    for ids, x in source.blocks(block_rows):
        if tuning:
            keep = ~np.isin(ids, held_ids)
            ids, x = ids[keep], x[keep]
        ann.add(x, ids)
        if progress is not None:
            progress(len(ids))
    if tuning:
        _, truth = exact_knn(source, held, min(10, n - len(held_ids)), block_rows, exclude=held_ids)
        ann.tune(held, truth, target_recall)
        ann.add(held, held_ids)
        if progress is not None:
            progress(len(held_ids))
    elif ann._param_name() is not None:
        ann.params.setdefault(ann._param_name(), ann._get_param())
        ann.params["tuned_on"] = "not tuned (too few vectors)" if tune else "not tuned"
    return ann
