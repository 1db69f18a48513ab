"""GPU check: CUDA embedding agrees with CPU and how fast it is (fp32 / fp16 / bf16), plus a CUDA index build.

On a machine without CUDA this prints a clear skip, writes a results file saying so and exits 0
(the benchmark runner runs it everywhere). On a CUDA machine, in a few minutes:

1. agreement: smallcnn (64 px) and resnet18 (112 px), untrained but seeded, embed the same batch on
   CPU in fp32 and on CUDA in fp32, fp16 and bf16 autocast (channels_last); the minimum cosine to the
   CPU embeddings must be >= 0.999;
2. model-only throughput on CUDA for each precision (pinned host batch, non-blocking copy, synchronised
   timing), mean and spread over ``--repeats``;
3. batched GPU JPEG decoding (``torchvision.io.decode_jpeg(device="cuda")``) where torchvision offers it;
4. ``index build`` end to end on CUDA (``Gallery.build``, default precision) over ``--images`` synthetic
   JPEGs, images/s.

    python benchmarks/gpu_check.py [--quick] [--images 20000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import write_results  # noqa: E402

MIN_COSINE = 0.999


def _model(backbone: str, size: int):
    import torch

    from siamsearch.core.config import ModelConfig
    from siamsearch.core.fusion import fold_batchnorm as _fold_batchnorm
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, input_size=size, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    return cfg, _fold_batchnorm(EmbeddingNet(cfg).eval())


def agreement_and_speed(backbone: str, size: int, batch: int, repeats: int) -> dict:
    import torch

    from siamsearch.core.inference import InferenceRunner

    cfg, net = _model(backbone, size)
    x = torch.randn(batch, 3, size, size)
    ref = InferenceRunner(net, torch.device("cpu"), "fp32")(x)
    gpu = torch.device("cuda")
    net_gpu = _model(backbone, size)[1].to(gpu).to(memory_format=torch.channels_last)
    xp = x.pin_memory()
    out = {}
    for prec in ("fp32", "fp16", "bf16"):
        if prec == "bf16" and not torch.cuda.is_bf16_supported():
            out[prec] = {"skipped": "GPU has no bf16"}
            continue
        runner = InferenceRunner(net_gpu, gpu, prec)
        emb = runner(xp)
        cos = float((emb * ref).sum(1).min())
        speeds = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < 2.0:
                runner(xp)
                n += batch
            torch.cuda.synchronize()
            speeds.append(n / (time.perf_counter() - t))
        out[prec] = {"min_cosine_to_cpu_fp32": round(cos, 6), "agrees": cos >= MIN_COSINE,
                     "ips_mean": round(statistics.fmean(speeds), 1), "ips_runs": [round(s, 1) for s in speeds]}
    return out


def gpu_jpeg_decode(n: int = 512, size: int = 128) -> dict:
    import torch

    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return {"skipped": "torchvision.io.decode_jpeg not available"}
    from PIL import Image

    rng = np.random.default_rng(0)
    datas = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    try:
        decode_jpeg(datas[:8], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        decode_jpeg(datas, device="cuda")
        torch.cuda.synchronize()
        gpu_s = time.perf_counter() - t
    except Exception as e:  # older torchvision: no batched/GPU decode
        return {"skipped": f"GPU decode failed ({type(e).__name__}: {str(e)[:120]})"}
    t = time.perf_counter()
    for d in datas:
        decode_jpeg(d)
    cpu_s = time.perf_counter() - t
    return {"images": n, "gpu_images_per_s": round(n / gpu_s, 1), "cpu_images_per_s": round(n / cpu_s, 1)}


def index_build(n: int, workers: int) -> dict:
    import torch
    from PIL import Image

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.embedder import load_model
    from siamsearch.gallery import Gallery

    cfg, net = _model("smallcnn", 64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(n):
            d = root / "img" / f"id_{i % 100:03d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
        save_checkpoint(root / "m.pt", cfg, net.state_dict(), {"note": "untrained, gpu_check"})
        model = load_model(root / "m.pt", device="cuda")
        t = time.perf_counter()
        g = Gallery.build(root / "img", model, out=root / "index", workers=workers, batch_size=256, progress=False)
        dt = time.perf_counter() - t
        size = len(g)
        g.close()
    torch.cuda.synchronize()
    return {"images": size, "seconds": round(dt, 2), "images_per_s": round(size / dt, 1),
            "precision": model.precision, "workers": workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller batch and index build")
    ap.add_argument("--images", type=int, default=None, help="images for the index build [20000; quick 2000]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--data", default=None, help="ignored (synthetic input; accepted for the runner)")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        msg = "skipped: no CUDA GPU visible (torch.cuda.is_available() is False); run this on a GPU machine"
        print(msg)
        write_results("gpu_check", {"benchmark": "gpu_check", "title": "GPU check", "summary": {"status": msg}},
                      [("status", msg)], ("figure", "value"), "GPU check")
        return
    n_img = args.images or (2000 if args.quick else 20000)
    batch = 128 if args.quick else 512
    models = {f"{b}_{s}px": agreement_and_speed(b, s, batch, args.repeats) for b, s in (("smallcnn", 64), ("resnet18", 112))}
    decode = gpu_jpeg_decode()
    build = index_build(n_img, args.workers)
    agrees = all(v.get("agrees", True) for m in models.values() for v in m.values())
    payload = {"benchmark": "gpu_check", "title": f"GPU check on {torch.cuda.get_device_name(0)}", "quick": args.quick,
               "summary": {"gpu": torch.cuda.get_device_name(0), "all_agree_cosine_0_999": agrees,
                           "index_build_ips": build["images_per_s"]},
               "models": models, "jpeg_decode": decode, "index_build": build}
    rows = [(f"{m} {p}", v.get("skipped") or f"{v['ips_mean']} img/s, min cos {v['min_cosine_to_cpu_fp32']}")
            for m, r in models.items() for p, v in r.items()]
    rows += [("GPU JPEG decode", str(decode)), ("index build (end to end)", f"{build['images_per_s']} img/s")]
    print(write_results("gpu_check", payload, rows, ("figure", "value"), payload["title"]))
    if not agrees:
        sys.exit("CUDA embeddings disagree with CPU fp32 (cosine < 0.999)")


if __name__ == "__main__":
    main()
