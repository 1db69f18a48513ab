"""Verification metrics against scikit-learn and brute force, plus hand-made cases."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from siamsearch.core.errors import SiamsearchError
from siamsearch.metrics import verification as v


def _pairs(n=600, seed=0, gap=0.5, decimals=None):
    rng = np.random.default_rng(seed)
    s = rng.random(n) < 0.35
    d = np.where(s, rng.normal(0.7, 0.25, n), rng.normal(0.7 + gap, 0.25, n)).clip(0, 2)
    if decimals is not None:
        d = np.round(d, decimals)  # many ties
    return d, s


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_roc_curve_matches_sklearn(decimals):
    d, s = _pairs(decimals=decimals)
    roc = v.roc_curve(d, s)
    fpr, tpr, thr = sk_roc_curve(s, -d, drop_intermediate=False)
    np.testing.assert_allclose(roc.far, fpr)
    np.testing.assert_allclose(roc.tar, tpr)
    np.testing.assert_allclose(roc.thresholds[1:], -thr[1:])
    assert roc.thresholds[0] < d.min()
    assert roc.n_genuine == s.sum() and roc.n_impostor == (~s).sum()
    far, tar, thresholds = roc  # unpacks like sklearn's
    assert far is roc.far


@pytest.mark.parametrize("decimals", [None, 1])
def test_auc_matches_sklearn(decimals):
    for seed in range(3):
        d, s = _pairs(seed=seed, decimals=decimals)
        assert v.roc_auc(d, s) == pytest.approx(roc_auc_score(s, -d), abs=1e-12)


def test_perfect_separation():
    d = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.5])
    s = np.array([True, True, True, False, False, False])
    assert v.roc_auc(d, s) == 1.0
    e, thr = v.eer(d, s)
    assert e == 0.0 and 0.3 <= thr < 0.9
    acc, thr = v.best_accuracy(d, s)
    assert acc == 1.0 and thr == pytest.approx(0.6)
    tar, thr, achieved = v.tar_at_far(d, s, 1e-3)
    assert (tar, achieved) == (1.0, 0.0) and thr == pytest.approx(0.3)
    cv = v.cv_accuracy(np.tile(d, 10), np.tile(s, 10), n_folds=10, seed=0)
    assert cv["mean"] == 1.0 and cv["std"] == 0.0 and len(cv["folds"]) == 10


def test_identical_distributions():
    # every pair at the same distance: the ROC is the diagonal
    d = np.full(40, 0.8)
    s = np.arange(40) % 2 == 0
    assert v.roc_auc(d, s) == 0.5
    assert v.eer(d, s)[0] == pytest.approx(0.5)
    # large samples from one distribution
    rng = np.random.default_rng(1)
    d = rng.random(20000)
    s = rng.random(20000) < 0.5
    assert v.roc_auc(d, s) == pytest.approx(0.5, abs=0.02)
    assert v.eer(d, s)[0] == pytest.approx(0.5, abs=0.02)


def test_ties_between_classes_count_half():
    d = np.array([0.5, 0.5, 1.0, 1.0])
    s = np.array([True, False, True, False])
    assert v.roc_auc(d, s) == pytest.approx(roc_auc_score(s, -d))
    assert v.roc_auc(d, s) == 0.5


def test_eer_is_where_far_equals_frr():
    d, s = _pairs(n=20000, seed=3)
    e, thr = v.eer(d, s)
    far = np.mean(d[~s] <= thr)
    frr = np.mean(d[s] > thr)
    assert far == pytest.approx(e, abs=2e-3) and frr == pytest.approx(e, abs=2e-3)


@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("decimals", [None, 2])
def test_threshold_for_far_brute_force(target, decimals):
    d, s = _pairs(n=800, seed=5, decimals=decimals)
    thr, achieved, tar = v.threshold_for_far(d, s, target)
    cands = np.unique(d)
    far_of = np.array([np.mean(d[~s] <= t) for t in cands])
    ok = cands[far_of <= target]
    if ok.size:
        assert thr == ok.max()
    else:
        assert thr < d.min()
    assert achieved == np.mean(d[~s] <= thr) <= target
    assert tar == np.mean(d[s] <= thr)
    t2, thr2, a2 = v.tar_at_far(d, s, target)
    assert (t2, thr2, a2) == (tar, thr, achieved)


def test_best_accuracy_brute_force():
    d, s = _pairs(n=500, seed=7, decimals=2)
    acc, thr = v.best_accuracy(d, s)
    brute = max(v.accuracy_at(d, s, t) for t in np.r_[-1.0, np.unique(d)])
    assert acc == pytest.approx(brute)
    assert v.accuracy_at(d, s, thr) == pytest.approx(acc)


def test_cv_accuracy_is_seeded_and_stratified():
    d, s = _pairs(n=1000, seed=2)
    a = v.cv_accuracy(d, s, seed=4)
    b = v.cv_accuracy(d, s, seed=4)
    c = v.cv_accuracy(d, s, seed=5)
    assert a == b and a["folds"] != c["folds"]
    assert len(a["folds"]) == 10 and a["n_folds"] == 10
    assert abs(a["mean"] - v.best_accuracy(d, s)[0]) < 0.05
    with pytest.raises(SiamsearchError):
        v.cv_accuracy(d[:12], s[:12], n_folds=10)


def test_bootstrap_ci_contains_point_and_is_seeded():
    d, s = _pairs(n=400, seed=8)
    stat = lambda a, b: {"auc": v.roc_auc(a, b)}  # noqa: E731
    ci = v.bootstrap_ci(d, s, stat, n_boot=200, seed=1)
    assert ci == v.bootstrap_ci(d, s, stat, n_boot=200, seed=1)
    lo, hi = ci["auc"]
    assert lo <= v.roc_auc(d, s) <= hi and hi - lo < 0.2


def test_far_supported_rule_of_three():
    assert not v.far_supported(2000, 1e-4)
    assert v.far_supported(30000, 1e-4)
    assert v.min_impostor_pairs(1e-3) == 3000
    assert v.far_supported(3000, 1e-3) and not v.far_supported(2999, 1e-3)
    with pytest.raises(SiamsearchError):
        v.min_impostor_pairs(0.0)


def test_verification_metrics_report():
    d, s = _pairs(n=3000, seed=9)
    m = v.verification_metrics(d, s, n_boot=50, seed=0)
    assert m["n_pairs"] == 3000 and m["n_genuine"] + m["n_impostor"] == 3000
    assert m["auc"]["value"] == pytest.approx(roc_auc_score(s, -d))
    assert m["auc"]["ci95"][0] <= m["auc"]["value"] <= m["auc"]["ci95"][1]
    rows = {r["far"]: r for r in m["tar_at_far"]}
    assert rows[1e-1]["supported"] and not rows[1e-3]["supported"]
    assert all(r["achieved_far"] <= r["far"] for r in rows.values())
    assert m["decision_rule"] == "distance <= threshold -> same"


def test_det_curve():
    d, s = _pairs()
    far, frr, thr = v.det_curve(d, s)
    roc = v.roc_curve(d, s)
    np.testing.assert_allclose(frr, 1 - roc.tar)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(SiamsearchError, match="boolean"):
        v.roc_curve([0.1, 0.2], [1, 0])
    with pytest.raises(SiamsearchError, match="genuine and impostor"):
        v.roc_curve([0.1, 0.2], [True, True])
    with pytest.raises(SiamsearchError, match="length"):
        v.roc_curve([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(SiamsearchError, match="NaN"):
        v.roc_curve([np.nan, 0.2], [True, False])
