"""Approximate search at scale: the index ``--factory auto`` picks vs exact search.

At 1,000,000 unit vectors of dimension 128 (``--quick``: 300,000), built with
:func:`siamsearch.gallery.ann.build_index` exactly as ``siamsearch index build``
does (choice, IVF training, held-out tuning of ``nprobe``), and searched
through :class:`~siamsearch.gallery.ann.AnnIndex` (Euclidean distances, as
users get them), it measures:

* recall@10 against exact search (``IndexFlatL2``) over held-out queries;
* queries/s of both, batched (all queries in one call), ``--threads`` threads
  (default 2), best of 3 (exact) and 4 (approximate) timings, alternated
  (the machine may be shared);
* build time (choice + training + adding + tuning) and memory (index bytes,
  RSS growth during the build).

Targets (issue 3): recall@10 >= 0.95 at >= 20x the exact index's queries/s.

Data: synthetic "identity" embeddings. ``n / 100`` identities with random
centres on the sphere; each image is its identity's centre plus an offset in
a 16-dimensional subspace of its own (per-dimension std 0.15) and isotropic
noise (std 0.02 per dimension), L2-normalised: same-identity pairs sit about
0.76 apart, different identities about 1.41, like a trained metric-learning
embedding. The ``diffuse`` variant (std 0.25 and 0.01: same-identity pairs
about 1.0 apart, clusters overlapping) is a harder stress case, reported
beside it in full mode. The ``hard`` variant (std 0.5 and 0.02: the
offsets dominate, neighbours spread over many IVF lists) exercises ``auto``'s fallback to HNSW32
when the tuned IVF index would be under 20x exact search. No real 1M-image embedding set is available offline,
so the real-embedding row the issue asks for "where available" is absent.

Writes ``benchmarks/results/ann_search.json`` (top-level ``n``, ``dim``,
``factory``, ``recall_at_10``, ``qps``, ``exact_qps``, ``build_seconds`` for
the headline ``clustered`` run) and ``ann_search.md``.

    python benchmarks/ann_search.py [--quick] [--n 1000000] [--threads 2] [--variants clustered,diffuse]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import write_results  # noqa: E402

TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0
#: (offset std per subspace dimension, isotropic noise std) per data variant.
VARIANTS = {"clustered": (0.15, 0.02), "diffuse": (0.25, 0.01), "hard": (0.5, 0.02)}
PER_IDENTITY = 100
SUBSPACE = 16


def synthetic(n: int, dim: int, spread: float, noise: float, seed: int = 0, block: int = 20000) -> np.ndarray:
    """``n`` L2-normalised float32 vectors ``[n, dim]`` from ``n / 100`` identities (see the module docstring).

    The first ``n - queries`` rows go into the index and the rest are queries; since rows are
    i.i.d. draws, the queries are new images of the same identities.
    """
    rng = np.random.default_rng(seed)
    ids = max(1, n // PER_IDENTITY)
    centres = rng.standard_normal((ids, dim)).astype("float32")
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = (rng.standard_normal((ids, dim, SUBSPACE)) / np.sqrt(dim)).astype("float32")
    who = rng.integers(0, ids, n)
    out = np.empty((n, dim), dtype="float32")
    for s in range(0, n, block):
        w = who[s:s + block]
        z = rng.standard_normal((len(w), SUBSPACE)).astype("float32") * spread
        x = centres[w] + np.einsum("ndk,nk->nd", bases[w], z) + noise * rng.standard_normal((len(w), dim)).astype("float32")
        out[s:s + block] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    """Current resident set size in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def best_qps(fn, nq: int, repeats: int) -> tuple[float, object]:
    """Queries per second of ``fn()`` (all ``nq`` queries in one call), best of ``repeats``."""
    best, out = 0.0, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = max(best, nq / (time.perf_counter() - t))
    return best, out


