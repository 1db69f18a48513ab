"""Confidence intervals that respect who is in the data: the bootstrap over identities (subjects).

Pairs and queries drawn from one dataset are not independent: every pair of
one person shares that person's quirks, and every image takes part in many
pairs. Resampling *pairs* (or queries) with the images held fixed then treats
thousands of correlated pairs as thousands of independent facts, and the
intervals come out several times too narrow. Biometric evaluations resample
the *subjects* instead (ISO/IEC 19795-1; Bolle, Ratha & Pankanti's "subsets
bootstrap"): draw ``K`` identities with replacement from the ``K`` present,
keep every pair between drawn identities (a pair counts once per way it can be
drawn: ``m_a`` times for a genuine pair of an identity drawn ``m_a`` times,
``m_a * m_b`` times for an impostor pair), recompute the figure, and take
percentiles. :func:`subject_bootstrap_ci` does this for pair figures (AUC,
EER, TAR@FAR), :func:`subject_bootstrap_mean_ci` for per-query averages
(precision@1, recall@k, MAP@R), :func:`subject_bootstrap_weighted_ci` for any
figure of weighted samples (open-set DIR@FPIR, whose threshold is re-chosen
on each replicate's unknown probes).

Every interval is stored with its method (:data:`SUBJECT_METHOD`,
:data:`PAIR_METHOD`, :data:`CLOPPER_PEARSON_METHOD`) so a reader knows what it
claims. Clopper-Pearson binomial intervals are only exact when the trials are
independent (:func:`pairs_independent`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np

from ..core.errors import SiamsearchError

SUBJECT_METHOD = ("percentile bootstrap over identities (subjects drawn with replacement, all their pairs or "
                  "queries kept; ISO/IEC 19795-1), 95%")
PAIR_METHOD = ("percentile bootstrap over pairs (genuine and impostor resampled separately, images fixed), 95%; "
               "treats pairs as independent, so it is too narrow when identities repeat across pairs")
CLOPPER_PEARSON_METHOD = "Clopper-Pearson exact binomial interval (95%); valid because every pair is independent"

#: Fewer identities than this give intervals that cannot be trusted (said in the output).
MIN_SUBJECTS = 10


def _percentiles(samples: Mapping[str, list], level: float) -> dict[str, tuple[float, float]]:
    lo_q, hi_q = 50.0 * (1.0 - level), 100.0 - 50.0 * (1.0 - level)
    return {k: (float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q))) for k, v in samples.items() if v}


def _subject_codes(subj_a: np.ndarray, subj_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    names, inv = np.unique(np.r_[np.asarray(subj_a), np.asarray(subj_b)], return_inverse=True)
    n = np.asarray(subj_a).size
    return inv[:n], inv[n:], int(names.size)


def _identity_codes(subjects) -> tuple[np.ndarray, int]:
    """``(code [N] int, K)``: each sample's identity as ``0..K-1`` (sorted order of the identities)."""
    _, code = np.unique(np.asarray(subjects), return_inverse=True)
    code = code.reshape(-1)
    return code, int(code.max()) + 1 if code.size else 0


