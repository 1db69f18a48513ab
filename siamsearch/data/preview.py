"""``siamsearch data preview``: one PNG of the pairs (or batch-hard triplets) the trainer's samplers draw.

Images are shown after train or eval preprocessing, so the preview is what the
network sees.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..core.config import ModelConfig
from ..core.distance import distance_matrix, is_same_matrix
from ..core.errors import SiamsearchError, UnreadableImage
from ..core.files import PathLike
from ..core.preprocess import build_transform, denormalize, seed_augmentation
from .base import ImageDataset
from .inspect import DataArg, open_data, resolve_config
from .samplers import MPerClassBatchSampler, sample_pairs


# --------------------------------------------------------------------------- preview
def _to_display(x: torch.Tensor, config: ModelConfig) -> np.ndarray:
    img = denormalize(x, config).permute(1, 2, 0).numpy()
    return img[:, :, 0] if img.shape[2] == 1 else img


def _batch_hard(emb: torch.Tensor, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every sample of a batch: its hardest positive and negative (indices, distances)."""
    d = distance_matrix(emb)
    same = is_same_matrix(ids)
    eye = torch.eye(len(ids), dtype=torch.bool)
    pos = torch.where(same & ~eye, d, torch.full_like(d, -1.0)).max(1)
    neg = torch.where(~same, d, torch.full_like(d, float("inf"))).min(1)
    return pos.indices.numpy(), neg.indices.numpy(), pos.values.numpy(), neg.values.numpy()


def _pair_panels(ds: ImageDataset, prepared: Callable, n_pairs: int, seed: int, stage: str) -> tuple[list, str]:
    """``n_pairs`` readable pairs of the trainer's pair sampler as ``(images, caption, colour)`` panels."""
    names = ds.identity_names
    panels = []
    a, b, same = sample_pairs(ds.identities, max(2 * n_pairs, 8), seed=seed)
    for i, j, s in zip(a, b, same):
        xa, xb = prepared(i), prepared(j)
        if xa is None or xb is None:
            continue
        caption = f"{names[ds.identities[i]]}\n{names[ds.identities[j]]}\nis_same={bool(s)}"
        panels.append(([xa, xb], caption, "tab:green" if s else "tab:red"))
        if len(panels) == n_pairs:
            break
    title = (f"{len(panels)} seeded pairs (seed {seed}), {stage}\n"
             f"green frame: is_same=True, red frame: is_same=False")
    return panels, title


def _triplet_panels(ds: ImageDataset, prepared: Callable, n_pairs: int, m_per_class: int, seed: int,
                    model: Optional[PathLike], stage: str) -> tuple[list, str]:
    """Each identity's anchor with its batch-hard positive and negative in one M-per-class batch."""
    names = ds.identity_names
    per_batch = max(2, min(n_pairs, int((ds.images_per_identity() >= 2).sum())))
    sampler = MPerClassBatchSampler(ds.identities, m=m_per_class, batch_size=per_batch * m_per_class, seed=seed)
    batch = [i for i in next(iter(sampler))]
    xs = [prepared(i) for i in batch]
    keep = [k for k, x in enumerate(xs) if x is not None]
    batch = [batch[k] for k in keep]
    x = torch.stack([xs[k] for k in keep])
    ids = torch.as_tensor(ds.identities[batch])
    if model is not None:
        from ..core.embedder import load_model

        emb = torch.from_numpy(load_model(model, device="cpu").embed_tensor(x))
        by = f"model {Path(model).name}"
    else:
        emb = torch.nn.functional.normalize(x.flatten(1), dim=1)
        by = "raw pixels"
    hp, hn, dp, dn = _batch_hard(emb, ids)
    panels, seen = [], set()
    for k in range(len(batch)):
        ident = int(ids[k])
        if ident in seen or dp[k] < 0 or not np.isfinite(dn[k]):
            continue
        seen.add(ident)
        caption = (f"anchor {names[ident]}\npositive d={dp[k]:.3f} (is_same=True)\n"
                   f"negative {names[int(ids[hn[k]])]} d={dn[k]:.3f} (is_same=False)")
        panels.append(([x[k], x[hp[k]], x[hn[k]]], caption, "tab:blue" if dp[k] < dn[k] else "tab:orange"))
    title = (f"batch-hard triplets (anchor, hardest positive, hardest negative) from one "
             f"{m_per_class}-per-class batch (seed {seed}), distances by {by}, {stage}\n"
             f"blue frame: positive closer than negative, orange: the triplet is violated")
    return panels, title


