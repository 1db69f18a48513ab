"""K-fold accuracy (LFW protocol) against a case worked out by hand and a brute-force search."""
from __future__ import annotations

import numpy as np
import pytest

from siamsearch.core.errors import SiamsearchError
from siamsearch.metrics.folds import fold_accuracy, stratified_folds

# Three folds of 2 genuine + 2 impostor pairs. Worked out by hand (see test below):
#   fold 0: threshold from folds 1+2 = (0.3 + 0.4) / 2 = 0.35 -> 0.1 G ok, 0.5 G no, 0.9 I ok, 1.3 I ok: 3/4
#   fold 1: threshold from folds 0+2 = (0.5 + 0.7) / 2 = 0.6  -> 0.2 G ok, 0.65 G no, 0.4 I no, 1.0 I ok: 2/4
#   fold 2: threshold from folds 0+1 = (0.65 + 0.9) / 2 = 0.775 -> 0.3 G ok, 1.1 G no, 0.7 I no, 1.2 I ok: 2/4
D = np.array([0.1, 0.5, 0.9, 1.3, 0.2, 0.65, 0.4, 1.0, 0.3, 1.1, 0.7, 1.2])
S = np.array([1, 1, 0, 0] * 3, dtype=bool)
F = np.repeat([0, 1, 2], 4)


def test_fold_accuracy_hand_computed():
    r = fold_accuracy(D, S, F)
    assert r["folds"] == pytest.approx([0.75, 0.5, 0.5])
    assert r["thresholds"] == pytest.approx([0.35, 0.6, 0.775])
    assert r["mean"] == pytest.approx(7 / 12)
    # sample std over folds: sqrt(((1/6)^2 + 2 (1/12)^2) / 2) = sqrt(1/48); SE = sqrt(1/48) / sqrt(3) = 1/12
    assert r["std"] == pytest.approx(np.sqrt(1 / 48))
    assert r["standard_error"] == pytest.approx(1 / 12)
    assert r["n_folds"] == 3 and r["fold_sizes"] == [4, 4, 4]


def test_per_fold_distances_use_each_folds_row():
    rows = np.stack([D, D, D])
    assert fold_accuracy(rows, S, F)["folds"] == pytest.approx([0.75, 0.5, 0.5])
    perfect = np.where(S, 0.1, 1.5)  # the model of fold 1 separates everything
    rows[1] = perfect
    r = fold_accuracy(rows, S, F)
    assert r["folds"] == pytest.approx([0.75, 1.0, 0.5])


def _brute_force(d, s, f):
    """Independent: try every cut between sorted distances, keep the first best one on the training folds."""
    accs = []
    for k in np.unique(f):
        tr, te = f != k, f == k
        u = np.unique(d[tr])
        cuts = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2, u[-1] + 1.0]
        train_acc = [np.mean((d[tr] <= c) == s[tr]) for c in cuts]
        c = cuts[int(np.argmax(train_acc))]
        accs.append(np.mean((d[te] <= c) == s[te]))
    return np.array(accs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fold_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = rng.random(400) < 0.5
    d = np.where(s, rng.normal(0.8, 0.2, 400), rng.normal(1.1, 0.2, 400)).clip(0.01, 1.99)
    f = stratified_folds(s, 10, seed)
    r = fold_accuracy(d, s, f)
    expected = _brute_force(d, s, f)
    assert r["folds"] == pytest.approx(expected.tolist())
    assert r["standard_error"] == pytest.approx(np.std(expected, ddof=1) / np.sqrt(10))


def test_stratified_folds_are_seeded_and_balanced():
    s = np.array([True] * 30 + [False] * 50)
    a, b = stratified_folds(s, 10, seed=4), stratified_folds(s, 10, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, stratified_folds(s, 10, seed=5))
    assert (np.bincount(a[s]) == 3).all() and (np.bincount(a[~s]) == 5).all()


def test_fold_accuracy_errors():
    with pytest.raises(SiamsearchError, match="do not fit"):
        fold_accuracy(D[:5], S, F)
    with pytest.raises(SiamsearchError, match="0 .. K-1"):
        fold_accuracy(D, S, F + 1)
    with pytest.raises(SiamsearchError, match="one per fold"):
        fold_accuracy(np.stack([D, D]), S, F)
    with pytest.raises(SiamsearchError, match="all genuine"):
        fold_accuracy(D, np.r_[S[:4], np.ones(8, bool)], F)
    with pytest.raises(SiamsearchError, match="at least 10 genuine"):
        stratified_folds(S, 10)
