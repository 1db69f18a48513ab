"""Distinct verification pairs: how many a dataset allows, and all of them when affordable.

A dataset of ``N`` images in identities of sizes ``c_1..c_K`` allows
``G = sum c_k (c_k - 1) / 2`` distinct genuine and ``I = (N^2 - sum c_k^2) / 2``
distinct impostor pairs (unordered, no image with itself). :func:`distinct_pairs`
returns every one of them when ``G + I`` is within the budget, and otherwise a
seeded draw of distinct pairs (half genuine, half impostor, or all of a kind that
has fewer than its half). Repeats are never counted twice: a figure from ``n``
pairs is evidence from ``n`` different pairs. ``calibrate`` and ``evaluate`` both
draw their pairs here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..core.errors import SiamsearchError

#: Most pairs enumerated at once (all-pairs listing is only used below this).
_ENUMERATE_LIMIT = 20_000_000
#: Extra rounds of drawing when repeats leave a kind short of its share.
_MAX_ROUNDS = 8


def possible_pairs(identities: np.ndarray) -> tuple[int, int]:
    """``(G, I)``: the numbers of distinct genuine and impostor pairs among ``identities`` ``[N]``."""
    _, counts = np.unique(np.asarray(identities), return_counts=True)
    counts = counts.astype(np.int64)
    n = int(counts.sum())
    return int((counts * (counts - 1) // 2).sum()), int((n * n - int((counts * counts).sum())) // 2)


def _all_pairs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.triu_indices(ids.size, k=1)
    return a.astype(np.int64), b.astype(np.int64)


def _unique_first(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each unordered pair ``{a, b}``, in input order."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
    return np.sort(first)


def _enumerate_kind(ids: np.ndarray, genuine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct pair of one kind (used only when that kind is small)."""
    if not genuine:
        a, b = _all_pairs(ids)
        keep = ids[a] != ids[b]
        return a[keep], b[keep]
    parts_a, parts_b = [], []
    for ident in np.unique(ids):
        members = np.flatnonzero(ids == ident)
        i, j = np.triu_indices(members.size, k=1)
        parts_a.append(members[i])
        parts_b.append(members[j])
    return np.concatenate(parts_a).astype(np.int64), np.concatenate(parts_b).astype(np.int64)


def _draw_distinct(ids: np.ndarray, n: int, genuine: bool, seed: int, possible: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct pairs of one kind: a seeded choice among all of them when there are few (at most
    ``4 n``), else drawn with :func:`siamsearch.data.sample_pairs` and de-duplicated."""
    from ..data import sample_pairs

    if possible <= 4 * n and (genuine or ids.size * (ids.size - 1) // 2 <= _ENUMERATE_LIMIT):
        a, b = _enumerate_kind(ids, genuine)
        pick = np.sort(np.random.default_rng(seed).choice(a.size, size=min(n, a.size), replace=False))
        return a[pick], b[pick]
    a_all, b_all = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for round_ in range(_MAX_ROUNDS):
        want = max(16, 2 * (n - a_all.size))
        a, b, _ = sample_pairs(ids, want, seed=seed + 7919 * round_, positive_fraction=1.0 if genuine else 0.0)
        a_all, b_all = np.r_[a_all, a], np.r_[b_all, b]
        keep = _unique_first(a_all, b_all)
        a_all, b_all = a_all[keep], b_all[keep]
        if a_all.size >= n:
            break
    return a_all[:n], b_all[:n]


def distinct_pairs(identities: np.ndarray, n_pairs: int, seed: int,
                   max_all: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Distinct pairs of sample indices for verification.

    Args:
        identities: ``[N]`` identity of each sample.
        n_pairs: the budget ``P``: at most this many pairs.
        seed: seeds the draw (the enumeration of all pairs needs none).
        max_all: enumerate every pair when ``G + I <= max_all`` (default: ``n_pairs``).

    Returns:
        ``(a [P'] int64, b [P'] int64, is_same [P'] bool, info)``; ``info``: ``possible_genuine``,
        ``possible_impostor``, ``all_pairs`` (every distinct pair was used), ``requested``, ``sampler``.

    Raises:
        SiamsearchError: no genuine or no impostor pair is possible.
    """
    ids = np.asarray(identities).reshape(-1)
    g_max, i_max = possible_pairs(ids)
    if g_max == 0 or i_max == 0:
        raise SiamsearchError(f"these {ids.size} images allow {g_max} genuine and {i_max} impostor pairs; "
                              "verification needs both (2+ identities, one with 2+ images)")
    budget = int(n_pairs) if max_all is None else int(max_all)
    info = {"possible_genuine": g_max, "possible_impostor": i_max, "requested": int(n_pairs)}
    if g_max + i_max <= budget and g_max + i_max <= _ENUMERATE_LIMIT:
        a, b = _all_pairs(ids)
        info.update(all_pairs=True, sampler="every distinct pair")
    else:
        n_gen = min(g_max, int(n_pairs) // 2)
        n_imp = min(i_max, int(n_pairs) - n_gen)
        n_gen = min(g_max, int(n_pairs) - n_imp)  # give genuine pairs what impostors could not use
        ga, gb = _draw_distinct(ids, n_gen, True, seed, g_max)
        ia, ib = _draw_distinct(ids, n_imp, False, seed + 1, i_max)
        a, b = np.r_[ga, ia], np.r_[gb, ib]
        info.update(all_pairs=False, sampler="siamsearch.data.sample_pairs, repeats removed")
    is_same = ids[a] == ids[b]
    return a, b, is_same, info


def pairs_text(n_genuine: int, n_impostor: int, info: dict) -> str:
    """One line: how many distinct pairs were used of how many the data allows."""
    used = "all" if info.get("all_pairs") else "a seeded draw of"
    return (f"{n_genuine:,} genuine / {n_impostor:,} impostor pairs ({used} the {info['possible_genuine']:,} / "
            f"{info['possible_impostor']:,} distinct pairs these images allow)")
