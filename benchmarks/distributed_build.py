"""Distributed build: `--engine local` vs `--engine ray` on one machine, and the on-disk merge of 1M vectors.

1. The same folder of generated images (20,000; ``--quick``: 2,000) is built with
   ``--engine local`` (this process, once with ``--workers`` DataLoader decoding workers, the
   issue's set-up, and once with the local engine's default for this machine, as ``siamsearch
   index build`` picks it: two processes that each decode and embed on 2 cores) and with ``--engine
   ray`` on a local Ray cluster of ``--workers`` CPUs, twice: on a new cluster (the build is its
   first job: Ray Data's service actors start during it) and on a cluster where another driver
   already ran a Ray Data job (as on a cluster that keeps running between builds); each build in
   its own process, in ``--rounds`` interleaved rounds (default 3): median images/s of each and the
   median ratio with its spread against each local build (target: Ray >= 0.7x local ``--workers``,
   judged on the new cluster). Half the folder is built too, with ``--workers`` and with Ray, in
   every round: from the full and half builds each engine's fixed start-up and marginal rate are
   fitted (``seconds = start-up + images / rate``), and the Ray driver's peak RSS at both sizes
   shows that it does not grow with the gallery.
2. 1,000,000 synthetic unit vectors (``--quick``: 100,000) of dimension 128 in 10 Parquet
   shards: the IVF index is trained on a sample across shards, each shard added to its own
   part, and the parts merged on disk; the merge runs in its own process, whose peak RSS
   growth during the merge (peak minus the RSS after imports, recorded too; see :func:`step_merge`)
   is compared with the final index's size (target: <= 1.5x).
3. The sizing table of docs/scale.md, computed from the measured per-core rate by
   :func:`sizing_rows` (10M, 100M, 1B images at d = 128 and 512).

Writes ``benchmarks/results/distributed_build.json`` (``local_ips``, ``ray_ips``, ``ray_vs_local``,
``driver_peak_rss_mb``, ``merge_seconds``, ``merge_peak_rss_mb``, ``index_mb``, ...) and ``.md``,
and refreshes the table in docs/scale.md.

    python benchmarks/distributed_build.py [--quick] [--images N] [--vectors N] [--workers 2]
    python benchmarks/distributed_build.py --merge-only [--work DIR]   # part 2 only, into the existing results
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
SCALE_DOC = ROOT / "docs" / "scale.md"
TABLE_START, TABLE_END = "<!-- sizing-table -->", "<!-- /sizing-table -->"
#: Projected, not measured (no GPU on the benchmark machine): images/s one GPU embeds with the default model,
#: when enough CPU cores decode for it (the per-core decode+embed rate measured here bounds the decode side).
ASSUMED_GPU_IPS = 3000.0
SIZES = (10_000_000, 100_000_000, 1_000_000_000)
DIMS = (128, 512)
BUDGET = "64G"
SHARD_ROWS = 100_000
TARGET_RATIO, TARGET_MERGE = 0.7, 1.5


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def current_rss_mb(field: str = "VmRSS:") -> float:
    """Resident memory now (``VmRSS``, or another /proc/self/status field such as ``RssAnon``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return round(int(line.split()[1]) / 1024.0, 1)
    return 0.0


# --------------------------------------------------------------------------- steps (each in its own process)


def make_images(folder: Path, n: int, size: int = 48) -> None:
    """``n`` PNG images in 100 identity folders (blobs with noise), seeded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        d = folder / f"id_{i % 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        cy, cx = 8 + (i % 100) % 32, 8 + (i % 100) // 4
        img = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0) + rng.normal(0, 12, (size, size))
        Image.fromarray(np.clip(img, 0, 255).astype("uint8"), "L").save(d / f"img_{i:06d}.png")


def make_model(path: Path) -> None:
    import torch

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(0)
    cfg = ModelConfig()  # smallcnn, 64 px, d = 128
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), {"note": "untrained benchmark model"})


#: What an earlier Ray Data job leaves on a cluster that keeps running: Ray Data's own detached service actors
#: (statistics, autoscaling coordinator, actor-location tracker). Run from another driver process, so that
#: the timed build still imports Ray Data and starts its embedding actors itself.
EARLIER_JOB = ("import ray, ray.data; ray.init(address='auto', log_to_driver=False); "
               "ray.data.from_items([{'x': 1}]).map_batches(lambda b: b).take_all()")


def step_build(engine: str, images: str, model: str, out: str, workers: int) -> dict:
    """One timed build in this process. ``engine``: ``local``, ``ray`` (a new local cluster: the build is its
    first job) or ``ray_running`` (a new local cluster on which another driver already ran a Ray Data job,
    as on a cluster that keeps running between builds)."""
    from siamsearch import Gallery

    if engine in ("ray", "ray_running"):
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        if engine == "ray_running":
            subprocess.run([sys.executable, "-c", EARLIER_JOB], check=True, capture_output=True)
            time.sleep(1.0)  # let the earlier driver's workers exit
        g = Gallery.build(images, model, out=out, engine="ray", shard_size=2000, progress=False)
        ray.shutdown()
    else:
        g = Gallery.build(images, model, out=out, workers=None if workers < 0 else workers, progress=False)
    r = g.last_report
    return {"embedded": r.embedded, "seconds": round(r.seconds, 2), "ips": round(r.embedded / r.seconds, 1),
            "peak_rss_mb": peak_rss_mb()}


def step_prepare_merge(work: str, n: int, dim: int) -> dict:
    """Write 10 shards of clustered unit vectors, train the index on a sample across them, write the parts."""
    import faiss
    import numpy as np

    from siamsearch.gallery import ondisk
    from siamsearch.gallery import shards as sh

    work = Path(work)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, dim)).astype("float32")
    per = n // 10
    entries = []
    t0 = time.perf_counter()
    for k in range(10):
        ids = np.arange(k * per, (k + 1) * per)
        x = centres[rng.integers(0, 1000, per)] + 0.5 * rng.normal(size=(per, dim)).astype("float32")
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        name = f"shards/shard-{k:06d}.parquet"
        (work / "shards").mkdir(parents=True, exist_ok=True)
        sh.write_shard(work / name, ids, [f"{i}.png" for i in ids], [""] * per, ["0" * 64] * per,
                       np.zeros(per), np.zeros(per, "int64"), x)
        entries.append(sh.ShardEntry(name, per, int(ids[0]), int(ids[-1]) + 1).to_dict())
        del x
    write_s = time.perf_counter() - t0
    manifest = {"attrs": {}, "dim": dim, "next_id": n, "shards": entries, "label_names": [], "skipped": []}
    (work / "manifest.json").write_text(json.dumps(manifest))
    reader = sh.ShardedReader(work, manifest)
    source = reader.source(np.arange(n))
    choice = ondisk.choose_index(n, dim)
    t0 = time.perf_counter()
    faiss.write_index(ondisk.train_empty(source, choice), str(work / ondisk.TRAINED_NAME))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = ondisk.write_parts(work / ondisk.TRAINED_NAME, source.shard_blocks(), work / "parts")
    add_s = time.perf_counter() - t0
    return {"factory": choice.factory, "parts": [str(p) for p in parts], "write_shards_seconds": round(write_s, 1),
            "train_seconds": round(train_s, 1), "add_seconds": round(add_s, 1), "peak_rss_mb": peak_rss_mb()}


def smaps_mb() -> dict:
    """This process's resident memory now, MB, from /proc/self/smaps_rollup: ``rss`` (all of it),
    ``anon`` (heap, stacks: what the process allocated) and ``file`` (pages of memory-mapped files,
    clean or dirty, that the process has touched)."""
    kb = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            kb[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": kb["Rss"] / 1024, "anon": kb["Anonymous"] / 1024, "file": (kb["Rss"] - kb["Anonymous"]) / 1024}


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (``VmHWM``) to its RSS now (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def step_merge(work: str, parts: list) -> dict:
    """Merge the parts on disk: time, peak RSS growth of this process, and the final index's size.

    ``merge_peak_rss_mb`` is the peak of the whole resident set (``VmHWM``, reset just before the
    merge) minus the RSS before it: heap *and* pages of memory-mapped files this process touched,
    which the kernel counts as its RSS (the figure the target is about; nothing is left out). A
    sampler (every 5 ms) splits it into ``anon`` and ``file`` from /proc/self/smaps_rollup, to show
    what the memory is. Measured in a fresh process, after the imports (recorded as
    ``rss_before_merge_mb``); ``ru_maxrss`` is not used because it carries the parent's peak
    across ``exec`` on Linux.
    """
    import threading

    import faiss

    from siamsearch.gallery import ondisk

    work = Path(work)
    base = smaps_mb()
    peak = {"anon": 0.0, "file": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = smaps_mb()
            for key in peak:
                peak[key] = max(peak[key], now[key] - base[key])
            time.sleep(0.005)

    exact_peak = reset_peak_rss()
    before = current_rss_mb()  # the interpreter, numpy, faiss, pyarrow: not the merge's doing
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    merged = ondisk.merge(work / ondisk.TRAINED_NAME, [Path(p) for p in parts], work / "faiss.merged.ivfdata")
    faiss.write_index(merged, str(work / "faiss.index"))
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    process_peak = current_rss_mb("VmHWM:") if exact_peak else peak_rss_mb()
    size = ondisk.index_size_bytes(work / "faiss.index", work / "faiss.merged.ivfdata")
    return {"merge_seconds": round(seconds, 2), "merge_peak_rss_mb": round(process_peak - before, 1),
            "process_peak_rss_mb": process_peak, "rss_before_merge_mb": before, "peak_rss_exact": exact_peak,
            "merge_peak_anon_mb": round(peak["anon"], 1), "merge_peak_file_mb": round(peak["file"], 1),
            "index_mb": round(size / 2**20, 1), "ntotal": int(merged.ntotal)}


def fixed_and_marginal(full: dict, half: dict) -> dict:
    """Fit ``seconds = start-up + images / marginal rate`` through a full and a half build of one engine.

    Returns ``{"startup_s", "marginal_ips"}``, both None when the half build was not the faster one (noise).
    """
    dn, dt = full["embedded"] - half["embedded"], full["seconds"] - half["seconds"]
    if dn <= 0 or dt <= 0:
        return {"startup_s": None, "marginal_ips": None}
    rate = dn / dt
    return {"startup_s": round(half["seconds"] - half["embedded"] / rate, 2), "marginal_ips": round(rate, 1)}


def median_fit(fits: list) -> dict:
    """Medians of the rounds' fits (rounds without a fit left out)."""
    ok = [f for f in fits if f["startup_s"] is not None]
    if not ok:
        return {"startup_s": None, "marginal_ips": None, "rounds": 0}
    return {"startup_s": round(median(f["startup_s"] for f in ok), 2),
            "marginal_ips": round(median(f["marginal_ips"] for f in ok), 1), "rounds": len(ok)}


def run_step(*args: str) -> dict:
    """Run one step in a fresh process; its last stdout line is the JSON result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    res = subprocess.run([sys.executable, __file__, "--step", *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"step {args[0]} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the sizing table


def sizing_rows(per_core_ips: float, gpu_ips: float = ASSUMED_GPU_IPS) -> list[dict]:
    """The docs/scale.md table: storage, index, memory and embedding time per size and dimension."""
    from siamsearch.gallery import ondisk

    budget = ondisk.parse_memory(BUDGET)
    rows = []
    for d in DIMS:
        for n in SIZES:
            choice = ondisk.choose_index(n, d, budget)
            rows.append({"images": n, "dim": d, "parquet": ondisk.human(n * (4 * d + 130)),
                         "factory": choice.factory, "index": ondisk.human(choice.index_bytes),
                         "build_memory": ondisk.human(ondisk.estimate_build_memory(choice, d, SHARD_ROWS)),
                         "cpu_core_hours": round(n / per_core_ips / 3600), "gpu_hours": round(n / gpu_ips / 3600, 1)})
    return rows


def sizing_markdown(per_core_ips: float, gpu_ips: float = ASSUMED_GPU_IPS) -> str:
    head = ("| images | d | embeddings (Parquet) | index chosen (`--max-index-memory 64G`) | index size | "
            "build memory (driver) | embedding: CPU core-hours | embedding: GPU-hours |\n|---|---|---|---|---|---|---|---|")
    lines = [head] + [f"| {r['images']:,} | {r['dim']} | {r['parquet']} | `{r['factory']}` | {r['index']} | "
                      f"{r['build_memory']} | {r['cpu_core_hours']:,} | {r['gpu_hours']:,} |"
                      for r in sizing_rows(per_core_ips, gpu_ips)]
    return "\n".join(lines)


def refresh_scale_doc(results: dict) -> None:
    """Replace the table between the markers in docs/scale.md."""
    text = SCALE_DOC.read_text(encoding="utf-8")
    a, b = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    SCALE_DOC.write_text(text[:a] + "\n" + scale_block(results) + "\n" + text[b:], encoding="utf-8")


def scale_block(results: dict) -> str:
    """What stands between the markers of docs/scale.md: the measured rate, how it was measured, the table."""
    load = results["load_average"][0]
    return (f"Per-core rate used: {results['per_core_ips']:.1f} images/s, measured by a "
            f"{'--quick ' if results['quick'] else ''}run on {results['workers']} cores at load average "
            f"{load:.1f}{' (shared with other jobs: a pessimistic rate)' if load > results['workers'] else ''}; "
            f"per-GPU rate: {ASSUMED_GPU_IPS:.0f} images/s (assumed).\n\n" + sizing_markdown(results["per_core_ips"]))


# --------------------------------------------------------------------------- main


def merge_figures(prep: dict, merge: dict, n_vec: int) -> dict:
    """The merge part of the results (the keys ``--merge-only`` replaces in an existing results file)."""
    ratio = round(merge["merge_peak_rss_mb"] / merge["index_mb"], 3)
    return {"merge_seconds": merge["merge_seconds"], "merge_peak_rss_mb": merge["merge_peak_rss_mb"],
            "index_mb": merge["index_mb"], "meets_merge_target": ratio <= TARGET_MERGE, "vectors": n_vec,
            "merge_rss_vs_index": ratio, "merge_peak_anon_mb": merge["merge_peak_anon_mb"],
            "merge_peak_file_mb": merge["merge_peak_file_mb"], "merge_rss_before_mb": merge["rss_before_merge_mb"],
            "merge_process_peak_rss_mb": merge["process_peak_rss_mb"], "merge_peak_rss_exact": merge["peak_rss_exact"],
            "prepare": prep, "merge_factory": prep["factory"],
            "merge_measured": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_average": os.getloadavg()}}


def run_merge(work: Path, n_vec: int) -> tuple[dict, dict]:
    """Prepare (unless ``work`` holds a prepared run of ``n_vec`` vectors) and merge, each in its own process."""
    done = work / "prepare.json"
    prep = json.loads(done.read_text()) if done.is_file() else {}
    if prep.get("vectors") != n_vec:
        prep = dict(run_step("prepare", str(work), str(n_vec), "128"), vectors=n_vec)
        done.write_text(json.dumps(prep))
    for old in ("faiss.index", "faiss.merged.ivfdata"):
        (work / old).unlink(missing_ok=True)
    merge = run_step("merge", str(work), json.dumps(prep["parts"]))
    return {k: v for k, v in prep.items() if k not in ("parts", "vectors")}, merge


def merge_title(workers: int, n_vec: int, m: dict) -> str:
    return (f"Distributed build on {workers} local workers; merge of {n_vec:,} vectors: {m['merge_seconds']} s, "
            f"peak RSS growth {m['merge_peak_rss_mb']} MB for a {m['index_mb']} MB index "
            f"({m['merge_rss_vs_index']:.2f}x)")


def merge_only(work: Path, n_vec: int) -> None:
    """Re-measure the merge and replace its figures in the existing results (the engine figures stay)."""
    from benchmarks._common import RESULTS

    path = RESULTS / "distributed_build.json"
    payload = json.loads(path.read_text())
    fig = merge_figures(*run_merge(work, n_vec), n_vec)
    payload.update(fig)
    payload["summary"].update({k: fig[k] for k in ("merge_seconds", "merge_peak_rss_mb", "index_mb",
                                                   "meets_merge_target")})
    path.write_text(json.dumps(payload, indent=2) + "\n")
    md = (RESULTS / "distributed_build.md").read_text().splitlines()
    md[0] = "### " + merge_title(payload["workers"], n_vec, fig)
    md.append(f"Merge re-measured {fig['merge_measured']['date']} (load average "
              f"{fig['merge_measured']['load_average'][0]:.1f}) with `--merge-only`.")
    (RESULTS / "distributed_build.md").write_text("\n".join(md) + "\n")
    print(md[0][4:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 images and 100,000 vectors")
    ap.add_argument("--images", type=int, default=None, help="images in the folder [20,000; quick 2,000]")
    ap.add_argument("--vectors", type=int, default=None, help="vectors merged [1,000,000; quick 100,000]")
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster / local decode workers")
    ap.add_argument("--rounds", type=int, default=None,
                    help="local and Ray builds, interleaved; medians and the ratio's spread are reported [3; quick 1]")
    ap.add_argument("--merge-only", action="store_true",
                    help="only the merge part; its figures replace those in the existing results file")
    ap.add_argument("--work", default=None, help="folder for the merge's shards and parts, kept and reused "
                                                 "(default: a temporary folder)")
    ap.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)  # passed by the runner; not used
    args = ap.parse_args()
    if args.step:
        name, rest = args.step[0], args.step[1:]
        if name == "build":
            out = step_build(rest[0], rest[1], rest[2], rest[3], int(rest[4]))
        elif name == "prepare":
            out = step_prepare_merge(rest[0], int(rest[1]), int(rest[2]))
        else:
            out = step_merge(rest[0], json.loads(rest[1]))
        print(json.dumps(out))
        return
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    n_img = args.images or (2000 if args.quick else 20000)
    n_vec = args.vectors or (100_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="siamsearch-dist-") as tmp:
        tmp = Path(tmp)
        work = Path(args.work) if args.work else tmp / "merge"
        work.mkdir(parents=True, exist_ok=True)
        if args.merge_only:
            merge_only(work, n_vec)
            return
        make_images(tmp / "imgs", n_img)
        make_images(tmp / "half", n_img // 2)
        make_model(tmp / "model.pt")
        w = str(args.workers)
        rounds = []  # every build once per round, interleaved, so that all see the same machine in each round
        builds = (("local", "local", "imgs", w), ("local_default", "local", "imgs", "-1"), ("ray", "ray", "imgs", w),
                  ("ray_running", "ray_running", "imgs", w), ("local_half", "local", "half", w),
                  ("ray_half", "ray", "half", w))
        for r in range(args.rounds):
            fig_r = {}
            for name, engine, folder, workers in builds:
                shutil.rmtree(tmp / f"g_{name}", ignore_errors=True)
                fig_r[name] = run_step("build", engine, str(tmp / folder), str(tmp / "model.pt"),
                                       str(tmp / f"g_{name}"), workers)
            for key, name in (("ratio", "local"), ("ratio_default", "local_default")):
                fig_r[key] = round(fig_r["ray"]["ips"] / fig_r[name]["ips"], 3)
            fig_r["ratio_running"] = round(fig_r["ray_running"]["ips"] / fig_r["local"]["ips"], 3)
            for engine in ("local", "ray"):
                fig_r[f"{engine}_fit"] = fixed_and_marginal(fig_r[engine], fig_r[f"{engine}_half"])
            rounds.append(fig_r)
            print(f"round {r + 1}/{args.rounds}: local --workers {w} {fig_r['local']['ips']} images/s, local default "
                  f"{fig_r['local_default']['ips']}, ray {fig_r['ray']['ips']} ({fig_r['ratio']}x, "
                  f"{fig_r['ratio_default']}x the default), ray on a running cluster {fig_r['ray_running']['ips']} "
                  f"({fig_r['ratio_running']}x); start-up + marginal rate: local {fig_r['local_fit']}, "
                  f"ray {fig_r['ray_fit']}", flush=True)
        fig = merge_figures(*run_merge(work, n_vec), n_vec)
    med = {name: {"ips": median([x[name]["ips"] for x in rounds]),
                  "peak_rss_mb": max(x[name]["peak_rss_mb"] for x in rounds)}
           for name, *_ in builds}
    local, ray, ray_half = med["local"], med["ray"], med["ray_half"]
    ratios, ratios_d = [x["ratio"] for x in rounds], [x["ratio_default"] for x in rounds]
    ratios_r = [x["ratio_running"] for x in rounds]
    ratio, ratio_d, ratio_r = round(median(ratios), 3), round(median(ratios_d), 3), round(median(ratios_r), 3)
    fits = {engine: median_fit([x[f"{engine}_fit"] for x in rounds]) for engine in ("local", "ray")}
    per_core = round(max(local["ips"], med["local_default"]["ips"]) / args.workers, 1)
    summary = {"local_ips": local["ips"], "ray_ips": ray["ips"], "ray_vs_local": ratio,
               "ray_vs_local_min": min(ratios), "ray_vs_local_max": max(ratios), "rounds": len(rounds),
               "local_default_ips": med["local_default"]["ips"], "ray_vs_local_default": ratio_d,
               "ray_vs_local_default_min": min(ratios_d), "ray_vs_local_default_max": max(ratios_d),
               "ray_running_ips": med["ray_running"]["ips"], "ray_running_vs_local": ratio_r,
               "ray_running_vs_local_min": min(ratios_r), "ray_running_vs_local_max": max(ratios_r),
               "ray_startup_s": fits["ray"]["startup_s"], "ray_marginal_ips": fits["ray"]["marginal_ips"],
               "local_startup_s": fits["local"]["startup_s"], "local_marginal_ips": fits["local"]["marginal_ips"],
               "driver_peak_rss_mb": ray["peak_rss_mb"], "merge_seconds": fig["merge_seconds"],
               "merge_peak_rss_mb": fig["merge_peak_rss_mb"], "index_mb": fig["index_mb"],
               "meets_ray_target": ratio >= TARGET_RATIO, "meets_ray_target_vs_default": ratio_d >= TARGET_RATIO,
               "meets_ray_target_running_cluster": ratio_r >= TARGET_RATIO,
               "meets_merge_target": fig["meets_merge_target"]}
    payload = {"benchmark": "distributed_build", "quick": bool(args.quick),
               "title": "Distributed build: Ray vs local, on-disk merge", "summary": summary, **summary,
               "images": n_img, "workers": args.workers, **fig,
               "driver_peak_rss_mb_half_gallery": ray_half["peak_rss_mb"], "local_peak_rss_mb": local["peak_rss_mb"],
               "per_core_ips": per_core, "assumed_gpu_ips": ASSUMED_GPU_IPS,
               "load_average": os.getloadavg(), "targets": {"ray_vs_local": TARGET_RATIO, "merge_rss_vs_index":
                                                            TARGET_MERGE},
               "sizing": sizing_rows(per_core), "round_figures": rounds}
    from benchmarks._common import write_results

    def spread(xs: list) -> str:
        return f" ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else ""

    d, rr = med["local_default"], med["ray_running"]

    def fit(engine: str) -> tuple:
        f = fits[engine]
        return (("-", "-") if f["startup_s"] is None else (f"{f['startup_s']:.1f}", f"{f['marginal_ips']:.0f}"))

    rows = [(f"local --workers {w}", n_img, f"{local['ips']:.1f}", "-", "-", *fit("local"),
             f"{local['peak_rss_mb']:.0f}"),
            ("local (default workers)", n_img, f"{d['ips']:.1f}", "-", "-", "-", "-", f"{d['peak_rss_mb']:.0f}"),
            ("ray, new cluster (the build is its first job)", n_img, f"{ray['ips']:.1f}",
             f"**{ratio:.2f}x**{spread(ratios)}", f"{ratio_d:.2f}x{spread(ratios_d)}", *fit("ray"),
             f"{ray['peak_rss_mb']:.0f}"),
            ("ray, running cluster (an earlier Ray Data job)", n_img, f"{rr['ips']:.1f}",
             f"{ratio_r:.2f}x{spread(ratios_r)}", "-", "-", "-", f"{rr['peak_rss_mb']:.0f}"),
            (f"local --workers {w} (half)", n_img // 2, f"{med['local_half']['ips']:.1f}", "-", "-", "-", "-",
             f"{med['local_half']['peak_rss_mb']:.0f}"),
            ("ray, new cluster (half)", n_img // 2, f"{ray_half['ips']:.1f}", "-", "-", "-", "-",
             f"{ray_half['peak_rss_mb']:.0f}")]
    title = (merge_title(args.workers, n_vec, fig) + f"; images/s are medians of {len(rounds)} interleaved rounds "
             "(ratio: median, range); start-up and marginal rate fitted per round from the full and half builds "
             "(seconds = start-up + images / marginal rate), medians. Target (>= 0.7x local --workers "
             f"{w}) judged on the new cluster")
    path = write_results("distributed_build", payload, rows, ("engine", "images", "images/s",
                                                               f"vs local --workers {w}", "vs local default",
                                                               "start-up s", "marginal images/s",
                                                               "driver peak RSS MB"), title)
    refresh_scale_doc(payload)
    print(f"ray {ray['ips']} img/s vs local {local['ips']} img/s ({ratio}x); {merge_title(args.workers, n_vec, fig)}"
          f" -> {path}")


if __name__ == "__main__":
    main()
