"""Shared fixtures: tiny generated data only; ../shared/data only for tests marked `shared`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"needs real data in {SHARED_DATA}")
    for item in items:
        if "shared" in item.keywords and not SHARED_DATA.exists():
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


def make_identity_folders(root: Path, n_ids: int = 4, per_id: int = 5, size: int = 24, seed: int = 0,
                          mode: str = "L") -> Path:
    """Write ``root/id_k/img_j.png``: each identity a distinct blob position, with noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_ids):
        d = root / f"id_{k}"
        d.mkdir(exist_ok=True)
        cy, cx = rng.integers(4, size - 4, size=2)
        for j in range(per_id):
            yy, xx = np.mgrid[:size, :size]
            img = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.0) + rng.normal(0, 10, (size, size))
            arr = np.clip(img, 0, 255).astype(np.uint8)
            im = Image.fromarray(arr, "L")
            if mode != "L":
                im = im.convert(mode)
            im.save(d / f"img_{j}.png")
    return root


@pytest.fixture
def identity_folders(tmp_path) -> Path:
    return make_identity_folders(tmp_path / "ids")


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """An untrained smallcnn checkpoint (input 16 px, d=8): fastest valid model for tests."""
    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(0)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), {"note": "untrained test model"})
    return path
