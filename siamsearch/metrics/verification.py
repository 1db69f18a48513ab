"""Verification metrics: is this pair the same identity?

Every function takes ``distances`` (float ``[P]``, Euclidean distances in
[0, 2], smaller = more alike) and ``is_same`` (bool ``[P]``, from
:func:`siamsearch.core.distance.is_same_pairs`).

**Decision rule.** A pair is declared *same* when ``distance <= threshold``.
Thresholds are distances. With ``G`` genuine (``is_same``) and ``I`` impostor
pairs:

* ``TAR(t) = #{genuine: d <= t} / G`` (true accept rate, 1 - FRR),
* ``FAR(t) = #{impostor: d <= t} / I`` (false accept rate),
* ``accuracy(t) = (#{genuine: d <= t} + #{impostor: d > t}) / (G + I)``.

The ROC curve is evaluated at every distinct observed distance (plus one
threshold just below the smallest distance, where nothing is accepted), so it
is exactly the curve scikit-learn's ``roc_curve(is_same, -distances,
drop_intermediate=False)`` draws. Tied distances move the curve diagonally,
which is how ties are counted in the AUC (half a win).

**Supported FAR.** A FAR of ``f`` is only measurable from ``I`` impostor pairs
when ``I >= 3 / f`` (the "rule of three": with zero false accepts among ``I``
pairs, the 95% upper bound on the FAR is about ``3 / I``).
:func:`far_supported` applies this rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..core.distance import DECISION_RULE
from ..core.errors import SiamsearchError

#: FAR targets reported by default.
DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)


def _check(distances, is_same) -> tuple[np.ndarray, np.ndarray]:
    """Convert and validate at the boundary: float64 ``[P]`` and bool ``[P]``."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(is_same)
    if s.dtype != np.bool_:
        raise SiamsearchError(
            f"is_same must be a boolean array (derive it with siamsearch.core.distance.is_same_pairs); got {s.dtype}"
        )
    s = s.reshape(-1)
    if d.shape != s.shape:
        raise SiamsearchError(f"distances ({d.shape[0]}) and is_same ({s.shape[0]}) differ in length")
    if not np.all(np.isfinite(d)):
        raise SiamsearchError("distances contain NaN or infinity; check the embeddings")
    n_gen = int(s.sum())
    if n_gen == 0 or n_gen == s.size:
        raise SiamsearchError(
            f"verification needs both genuine and impostor pairs; got {n_gen} genuine and {s.size - n_gen} impostor"
        )
    return d, s


