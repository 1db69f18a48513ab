"""GPU embedding: CUDA embeddings agree with CPU ones, how fast they are, and a CUDA ``index build``.

One prepared script (issue 14, item 6), sized to finish in about 2-4 minutes on a data-centre GPU
including startup (``--budget-s``, default 420 s, skips whatever stage would start after it).

On a machine without CUDA it prints a clear skip, writes ``results/gpu_embed.json`` with
``"skipped": true`` (and ``gpu_embed.md``) and exits 0: the benchmark runner runs it everywhere.
On a CUDA machine:

1. agreement: smallcnn (64 px) and resnet18 (112 px), untrained but seeded, embed the same batch on
   CPU in fp32 and on CUDA in fp32, fp16 and bf16 autocast (channels_last); the minimum cosine to the
   CPU embeddings must be >= 0.999 (exit 1 otherwise);
2. model-only throughput on CUDA for each precision (pinned host batch, non-blocking copy, synchronised
   timing), mean and spread over ``--repeats`` windows of 2 s;
3. batched GPU JPEG decoding (``torchvision.io.decode_jpeg(list_of_tensors, device="cuda")``) where
   torchvision offers it, against CPU decoding, and a GPU-only pipeline (batched decode -> resize ->
   normalise -> smallcnn bf16/fp16) in images/s;
4. ``index build`` end to end on CUDA (``Gallery.build``, default precision ``auto``: bf16 or fp16;
   pinned batches and non-blocking copies) over ``--images`` synthetic JPEGs, images/s, and the
   agreement of a sample of the gallery's stored embeddings with the same files embedded on CPU in fp32.

    python benchmarks/gpu_embed.py [--quick] [--images 20000] [--repeats 3] [--budget-s 420]
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
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, write_results  # noqa: E402

NAME = "gpu_embed"
MIN_COSINE = 0.999


def _model(backbone: str, size: int, fold: bool = True):
    """Seeded untrained ``(config, network)``; ``fold``: rewritten for inference as loaded models run
    (BatchNorm folded, :mod:`siamsearch.core.fusion`), else the plain network whose ``state_dict`` a
    checkpoint stores."""
    import torch

    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    from siamsearch.core.fusion import optimize_for_inference  # what every loaded model runs

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, input_size=size, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    net = EmbeddingNet(cfg).eval()
    return cfg, optimize_for_inference(net) if fold else net


def _timed(fn, batch: int, seconds: float = 2.0) -> float:
    """Images/s of ``fn()`` (one batch per call) over a ``seconds`` window, CUDA-synchronised."""
    import torch

    torch.cuda.synchronize()
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        fn()
        n += batch
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def agreement_and_speed(backbone: str, size: int, batch: int, repeats: int) -> dict:
    """Per precision: minimum cosine of CUDA to CPU fp32 embeddings, and model-only images/s on CUDA."""
    import torch

    from siamsearch.core.inference import InferenceRunner

    _, net = _model(backbone, size)
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
        cos = float((runner(xp) * ref).sum(1).min())
        runner(xp)  # warm-up (cuDNN algorithm choice)
        speeds = [_timed(lambda: runner(xp), batch) for _ in range(repeats)]
        out[prec] = {"min_cosine_to_cpu_fp32": round(cos, 6), "agrees": cos >= MIN_COSINE,
                     "ips_mean": round(statistics.fmean(speeds), 1), "ips_runs": [round(s, 1) for s in speeds]}
    return out


def _jpegs(n: int, size: int) -> list:
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    datas = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return datas


def gpu_jpeg_decode(n: int = 512, size: int = 128) -> dict:
    """Batched GPU JPEG decoding vs CPU decoding, and decode -> resize -> smallcnn entirely on the GPU."""
    import torch
    import torch.nn.functional as F

    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return {"skipped": "torchvision.io.decode_jpeg not available"}
    from siamsearch.core.inference import InferenceRunner

    datas = _jpegs(n, size)
    try:
        decode_jpeg(datas[:8], device="cuda")
        gpu_ips = _timed(lambda: decode_jpeg(datas, device="cuda"), n)
    except Exception as e:  # older torchvision or no nvjpeg: no batched GPU decode
        return {"skipped": f"GPU decode failed ({type(e).__name__}: {str(e)[:120]})"}
    t = time.perf_counter()
    for d in datas:
        decode_jpeg(d)
    cpu_ips = n / (time.perf_counter() - t)

    _, net = _model("smallcnn", 64)
    runner = InferenceRunner(net.cuda().to(memory_format=torch.channels_last), torch.device("cuda"), "auto")

    def pipeline():
        imgs = torch.stack(decode_jpeg(datas, device="cuda")).float().div_(255)
        x = F.interpolate(imgs, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        return runner((x - 0.5) / 0.5)

    pipeline()
    return {"images": n, "size_px": size, "gpu_decode_ips": round(gpu_ips, 1),
            "cpu_decode_ips_1_thread": round(cpu_ips, 1),
            "gpu_decode_resize_embed_ips": round(_timed(pipeline, n), 1), "embed_precision": runner.precision}


def index_build(n: int, workers: int, batch_size: int) -> dict:
    """``Gallery.build`` on CUDA over ``n`` synthetic JPEGs; a sample of stored vectors vs CPU fp32."""
    import torch
    from PIL import Image

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.embedder import load_model
    from siamsearch.gallery import Gallery

    cfg, net = _model("smallcnn", 64, fold=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for i in range(n):
            d = root / "img" / f"id_{i % 100:03d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
        write_s = time.perf_counter() - t
        save_checkpoint(root / "m.pt", cfg, net.state_dict(), {"note": "untrained, gpu_embed"})
        model = load_model(root / "m.pt", device="cuda")
        t = time.perf_counter()
        g = Gallery.build(root / "img", model, out=root / "index", workers=workers, batch_size=batch_size,
                          progress=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        size = len(g)
        sample = list(range(0, size, max(1, size // 256)))[:256]
        stored = g.embeddings[sample]
        cpu = load_model(root / "m.pt", device="cpu", precision="fp32").embed([g.paths[i] for i in sample])
        cos = float((stored * cpu).sum(1).min())
        g.close()
    return {"images": size, "seconds": round(dt, 2), "images_per_s": round(size / dt, 1),
            "precision": model.precision, "workers": workers, "batch_size": batch_size,
            "min_cosine_stored_vs_cpu_fp32": round(cos, 6), "agrees": cos >= MIN_COSINE,
            "jpeg_write_s": round(write_s, 1)}


def skip(reason: str, out: Path) -> Path:
    """Record a skip: ``NAME.json`` with ``"skipped": true`` and the reason."""
    print(f"gpu_embed skipped: {reason}")
    payload = {"benchmark": NAME, "title": "GPU embedding", "skipped": True, "reason": reason,
               "summary": {"status": f"skipped: {reason}"}}
    return write_results(NAME, payload, [("status", f"skipped: {reason}")], ("figure", "value"), "GPU embedding",
                         results=out)


def main(argv: Optional[list] = None) -> int:
    """Run the benchmark (or the skip); returns the exit status (0 ok or skipped, 1 disagreement)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches and index build")
    ap.add_argument("--images", type=int, default=None, help="images for the index build [20000; quick 2000]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip stages that would start after this")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder [benchmarks/results]")
    ap.add_argument("--data", default=None, help="ignored (synthetic input; accepted for the runner)")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    import torch

    if not torch.cuda.is_available():
        skip("no CUDA GPU visible (torch.cuda.is_available() is False); run this on a GPU machine", args.out)
        return 0
    n_img = args.images or (2000 if args.quick else 20000)
    batch = 128 if args.quick else 512

    def stage(name, fn, *a):
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 0:
            return {"skipped": f"time budget ({args.budget_s:.0f} s) spent before {name}"}
        print(f"[{time.perf_counter() - start:6.1f} s] {name}", flush=True)
        return fn(*a)

    models = {f"{b}_{s}px": stage(f"{b} {s}px", agreement_and_speed, b, s, batch, args.repeats)
              for b, s in (("smallcnn", 64), ("resnet18", 112))}
    decode = stage("GPU JPEG decode", gpu_jpeg_decode)
    build = stage("index build", index_build, n_img, args.workers, 256)
    agrees = all(v.get("agrees", True) for m in models.values() for v in m.values() if isinstance(v, dict))
    agrees = agrees and build.get("agrees", True)
    name = torch.cuda.get_device_name(0)
    payload = {"benchmark": NAME, "title": f"GPU embedding on {name}", "quick": args.quick, "skipped": False,
               "summary": {"gpu": name, "all_agree_cosine_0_999": agrees,
                           "index_build_ips": build.get("images_per_s"),
                           "seconds": round(time.perf_counter() - start, 1)},
               "models": models, "jpeg_decode": decode, "index_build": build}
    rows = [(f"{m} {p}", v.get("skipped") or f"{v['ips_mean']} img/s, min cos {v['min_cosine_to_cpu_fp32']}")
            for m, r in models.items() for p, v in r.items() if isinstance(v, dict)]
    rows += [("GPU JPEG decode", str(decode)), ("index build (end to end)", str(build))]
    print(write_results(NAME, payload, rows, ("figure", "value"), payload["title"], results=args.out))
    if not agrees:
        print("CUDA embeddings disagree with CPU fp32 (cosine < 0.999)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
