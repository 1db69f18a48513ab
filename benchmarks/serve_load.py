"""Serve load: a real `siamsearch serve` on loopback under 16 concurrent clients vs the in-process library.

Targets (issue 13): search throughput over HTTP at least 70 % of the in-process
library's at the same concurrency, and p99 latency under 16 clients at most 5x p50.

What is measured, honestly:

* The gallery (``--gallery`` images, default 10,000) is built by the real indexer
  from synthetic 28x28 grey PNGs (the images of ``query_latency``); the model is
  an untrained smallcnn (32 px, d=128) unless ``--model`` is given: speed does
  not depend on the weights.
* HTTP: ``siamsearch serve`` runs in its own process on 127.0.0.1 (one uvicorn
  worker, ``--inference-threads`` = cores); 16 client threads (``httpx``) send a
  fixed count of multipart requests each: ``POST /search`` (k=5) with a query
  PNG, and ``POST /verify`` with two (explicit threshold 1.0). Latency is per
  request at the client; throughput is requests / wall time.
* Library: the same work in this process at the same concurrency, 16 threads
  each decoding the same PNG bytes (``read_image_bytes``), embedding
  (``Embedder.embed``) and searching (``Gallery.search``), or ``siamsearch.verify``.
* The library is also timed with as many threads as the server has inference threads
  (``rps_library_pool``): 16 Python threads calling torch and Faiss at once can be slower
  than a few, so the throughput target is checked against the faster of the two
  library figures (``http_share``); ``http_share_same_concurrency`` is the ratio at 16.
* Library and HTTP rounds alternate (``--rounds``, medians reported) because the
  machine may be shared; its load average is recorded.

Writes ``benchmarks/results/serve_load.json`` (``rps_search``, ``rps_library``,
``p50_ms``, ``p95_ms``, ``p99_ms``, ``errors`` ...) and ``serve_load.md``.

    python benchmarks/serve_load.py [--quick] [--gallery 10000] [--requests 800] [--clients 16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import ROOT, write_results  # noqa: E402
from benchmarks.query_latency import default_model, write_images  # noqa: E402

WORK = ROOT / "benchmarks" / "data" / "serve_load"
TARGET_SHARE = 0.70
TARGET_TAIL = 5.0
THRESHOLD = 1.0
#: The figures of the runner's table row (all figures are in the JSON).
HEADLINE = ("gallery_images", "clients", "rps_search", "rps_library", "rps_library_pool", "http_share", "p50_ms",
            "p99_ms", "p99_over_p50", "errors", "meets_throughput_target", "meets_tail_target")


def _pct(xs: list, q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def run_clients(n_clients: int, n_requests: int, one) -> tuple[float, list, int]:
    """``n_requests`` calls of ``one(i)`` from ``n_clients`` threads; (wall s, latencies s, errors)."""
    lat: list = []
    errors = [0]
    lock = threading.Lock()

    def worker(c: int) -> None:
        for i in range(c, n_requests, n_clients):
            t0 = time.perf_counter()
            ok = one(i)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                errors[0] += 0 if ok else 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(worker, range(n_clients)))
    return time.perf_counter() - t0, lat, errors[0]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, index: Path, port: int, threads: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-c", "from siamsearch.cli import main; main()", "serve", "--model", str(model),
           "--index", str(index), "--port", str(port), "--inference-threads", str(threads), "--queue", "256"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000-image gallery, 160 requests, 1 round")
    ap.add_argument("--gallery", type=int, default=None, help="gallery images [10000; quick 2000]")
    ap.add_argument("--requests", type=int, default=None, help="requests per kind and round [800; quick 160]")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=None, help="alternating library/HTTP rounds [2; quick 1]")
    ap.add_argument("--model", default=None, help="checkpoint [an untrained smallcnn, 32 px, d=128]")
    ap.add_argument("--data", default=None, help="ignored (synthetic images; accepted for the runner)")
    args = ap.parse_args()
    n_gal = args.gallery or (2_000 if args.quick else 10_000)
    n_req = args.requests or (160 if args.quick else 800)
    rounds = args.rounds or (1 if args.quick else 2)

    import httpx

    from siamsearch import load_model, verify
    from siamsearch.core.images import read_image_bytes
    from siamsearch.gallery import Gallery

    WORK.mkdir(parents=True, exist_ok=True)
    model_path = Path(args.model) if args.model else default_model(WORK / "model.pt")
    gal_dir, q_dir = WORK / f"gallery_{n_gal}", WORK / "queries"
    write_images(gal_dir, n_gal, seed=0)
    queries = [p.read_bytes() for p in write_images(q_dir, 64, seed=1)]
    index = WORK / "index" / f"gallery_{n_gal}"
    gallery = Gallery.build(gal_dir, str(model_path), out=index, workers=0, progress=False)
    model = load_model(model_path)
    gallery = Gallery.open(index, model=model)
    k = 5

    def lib_search(i: int) -> bool:
        emb = model.embed(read_image_bytes(queries[i % 64], "q"))
        return gallery.search(emb, k=k).k == k

    def lib_verify(i: int) -> bool:
        a, b = read_image_bytes(queries[i % 64], "a"), read_image_bytes(queries[(i + 1) % 64], "b")
        return verify(model, a, b, threshold=THRESHOLD).distance >= 0

    port = free_port()
    proc = start_server(model_path, index, port, threads=os.cpu_count() or 1)
    url = f"http://127.0.0.1:{port}/api/v1"
    clients = [httpx.Client(timeout=120) for _ in range(args.clients)]

    def http_search(i: int) -> bool:
        r = clients[i % args.clients].post(f"{url}/galleries/{index.name}/search",
                                           files={"image": ("q.png", queries[i % 64])}, data={"k": str(k)})
        return r.status_code == 200

    def http_verify(i: int) -> bool:
        r = clients[i % args.clients].post(f"{url}/verify", data={"threshold": str(THRESHOLD)},
                                           files={"image_a": ("a.png", queries[i % 64]),
                                                  "image_b": ("b.png", queries[(i + 1) % 64])})
        return r.status_code == 200

    load_before = os.getloadavg()
    res: dict = {key: [] for key in ("lib_search", "lib_search_pool", "http_search", "lib_verify", "http_verify")}
    threads = os.cpu_count() or 1
    try:
        for fn in (lib_search, http_search, lib_verify, http_verify):  # warm-up
            run_clients(args.clients, args.clients, fn)
        for _ in range(rounds):
            for key, fn in (("lib_search", lib_search), ("http_search", http_search), ("lib_verify", lib_verify),
                            ("http_verify", http_verify)):
                res[key].append(run_clients(args.clients, n_req, fn))
            res["lib_search_pool"].append(run_clients(threads, n_req, lib_search))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = os.getloadavg()

    def rps(key: str) -> float:
        return statistics.median(n_req / wall for wall, _, _ in res[key])

    def lat(key: str) -> list:
        return [x for _, ls, _ in res[key] for x in ls]

    errors = sum(e for key in res for _, _, e in res[key])
    s_lat, v_lat = lat("http_search"), lat("http_verify")
    rps_search, rps_library, rps_pool = rps("http_search"), rps("lib_search"), rps("lib_search_pool")
    share = rps_search / max(rps_library, rps_pool)
    tail = _pct(s_lat, 99) / _pct(s_lat, 50)
    figures = {
        "gallery_images": len(gallery), "index": gallery.index.factory, "clients": args.clients,
        "requests_per_round": n_req, "rounds": rounds,
        "rps_search": round(rps_search, 1), "rps_library": round(rps_library, 1),
        "rps_library_pool": round(rps_pool, 1), "http_share": round(share, 3),
        "http_share_same_concurrency": round(rps_search / rps_library, 3),
        "p50_ms": round(_pct(s_lat, 50), 2), "p95_ms": round(_pct(s_lat, 95), 2), "p99_ms": round(_pct(s_lat, 99), 2),
        "p99_over_p50": round(tail, 2), "errors": errors,
        "rps_verify": round(rps("http_verify"), 1), "rps_verify_library": round(rps("lib_verify"), 1),
        "verify_p50_ms": round(_pct(v_lat, 50), 2), "verify_p95_ms": round(_pct(v_lat, 95), 2),
        "verify_p99_ms": round(_pct(v_lat, 99), 2),
        "meets_throughput_target": bool(share >= TARGET_SHARE), "meets_tail_target": bool(tail <= TARGET_TAIL),
    }
    summary = {key: figures[key] for key in HEADLINE}
    payload = {"benchmark": "serve_load", "quick": bool(args.quick),
               "title": f"Serve load: {args.clients} clients, {len(gallery):,}-image gallery", "summary": summary,
               **figures,
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in load_after],
               "settings": {"model": str(model_path), "inference_threads": threads, "k": k,
                            "verify_threshold": THRESHOLD,
                            "library_rps_runs": [round(n_req / w, 1) for w, _, _ in res["lib_search"]],
                            "http_rps_runs": [round(n_req / w, 1) for w, _, _ in res["http_search"]]}}
    rows = [("gallery", f"{len(gallery):,} images ({gallery.index.factory})"),
            ("search over HTTP", f"{rps_search:.1f} req/s; p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
                                 f"p99 {figures['p99_ms']} ms"),
            ("search in-process (library), 16 threads", f"{rps_library:.1f} req/s"),
            (f"search in-process (library), {threads} threads", f"{rps_pool:.1f} req/s"),
            ("HTTP / faster library figure", f"**{share:.0%}** (target >= {TARGET_SHARE:.0%}: "
                               f"{'met' if share >= TARGET_SHARE else 'NOT met'})"),
            ("p99 / p50 (search)", f"**{tail:.2f}x** (target <= {TARGET_TAIL:g}x: "
                                   f"{'met' if tail <= TARGET_TAIL else 'NOT met'})"),
            ("verify over HTTP / library", f"{figures['rps_verify']} / {figures['rps_verify_library']} req/s; "
                                           f"p50 {figures['verify_p50_ms']} ms, p99 {figures['verify_p99_ms']} ms"),
            ("errors", str(errors)),
            ("load average before / after", f"{load_before[0]:.1f} / {load_after[0]:.1f}")]
    path = write_results("serve_load", payload, rows, ("figure", "value"), payload["title"])
    print(f"search: HTTP {rps_search:.1f} req/s vs library {rps_library:.1f} (16 threads) / {rps_pool:.1f} "
          f"({threads} threads) req/s ({share:.0%}); "
          f"p50/p95/p99 {figures['p50_ms']}/{figures['p95_ms']}/{figures['p99_ms']} ms; errors {errors}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
