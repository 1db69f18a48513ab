"""The id-mapped Faiss index wrapper: add, remove (remove_ids or tombstones), tune, search, save, load."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import faiss
import numpy as np

from ..core.distance import squared_to_distance
from ..core.errors import SiamsearchError
from ..core.files import atomic_path
from ..metrics.knn import as_ids, as_vectors, exact_knn, knn_recall_at_k
from .ann_factory import (EFSEARCH_LADDER, IVF_TRAIN_ITERATIONS, NPROBE_LADDER, MAX_REFINE_K_FACTOR, REBUILD_SHARE, REFINE_K_FACTOR,
                          RERANK_FACTOR, TUNE_RECALL, _kind)

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
        self._flat_cache: Optional[tuple] = None  # (ntotal, ids [N], squared norms [N]) for exact search
        self._param_lock = threading.Lock()  # only for types that take no per-call search parameters
        self._apply_params()

    # ---- construction

    @classmethod
    def empty(cls, dim: int, factory: str) -> "AnnIndex":
        """An untrained, empty index for a resolved ``factory`` (see :func:`resolve_factory`)."""
        inner = faiss.index_factory(int(dim), factory, faiss.METRIC_L2)
        params = {}
        if isinstance(faiss.downcast_index(inner), faiss.IndexRefine):
            params["k_factor"] = REFINE_K_FACTOR
        if not isinstance(faiss.downcast_index(inner), faiss.IndexIVF):
            inner = faiss.IndexIDMap2(inner)  # IVF stores ids itself; IDMap2 over IVF breaks remove_ids
        return cls(inner, factory, params)

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
        """True when distances are exact: stored vectors uncompressed (Flat, HNSW-Flat, IVF-Flat) or
        candidates re-ranked against them inside the index (``...,RFlat``)."""
        return isinstance(self._p.base, (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat,
                                         faiss.IndexRefineFlat))

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
            self._flat_cache = None
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
            self._flat_cache = None
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
        if isinstance(self._p.base, faiss.IndexRefine) and "k_factor" in self.params:
            self._p.base.k_factor = float(self.params["k_factor"])
        name = self._param_name()
        if name and name in self.params:
            self._set_param(int(self.params[name]))

    def _set_param(self, value: int) -> None:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self._p.index).nprobe = int(value)
        elif self.kind == "hnsw":
            faiss.downcast_index(self._hnsw_owner()).hnsw.efSearch = int(value)

    def _get_param(self) -> int:
        if self.kind == "ivf":
            return int(faiss.extract_index_ivf(self._p.index).nprobe)
        if self.kind == "hnsw":
            return int(faiss.downcast_index(self._hnsw_owner()).hnsw.efSearch)
        return 0

    def _hnsw_owner(self) -> faiss.Index:
        """The HNSW index itself (inside a refine index, its first stage)."""
        base = self._p.base
        return base.base_index if isinstance(base, faiss.IndexRefine) else base

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
        refine = self._p.base if isinstance(self._p.base, faiss.IndexRefine) else None
        while True:
            chosen, recall = values[-1], 0.0
            for v in values:
                _, got = self._raw_search(queries, k, v)
                chosen, recall = v, knn_recall_at_k(got, truth)
                if recall >= target_recall:
                    break
            if refine is None or recall >= target_recall or refine.k_factor >= MAX_REFINE_K_FACTOR:
                break
            refine.k_factor = refine.k_factor * 2  # the codes rank too coarsely: re-rank a wider net
        self._set_param(chosen)
        if refine is not None:
            recall = self._narrow_refine(queries, truth, target_recall, recall) if recall >= target_recall else recall
            self.params["k_factor"] = int(refine.k_factor)
        self.params.update({name: int(chosen), "tuned_recall_at_10": round(float(recall), 4),
                            "tuning_target": target_recall, "tuned_on": int(len(self)),
                            "tuning_queries": int(len(queries))})
        return self.params

    def _narrow_refine(self, queries: np.ndarray, truth: np.ndarray, target_recall: float, recall: float) -> float:
        """Halve a refine index's ``k_factor`` (fewer exact re-rankings) while recall stays at the target;
        returns the recall at the kept value, which :attr:`params` records."""
        refine = self._p.base
        while refine.k_factor > 2:
            kept = refine.k_factor
            refine.k_factor = kept / 2
            _, got = self._raw_search(queries, truth.shape[1])
            narrower = knn_recall_at_k(got, truth)
            if narrower < target_recall:
                refine.k_factor = kept
                break
            recall = narrower
        return recall

    # ---- search

    def _search_params(self, value: int) -> tuple:
        """Per-call search parameters: ``nprobe`` / ``efSearch`` = ``value``, and a selector filtering out
        tombstones; None for a type without either. Plus the objects they point to (kept alive while
        Faiss uses them).

        Passed to ``index.search(..., params=)``, they leave the shared index untouched, so concurrent
        searches (``siamsearch serve``) that widen a short search do not change each other's parameters.
        """
        kw, keep = {}, ()
        refine = self._p.base if isinstance(self._p.base, faiss.IndexRefine) else None
        if refine is not None and not self.tombstones:
            # a refine index takes its own parameter type, the first stage's nested in it (with tombstones,
            # the id map's selector replaces it and the search falls back to setting the index's parameter)
            inner, _ = self._search_params_of(self.kind, value, {})
            return faiss.IndexRefineSearchParameters(k_factor=float(refine.k_factor), base_index_params=inner), (inner,)
        if self.tombstones:
            batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype="int64", count=len(self.tombstones)))
            kw["sel"] = faiss.IDSelectorNot(batch)
            keep = (batch, kw["sel"])
        return self._search_params_of(self.kind, value, kw)[0], keep

    @staticmethod
    def _search_params_of(kind: str, value: int, kw: dict) -> tuple:
        if kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=int(value), **kw), ()
        if kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=int(value), **kw), ()
        return (faiss.SearchParameters(**kw) if kw else None), ()

    def _flat_search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of a Flat index with :func:`siamsearch.metrics.knn.exact_knn` over the index's own
        storage (no copy); ids and squared norms are cached until the next add or remove."""
        base = self._p.base
        n, d = int(base.ntotal), int(base.d)
        if self._flat_cache is None or self._flat_cache[0] != n:
            ids = (faiss.vector_to_array(self._p.index.id_map).astype("int64")
                   if isinstance(self._p.index, faiss.IndexIDMap2) else np.arange(n, dtype="int64"))
            xb = faiss.rev_swig_ptr(base.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), "float32")
            self._flat_cache = (n, ids, np.einsum("ij,ij->i", xb, xb))
        _, ids, norms = self._flat_cache
        if n == 0:
            return np.full((len(x), k), np.inf, "float32"), np.full((len(x), k), -1, "int64")
        xb = faiss.rev_swig_ptr(base.get_xb(), n * d).reshape(n, d)
        return exact_knn(x, xb, k, ids=ids, sq_norms=norms, trusted=True)

    def _raw_search(self, x: np.ndarray, k: int, value: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and ids ``[Q, k]`` with ``nprobe`` / ``efSearch`` = ``value`` (default: the
        index's own), tombstones filtered out; the index itself is not modified (safe from threads)."""
        if self.kind == "flat" and not self.tombstones and hasattr(self._p.base, "get_xb"):
            return self._flat_search(x, k)
        value = self._get_param() if value is None else int(value)
        params, _keepalive = self._search_params(value)
        if params is None:
            return self._p.index.search(x, k)
        try:
            return self._p.index.search(x, k, params=params)
        except RuntimeError:  # this type takes no search parameters: set them on the index, one search at a time
            with self._param_lock:
                old = self._get_param()
                self._set_param(value)
                try:
                    d2, ids = self._p.index.search(x, k + len(self.tombstones))
                finally:
                    self._set_param(old)
            return _filter(d2, ids, self.tombstones, k) if self.tombstones else (d2, ids)

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
