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
  exact search reaches :data:`TUNE_RECALL`. Where that ``nprobe`` leaves it
  under :data:`AUTO_MIN_SPEEDUP` times exact search (neighbours spread over
  many lists), the same lists with fast-scan PQ codes and exact re-ranking
  (``IVF{nlist},PQ{d/4}x4fs,RFlat``), then ``HNSW32``, are built and tuned
  too, and the fastest at the recall target kept (see :func:`build_index`).
* ``"Flat"``, ``"HNSW"`` / ``"HNSW32"`` (``efSearch`` tuned the same way),
  ``"IVF"`` (``nlist`` chosen as above), ``"IVF4096"``, or any Faiss factory
  string such as ``"IVF4096,PQ32"``, ``"HNSW32,SQ8"`` or ``"IVF4096,PQ32x4fs,RFlat"``
  (a refine index: ``k_factor`` candidates per neighbour re-ranked exactly inside Faiss).

Ids are the caller's (the gallery's HDF5 row ids). Removal works for every
type: ``remove_ids`` where Faiss supports it (Flat, IVF, PQ...), otherwise a
tombstone set filtered at search time (HNSW) and a rebuild once tombstones
exceed :data:`REBUILD_SHARE` of the index.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Optional, Protocol

import faiss
import numpy as np

from ..metrics.knn import as_ids, as_vectors, exact_knn, knn_recall_at_k
from .ann_factory import (AUTO_FALLBACK, AUTO_MIN_SPEEDUP, EFSEARCH_LADDER, EXACT_BUDGET, IVF_TRAIN_ITERATIONS,
                          IVF_TRAIN_PER_LIST, NPROBE_LADDER, REBUILD_SHARE, REFINE_K_FACTOR, RERANK_FACTOR,
                          TARGET_RECALL, TUNE_QUERIES, TUNE_RECALL, auto_fallbacks, choose_factory, fast_scan_factory,
                          ivf_lists, resolve_factory)
from .ann_index import AnnIndex

__all__ = [
    "AnnIndex", "ArraySource", "VectorSource", "build_index", "choose_factory", "resolve_factory", "ivf_lists",
    "as_vectors", "as_ids", "exact_knn", "knn_recall_at_k", "EXACT_BUDGET", "TARGET_RECALL", "TUNE_RECALL",
    "TUNE_QUERIES", "REBUILD_SHARE", "AUTO_MIN_SPEEDUP", "AUTO_FALLBACK", "NPROBE_LADDER", "EFSEARCH_LADDER", "IVF_TRAIN_ITERATIONS",
    "IVF_TRAIN_PER_LIST", "RERANK_FACTOR", "REFINE_K_FACTOR", "auto_fallbacks", "fast_scan_factory",
]


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


# --------------------------------------------------------------------------- building


def _fill(source: VectorSource, resolved: str, tune: bool, target_recall: float, block_rows: int, seed: int,
          progress: Optional[Callable[[int], None]], coarse: Optional[AnnIndex] = None) -> tuple[AnnIndex, Optional[float]]:
    """Make, train, fill and tune one index of factory ``resolved``.

    ``coarse``: an IVF index with the same number of lists whose trained centroids are reused (no k-means).

    Returns:
        ``(index, estimated speed-up over exact search)``; the estimate (``None`` when not tuned) compares
        the tuned search of the held-out queries (best of 3) with exact search of them over the first block,
        scaled to the whole source, both timed here.
    """
    n, dim = len(source), int(source.dim)
    ann = AnnIndex.empty(dim, resolved)
    if not ann.is_trained:
        ivf = faiss.try_extract_index_ivf(ann.index)
        old = faiss.try_extract_index_ivf(coarse.index) if coarse is not None else None
        if ivf is not None and old is not None and old.nlist == ivf.nlist and ivf.quantizer.ntotal == 0:
            ivf.quantizer.add(old.quantizer.reconstruct_n(0, old.nlist))  # Faiss then skips the k-means
        m = max(IVF_TRAIN_PER_LIST * ivf.nlist, 10000) if ivf is not None else 65536
        _, sample = source.sample(m, seed)
        ann.train(sample)
    tuning = tune and ann._param_name() is not None and n > 2 * TUNE_QUERIES
    held_ids, held = source.sample(TUNE_QUERIES, seed + 1) if tuning else (np.zeros(0, "int64"), None)
    first = None
    for ids, x in source.blocks(block_rows):
        if tuning:
            keep = ~np.isin(ids, held_ids)
            ids, x = ids[keep], x[keep]
            first = x if first is None else first
        ann.add(x, ids)
        if progress is not None:
            progress(len(ids))
    speedup = None
    if tuning:
        k = min(10, n - len(held_ids))
        _, truth = exact_knn(held, source.blocks(block_rows), k, exclude=held_ids)
        ann.tune(held, truth, target_recall)
        t = time.perf_counter()
        exact_knn(held, first, k)
        exact_s = (time.perf_counter() - t) * (n / max(len(first), 1))
        ann_s = np.inf
        for _ in range(3):  # a few ms each: keep the best (the machine may be shared)
            t = time.perf_counter()
            ann._raw_search(held, k)
            ann_s = min(ann_s, time.perf_counter() - t)
        speedup = exact_s / max(ann_s, 1e-9)
        ann.params["estimated_speedup"] = round(float(speedup), 1)
        ann.add(held, held_ids)
        if progress is not None:
            progress(len(held_ids))
    elif ann._param_name() is not None:
        ann.params.setdefault(ann._param_name(), ann._get_param())
        ann.params["tuned_on"] = "not tuned (too few vectors)" if tune else "not tuned"
    return ann, speedup


