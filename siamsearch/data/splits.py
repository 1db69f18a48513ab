"""Class-disjoint, seeded train / validation splits."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from ..core.errors import SiamsearchError


def split_by_identity(identities: Union[Sequence[int], np.ndarray], val_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split samples so that no identity is in both parts.

    ``round(K * val_fraction)`` identities (at least 2) go to validation, drawn
    with ``seed`` from the identities that have at least 2 samples (only those
    give genuine validation pairs); every other identity, including all
    single-sample ones, stays in training.

    Args:
        identities: ``[N]`` identity label of each sample (any ints).
        val_fraction: share of identities held out, in ``[0, 1)``; ``0`` gives an
            empty validation part.
        seed: same seed and labels, same split.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 sample indices, disjoint, covering ``0..N-1``.

    Raises:
        SiamsearchError: when the fraction is out of range or there are too few
            identities for both parts (validation needs 2 identities with 2+
            samples, training 2 identities).
    """
    ids = np.asarray(identities).reshape(-1)
    n = len(ids)
    if not (0.0 <= float(val_fraction) < 1.0):
        raise SiamsearchError(f"val_fraction must be in [0, 1), got {val_fraction}")
    all_idx = np.arange(n, dtype=np.int64)
    if val_fraction == 0:
        return all_idx, np.zeros(0, dtype=np.int64)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    k = len(uniq)
    n_val = max(2, int(round(k * float(val_fraction))))
    eligible = np.flatnonzero(counts >= 2)
    if len(eligible) < n_val or k - n_val < 2:
        raise SiamsearchError(
            f"cannot hold out {n_val} of {k} identities for validation ({len(eligible)} have 2+ images): "
            f"validation needs at least 2 identities with 2 or more images and training at least 2 "
            f"identities. Add identities, lower --val-fraction, or use 0 to skip validation.")
    rng = np.random.default_rng(seed)
    val_ids = rng.choice(eligible, size=n_val, replace=False)
    is_val = np.zeros(k, dtype=bool)
    is_val[val_ids] = True
    in_val = is_val[inverse.reshape(-1)]
    return all_idx[~in_val], all_idx[in_val]
