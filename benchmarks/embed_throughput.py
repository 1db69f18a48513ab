"""Embedding throughput of ``index build``, its memory at scale, and the cost of an update.

All in one run, on the same model, batch size and input size:

* **end-to-end**: ``Gallery.build`` (what ``siamsearch index build`` calls) on a folder of
  real images: 20,000 Fashion-MNIST images written out as PNG plus 2,000 larger JPEGs
  (224 x 224 colour, upscaled from them), with the default DataLoader workers. Wall clock
  of the whole build: scan, decode, preprocess, embed, hash, journal, HDF5, Faiss, commit
  (the model is loaded beforehand, as it is once per command).
* **model-only**: the same model on ready-made input tensors (``Embedder.embed_tensor``), timed
  just before and just after the build (the mean is used: the machine may be shared).
* **naive loop**: open each image, preprocess, forward a batch of one.
* **peak RSS** of a build of 10,000 vs 100,000 images (the 100,000 are the PNGs repeated in
  five folders), each in a fresh process: ``ru_maxrss`` of the main process plus the largest
  decoding worker (most of it is torch itself, about 0.7 GB before any image), and the main
  process's RSS growth during the build, sampled every 20 ms.
* **update**: change 1 % of the files, run ``update``, compare its time with the full build.

Targets (issue 14, replacing issue 3's): end-to-end >= 90 % of model-only on an idle machine;
>= 3x the naive loop; peak RSS at 100k within 300 MB of the peak at 10k (issue 3); update of 1 %
<= 2 % of a full build.

The image cache is written once under ``benchmarks/data/`` (git-ignored). The model is an
untrained checkpoint of the default :class:`~siamsearch.core.config.ModelConfig` (smallcnn,
64 x 64 grey, d = 128): speed does not depend on the weights.

Writes ``benchmarks/results/embed_throughput.json`` (top-level ``end_to_end_ips``,
``model_only_ips``, ``naive_ips``, ``peak_rss_mb_10k``, ``peak_rss_mb_100k``,
``update_fraction_of_build``) and ``embed_throughput.md``.

    python benchmarks/embed_throughput.py [--quick] [--data ../shared/data] [--workers N] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SHARED, write_results  # noqa: E402

CACHE = Path(__file__).resolve().parent / "data"
TARGETS = {"end_to_end_vs_model_only": 0.90, "end_to_end_vs_naive": 3.0, "rss_growth_mb": 300.0,
           "update_fraction_of_build": 0.02}


# --------------------------------------------------------------------------- the image folders


def prepare_images(fashion: Path, n_png: int, n_jpeg: int) -> Path:
    """``CACHE/fashion-<n_png>-<n_jpeg>/{png,jpeg}/<class>/*.{png,jpg}``, written once and reused."""
    from PIL import Image

    from siamsearch.data import open_dataset

    root = CACHE / f"fashion-{n_png}-{n_jpeg}"
    done = root / ".complete"
    if done.exists():
        return root
    if not fashion.exists():
        raise SystemExit(f"{fashion} not found; give --data with a fashion-mnist/ folder (IDX files)")
    shutil.rmtree(root, ignore_errors=True)
    ds = open_dataset(fashion, format="fashion-mnist", split="all")
    print(f"writing {n_png:,} PNGs and {n_jpeg:,} JPEGs under {root} (once)", flush=True)
    tints = np.random.default_rng(0).uniform(0.4, 1.0, size=(len(ds.identity_names), 3))
    for i in range(n_png + n_jpeg):
        im = ds.load(i % len(ds))
        name = ds.identity_names[ds.identities[i % len(ds)]].replace("/", "-")
        if i < n_png:
            folder = root / "png" / name
            path = folder / f"{i:06d}.png"
        else:
            folder = root / "jpeg" / name
            path = folder / f"{i:06d}.jpg"
            grey = np.asarray(im.resize((224, 224), Image.BICUBIC), dtype=np.float32)
            im = Image.fromarray(np.clip(grey[..., None] * tints[ds.identities[i % len(ds)]], 0, 255).astype(np.uint8))
        folder.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=90) if path.suffix == ".jpg" else im.save(path)
    done.write_text("ok\n")
    return root


def linked_copy(sources: list, dest: Path, repeats: int = 1) -> Path:
    """``dest/rep<k>/<relative path>`` hard links (copies where linking fails) of ``sources``."""
    shutil.rmtree(dest, ignore_errors=True)
    for k in range(repeats):
        for src_root, files in sources:
            for f in files:
                target = dest / f"rep{k}" / f.relative_to(src_root)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy2(f, target)
    return dest


# --------------------------------------------------------------------------- measurements


def model_only_ips(embedder, batch_size: int, seconds: float) -> float:
    """Images/s of the model alone on ready input tensors ``[B, C, S, S]`` (same batch and input size)."""
    import torch

    cfg = embedder.config
    x = torch.randn(batch_size, cfg.in_channels, cfg.input_size, cfg.input_size)
    embedder.embed_tensor(x)  # warm-up
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 10 * batch_size:
        embedder.embed_tensor(x)
        n += batch_size
    return n / (time.perf_counter() - t)


def naive_ips(embedder, paths: list) -> float:
    """Images/s of the textbook loop: open, preprocess, forward one image at a time."""
    from siamsearch.core.images import read_image

    embedder.embed_tensor(embedder.transform(read_image(paths[0]))[None])
    t = time.perf_counter()
    for p in paths:
        embedder.embed_tensor(embedder.transform(read_image(p))[None])
    return len(paths) / (time.perf_counter() - t)


def timed_build(folder: Path, embedder, out: Path, batch_size: int, workers, **kw):
    from siamsearch import Gallery

    t = time.perf_counter()
    g = Gallery.build(folder, embedder, out=out, batch_size=batch_size, workers=workers, progress=False,
                      device="cpu", **kw)
    seconds = time.perf_counter() - t
    report = g.last_report
    g.close()
    return seconds, report


RSS_CHILD = """
import json, resource, sys, threading, time
from siamsearch import Gallery
from siamsearch.core.embedder import load_model

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

model = load_model(sys.argv[2], device="cpu")
model.embed_tensor(__import__("torch").zeros(2, model.config.in_channels, model.config.input_size,
                                             model.config.input_size))
before, peak, done = rss(), [0.0], threading.Event()

def sample():                       # RSS of the main process during the build, every 20 ms
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
g = Gallery.build(sys.argv[1], model, out=sys.argv[3], batch_size=int(sys.argv[4]),
                  workers=None if sys.argv[5] == "auto" else int(sys.argv[5]), progress=False)
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"images": len(g), "seconds": seconds, "rss_before_build_mb": before,
                  "build_peak_mb": max(peak[0], rss()),
                  "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def peak_rss(folder: Path, model: Path, out: Path, batch_size: int, workers) -> dict:
    """Peak RSS (MiB) of a build in a fresh process: main process and largest decoding worker."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(folder), str(model), str(out), str(batch_size),
                           "auto" if workers is None else str(workers)],
                          cwd=root, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)))
    if proc.returncode != 0:
        raise SystemExit(f"RSS run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["total_mb"] = r["main_mb"] + r["workers_mb"]
    r["build_growth_mb"] = r["build_peak_mb"] - r["rss_before_build_mb"]
    return r


def change_files(files: list, fraction: float, seed: int = 0) -> int:
    """Give ``fraction`` of ``files`` new content (inverted pixels), written to a new inode (breaks hard links)."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), max(1, int(round(fraction * len(files)))), replace=False)
    for i in pick:
        f = files[i]
        with Image.open(f) as im:
            new = ImageOps.invert(im.convert("L"))
        tmp = f.with_name(f.name + ".new" + f.suffix)
        new.save(tmp)
        os.replace(tmp, f)
    return len(pick)


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 + 200 images; RSS at 1,000 vs 10,000")
    ap.add_argument("--data", default=str(SHARED), help="folder holding fashion-mnist/ (IDX files)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers [default: the build default]")
    ap.add_argument("--naive-images", type=int, default=None, help="images timed in the naive loop [300; quick 100]")
    args = ap.parse_args()

    import torch

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.embedder import load_model
    from siamsearch.gallery.engines import embedding_layout
    from siamsearch.gallery.gallery import update_gallery
    from siamsearch.core.images import list_images
    from siamsearch.core.model import EmbeddingNet

    n_png, n_jpeg = (2000, 200) if args.quick else (20000, 2000)
    rss_small, rss_large = (1000, 10000) if args.quick else (10000, 100000)
    workers = args.workers  # None: the library's default for this folder (reported below)
    fashion = Path(args.data) / "fashion-mnist"
    images = prepare_images(fashion, n_png, n_jpeg)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="embed-throughput-", dir=CACHE))
    try:
        torch.manual_seed(0)
        cfg = ModelConfig()
        model_path = work / "model.pt"
        save_checkpoint(model_path, cfg, EmbeddingNet(cfg).state_dict(), {"note": "untrained, for timing"})
        embedder = load_model(model_path, device="cpu")
        load_before = loadavg()

        pngs = list_images(images / "png")
        jpegs = list_images(images / "jpeg")
        folder = linked_copy([(images, pngs + jpegs)], work / "gallery_src")
        files = list_images(folder)
        layout = embedding_layout(workers, [str(f) for f in files])
        shown_workers = layout["workers"]
        layout_text = (f"{layout['embed_workers']} embedding workers (decode + model, 1 thread each)"
                       if layout["embed_workers"] else f"{shown_workers} decoding workers")
        print(f"{len(files):,} images ({len(pngs):,} PNG 28x28, {len(jpegs):,} JPEG 224x224); model {cfg.backbone} "
              f"{cfg.input_size}px x{cfg.in_channels}, d={cfg.embedding_dim}; batch {args.batch_size}, "
              f"{layout_text}, torch threads {torch.get_num_threads()}", flush=True)

        m_ips = model_only_ips(embedder, args.batch_size, seconds=5 if args.quick else 15)
        print(f"model-only: {m_ips:.0f} images/s", flush=True)
        build_s, report = timed_build(folder, embedder, work / "gallery", args.batch_size, workers)
        e_ips = report.embedded / build_s
        print(f"end-to-end build: {report.embedded:,} images in {build_s:.1f} s = {e_ips:.0f} images/s "
              f"({e_ips / m_ips:.0%} of model-only); {len(report.skipped)} skipped", flush=True)
        m_ips_after = model_only_ips(embedder, args.batch_size, seconds=5 if args.quick else 15)
        model_ips = (m_ips + m_ips_after) / 2  # the machine may be shared: measured just before and after
        print(f"model-only again: {m_ips_after:.0f} images/s; mean {model_ips:.0f}", flush=True)
        n_naive = args.naive_images or (100 if args.quick else 300)
        step = max(1, len(files) // n_naive)
        naive = naive_ips(embedder, [str(f) for f in files[::step][:n_naive]])
        print(f"naive loop: {naive:.1f} images/s -> end-to-end is {e_ips / naive:.1f}x", flush=True)

        changed = change_files([f for f in files if f.suffix == ".png"], 0.01)
        t = time.perf_counter()
        up = update_gallery(work / "gallery", model=embedder, batch_size=args.batch_size, workers=workers,
                            progress=False)
        update_s = time.perf_counter() - t
        assert up.changed == changed and up.added == 0 and up.removed == 0, up.summary()
        print(f"update after changing {changed} files ({changed / len(files):.1%}): {update_s:.2f} s = "
              f"{update_s / build_s:.1%} of the full build", flush=True)

        small = linked_copy([(images / "png", pngs[:rss_small])], work / "rss_small")
        reps = -(-rss_large // len(pngs))
        large = linked_copy([(images / "png", pngs[: rss_large // reps])], work / "rss_large", repeats=reps)
        r_small = peak_rss(small, model_path, work / "g_small", args.batch_size, workers)
        print(f"peak RSS, {r_small['images']:,} images: {r_small['total_mb']:.0f} MB "
              f"(main {r_small['main_mb']:.0f} + worker {r_small['workers_mb']:.0f}; "
              f"the build itself +{r_small['build_growth_mb']:.0f} MB)", flush=True)
        r_large = peak_rss(large, model_path, work / "g_large", args.batch_size, workers)
        print(f"peak RSS, {r_large['images']:,} images: {r_large['total_mb']:.0f} MB "
              f"(main {r_large['main_mb']:.0f} + worker {r_large['workers_mb']:.0f}; "
              f"the build itself +{r_large['build_growth_mb']:.0f} MB); "
              f"growth {r_large['total_mb'] - r_small['total_mb']:.0f} MB", flush=True)
        load_after = loadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "end_to_end_ips": round(e_ips, 1),
        "model_only_ips": round(model_ips, 1),
        "model_only_ips_before_after": [round(m_ips, 1), round(m_ips_after, 1)],
        "naive_ips": round(naive, 1),
        "end_to_end_vs_model_only": round(e_ips / model_ips, 3),
        "end_to_end_vs_naive": round(e_ips / naive, 1),
        "peak_rss_mb_10k": round(r_small["total_mb"], 1),
        "peak_rss_mb_100k": round(r_large["total_mb"], 1),
        "rss_growth_mb": round(r_large["total_mb"] - r_small["total_mb"], 1),
        "build_rss_growth_mb_10k": round(r_small["build_growth_mb"], 1),
        "build_rss_growth_mb_100k": round(r_large["build_growth_mb"], 1),
        "update_seconds": round(update_s, 2),
        "build_seconds": round(build_s, 2),
        "update_fraction_of_build": round(update_s / build_s, 4),
    }
    met = {
        "end_to_end_vs_model_only": figures["end_to_end_vs_model_only"] >= TARGETS["end_to_end_vs_model_only"],
        "end_to_end_vs_naive": figures["end_to_end_vs_naive"] >= TARGETS["end_to_end_vs_naive"],
        "rss_growth_mb": figures["rss_growth_mb"] <= TARGETS["rss_growth_mb"],
        "update_fraction_of_build": figures["update_fraction_of_build"] <= TARGETS["update_fraction_of_build"],
    }
    payload = {
        "benchmark": "embed_throughput", "quick": bool(args.quick), "title": "Gallery embedding throughput",
        **figures,
        "summary": {k: figures[k] for k in ("end_to_end_ips", "model_only_ips", "naive_ips", "end_to_end_vs_model_only",
                                            "end_to_end_vs_naive", "peak_rss_mb_10k", "peak_rss_mb_100k",
                                            "update_fraction_of_build")} | {"all_targets_met": all(met.values())},
        "targets": TARGETS, "targets_met": met,
        "settings": {"images": len(files), "png": len(pngs), "jpeg": len(jpegs), "batch_size": args.batch_size,
                     "workers": shown_workers, "embed_workers": layout["embed_workers"], "model": cfg.to_dict(),
                     "rss_images": [r_small["images"], r_large["images"]],
                     "changed_files": changed, "naive_images": n_naive, "device": "cpu",
                     "load_average": [load_before, load_after]},
        "rss_runs": {"small": r_small, "large": r_large},
    }
    rows = [
        ("end-to-end `index build`", f"{e_ips:,.0f} images/s", f"{e_ips / model_ips:.0%} of model-only, "
         f"{e_ips / naive:.1f}x naive", ">= 90 %, >= 3x", "yes" if met["end_to_end_vs_model_only"]
         and met["end_to_end_vs_naive"] else "no"),
        ("model only (same batch, input)", f"{model_ips:,.0f} images/s", "", "", ""),
        ("naive loop (batch of one)", f"{naive:,.1f} images/s", "", "", ""),
        (f"peak RSS, {r_small['images']:,} images", f"{r_small['total_mb']:,.0f} MB",
         f"build itself +{r_small['build_growth_mb']:,.0f} MB", "", ""),
        (f"peak RSS, {r_large['images']:,} images", f"{r_large['total_mb']:,.0f} MB",
         f"{r_large['total_mb'] - r_small['total_mb']:+,.0f} MB vs {r_small['images']:,}; build itself "
         f"+{r_large['build_growth_mb']:,.0f} MB", "<= +300 MB", "yes" if met["rss_growth_mb"] else "no"),
        (f"update after changing {changed} files (1 %)", f"{update_s:.2f} s", f"{update_s / build_s:.1%} of the "
         f"{build_s:.0f} s build", "<= 2 %", "yes" if met["update_fraction_of_build"] else "no"),
        ("machine load (1-min average), start / end", f"{load_before} / {load_after}",
         f"{os.cpu_count()} cores shared with other jobs", "", ""),
    ]
    path = write_results("embed_throughput", payload, rows, ("measure", "value", "relative", "target", "met"),
                         f"Embedding throughput ({len(files):,} images, {cfg.backbone} {cfg.input_size}px, "
                         f"batch {args.batch_size}, {layout_text}, CPU)")
    print(f"end-to-end / model-only = {e_ips / model_ips:.2f}; end-to-end / naive = {e_ips / naive:.1f} -> {path}")


if __name__ == "__main__":
    main()
