"""The one score direction and the one pair-relation helper.

Embeddings are L2-normalised; the public score is the Euclidean distance in
[0, 2] (smaller = more alike). Which pairs are "same" is derived here from
identities and nowhere else; the relation is a boolean named ``is_same``.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

#: The decision rule everywhere (verification, open-set queries, calibration, evaluation), as stored in records.
DECISION_RULE = "distance <= threshold -> same"


def is_same_pairs(identities_a: Array, identities_b: Array) -> Array:
    """``is_same[i] = identities_a[i] == identities_b[i]`` (bool, shape ``[P]``)."""
    return identities_a == identities_b


def is_same_matrix(identities: Array) -> Array:
    """``is_same[i, j] = identities[i] == identities[j]`` (bool, ``[N, N]``; diagonal True)."""
    if isinstance(identities, torch.Tensor):
        return identities.unsqueeze(0) == identities.unsqueeze(1)
    identities = np.asarray(identities)
    return identities[None, :] == identities[:, None]


def squared_to_distance(d2: Array) -> Array:
    """Euclidean distance from a squared Euclidean distance (as Faiss L2 indexes return)."""
    if isinstance(d2, torch.Tensor):
        return torch.sqrt(torch.clamp(d2, min=0.0))
    return np.sqrt(np.clip(np.asarray(d2, dtype=np.float32), 0.0, None))


def pair_distances(a: Array, b: Array) -> Array:
    """Row-wise Euclidean distance between ``a [P, d]`` and ``b [P, d]`` -> ``[P]``."""
    if isinstance(a, torch.Tensor):
        return torch.linalg.vector_norm(a - b, dim=1)
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return np.linalg.norm(a - b, axis=1)


def distance_matrix(a: Array, b: Array | None = None) -> Array:
    """All Euclidean distances between rows of ``a [N, d]`` and ``b [M, d]`` -> ``[N, M]``.

    For torch inputs the result is differentiable (with a small epsilon under
    the square root so zero distances have a finite gradient).
    """
    b = a if b is None else b
    if isinstance(a, torch.Tensor):
        d2 = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1).unsqueeze(0)
        return torch.sqrt(torch.clamp(d2, min=0.0) + 1e-12)
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    d2 = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.clip(d2, 0.0, None))