def _auto_fallback(source: VectorSource, ann: AnnIndex, speedup: float, target_recall: float, block_rows: int,
                   seed: int) -> AnnIndex:
    """Build :func:`auto_fallbacks` in turn until one is estimated at :data:`AUTO_MIN_SPEEDUP` or more;
    return the fastest of all that reached ``target_recall`` (``ann`` when none did)."""
    n, dim = len(source), int(source.dim)
    best, best_speedup = ann, speedup
    tried = [{"factory": ann.factory, "estimated_speedup": round(float(speedup), 1),
              "tuned_recall_at_10": ann.params.get("tuned_recall_at_10")}]
    for factory in auto_fallbacks(n, dim):
        other, other_speedup = _fill(source, factory, True, target_recall, block_rows, seed, None, coarse=ann)
        recall = other.params.get("tuned_recall_at_10", 0.0)
        tried.append({"factory": other.factory, "tuned_recall_at_10": recall, "estimated_speedup":
                      None if other_speedup is None else round(float(other_speedup), 1)})
        if other_speedup is not None and recall >= target_recall and other_speedup > best_speedup:
            best, best_speedup = other, other_speedup
        del other  # at most two filled indexes are held at a time
        if best_speedup >= AUTO_MIN_SPEEDUP:
            break
    best.params["alternatives"] = [t for t in tried if t["factory"] != best.factory]
    return best


def build_index(source: VectorSource, factory: str = "auto", tune: bool = True,
                target_recall: float = TUNE_RECALL, block_rows: int = 65536, seed: int = 0,
                progress: Optional[Callable[[int], None]] = None) -> AnnIndex:
    """Choose, train, fill and tune an index over every vector of ``source``.

    For approximate types, :data:`TUNE_QUERIES` vectors are held out while the
    rest are added, the search parameter is tuned on them against exact search
    (see :meth:`AnnIndex.tune`), then they are added too.

    ``auto`` beyond the exact budget builds ``IVF{nlist},Flat`` first; when the
    ``nprobe`` that reaches the recall target leaves an estimated speed-up over
    exact search below :data:`AUTO_MIN_SPEEDUP` (diffuse data, whose neighbours
    spread over many lists), it builds the same lists with fast-scan PQ codes
    and exact re-ranking (:func:`fast_scan_factory`, reusing the trained
    centroids), and if that is still under the bar ``HNSW32``; each is tuned the
    same way and the fastest at the recall target is kept. ``params`` records
    the estimates (``estimated_speedup``, and ``alternatives`` for the others).

    Args:
        source: the vectors and their ids (see :class:`VectorSource`; :class:`ArraySource` for arrays).
        factory: ``"auto"``, a shorthand or a Faiss factory string (see the module docstring).
        tune: pick ``nprobe`` / ``efSearch`` for ``target_recall`` (approximate types only).
        block_rows: vectors added per call, bounding extra memory.
        seed: for the training and tuning samples.
        progress: called with the number of vectors added after each block (first index only).

    Returns:
        The filled :class:`AnnIndex`; ``params["requested"]`` keeps ``factory`` as given.
    """
    n, dim = len(source), int(source.dim)
    resolved = resolve_factory(factory, n, dim)
    ann, speedup = _fill(source, resolved, tune, target_recall, block_rows, seed, progress)
    if (factory or "auto").strip().lower() == "auto" and ann.kind == "ivf" and speedup is not None \
            and speedup < AUTO_MIN_SPEEDUP:
        ann = _auto_fallback(source, ann, speedup, target_recall, block_rows, seed)
    ann.params["requested"] = factory
    return ann
