"""Exact search alone at the query_latency scale, without building an image gallery.

1,000 queries against 100,000 unit vectors of dimension 128 (``--quick``: 20,000), searched in
batches of 64 (as ``identify`` does), three ways, interleaved and repeated (the machine may be
shared; mean and spread reported with the load average):

* **siamsearch**: :meth:`AnnIndex.search` of a ``Flat`` index (what ``Gallery.search`` runs:
  :func:`siamsearch.metrics.knn.exact_knn` over the index's own storage);
* **faiss**: Faiss ``IndexFlatL2.search`` (what siamsearch ran before issue 14);
* **BLAS baseline**: a plain ``X @ G.T`` + ``np.argpartition`` (no distances, no sorting).

Target (issue 14): siamsearch <= 1.5x the BLAS baseline. Writes ``benchmarks/results/exact_search.json``.

    python benchmarks/exact_search.py [--quick] [--n 100000] [--queries 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import write_results  # noqa: E402

TARGET = 1.5


def unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 stored vectors")
    ap.add_argument("--n", type=int, default=None, help="stored vectors [100000; quick 20000]")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=None, help="ignored (synthetic vectors; accepted for the runner)")
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)

    import faiss

    from siamsearch.gallery.ann import ArraySource, build_index

    rng = np.random.default_rng(0)
    g, q = unit(rng, n, args.dim), unit(rng, args.queries, args.dim)
    ann = build_index(ArraySource(g), factory="Flat")
    flat = faiss.IndexFlatL2(args.dim)
    flat.add(g)
    b, k = args.batch, args.k

    def ours():
        for s in range(0, len(q), b):
            ann.search(q[s:s + b], k)

    def theirs():
        for s in range(0, len(q), b):
            flat.search(q[s:s + b], k)

    def blas():
        for s in range(0, len(q), b):
            np.argpartition(-(q[s:s + b] @ g.T), k, axis=1)[:, :k]

    load_before = os.getloadavg()
    runs: dict = {"siamsearch": [], "faiss_flat": [], "blas_baseline": []}
    for _ in range(args.repeats):
        for name, fn in (("siamsearch", ours), ("faiss_flat", theirs), ("blas_baseline", blas)):
            t = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t)
    mean = {name: statistics.fmean(v) for name, v in runs.items()}
    same = bool(np.array_equal(ann.search(q[:b], k)[1], flat.search(q[:b], k)[1]))
    ratio = mean["siamsearch"] / mean["blas_baseline"]
    payload = {
        "benchmark": "exact_search", "quick": bool(args.quick),
        "title": f"Exact search: {args.queries:,} queries (batches of {b}) vs {n:,} x {args.dim}",
        "summary": {"n": n, "queries": args.queries, "search_s": round(mean["siamsearch"], 3),
                    "faiss_flat_s": round(mean["faiss_flat"], 3), "blas_baseline_s": round(mean["blas_baseline"], 3),
                    "search_vs_blas": round(ratio, 2), "meets_target": bool(ratio <= TARGET),
                    "same_neighbours_as_faiss": same},
        "runs_s": {name: [round(x, 3) for x in v] for name, v in runs.items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {"batch": b, "k": k, "repeats": args.repeats, "faiss_threads": faiss.omp_get_max_threads()},
    }
    rows = [(name, f"{mean[name]:.3f} s ({min(v):.3f}-{max(v):.3f})") for name, v in runs.items()]
    rows += [("siamsearch / BLAS baseline", f"**{ratio:.2f}x** (target <= {TARGET}x)"),
             ("same neighbours as Faiss", "yes" if same else "no"),
             ("load average before / after", f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")]
    print(write_results("exact_search", payload, rows, ("search", "seconds, mean (min-max)"), payload["title"]))


if __name__ == "__main__":
    main()
