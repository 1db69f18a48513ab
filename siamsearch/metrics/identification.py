"""Identification metrics: who in the gallery is this?

Two settings:

* **leave-one-out** over one labelled set (``embeddings [N, d]``, ``labels [N]``): every
  item is a query against all the others (pytorch-metric-learning's
  "same source" mode);
* **gallery / probe**: probes ``[Q, d]`` against a separate gallery ``[G, d]``.

Neighbours come from exact Faiss search (:class:`faiss.IndexFlatL2`) in batches of
queries, so memory is ``O(batch x k)`` plus the embeddings, never ``N x N``. A
different search (e.g. a gallery's deployed approximate index) can be passed as
``search``.

Definitions, for a query ``q`` with label ``y`` and ``R`` = number of *other* items with
label ``y`` in the searched set; ``rel(i)`` = 1 if the ``i``-th nearest neighbour has
label ``y``:

* ``precision@1`` = mean of ``rel(1)``;
* ``recall@k`` (CMC at rank k) = share of queries with at least one ``rel(i) = 1`` for
  ``i <= k``;
* ``R-precision`` = mean of ``sum_{i<=R} rel(i) / R``;
* ``MAP@R`` = mean of ``(1/R) sum_{i<=R} rel(i) * P(i)`` with ``P(i) = sum_{j<=i} rel(j) / i``
  (Musgrave et al., "A Metric Learning Reality Check", 2020, as pytorch-metric-learning
  computes it).

Queries with ``R = 0`` (a label that appears nowhere else in the searched set) cannot be
scored and are left out of these averages (and counted in ``n_excluded``), as
pytorch-metric-learning does. Open-set figures (DIR at FPIR) use such probes instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..core.distance import is_same_pairs, squared_to_distance
from ..core.errors import SiamsearchError
from .knn import as_vectors, exact_knn
from .verification import threshold_for_far

#: ``search(queries [b, d] float32, k) -> (distances [b, k], ids [b, k] int64)``; distances are
#: Euclidean (not squared); missing neighbours have id -1.
SearchFn = Callable[[np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]

#: Default ranks reported for recall@k.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)

#: Query batches are sized so that ``batch x k`` stays under this many neighbours.
NEIGHBOUR_BUDGET = 1 << 22


def _as_embeddings(x, name: str) -> np.ndarray:
    """``[N, d]`` float32, checked by :func:`siamsearch.metrics.knn.as_vectors` (a 1-D array is refused here)."""
    if np.ndim(x) != 2:
        raise SiamsearchError(f"{name} must be a 2-D array [N, d]; got shape {np.shape(x)}")
    return as_vectors(x, None, name)


def _as_labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.size != n:
        raise SiamsearchError(f"{name} has {y.size} entries but there are {n} embeddings")
    return y


def exact_search(database: np.ndarray) -> SearchFn:
    """An exact Euclidean :data:`SearchFn` over ``database [G, d]`` (:func:`siamsearch.metrics.knn.exact_knn`)."""
    database = _as_embeddings(database, "database")
    norms = np.einsum("ij,ij->i", database, database)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d2, ids = exact_knn(queries, database, int(k), sq_norms=norms, trusted=True)
        return squared_to_distance(d2), ids

    return search


def _batches(n: int, k: int, batch_size: Optional[int]) -> Iterator[slice]:
    b = batch_size or max(1, min(4096, NEIGHBOUR_BUDGET // max(k, 1)))
    for start in range(0, n, b):
        yield slice(start, min(n, start + b))


def _label_counts(query_labels: np.ndarray, searched_labels: np.ndarray) -> np.ndarray:
    """For each query label, how many items of ``searched_labels`` carry it. ``[Q]`` int64."""
    uniq, counts = np.unique(searched_labels, return_counts=True)
    pos = np.searchsorted(uniq, query_labels)
    pos = np.clip(pos, 0, max(uniq.size - 1, 0))
    found = uniq.size > 0
    hit = (uniq[pos] == query_labels) if found else np.zeros(query_labels.shape, bool)
    return np.where(hit, counts[pos] if found else 0, 0).astype(np.int64)


@dataclass
class RetrievalAccumulator:
    """Streams batches of ranked neighbour labels into the identification figures.

    Feed it with :meth:`add`; read :meth:`result`. Memory is ``O(number of queries)``.

    Attributes:
        cmc_ranks: length of the CMC curve kept (ranks 1..cmc_ranks).
    """

    cmc_ranks: int = 20
    _first_hit: list = field(default_factory=list)  # rank (1-based) of the first correct neighbour, 0 = none
    _ap_r: list = field(default_factory=list)
    _rp: list = field(default_factory=list)
    _top1: list = field(default_factory=list)  # id of the nearest neighbour
    _top1_dist: list = field(default_factory=list)
    _r: list = field(default_factory=list)
    _n_neighbours: list = field(default_factory=list)

    def add(
        self,
        query_labels: np.ndarray,
        neighbour_labels: np.ndarray,
        neighbour_valid: np.ndarray,
        relevant_counts: np.ndarray,
        top1_ids: np.ndarray,
        top1_dist: np.ndarray,
    ) -> None:
        """Add one batch.

        Args:
            query_labels: ``[b]``.
            neighbour_labels: ``[b, k]`` labels of the ranked neighbours (nearest first).
            neighbour_valid: ``[b, k]`` bool, False where the search returned no neighbour.
            relevant_counts: ``[b]`` R for each query (items of its label in the searched set,
                the query itself excluded).
            top1_ids / top1_dist: ``[b]`` nearest neighbour's id and distance (-1 / inf when none).
        """
        rel = is_same_pairs(neighbour_labels, query_labels[:, None]) & neighbour_valid
        k = rel.shape[1]
        any_hit = rel.any(axis=1)
        first = np.where(any_hit, rel.argmax(axis=1) + 1, 0) if k else np.zeros(rel.shape[0], np.int64)
        r = relevant_counts
        # MAP@R and R-precision over the first R ranks (k >= R is the caller's job; ranks past k count as misses)
        within_r = np.arange(1, k + 1)[None, :] <= r[:, None]
        rel_r = rel & within_r
        cum = np.cumsum(rel_r, axis=1)
        prec = cum / np.arange(1, k + 1)[None, :]
        r_safe = np.maximum(r, 1)
        ap_r = (prec * rel_r).sum(axis=1) / r_safe
        rp = rel_r.sum(axis=1) / r_safe
        self._first_hit.append(first)
        self._ap_r.append(ap_r)
        self._rp.append(rp)
        self._top1.append(top1_ids)
        self._top1_dist.append(top1_dist)
        self._r.append(r)
        self._n_neighbours.append(np.full(r.shape, k))

    def per_query(self) -> dict[str, np.ndarray]:
        """Per-query arrays in query order: ``first_hit_rank`` (0 = not found), ``ap_at_r``,
        ``r_precision``, ``top1_id``, ``top1_distance``, ``r``."""
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return {
            "first_hit_rank": cat(self._first_hit, np.int64),
            "ap_at_r": cat(self._ap_r, np.float64),
            "r_precision": cat(self._rp, np.float64),
            "top1_id": cat(self._top1, np.int64),
            "top1_distance": cat(self._top1_dist, np.float64),
            "r": cat(self._r, np.int64),
        }

    def result(self, ks: Sequence[int] = DEFAULT_KS) -> dict:
        """The figures over queries with ``R >= 1``.

        Returns:
            ``{"n_queries", "n_excluded", "precision_at_1", "recall_at_k": {k: value},
            "r_precision", "map_at_r", "cmc": [recall@1..recall@cmc_ranks]}``.
        """
        q = self.per_query()
        ok = q["r"] >= 1
        first = q["first_hit_rank"][ok]
        n = int(ok.sum())
        if n == 0:
            raise SiamsearchError(
                "no query has another item of its identity to find; identification needs at least "
                "two images of some identity"
            )

        def recall(k: int) -> float:
            return float(np.mean((first >= 1) & (first <= k)))

        return {
            "n_queries": n,
            "n_excluded": int((~ok).sum()),
            "precision_at_1": recall(1),
            "recall_at_k": {int(k): recall(int(k)) for k in ks},
            "r_precision": float(q["r_precision"][ok].mean()),
            "map_at_r": float(q["ap_at_r"][ok].mean()),
            "cmc": [recall(k) for k in range(1, self.cmc_ranks + 1)],
        }


def _run(
    queries: np.ndarray,
    query_labels: np.ndarray,
    searched_labels: np.ndarray,
    search: SearchFn,
    relevant: np.ndarray,
    self_ids: Optional[np.ndarray],
    ks: Sequence[int],
    cmc_ranks: int,
    batch_size: Optional[int],
    max_r: Optional[int],
    progress: bool,
) -> RetrievalAccumulator:
    n_db = searched_labels.size
    acc = RetrievalAccumulator(cmc_ranks=cmc_ranks)
    k_min = max(max(ks), cmc_ranks)
    r_cap = relevant if max_r is None else np.minimum(relevant, max_r)
    extra = 1 if self_ids is not None else 0
    k_global = int(min(n_db, max(k_min, int(r_cap.max(initial=0))) + extra))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=queries.shape[0], desc="identification", unit="query", leave=False)
    for sl in _batches(queries.shape[0], k_global, batch_size):
        k = int(min(n_db, max(k_min, int(r_cap[sl].max(initial=0))) + extra))
        dist, ids = search(queries[sl], k)
        ids = np.asarray(ids, dtype=np.int64)
        dist = np.asarray(dist, dtype=np.float64)
        if self_ids is not None:
            # drop the query itself (by id, so exact duplicates elsewhere are kept); if it was not
            # returned, drop the last column instead
            is_self = ids == self_ids[sl, None]
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
            keep = np.ones(ids.shape, bool)
            keep[np.arange(ids.shape[0]), drop] = False
            ids = ids[keep].reshape(ids.shape[0], -1)
            dist = dist[keep].reshape(dist.shape[0], -1)
        valid = ids >= 0
        nb_labels = np.where(valid, searched_labels[np.clip(ids, 0, max(n_db - 1, 0))], query_labels[sl, None])
        has = ids.shape[1] > 0
        top1 = ids[:, 0] if has else np.full(ids.shape[0], -1)
        top1_d = np.where(valid[:, 0], dist[:, 0], np.inf) if has else np.full(ids.shape[0], np.inf)
        acc.add(query_labels[sl], nb_labels, valid, r_cap[sl], top1, top1_d)
        if bar is not None:
            bar.update(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    return acc


def leave_one_out(
    embeddings,
    labels,
    ks: Sequence[int] = DEFAULT_KS,
    cmc_ranks: int = 20,
    search: Optional[SearchFn] = None,
    batch_size: Optional[int] = None,
    max_r: Optional[int] = None,
    progress: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Identification figures with every item as a query against all the others.

    Args:
        embeddings: ``[N, d]`` float32.
        labels: ``[N]`` identities.
        ks: ranks for recall@k.
        cmc_ranks: length of the CMC curve.
        search: neighbour search over these same embeddings (ids index into them); default exact.
        batch_size: queries per search call (default: sized to keep ``batch x k`` bounded).
        max_r: cap R (MAP@R and R-precision then use ``min(R, max_r)``; recorded in the result).
        progress: show a tqdm bar on stderr.

    Returns:
        ``(figures, per_query)``: see :meth:`RetrievalAccumulator.result` and
        :meth:`RetrievalAccumulator.per_query` (``top1_id`` indexes ``embeddings``).
    """
    x = _as_embeddings(embeddings, "embeddings")
    y = _as_labels(labels, x.shape[0], "labels")
    relevant = _label_counts(y, y) - 1
    acc = _run(
        x, y, y, search or exact_search(x), relevant, np.arange(x.shape[0]), ks, cmc_ranks, batch_size, max_r, progress
    )
    out = acc.result(ks)
    out["mode"] = "leave-one-out"
    out["max_r"] = max_r
    return out, acc.per_query()


