"""Helpers shared by the calibration, verification and query tests (tiny generated data only)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from conftest import make_identity_folders


def untrained_model(path: Path, train_identities: Optional[Sequence[str]] = None, seed: int = 0) -> Path:
    """An untrained smallcnn checkpoint (16 px, d=8) whose card lists ``train_identities``."""
    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(seed)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    card = {"note": "untrained test model"}
    if train_identities is not None:
        card["train_identities"] = list(train_identities)
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), card)
    return path


def named_identity_folders(root: Path, names: Sequence[str], per_id: int = 5, seed: int = 0) -> Path:
    """``root/<name>/img_j.png`` for each name (blob images from conftest's generator)."""
    make_identity_folders(root, n_ids=len(names), per_id=per_id, seed=seed)
    for k, name in enumerate(names):
        (root / f"id_{k}").rename(root / name)
    return root
