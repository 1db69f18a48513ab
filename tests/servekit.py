"""Helpers for the `siamsearch serve` tests: a calibrated tiny model, a gallery, image bytes, a live server."""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_identity_folders

THRESHOLD = 0.5


def calibrated_model(path: Path, seed: int = 0) -> Path:
    """An untrained smallcnn checkpoint (16 px, d=8) carrying a calibration record at THRESHOLD."""
    import torch

    from siamsearch.core.checkpoint import load_checkpoint, save_checkpoint, write_calibration
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(seed)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), {"note": "untrained test model"})
    fp = load_checkpoint(path).fingerprint
    write_calibration(path, {"kind": "siamsearch.calibration", "threshold": THRESHOLD, "rule": "far",
                             "target_far": 0.01, "far": 0.008, "far_ci95": [0.004, 0.015], "tar": 0.9,
                             "tar_ci95": [0.85, 0.94], "n_genuine": 400, "n_impostor": 4000,
                             "model_fingerprint": fp, "created": "2026-12-02T00:00:00Z"})
    return path


def build_gallery(root: Path, model: Path, n_ids: int = 4, per_id: int = 3, name: str = "people") -> Path:
    """Identity folders ``root/<name>_images/id_k`` indexed into ``root/index/<name>``."""
    from siamsearch.gallery import Gallery

    images = make_identity_folders(root / f"{name}_images", n_ids=n_ids, per_id=per_id)
    out = root / "index" / name
    Gallery.build(images, str(model), out=out, workers=0, progress=False).close()
    return out


def png_bytes(seed: int, size: int = 24) -> bytes:
    """A random-noise grey PNG (distinct for each seed)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (a decompression bomb's header)."""
    data = bytearray(png_bytes(0, 8))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread (``with LiveServer(app) as url:``)."""

    def __init__(self, app, port: int = 0):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