@dataclass(frozen=True)
class Roc:
    """A ROC curve under the rule ``distance <= threshold`` -> same.

    Attributes:
        far: ``[T]`` false accept rate at each threshold, non-decreasing, starts at 0, ends at 1.
        tar: ``[T]`` true accept rate at each threshold, non-decreasing, starts at 0, ends at 1.
        thresholds: ``[T]`` distances, increasing. ``thresholds[0]`` lies just below the smallest
            distance (nothing accepted); the others are the distinct observed distances.
        n_genuine: number of genuine pairs.
        n_impostor: number of impostor pairs.
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    n_genuine: int
    n_impostor: int

    def __iter__(self):  # allows ``far, tar, thr = roc_curve(...)``
        return iter((self.far, self.tar, self.thresholds))


def roc_curve(distances, is_same) -> Roc:
    """ROC curve of a distance score (smaller distance = same).

    Args:
        distances: ``[P]`` pair distances.
        is_same: ``[P]`` bool, True for genuine pairs.

    Returns:
        :class:`Roc` (unpacks as ``far, tar, thresholds``), one point per distinct distance plus the
        origin. Identical to ``sklearn.metrics.roc_curve(is_same, -distances, drop_intermediate=False)``
        with the thresholds negated (and the origin's threshold finite).
    """
    d, s = _check(distances, is_same)
    order = np.argsort(d, kind="mergesort")
    d_sorted = d[order]
    s_sorted = s[order]
    # last index of each run of equal distances
    last = np.r_[np.flatnonzero(np.diff(d_sorted) != 0), d_sorted.size - 1]
    tp = np.cumsum(s_sorted)[last]
    fp = (last + 1) - tp
    n_gen = int(s.sum())
    n_imp = int(s.size - n_gen)
    below = np.nextafter(d_sorted[0], -np.inf)
    return Roc(
        far=np.r_[0.0, fp / n_imp],
        tar=np.r_[0.0, tp / n_gen],
        thresholds=np.r_[below, d_sorted[last]],
        n_genuine=n_gen,
        n_impostor=n_imp,
    )


def _auc(roc: Roc) -> float:
    return float(np.trapezoid(roc.tar, roc.far)) if hasattr(np, "trapezoid") else float(np.trapz(roc.tar, roc.far))


def roc_auc(distances, is_same) -> float:
    """Area under the ROC curve, in [0, 1] (1 = every genuine pair closer than every impostor pair).

    Equals ``sklearn.metrics.roc_auc_score(is_same, -distances)``; ties count half.
    """
    return _auc(roc_curve(distances, is_same))


def _eer(roc: Roc) -> tuple[float, float]:
    # f = FAR - FRR = far + tar - 1 rises from -1 to 1 along the curve; find its zero by linear interpolation.
    f = roc.far + roc.tar - 1.0
    i = int(np.argmax(f >= 0.0))
    if i == 0:
        return float(roc.far[0]), float(roc.thresholds[0])
    f0, f1 = f[i - 1], f[i]
    a = 0.0 if f1 == f0 else -f0 / (f1 - f0)
    eer = roc.far[i - 1] + a * (roc.far[i] - roc.far[i - 1])
    thr = roc.thresholds[i - 1] + a * (roc.thresholds[i] - roc.thresholds[i - 1])
    return float(eer), float(thr)


def eer(distances, is_same) -> tuple[float, float]:
    """Equal error rate: the FAR (= FRR) where the two error rates cross, and its threshold.

    The crossing is found by linear interpolation along the ROC polygon, so the EER is exact
    for the empirical curve; the threshold is interpolated between the two neighbouring
    observed distances.

    Returns:
        ``(eer, threshold)``: a rate in [0, 1] and a distance.
    """
    return _eer(roc_curve(distances, is_same))


def far_supported(n_impostor: int, far: float) -> bool:
    """Whether ``n_impostor`` impostor pairs can measure a FAR of ``far``: ``n_impostor >= 3 / far``."""
    return n_impostor >= min_impostor_pairs(far)


def min_impostor_pairs(far: float) -> int:
    """Impostor pairs needed to measure a FAR of ``far`` (rule of three): ``ceil(3 / far)``."""
    if not 0.0 < far <= 1.0:
        raise SiamsearchError(f"a FAR target must be in (0, 1]; got {far}")
    return int(math.ceil(3.0 / far - 1e-9))


def _point_for_far(roc: Roc, target_far: float) -> int:
    if not 0.0 <= target_far <= 1.0:
        raise SiamsearchError(f"a FAR target must be in [0, 1]; got {target_far}")
    # far is non-decreasing: the last index with far <= target (index 0 has far 0, so one exists)
    return int(np.searchsorted(roc.far, target_far + 1e-12, side="right") - 1)


def threshold_for_far(distances, is_same, target_far: float) -> tuple[float, float, float]:
    """The largest observed-distance threshold whose achieved FAR is at most ``target_far``.

    Rule: ``distance <= threshold`` -> same. The threshold is one of the observed distances
    (the conservative end: the next larger distance would raise the FAR above the target).
    When even the smallest distance belongs to too many impostors, the threshold lies just
    below it and nothing is accepted.

    Returns:
        ``(threshold, achieved_far, tar)``: a distance, the FAR it gives on these pairs
        (``<= target_far``) and the TAR it gives.
    """
    roc = roc_curve(distances, is_same)
    i = _point_for_far(roc, target_far)
    return float(roc.thresholds[i]), float(roc.far[i]), float(roc.tar[i])


def tar_at_far(distances, is_same, far: float) -> tuple[float, float, float]:
    """TAR at the threshold chosen by :func:`threshold_for_far` for FAR target ``far``.

    Returns:
        ``(tar, threshold, achieved_far)``.
    """
    thr, achieved, tar = threshold_for_far(distances, is_same, far)
    return tar, thr, achieved


def _best_accuracy(roc: Roc) -> tuple[float, float]:
    n = roc.n_genuine + roc.n_impostor
    acc = (roc.tar * roc.n_genuine + (1.0 - roc.far) * roc.n_impostor) / n
    i = int(np.argmax(acc))
    # put the threshold midway to the next observed distance: same accuracy here, more margin on new data
    thr = roc.thresholds[i] if i + 1 >= roc.thresholds.size else 0.5 * (roc.thresholds[i] + roc.thresholds[i + 1])
    return float(acc[i]), float(thr)


def best_accuracy(distances, is_same) -> tuple[float, float]:
    """Highest accuracy over all thresholds, and the threshold that reaches it.

    The threshold is placed midway between the best observed distance and the next one
    (which gives the same accuracy on these pairs).

    Returns:
        ``(accuracy, threshold)``.
    """
    return _best_accuracy(roc_curve(distances, is_same))


def accuracy_at(distances, is_same, threshold: float) -> float:
    """Accuracy of the rule ``distance <= threshold`` -> same."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(is_same, dtype=bool).reshape(-1)
    return float(np.mean((d <= threshold) == s))


def cv_accuracy(distances, is_same, n_folds: int = 10, seed: int = 0) -> dict:
    """K-fold cross-validated accuracy (the LFW protocol).

    Pairs are split into ``n_folds`` seeded folds, stratified (each fold gets its share of
    genuine and of impostor pairs); for each fold the threshold
    of best accuracy is chosen on the other folds and the accuracy measured on this one.

    Returns:
        ``{"mean", "std", "folds": [accuracy per fold], "thresholds": [threshold per fold],
        "n_folds", "seed"}``. ``std`` is the population standard deviation over folds.
    """
    d, s = _check(distances, is_same)
    if n_folds < 2 or min(int(s.sum()), int((~s).sum())) < n_folds:
        raise SiamsearchError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} genuine and {n_folds} impostor pairs; "
            "sample more pairs or use fewer folds"
        )
    # stratified folds: shuffle each class (seeded) and deal its pairs round-robin into the folds
    rng = np.random.default_rng(seed)
    fold = np.empty(s.size, dtype=np.int64)
    for members in (np.flatnonzero(s), np.flatnonzero(~s)):
        fold[rng.permutation(members)] = np.arange(members.size) % n_folds
    splits = ((np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds))
    accs, thrs = [], []
    for train, test in splits:
        _, thr = best_accuracy(d[train], s[train])
        accs.append(accuracy_at(d[test], s[test], thr))
        thrs.append(thr)
    return {
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "folds": [float(a) for a in accs],
        "thresholds": [float(t) for t in thrs],
        "n_folds": int(n_folds),
        "seed": int(seed),
    }


