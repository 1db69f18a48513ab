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


def doc_json_example(page: Path, command: str) -> object:
    """The JSON a documentation page shows as the output of ``$ siamsearch COMMAND ... --json``.

    The example is the text of a code block from the line after the first ``$ `` line that starts
    with ``$ siamsearch {command}`` and holds ``--json``, up to the next ``$ `` line or the block's end.
    """
    import json

    lines = Path(page).read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines)
                 if ln.startswith(f"$ siamsearch {command}") and "--json" in ln.split())
    body = []
    for ln in lines[start + 1:]:
        if ln.startswith("$ ") or ln.startswith("```"):
            break
        body.append(ln)
    return json.loads("\n".join(body))


def json_shape(value: object) -> object:
    """The structure of a JSON value: dict keys (recursively), list element shapes, scalar kinds."""
    if isinstance(value, dict):
        return {k: json_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_shape(v) for v in value[:1]]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__