def gallery_probe(
    probes,
    probe_labels,
    gallery,
    gallery_labels,
    ks: Sequence[int] = DEFAULT_KS,
    cmc_ranks: int = 20,
    search: Optional[SearchFn] = None,
    batch_size: Optional[int] = None,
    max_r: Optional[int] = None,
    progress: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Closed-set identification of probes ``[Q, d]`` against a gallery ``[G, d]``.

    Probes whose identity is absent from the gallery are excluded (``n_excluded``); use
    :func:`dir_at_fpir` for them. Same outputs as :func:`leave_one_out` (``top1_id`` indexes
    the gallery).
    """
    p = _as_embeddings(probes, "probes")
    g = _as_embeddings(gallery, "gallery")
    if p.shape[1] != g.shape[1]:
        raise SiamsearchError(f"probes have dimension {p.shape[1]} but the gallery has {g.shape[1]}")
    py = _as_labels(probe_labels, p.shape[0], "probe_labels")
    gy = _as_labels(gallery_labels, g.shape[0], "gallery_labels")
    relevant = _label_counts(py, gy)
    acc = _run(p, py, gy, search or exact_search(g), relevant, None, ks, cmc_ranks, batch_size, max_r, progress)
    out = acc.result(ks)
    out["mode"] = "gallery-probe"
    out["max_r"] = max_r
    return out, acc.per_query()


def precision_at_1(embeddings, labels, batch_size: Optional[int] = None) -> float:
    """Leave-one-out precision@1 of ``embeddings [N, d]`` with ``labels [N]`` (exact, batched)."""
    x = _as_embeddings(embeddings, "embeddings")
    y = _as_labels(labels, x.shape[0], "labels")
    relevant = _label_counts(y, y) - 1
    acc = _run(x, y, y, exact_search(x), np.minimum(relevant, 1), np.arange(x.shape[0]), (1,), 1, batch_size, 1, False)
    return float(acc.result((1,))["precision_at_1"])


def cmc_recall_at_k(embeddings, labels, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Leave-one-out recall@k in the CMC sense (share of queries with a same-identity item among the first
    ``k`` neighbours) for each ``k`` in ``ks``. Not the k-NN set-overlap recall of
    :func:`siamsearch.metrics.knn.knn_recall_at_k`."""
    return leave_one_out(embeddings, labels, ks=ks, cmc_ranks=max(ks))[0]["recall_at_k"]


def map_at_r(embeddings, labels) -> float:
    """Leave-one-out MAP@R (pytorch-metric-learning's definition)."""
    return float(leave_one_out(embeddings, labels)[0]["map_at_r"])


def r_precision(embeddings, labels) -> float:
    """Leave-one-out R-precision."""
    return float(leave_one_out(embeddings, labels)[0]["r_precision"])


def nearest(
    queries, gallery, search: Optional[SearchFn] = None, batch_size: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest gallery item for each query: ``(distances [Q], ids [Q])`` (exact unless ``search``)."""
    q = _as_embeddings(queries, "queries")
    search = search or exact_search(gallery)
    ds, ids = [], []
    for sl in _batches(q.shape[0], 1, batch_size):
        d, i = search(q[sl], 1)
        ds.append(np.asarray(d, dtype=np.float64)[:, 0])
        ids.append(np.asarray(i, dtype=np.int64)[:, 0])
    return np.concatenate(ds) if ds else np.zeros(0), np.concatenate(ids) if ids else np.zeros(0, np.int64)


def dir_at_fpir(
    known_distances,
    known_correct,
    unknown_distances,
    fpir: float,
) -> tuple[float, float, float]:
    """Open-set detection-and-identification rate at a false positive identification rate.

    A probe is accepted when its nearest gallery distance is ``<= threshold``.

    * ``FPIR(t)`` = share of *unknown* probes (identity not in the gallery) accepted;
    * ``DIR(t)`` = share of *known* probes accepted **and** whose nearest neighbour has the
      right identity.

    The threshold is the largest observed distance with ``FPIR <= fpir``
    (:func:`siamsearch.metrics.verification.threshold_for_far` with unknown probes as impostors).

    Args:
        known_distances: ``[K]`` nearest-neighbour distance of each known probe.
        known_correct: ``[K]`` bool, whether that nearest neighbour has the probe's identity.
        unknown_distances: ``[U]`` nearest-neighbour distance of each unknown probe.

    Returns:
        ``(dir, threshold, achieved_fpir)``.
    """
    kd = np.asarray(known_distances, dtype=np.float64).reshape(-1)
    kc = np.asarray(known_correct, dtype=bool).reshape(-1)
    ud = np.asarray(unknown_distances, dtype=np.float64).reshape(-1)
    if kd.size == 0 or ud.size == 0:
        raise SiamsearchError("DIR at FPIR needs both probes known to the gallery and probes unknown to it")
    is_known = np.r_[np.ones(kd.size, bool), np.zeros(ud.size, bool)]
    thr, achieved, _ = threshold_for_far(np.r_[kd, ud], is_known, fpir)
    return float(np.mean(kc & (kd <= thr))), thr, achieved


def open_set_metrics(
    probes,
    probe_labels,
    gallery,
    gallery_labels,
    fpirs: Sequence[float] = (1e-1, 1e-2),
    search: Optional[SearchFn] = None,
    n_boot: int = 0,
    seed: int = 0,
) -> dict:
    """DIR at each FPIR for probes against a gallery; probes whose identity is not in the gallery
    are the unknowns.

    Args:
        n_boot: when > 0, a 95% interval of each DIR by the bootstrap over the probes' identities
            (:func:`dir_at_fpir_ci`); ``seed`` seeds it.

    Returns:
        ``{"n_known", "n_unknown", "dir_at_fpir": [{"fpir", "dir", "threshold", "achieved_fpir",
        "supported"}]}`` where ``supported`` applies the rule of three to the unknown count; with
        ``n_boot``, each row also holds ``"ci95": [low, high]`` (``None`` where no replicate had both
        known and unknown probes) and the result ``"ci_method"``.
    """
    from .bootstrap import SUBJECT_METHOD
    from .verification import far_supported

    py = np.asarray(probe_labels).reshape(-1)
    gy = np.asarray(gallery_labels).reshape(-1)
    d, ids = nearest(probes, gallery, search=search)
    known = _label_counts(py, gy) > 0
    valid = ids >= 0
    correct = valid & (gy[np.clip(ids, 0, max(gy.size - 1, 0))] == py)
    # a probe the search found nothing for is never accepted: give it a distance past every real one
    finite = d[valid & np.isfinite(d)]
    d = np.where(valid & np.isfinite(d), d, (finite.max() if finite.size else 0.0) + 1.0)
    n_unknown = int((~known).sum())
    rows = []
    for f in fpirs:
        dr, thr, achieved = dir_at_fpir(d[known], correct[known], d[~known], f)
        rows.append(
            {
                "fpir": float(f),
                "dir": dr,
                "threshold": thr,
                "achieved_fpir": achieved,
                "supported": far_supported(n_unknown, f),
            }
        )
    out = {"n_known": int(known.sum()), "n_unknown": n_unknown, "dir_at_fpir": rows}
    if n_boot:
        ci = dir_at_fpir_ci(d[known], correct[known], py[known], d[~known], py[~known], fpirs, n_boot=n_boot,
                            seed=seed)
        for row in rows:
            row["ci95"] = list(ci[row["fpir"]]) if row["fpir"] in ci else None
        out["ci_method"] = SUBJECT_METHOD
    return out


def dir_at_fpir_ci(
    known_distances,
    known_correct,
    known_subjects,
    unknown_distances,
    unknown_subjects,
    fpirs: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[float, tuple[float, float]]:
    """Percentile intervals of :func:`dir_at_fpir` by resampling the probes' identities.

    Known and unknown identities are drawn together (with replacement), every probe of a drawn identity
    is kept once per draw, and each replicate chooses its own threshold on its own unknown probes, as a new
    evaluation would: the interval covers the spread of the threshold as well as that of the DIR.

    Args:
        known_distances: ``[K]`` nearest-neighbour distance of each known probe.
        known_correct: ``[K]`` bool, whether that nearest neighbour has the probe's identity.
        known_subjects: ``[K]`` identity of each known probe.
        unknown_distances: ``[U]``; unknown_subjects: ``[U]`` (identities not in the gallery).
        fpirs: the FPIR targets.
        n_boot, seed, level: see :func:`siamsearch.metrics.bootstrap.subject_bootstrap_weighted_ci`.

    Returns:
        ``{fpir: (low, high)}``; a replicate without known or without unknown probes is drawn again.
    """
    from .bootstrap import subject_bootstrap_weighted_ci

    kd = np.asarray(known_distances, dtype=np.float64).reshape(-1)
    kc = np.asarray(known_correct, dtype=bool).reshape(-1)
    ud = np.asarray(unknown_distances, dtype=np.float64).reshape(-1)
    ks, us = np.asarray(known_subjects).reshape(-1), np.asarray(unknown_subjects).reshape(-1)
    if not (kd.size == kc.size == ks.size and ud.size == us.size):
        raise SiamsearchError("known distances, correctness and subjects (and unknown distances and subjects) "
                              "must have one entry per probe")
    n = kd.size

    def statistic(w: np.ndarray) -> Optional[dict]:
        wk, wu = w[:n], w[n:]
        if not (wk.any() and wu.any()):
            return None
        rk_d, rk_c, ru_d = np.repeat(kd, wk), np.repeat(kc, wk), np.repeat(ud, wu)
        return {str(f): dir_at_fpir(rk_d, rk_c, ru_d, f)[0] for f in fpirs}

    ci = subject_bootstrap_weighted_ci(np.r_[ks, us], statistic, n_boot=n_boot, seed=seed, level=level)
    return {float(f): ci[str(f)] for f in fpirs if str(f) in ci}