def run_variant(name: str, n: int, dim: int, nq: int, factory: str, seed: int) -> dict:
    import faiss

    from siamsearch.gallery.ann import ArraySource, build_index
    from siamsearch.metrics.knn import knn_recall_at_k

    spread, noise = VARIANTS[name]
    t = time.perf_counter()
    data = synthetic(n + nq, dim, spread, noise, seed)
    xb, xq = data[:n], np.ascontiguousarray(data[n:])
    print(f"[{name}] generated {n:,} x {dim} + {nq} queries in {time.perf_counter() - t:.0f} s", flush=True)

    flat = faiss.IndexFlatL2(dim)
    flat.add(xb)
    exact_qps, (d2, truth) = best_qps(lambda: flat.search(xq, 10), nq, 2)
    print(f"[{name}] exact: {exact_qps:.0f} queries/s", flush=True)
    nn = np.sqrt(np.clip(d2, 0, None))

    before = rss_mb()
    t = time.perf_counter()
    ann = build_index(ArraySource(xb), factory=factory)
    build_seconds = time.perf_counter() - t
    grew = rss_mb() - before
    index_bytes = int(faiss.serialize_index(ann.index).nbytes)
    print(f"[{name}] built {ann.factory} in {build_seconds:.0f} s, params {ann.params}", flush=True)

    # the machine may be shared: alternate approximate and exact timings and keep the best of each
    qps, (dist, found) = best_qps(lambda: ann.search(xq, 10), nq, 2)
    exact_qps = max(exact_qps, best_qps(lambda: flat.search(xq, 10), nq, 1)[0])
    qps = max(qps, best_qps(lambda: ann.search(xq, 10), nq, 2)[0])
    recall = knn_recall_at_k(found, truth)
    ratio = qps / exact_qps
    print(f"[{name}] {ann.factory}: recall@10 {recall:.4f}, {qps:.0f} queries/s = {ratio:.1f}x exact "
          f"(targets >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x)", flush=True)
    return {
        "variant": name, "n": n, "dim": dim, "queries": nq, "factory": ann.factory,
        "requested_factory": factory, "params": ann.params,
        "recall_at_10": round(float(recall), 4), "qps": round(qps, 1), "exact_qps": round(exact_qps, 1),
        "speedup": round(ratio, 2), "build_seconds": round(build_seconds, 1),
        "index_mb": round(index_bytes / 2**20, 1), "rss_growth_mb": round(grew, 1),
        "data_mb": round(xb.nbytes / 2**20, 1),
        "nn_distance_mean": round(float(nn[:, 0].mean()), 3), "tenth_nn_distance_mean": round(float(nn[:, 9].mean()), 3),
        "meets_target": bool(recall >= TARGET_RECALL and ratio >= TARGET_SPEEDUP),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300,000 vectors, clustered variant only")
    ap.add_argument("--n", type=int, default=None, help="vectors in the index [1,000,000; quick 300,000]")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--factory", default="auto")
    ap.add_argument("--variants", default=None, help="comma-separated: clustered,diffuse [full: both; quick: clustered]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="unused (synthetic data); accepted for the benchmark runner")
    args = ap.parse_args()
    n = args.n or (300_000 if args.quick else 1_000_000)
    variants = (args.variants or ("clustered" if args.quick else "clustered,diffuse")).split(",")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")

    import faiss

    faiss.omp_set_num_threads(args.threads)
    runs = [run_variant(v, n, args.dim, args.queries, args.factory, args.seed) for v in variants]
    head = runs[0]
    payload = {
        "benchmark": "ann_search", "quick": bool(args.quick), "title": "Approximate search: auto index vs exact",
        "n": head["n"], "dim": head["dim"], "factory": head["factory"], "recall_at_10": head["recall_at_10"],
        "qps": head["qps"], "exact_qps": head["exact_qps"], "build_seconds": head["build_seconds"],
        "summary": {"n": head["n"], "factory": head["factory"], "recall_at_10": head["recall_at_10"],
                    "speedup_vs_exact": head["speedup"], "qps": head["qps"], "exact_qps": head["exact_qps"],
                    "build_seconds": head["build_seconds"], "meets_target": head["meets_target"]},
        "targets": {"recall_at_10": TARGET_RECALL, "speedup_vs_exact": TARGET_SPEEDUP},
        "settings": {"threads": args.threads, "queries": args.queries, "batched": True, "seed": args.seed,
                     "per_identity": PER_IDENTITY, "subspace": SUBSPACE, "variants": VARIANTS},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "runs": runs,
    }
    rows = [(r["variant"], f"{r['n']:,} x {r['dim']}", r["factory"],
             ", ".join(f"{k}={v}" for k, v in r["params"].items() if k in ("nprobe", "efSearch")) or "-",
             f"{r['recall_at_10']:.4f}", f"{r['qps']:,.0f}", f"{r['exact_qps']:,.0f}", f"{r['speedup']:.1f}x",
             f"{r['build_seconds']:.0f} s", f"{r['index_mb']:,.0f} MB", "yes" if r["meets_target"] else "no")
            for r in runs]
    path = write_results("ann_search", payload, rows,
                         ("data", "vectors", "auto picked", "tuned", "recall@10", "queries/s", "exact queries/s",
                          "speed-up", "build", "index size", f"meets >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x"),
                         f"Approximate search ({args.threads} threads, {args.queries} batched queries)")
    print(f"speed-up of the auto index over exact search: {head['speedup']:.1f}x at recall@10 "
          f"{head['recall_at_10']:.4f} -> {path}")


if __name__ == "__main__":
    main()
