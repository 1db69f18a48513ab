"""Exact k-nearest-neighbour search, the vector checks at the boundary, and k-NN recall.

The one exact search of siamsearch: the identification metrics
(:func:`siamsearch.metrics.identification.exact_search`), the gallery's exact
index and the ANN tuner's ground truth all call :func:`exact_knn`.

How it runs at BLAS speed: for each batch of queries and block of stored
vectors, one matrix product ``S = Q @ X.T`` (``[b, n]``), then ``torch.topk``
on ``S`` in place (one partial-selection pass, parallel over rows; a third of
the matrix product's time), and the winners' distances computed directly.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..core.errors import SiamsearchError

#: Scores held at once (``query batch x block rows``): bounds the extra memory to 4 x this many bytes.
SCORE_BUDGET = 1 << 24

Blocks = Iterable["tuple[np.ndarray, np.ndarray]"]


def as_vectors(x, dim: Optional[int] = None, name: str = "vectors") -> np.ndarray:
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
        raise SiamsearchError(f"{name} contain NaN or infinite values; check the model and the input images")
    return x


def as_ids(ids: Union[Sequence[int], np.ndarray], n: Optional[int] = None) -> np.ndarray:
    """Convert ids to a C-contiguous int64 ``[N]`` array of non-negative values (``n``: the expected count)."""
    ids = np.ascontiguousarray(ids, dtype="int64").reshape(-1)
    if n is not None and len(ids) != n:
        raise SiamsearchError(f"got {len(ids)} ids for {n} vectors; give one id per vector")
    if ids.size and ids.min() < 0:
        raise SiamsearchError("ids must be non-negative")
    return ids


def _top_scores(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the ``k`` largest entries of each row of ``s [b, n]`` (unordered), k <= n.

    ``torch.topk`` on the same memory (no copy): a partial selection in one pass, parallel over rows. It
    replaced a numpy two-level selection (group maxima of 32 columns, then ``argpartition``) whose
    group-max step alone cost as much as the matrix product (13 vs 12 ms for 64 x 100,000 scores on two
    cores; ``torch.topk`` 4 ms).
    """
    b, n = s.shape
    if k >= n:
        return np.broadcast_to(np.arange(n), (b, n)), s
    import torch

    values, cols = torch.topk(torch.from_numpy(np.ascontiguousarray(s)), k, dim=1, sorted=False)
    return cols.numpy(), values.numpy()


def exact_knn(queries, database: Union[np.ndarray, Blocks], k: int, ids: Optional[np.ndarray] = None,
              exclude: Optional[np.ndarray] = None, block_rows: int = 65536,
              sq_norms: Optional[np.ndarray] = None, trusted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by Euclidean distance.

    Args:
        queries: ``[Q, d]`` float (converted with :func:`as_vectors`).
        database: stored vectors ``[N, d]``, or an iterable of blocks ``(ids [b] int64, vectors [b, d])``
            (streamed: memory is one block plus the scores of one query batch).
        k: neighbours per query.
        ids: ``[N]`` ids of an array ``database`` (default ``0..N-1``).
        exclude: ids left out of the search.
        block_rows: rows per block when ``database`` is an array.
        sq_norms: ``[N]`` squared norms of an array ``database``, when the caller keeps them.
        trusted: the stored vectors and ids were checked when stored (an index's own storage):
            skip their conversion and finiteness check on every call.

    Returns:
        ``(squared L2 distances [Q, k] float32, ids [Q, k] int64)``, ascending; ``-1`` ids and
        ``inf`` distances pad rows when fewer than ``k`` vectors are searched.
    """
    if int(k) < 1:
        raise SiamsearchError(f"k must be at least 1, got {k}")
    k = int(k)
    q = as_vectors(queries, None, "queries")
    if isinstance(database, np.ndarray) or not hasattr(database, "__iter__"):
        if not trusted:
            database = as_vectors(database, q.shape[1], "stored vectors")
            ids = None if ids is None else as_ids(ids, len(database))
        ids = np.arange(len(database), dtype=np.int64) if ids is None else ids
        blocks: Blocks = ((ids[s:s + block_rows], database[s:s + block_rows],
                           None if sq_norms is None else sq_norms[s:s + block_rows])
                          for s in range(0, len(database), block_rows))
    else:
        blocks = ((bi, bx, None) for bi, bx in database)
    best_d = np.full((len(q), k), np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for bids, x, norms in blocks:
        if not trusted:
            x = as_vectors(x, q.shape[1], "stored vectors")
            bids = np.asarray(bids, dtype=np.int64)
        if exclude is not None and len(exclude):
            keep = ~np.isin(bids, exclude)
            bids, x, norms = bids[keep], x[keep], None if norms is None else norms[keep]
        if not len(bids):
            continue
        half = 0.5 * (np.einsum("ij,ij->i", x, x) if norms is None else np.asarray(norms, np.float32))  # [n]
        # bound both the scores [qb, n] and the winners' differences [qb, k, d] by SCORE_BUDGET elements
        # (MAP@R asks for k ~ R, e.g. 1,000 neighbours of 1,024-d embeddings)
        winners = min(k, len(bids)) * x.shape[1]
        qb = max(1, min(len(q), SCORE_BUDGET // len(bids), (SCORE_BUDGET // 4) // winners))
        for s0 in range(0, len(q), qb):
            s = q[s0:s0 + qb] @ x.T  # [b, n]: q.x - |x|^2 / 2 ranks like -|q - x|^2 / 2
            s -= half
            cols, _ = _top_scores(s, min(k, len(bids)))
            # the k winners' distances computed directly (the expansion above loses ~1e-7 to cancellation:
            # an identical vector must come back at distance 0)
            diff = x[cols] - q[s0:s0 + qb, None, :]
            d2 = np.einsum("bkd,bkd->bk", diff, diff)
            merged_d = np.concatenate([best_d[s0:s0 + qb], d2], axis=1)
            merged_i = np.concatenate([best_i[s0:s0 + qb], bids[cols]], axis=1)
            pick = np.argpartition(merged_d, k - 1, axis=1)[:, :k]
            best_d[s0:s0 + qb] = np.take_along_axis(merged_d, pick, 1)
            best_i[s0:s0 + qb] = np.take_along_axis(merged_i, pick, 1)
    order = np.argsort(best_d, axis=1, kind="stable")
    best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    best_i[~np.isfinite(best_d)] = -1
    return best_d, best_i


def knn_recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """k-NN recall of a search: mean share of each row of exact ids ``truth [Q, k]`` found in the same row of
    ``found [Q, k']`` (set overlap; ``-1`` entries ignored). Not the CMC recall@k of
    :func:`siamsearch.metrics.identification.cmc_recall_at_k`."""
    found, truth = np.asarray(found), np.asarray(truth)
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max((t >= 0).sum(), 1)
            for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0