def _draw_panels(panels: list, per_row: int, width: int, config: ModelConfig):
    """A matplotlib figure with one framed, captioned strip of images per panel."""
    import matplotlib.pyplot as plt

    rows = (len(panels) + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * width * 1.4, rows * 2.2 + 0.8), squeeze=False)
    cmap = "gray" if config.in_channels == 1 else None
    for ax in axes.flat:
        ax.axis("off")
    for ax, (imgs, caption, colour) in zip(axes.flat, panels):
        arrs = [_to_display(t, config) for t in imgs]
        gap = np.full((arrs[0].shape[0], max(1, arrs[0].shape[1] // 16)) + arrs[0].shape[2:], 0.5)
        joined = arrs[0]
        for arr in arrs[1:]:
            joined = np.concatenate([joined, gap, arr], axis=1)
        ax.imshow(joined, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(caption, fontsize=7, color=colour, linespacing=1.1)
    return fig


def preview_pairs(data: DataArg, out: PathLike = "preview.png", format: str = "auto", split: Optional[str] = None,
                  n_pairs: int = 16, augment: bool = True, seed: int = 0, model: Optional[PathLike] = None,
                  triplets: bool = False, m_per_class: int = 4) -> Path:
    """Write a PNG grid of what the trainer sees.

    Pairs (default): ``n_pairs`` seeded pairs from :func:`siamsearch.data.sample_pairs`
    (half genuine, half impostor, the trainer's pair sampler) over the whole
    dataset, each image after the train pipeline (with augmentation when
    ``augment``) or the eval pipeline (``augment=False``), captioned with both
    identity names and ``is_same`` (green frame: same, red: different).

    Triplets (``triplets=True``): one M-per-class batch (``m_per_class`` images
    of each of up to ``n_pairs`` identities, the trainer's batch sampler); for
    the first image of each identity, its batch-hard positive (farthest same
    identity) and negative (closest other identity). Distances are the model's
    embeddings when ``model`` is given, else the raw preprocessed pixels
    (L2-normalised), so the preview shows which images are hard before training.

    Args:
        data: dataset path(s) or an :class:`ImageDataset`.
        out: PNG file to write.
        model: checkpoint whose preprocessing (and, for triplets, embeddings) to use;
            default: the trainer's default config for this data.
        seed: seeds the samplers and the augmentation.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n_pairs < 1:
        raise SiamsearchError(f"the number of pairs must be at least 1, got {n_pairs}")
    ds = open_data(data, format, split)
    config, source = resolve_config(ds, model, seed)
    tf = build_transform(config, train=augment, augment=augment)
    seed_augmentation(seed)
    stage = "train preprocessing + augmentation" if augment else "eval preprocessing"

    def prepared(i: int) -> Optional[torch.Tensor]:
        try:
            return tf(ds.load(int(i)))
        except UnreadableImage:
            return None

    if triplets:
        panels, title = _triplet_panels(ds, prepared, n_pairs, m_per_class, seed, model, stage)
    else:
        panels, title = _pair_panels(ds, prepared, n_pairs, seed, stage)
    if not panels:
        raise SiamsearchError("no readable pair to show; run `siamsearch data check` on this dataset")
    fig = _draw_panels(panels, per_row=3 if triplets else 4, width=3 if triplets else 2, config=config)
    fig.suptitle(f"{title}\n{ds.format}: {len(ds)} images, config: {source}, "
                 f"{config.in_channels}x{config.input_size}x{config.input_size}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
