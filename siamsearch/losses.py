"""Metric-learning losses over L2-normalised embeddings and Euclidean distance.

Pair relations come from identities through :mod:`siamsearch.distance`; the
only pair flag is the boolean ``is_same``.

- :class:`ContrastiveLoss` — pairs: ``L = is_same·d² + (1−is_same)·max(0, margin−d)²``.
- :class:`BatchHardTripletLoss` — batches with identities: hardest positive and
  hardest negative per anchor.
- :class:`ArcFaceLoss` — additive angular margin softmax over identity ids; its
  class-weight matrix is saved as ``head_state`` but not needed to embed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distance import distance_matrix, is_same_matrix, pair_distances
from .errors import SiamsearchError

LOSSES = ("contrastive", "triplet", "arcface")


def _check_batch(embeddings: torch.Tensor, identities: torch.Tensor) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [batch_size, dim], got {tuple(embeddings.shape)}")
    if identities.shape != (embeddings.shape[0],):
        raise ValueError(f"identities must be [batch_size]={embeddings.shape[0]}, got {tuple(identities.shape)}")


class ContrastiveLoss(nn.Module):
    """Contrastive loss on pairs (Hadsell et al. 2006), averaged over pairs.

    ``forward(emb_a [P, d], emb_b [P, d], is_same [P] bool) -> scalar``.
    Same-identity pairs are pulled together (``d²``); different-identity pairs
    are pushed until at least ``margin`` apart (``max(0, margin − d)²``).
    """

    pairwise = True

    def __init__(self, margin: float = 1.0):
        super().__init__()
        if not 0 < margin <= 2:
            raise SiamsearchError(f"contrastive margin must be in (0, 2] (a distance between unit vectors), got {margin}")
        self.margin = margin

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, is_same: torch.Tensor) -> torch.Tensor:
        if emb_a.shape != emb_b.shape or emb_a.ndim != 2:
            raise ValueError(f"emb_a and emb_b must both be [P, d]; got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}")
        if is_same.dtype != torch.bool or is_same.shape != (emb_a.shape[0],):
            raise ValueError("is_same must be a bool tensor of shape [P]")
        d = pair_distances(emb_a, emb_b)
        same = is_same.float()
        return (same * d.pow(2) + (1.0 - same) * F.relu(self.margin - d).pow(2)).mean()


class BatchHardTripletLoss(nn.Module):
    """Triplet margin loss with batch-hard mining (Hermans et al. 2017).

    ``forward(embeddings [B, d], identities [B] int) -> scalar``: for every
    anchor that has a positive and a negative in the batch,
    ``max(0, max_pos d(a, p) − min_neg d(a, n) + margin)``, averaged.
    """

    pairwise = False

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        _check_batch(embeddings, identities)
        d = distance_matrix(embeddings)
        same = is_same_matrix(identities)
        eye = torch.eye(len(identities), dtype=torch.bool, device=d.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        hardest_pos = torch.where(pos_mask, d, torch.zeros_like(d)).max(dim=1).values
        hardest_neg = torch.where(neg_mask, d, torch.full_like(d, float("inf"))).min(dim=1).values
        valid = pos_mask.any(1) & neg_mask.any(1)
        if not valid.any():
            return embeddings.sum() * 0.0  # no triplet in this batch: zero loss, graph kept
        return F.relu(hardest_pos[valid] - hardest_neg[valid] + self.margin).mean()


class ArcFaceLoss(nn.Module):
    """Additive angular margin softmax (Deng et al. 2019).

    Args:
        num_classes: number of training identities (ids ``0..num_classes-1``).
        embedding_dim: ``d``.
        scale: logit scale ``s``.
        margin: angular margin ``m`` in radians.

    ``forward(embeddings [B, d] (unit rows), identities [B] int) -> scalar``:
    cross-entropy on ``s·cos(θ_j)`` with ``cos(θ_y + m)`` for the true class.
    """

    pairwise = False

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 30.0, margin: float = 0.3):
        super().__init__()
        if num_classes < 2:
            raise SiamsearchError("ArcFace needs at least 2 training identities")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        # beyond theta = pi - m, cos(theta + m) stops decreasing; use a linear penalty there instead
        self.threshold = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin

    def forward(self, embeddings: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        _check_batch(embeddings, identities)
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos * cos)
        cos_margin = cos * self.cos_m - sin * self.sin_m
        cos_margin = torch.where(cos > self.threshold, cos_margin, cos - self.mm)
        onehot = F.one_hot(identities.long(), cos.shape[1]).bool()
        logits = torch.where(onehot, cos_margin, cos) * self.scale
        return F.cross_entropy(logits, identities.long())


def make_loss(name: str, num_classes: int, embedding_dim: int, margin: float | None = None) -> nn.Module:
    """Build a loss by name (one of :data:`LOSSES`); ``margin=None`` keeps each loss's default."""
    kw = {} if margin is None else {"margin": margin}
    if name == "contrastive":
        return ContrastiveLoss(**kw)
    if name == "triplet":
        return BatchHardTripletLoss(**kw)
    if name == "arcface":
        return ArcFaceLoss(num_classes, embedding_dim, **kw)
    raise SiamsearchError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