def verification_summary(
    distances, is_same, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, float]:
    """All point figures from one ROC computation (used directly and inside the bootstrap).

    Returns:
        flat dict: ``auc``, ``eer``, ``eer_threshold``, ``best_accuracy``, ``best_threshold``,
        and for each FAR ``f``: ``tar@far=f``, ``threshold@far=f``, ``achieved_far@far=f``.
    """
    roc = roc_curve(distances, is_same)
    e, e_thr = _eer(roc)
    acc, acc_thr = _best_accuracy(roc)
    out = {"auc": _auc(roc), "eer": e, "eer_threshold": e_thr, "best_accuracy": acc, "best_threshold": acc_thr}
    for f in fars:
        i = _point_for_far(roc, f)
        key = far_key(f)
        out[f"tar@{key}"] = float(roc.tar[i])
        out[f"threshold@{key}"] = float(roc.thresholds[i])
        out[f"achieved_far@{key}"] = float(roc.far[i])
    return out


def far_key(far: float) -> str:
    """Stable text key for a FAR target, e.g. ``far=1e-03``."""
    return f"far={far:.0e}"


def bootstrap_ci(
    distances,
    is_same,
    statistic: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over pairs.

    Genuine and impostor pairs are resampled separately with replacement (a stratified
    bootstrap), so every replicate has the same counts of each and the FAR denominators
    stay fixed.

    Args:
        statistic: ``f(distances, is_same) -> {name: value}``, e.g. :func:`verification_summary`.
        n_boot: number of replicates.
        seed: seed of the resampling.
        level: coverage of the interval (0.95 -> 2.5th and 97.5th percentiles).

    Returns:
        ``{name: (low, high)}``.
    """
    d, s = _check(distances, is_same)
    if n_boot < 1:
        raise SiamsearchError(f"n_boot must be at least 1; got {n_boot}")
    rng = np.random.default_rng(seed)
    gen = np.flatnonzero(s)
    imp = np.flatnonzero(~s)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.r_[rng.choice(gen, gen.size), rng.choice(imp, imp.size)]
        for k, v in statistic(d[idx], s[idx]).items():
            samples.setdefault(k, []).append(v)
    lo_q, hi_q = 50.0 * (1.0 - level), 100.0 - 50.0 * (1.0 - level)
    return {k: (float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q))) for k, v in samples.items()}


def verification_metrics(
    distances,
    is_same,
    fars: Sequence[float] = DEFAULT_FARS,
    n_folds: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    subjects: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> dict:
    """Every verification figure with its 95% bootstrap CI and whether the data support it.

    With ``subjects = (subj_a, subj_b)`` (``[P]`` identities of each pair's images) the intervals
    come from the bootstrap over identities (:func:`siamsearch.metrics.bootstrap.subject_bootstrap_ci`);
    without, from the bootstrap over pairs (:func:`bootstrap_ci`), which is too narrow when identities
    repeat across pairs. ``ci_method`` names the one used.

    Returns:
        ``{"n_pairs", "n_genuine", "n_impostor", "auc": {"value", "ci95"}, "eer": {"value",
        "threshold", "ci95"}, "best_accuracy": {"value", "threshold", "ci95"}, "cv_accuracy": {...},
        "tar_at_far": [{"far", "tar", "threshold", "achieved_far", "ci95", "supported",
        "min_impostor_pairs"}], "decision_rule": "distance <= threshold -> same", "n_boot", "seed"}``.
    """
    d, s = _check(distances, is_same)
    from . import bootstrap as _boot

    point = verification_summary(d, s, fars)
    stat = lambda a, b: verification_summary(a, b, fars)  # noqa: E731
    if not n_boot:
        ci, method = {}, None
    elif subjects is not None:
        ci = _boot.subject_bootstrap_ci(d, s, subjects[0], subjects[1], stat, n_boot=n_boot, seed=seed)
        method = _boot.SUBJECT_METHOD
    else:
        ci, method = bootstrap_ci(d, s, stat, n_boot=n_boot, seed=seed), _boot.PAIR_METHOD
    n_imp = int((~s).sum())

    def with_ci(key: str) -> list[float] | None:
        return list(ci[key]) if key in ci else None

    return {
        "n_pairs": int(s.size),
        "n_genuine": int(s.sum()),
        "n_impostor": n_imp,
        "decision_rule": DECISION_RULE,
        "auc": {"value": point["auc"], "ci95": with_ci("auc")},
        "eer": {"value": point["eer"], "threshold": point["eer_threshold"], "ci95": with_ci("eer")},
        "best_accuracy": {
            "value": point["best_accuracy"],
            "threshold": point["best_threshold"],
            "ci95": with_ci("best_accuracy"),
        },
        "cv_accuracy": cv_accuracy(d, s, n_folds=n_folds, seed=seed),
        "tar_at_far": [
            {
                "far": float(f),
                "tar": point[f"tar@{far_key(f)}"],
                "threshold": point[f"threshold@{far_key(f)}"],
                "achieved_far": point[f"achieved_far@{far_key(f)}"],
                "ci95": with_ci(f"tar@{far_key(f)}"),
                "supported": far_supported(n_imp, f),
                "min_impostor_pairs": min_impostor_pairs(f),
            }
            for f in fars
        ],
        "n_boot": int(n_boot),
        "ci_method": method,
        "seed": int(seed),
    }


def det_curve(distances, is_same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DET curve: ``(far, frr, thresholds)`` with ``frr = 1 - tar`` (same points as :func:`roc_curve`)."""
    roc = roc_curve(distances, is_same)
    return roc.far, 1.0 - roc.tar, roc.thresholds
