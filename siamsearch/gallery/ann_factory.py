"""Which Faiss index ``auto`` and the shorthands stand for (see :mod:`siamsearch.gallery.ann`)."""
from __future__ import annotations

import math

import faiss

from ..core.errors import SiamsearchError

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
#: ``auto``: when the tuned IVF index is estimated to be less than this many times faster than exact search,
#: the :func:`auto_fallbacks` are built in turn (until one reaches it) and the fastest at the recall target kept.
AUTO_MIN_SPEEDUP = 20.0
#: The graph index ``auto`` falls back to last, when even fast-scan IVF stays under AUTO_MIN_SPEEDUP.
AUTO_FALLBACK = "HNSW32"
#: Candidates fetched per requested neighbour before exact re-ranking (lossy codes only).
RERANK_FACTOR = 4
#: ``k_factor`` of a Faiss refine index (``...,RFlat``): the lossy first stage returns this many
#: candidates per requested neighbour, re-ranked by exact distance (4-bit fast-scan PQ needs a wide net).
REFINE_K_FACTOR = 8
#: The tuner widens ``k_factor`` (doubling) up to this when no ``nprobe`` reaches the target, and narrows it
#: (halving, down to 2) while the target holds.
MAX_REFINE_K_FACTOR = 64


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


def fast_scan_factory(n: int, dim: int) -> str:
    """``IVF{nlist},PQ{m}x4fs,RFlat``: the same lists as ``auto``'s IVF-Flat, scanned with 4-bit fast-scan
    PQ codes (``m`` sub-vectors of 4 dimensions where ``dim`` allows, else 2 or 1), and the ``k_factor * k``
    best candidates re-ranked by exact distance (:data:`REFINE_K_FACTOR`).

    On data whose neighbours spread over many lists (many probes needed), scanning a probed list costs
    a fraction of IVF-Flat's float distances while the re-ranking keeps recall (measured at 1M x 128
    in ``benchmarks/ann_search.py``: same recall as IVF-Flat at the same ``nprobe``, about 5x the speed).
    """
    sub = next(s for s in (4, 2, 1) if dim % s == 0)
    return f"IVF{ivf_lists(n)},PQ{dim // sub}x4fs,RFlat"


def auto_fallbacks(n: int, dim: int) -> list[str]:
    """What ``auto`` builds, in order, when tuned IVF-Flat is estimated under :data:`AUTO_MIN_SPEEDUP`."""
    return [fast_scan_factory(n, dim), AUTO_FALLBACK]


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
    if isinstance(base, faiss.IndexRefine):  # exact re-ranking over a lossy first stage: tuned as that stage
        return _kind(faiss.downcast_index(base.base_index))
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    if isinstance(base, faiss.IndexFlat):
        return "flat"
    return "other"
