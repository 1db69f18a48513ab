"""Identification metrics at scale: batched Faiss search vs a naive N x N numpy matrix.

Measures leave-one-out precision@1, recall@k, R-precision and MAP@R
(``siamsearch.metrics.identification.leave_one_out``) on synthetic L2-normalised
embeddings, each run in a fresh process so its peak RSS (``ru_maxrss``) is its own:

* ``faiss`` at the full size (100,000 embeddings; 20,000 with ``--quick``);
* ``faiss`` and ``naive`` (full distance matrix + argsort, the textbook way) at a size where
  the matrix still fits, with a check that both give the same figures.

Writes ``benchmarks/results/metrics_scale.json`` and ``.md``.

    python benchmarks/metrics_scale.py [--quick] [--n 100000] [--naive-n 8000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import write_results  # noqa: E402


def synthetic(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in ``classes`` noisy clusters (P@1 around 0.85 at 100 per identity), float32, with labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    x = centres[labels] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), labels


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def naive_metrics(x: np.ndarray, y: np.ndarray, ks=(1, 5, 10)) -> dict:
    """The textbook way: the full ``N x N`` distance matrix, argsort every row."""
    from siamsearch.core.distance import distance_matrix

    d = distance_matrix(x)  # [N, N] float32
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1)[:, :-1]  # [N, N-1] int64, self (inf) last
    rel = y[order] == y[:, None]
    r = rel.sum(axis=1)
    ok = r >= 1
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, 0)
    ranks = np.arange(1, rel.shape[1] + 1)
    within = ranks[None, :] <= r[:, None]
    rel_r = rel & within
    prec = np.cumsum(rel_r, axis=1) / ranks[None, :]
    ap = (prec * rel_r).sum(axis=1) / np.maximum(r, 1)
    return {
        "precision_at_1": float(np.mean(first[ok] == 1)),
        "recall_at_k": {int(k): float(np.mean((first[ok] >= 1) & (first[ok] <= k))) for k in ks},
        "r_precision": float((rel_r.sum(axis=1) / np.maximum(r, 1))[ok].mean()),
        "map_at_r": float(ap[ok].mean()),
    }


def worker(method: str, n: int, dim: int, classes: int) -> dict:
    """Run one measurement in this process and return its figures, time and peak RSS."""
    from siamsearch.metrics.identification import leave_one_out

    x, y = synthetic(n, dim, classes)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if method == "faiss":
        m, _ = leave_one_out(x, y)
        m = {k: m[k] for k in ("precision_at_1", "recall_at_k", "r_precision", "map_at_r")}
    else:
        m = naive_metrics(x, y)
    return {"method": method, "n": n, "dim": dim, "classes": classes, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(), "rss_before_metrics_mb": base, "metrics": m}


def run_child(method: str, n: int, dim: int, classes: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--dim", str(dim), "--classes", str(classes)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 embeddings instead of 100,000")
    ap.add_argument("--data", default=None, help="unused (synthetic data); accepted for the runner")
    ap.add_argument("--n", type=int, default=None, help="embeddings for the Faiss run")
    ap.add_argument("--naive-n", type=int, default=None, help="size of the naive-vs-Faiss comparison")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=None, help="identities [default: n / 100]")
    ap.add_argument("--worker", choices=["faiss", "naive"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.dim, args.classes)))
        return 0
    n = args.n or (20_000 if args.quick else 100_000)
    naive_n = args.naive_n or (3_000 if args.quick else 8_000)
    classes = args.classes or max(2, n // 100)
    naive_classes = max(2, naive_n // 100)
    big = run_child("faiss", n, args.dim, classes)
    small_faiss = run_child("faiss", naive_n, args.dim, naive_classes)
    small_naive = run_child("naive", naive_n, args.dim, naive_classes)
    # float32 rounding can swap near-tied neighbours between the two methods; allow a hair
    max_diff = max(abs(small_faiss["metrics"][k] - small_naive["metrics"][k])
                   for k in ("precision_at_1", "r_precision", "map_at_r"))
    agree = max_diff < 1e-3
    naive_matrix_gb_at_n = n * n * (4 + 8) / 1e9  # float32 distances + int64 argsort
    result = {
        "benchmark": "metrics_scale",
        "quick": bool(args.quick),
        "summary": {
            "embeddings": n,
            "faiss_seconds": round(big["seconds"], 1),
            "faiss_peak_rss_mb": round(big["peak_rss_mb"]),
            f"naive_peak_rss_mb_at_{naive_n}": round(small_naive["peak_rss_mb"]),
            f"faiss_peak_rss_mb_at_{naive_n}": round(small_faiss["peak_rss_mb"]),
            "naive_would_need_gb": round(naive_matrix_gb_at_n, 1),
            "naive_equals_faiss": agree,
            "max_difference": max_diff,
            "map_at_r": round(big["metrics"]["map_at_r"], 4),
        },
        "runs": [big, small_faiss, small_naive],
    }
    rows = [(r["method"], f"{r['n']:,}", f"{r['classes']:,}", f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}",
             f"{r['rss_before_metrics_mb']:.0f}", f"{r['metrics']['precision_at_1']:.4f}",
             f"{r['metrics']['map_at_r']:.4f}") for r in result["runs"]]
    path = write_results(
        "metrics_scale", result, rows,
        ("method", "embeddings", "identities", "seconds", "peak RSS (MiB)", "RSS before metrics (MiB)", "P@1", "MAP@R"),
        f"Identification metrics at scale (leave-one-out P@1, recall@k, R-precision, MAP@R; d={args.dim})",
    )
    md = path.with_suffix(".md")
    note = (f"\nEach run is a fresh process; peak RSS includes the interpreter, numpy, torch and faiss and the data "
            f"(\"RSS before metrics\"). Naive (full N x N matrix + argsort) and Faiss (batched exact search) agree at "
            f"{naive_n:,}: {'yes' if agree else 'NO'} (max difference {max_diff:.1e}). The naive method at {n:,} "
            f"would need about {naive_matrix_gb_at_n:,.1f} GB for its matrices.\n")
    md.write_text(md.read_text() + note)
    print(md.read_text())
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