def subject_bootstrap_ci(
    distances,
    is_same,
    subj_a,
    subj_b,
    statistic: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of pair figures by resampling identities.

    Args:
        distances: ``[P]`` pair distances.
        is_same: ``[P]`` bool, genuine pairs (``subj_a == subj_b`` for them).
        subj_a, subj_b: ``[P]`` identity of each pair's two images (any comparable values).
        statistic: ``f(distances, is_same) -> {name: value}``, e.g. ``verification_summary``.
        n_boot: replicates; one that lacks genuine or impostor pairs is drawn again (up to ``2 n_boot`` draws).
        seed: seeds the resampling.
        level: coverage (0.95 -> 2.5th and 97.5th percentiles).

    Returns:
        ``{name: (low, high)}``.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(is_same, dtype=bool).reshape(-1)
    a, b, k = _subject_codes(subj_a, subj_b)
    if not (d.size == s.size == a.size == b.size):
        raise SiamsearchError("distances, is_same and the two subject arrays must have one entry per pair")
    if n_boot < 1:
        raise SiamsearchError(f"n_boot must be at least 1; got {n_boot}")

    def figures(m: np.ndarray) -> Optional[Mapping[str, float]]:
        w = np.where(s, m[a], m[a] * m[b])
        if not (w[s].any() and w[~s].any()):
            return None
        return statistic(np.repeat(d, w), np.repeat(s, w))

    return _percentiles(_replicates(k, figures, n_boot, seed), level)


def _replicates(k: int, figures: Callable[[np.ndarray], Optional[Mapping[str, float]]], n_boot: int,
                seed: int) -> dict[str, list]:
    """``{name: [value per replicate]}``: each replicate draws ``k`` identities with replacement and passes
    ``figures`` the draw count of each identity ``[k]``; a replicate it answers ``None`` for (figure not
    defined) is drawn again, up to ``2 n_boot`` draws in all."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list] = {}
    done = 0
    for _ in range(2 * n_boot):
        out = figures(np.bincount(rng.integers(0, k, k), minlength=k))
        if out is None:
            continue
        for key, v in out.items():
            samples.setdefault(key, []).append(v)
        done += 1
        if done == n_boot:
            break
    return samples


def subject_bootstrap_mean_ci(
    values: Mapping[str, np.ndarray],
    subjects,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of per-query averages by resampling the queries' identities.

    Args:
        values: ``{name: [Q] per-query value}`` (e.g. 1.0 / 0.0 for a correct / wrong rank-1 answer).
        subjects: ``[Q]`` identity of each query.
        n_boot, seed, level: as in :func:`subject_bootstrap_ci`.

    Returns:
        ``{name: (low, high)}`` of the mean over queries.
    """
    code, k = _identity_codes(subjects)
    if k == 0:
        return {}
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, k, k), minlength=k) for _ in range(int(n_boot))])  # [B, K]
    n_per = np.bincount(code, minlength=k).astype(np.float64)
    denom = counts @ n_per
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        sums = np.bincount(code, weights=v, minlength=k)
        reps = (counts @ sums) / np.where(denom > 0, denom, 1.0)
        out[name] = reps[denom > 0].tolist()
    return _percentiles(out, level)


def subject_bootstrap_weighted_ci(
    subjects,
    statistic: Callable[[np.ndarray], "Mapping[str, float] | None"],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of any figure of samples that each belong to one identity.

    Each replicate draws the ``K`` identities with replacement and gives every sample the number of times
    its identity was drawn as its weight (``0`` = left out); ``statistic`` recomputes the figure from those
    weights.

    Args:
        subjects: ``[N]`` identity of each sample (any comparable values).
        statistic: ``f(weights [N] int64) -> {name: value}``, or ``None`` for a replicate the figure is not
            defined on (drawn again, up to ``2 n_boot`` draws in all).
        n_boot, seed, level: as in :func:`subject_bootstrap_ci`.

    Returns:
        ``{name: (low, high)}``; empty when no replicate was defined.
    """
    if n_boot < 1:
        raise SiamsearchError(f"n_boot must be at least 1; got {n_boot}")
    code, k = _identity_codes(subjects)
    if k == 0:
        return {}
    return _percentiles(_replicates(k, lambda m: statistic(m[code]), n_boot, seed), level)


def pairs_independent(a, b, subj_a, subj_b) -> bool:
    """Whether no image and no identity takes part in more than one pair (then pair counts are
    independent trials and a binomial interval holds)."""
    images = np.r_[np.asarray(a), np.asarray(b)]
    if np.unique(images).size != images.size:
        return False
    sa, sb = np.asarray(subj_a), np.asarray(subj_b)
    per_pair = [set((x, y)) for x, y in zip(sa.tolist(), sb.tolist())]
    seen: set = set()
    for p in per_pair:
        if p & seen:
            return False
        seen |= p
    return True
