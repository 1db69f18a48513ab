"""K-fold verification accuracy as LFW, CFP and AgeDB report it.

The pairs are split into ``K`` folds (given, e.g. the ten blocks of LFW's ``pairs.txt``, or
seeded and stratified by :func:`stratified_folds`). For each fold the threshold of best
accuracy is chosen on the pairs of the other ``K - 1`` folds
(:func:`siamsearch.metrics.verification.best_accuracy`) and the accuracy of the rule
``distance <= threshold`` -> same is measured on this fold. The figure is the mean over folds
with its standard error, as defined by the LFW benchmark (Huang et al. 2007, and the LFW results
page): ``SE = s / sqrt(K)`` with ``s`` the sample standard deviation of the fold accuracies
(``K - 1`` in the denominator).
"""
from __future__ import annotations

import numpy as np

from ..core.errors import SiamsearchError
from .verification import accuracy_at, best_accuracy


def stratified_folds(is_same, n_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Seeded fold labels with each fold holding its share of genuine and of impostor pairs.

    Each class is shuffled (seeded) and dealt round-robin into the folds, the same split
    :func:`siamsearch.metrics.verification.cv_accuracy` uses.

    Args:
        is_same: ``[P]`` bool, True for genuine pairs.
        n_folds: number of folds ``K >= 2``.
        seed: seeds the shuffle.

    Returns:
        ``[P]`` int64 fold labels in ``0 .. K-1``.
    """
    s = np.asarray(is_same, dtype=bool).reshape(-1)
    if n_folds < 2:
        raise SiamsearchError(f"k-fold accuracy needs at least 2 folds; got {n_folds}")
    if min(int(s.sum()), int((~s).sum())) < n_folds:
        raise SiamsearchError(
            f"{n_folds}-fold accuracy needs at least {n_folds} genuine and {n_folds} impostor pairs; got "
            f"{int(s.sum())} and {int((~s).sum())}: give more pairs or use fewer folds"
        )
    rng = np.random.default_rng(seed)
    fold = np.empty(s.size, dtype=np.int64)
    for members in (np.flatnonzero(s), np.flatnonzero(~s)):
        fold[rng.permutation(members)] = np.arange(members.size) % n_folds
    return fold


def fold_accuracy(distances, is_same, folds) -> dict:
    """K-fold accuracy: threshold chosen on the other folds, accuracy measured on each fold.

    Args:
        distances: ``[P]`` pair distances, or ``[K, P]``: row ``k`` holds the distances under the
            model used for fold ``k`` (LFW View 2 "unrestricted": a model trained per fold), from
            which fold ``k``'s threshold is chosen (on pairs outside fold ``k``) and its accuracy
            measured (on fold ``k``).
        is_same: ``[P]`` bool, True for genuine pairs.
        folds: ``[P]`` int fold labels ``0 .. K-1``, every fold non-empty.

    Returns:
        ``{"mean", "std", "standard_error", "folds": [accuracy per fold], "thresholds":
        [threshold per fold], "n_folds", "fold_sizes"}``; ``std`` is the sample standard
        deviation over folds (``K - 1`` denominator), ``standard_error = std / sqrt(K)``.

    Raises:
        SiamsearchError: shapes disagree, fewer than 2 folds, an empty fold, or a fold whose
            complement lacks genuine or impostor pairs (no threshold can be chosen there).
    """
    s = np.asarray(is_same)
    if s.dtype != np.bool_:
        raise SiamsearchError(f"is_same must be a boolean array; got {s.dtype}")
    s = s.reshape(-1)
    f = np.asarray(folds).reshape(-1)
    if not np.issubdtype(f.dtype, np.integer):
        raise SiamsearchError(f"fold labels must be integers; got {f.dtype}")
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.shape[1] != s.size or f.size != s.size:
        raise SiamsearchError(
            f"distances {tuple(np.shape(distances))}, is_same ({s.size}) and folds ({f.size}) do not fit: "
            "give [P] or [K, P] distances and [P] is_same and folds"
        )
    labels = np.unique(f)
    k = labels.size
    if k < 2 or labels[0] != 0 or labels[-1] != k - 1:
        raise SiamsearchError(f"fold labels must be 0 .. K-1 with K >= 2, every fold non-empty; got {labels.tolist()}")
    if d.shape[0] not in (1, k):
        raise SiamsearchError(f"distances have {d.shape[0]} rows; give one row, or one per fold ({k})")
    accs, thrs = [], []
    for fold in range(k):
        row = d[fold if d.shape[0] == k else 0]
        train, test = f != fold, f == fold
        if s[train].all() or not s[train].any():
            raise SiamsearchError(
                f"the pairs outside fold {fold} are all {'genuine' if s[train].all() else 'impostor'}; "
                "a threshold cannot be chosen from them"
            )
        _, thr = best_accuracy(row[train], s[train])
        accs.append(accuracy_at(row[test], s[test], thr))
        thrs.append(thr)
    acc = np.asarray(accs)
    std = float(np.std(acc, ddof=1))
    return {
        "mean": float(acc.mean()),
        "std": std,
        "standard_error": std / float(np.sqrt(k)),
        "folds": [float(a) for a in acc],
        "thresholds": [float(t) for t in thrs],
        "n_folds": int(k),
        "fold_sizes": [int(n) for n in np.bincount(f, minlength=k)],
    }
