"""Issue 16 items 2 and 3: distinct pairs (no repeat counted twice, all of them when affordable) and
intervals by the bootstrap over identities, whose coverage is checked by simulation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import make_identity_folders
from siamsearch.evaluation.evaluate import evaluate, summary_rows
from siamsearch.evaluation.pairs_sampling import distinct_pairs, possible_pairs
from siamsearch.metrics.bootstrap import (SUBJECT_METHOD, pairs_independent, subject_bootstrap_ci,
                                          subject_bootstrap_mean_ci)
from siamsearch.metrics.verification import bootstrap_ci, roc_auc


def _brute_counts(ids):
    pairs = list(itertools.combinations(range(len(ids)), 2))
    g = sum(ids[i] == ids[j] for i, j in pairs)
    return g, len(pairs) - g


@pytest.mark.parametrize("counts", [[10] * 10, [1, 2, 3, 7], [2, 2], [50, 1, 1]])
def test_possible_pairs_match_brute_force(counts):
    ids = np.repeat(np.arange(len(counts)), counts)
    assert possible_pairs(ids) == _brute_counts(ids)


def test_distinct_pairs_all_when_affordable_and_never_repeated():
    ids = np.repeat(np.arange(10), 10)  # the 10 people x 10 images: 450 / 4,500 distinct pairs
    a, b, s, info = distinct_pairs(ids, 20000, seed=0)
    assert info["all_pairs"] and (int(s.sum()), int((~s).sum())) == (450, 4500)
    key = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    assert len(key) == a.size and np.all(a != b)
    # over budget: a seeded draw of distinct pairs, balanced, reproducible
    ids = np.repeat(np.arange(10), 20)  # 1,900 genuine / 18,000 impostor pairs
    a, b, s, info = distinct_pairs(ids, 1000, seed=3)
    assert not info["all_pairs"] and a.size == 1000 and int(s.sum()) == 500
    assert len(set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))) == 1000
    a2, b2, _, _ = distinct_pairs(ids, 1000, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    assert np.array_equal(s, ids[a] == ids[b])
    # a kind with fewer pairs than its half gives the rest of the budget to the other kind
    few = np.repeat(np.arange(40), 2)  # 40 genuine pairs only
    a, b, s, _ = distinct_pairs(few, 1000, seed=0)
    assert int(s.sum()) == 40 and a.size == 1000


def test_evaluate_counts_distinct_pairs(tiny_model, tmp_path):
    folders = make_identity_folders(tmp_path / "ids", n_ids=6, per_id=6, size=16)
    m = evaluate(tiny_model, folders, pairs=20000, seed=0, n_boot=20, protocol="verification")
    v = m["verification"]
    assert (v["n_genuine"], v["n_impostor"]) == (90, 540)  # not 10,000 / 10,000 repeats
    assert v["pairs"]["possible_genuine"] == 90 and v["pairs"]["all_pairs"]
    far3 = next(r for r in v["tar_at_far"] if r["far"] == 1e-3)
    assert not far3["supported"]  # 540 distinct impostor pairs cannot measure 1e-3
    rows = dict(summary_rows(m))
    assert "90 genuine / 540 impostor pairs (all the 90 / 540 distinct pairs" in rows["pairs (genuine / impostor)"]
    assert v["ci_method"] == SUBJECT_METHOD and rows["intervals"] == SUBJECT_METHOD


def test_identification_intervals_over_identities(tiny_model, tmp_path):
    folders = make_identity_folders(tmp_path / "ids", n_ids=6, per_id=4, size=16)
    m = evaluate(tiny_model, folders, pairs=200, seed=0, n_boot=50, protocol="identification")
    loo = m["identification"]["leave_one_out"]
    assert loo["ci_method"] == SUBJECT_METHOD
    for key in ("precision_at_1", "map_at_r", "r_precision"):
        lo, hi = loo["ci95"][key]
        assert 0 <= lo <= hi <= 1
    assert set(loo["ci95"]["recall_at_k"]) == set(loo["recall_at_k"])


def test_subject_mean_ci_matches_a_direct_bootstrap():
    rng = np.random.default_rng(0)
    subj = np.repeat(np.arange(8), 5)
    v = rng.random(subj.size)
    ci = subject_bootstrap_mean_ci({"x": v}, subj, n_boot=400, seed=1)["x"]
    # independent: a loop drawing identities and averaging their queries
    r2 = np.random.default_rng(1)
    reps = []
    for _ in range(400):
        m = np.bincount(r2.integers(0, 8, 8), minlength=8)
        w = m[subj]
        reps.append((v * w).sum() / w.sum())
    assert ci == pytest.approx((np.percentile(reps, 2.5), np.percentile(reps, 97.5)))


def test_pairs_independent():
    assert pairs_independent([0, 2], [1, 3], ["a", "c"], ["b", "d"])
    assert not pairs_independent([0, 0], [1, 3], ["a", "a"], ["b", "d"])  # image 0 twice
    assert not pairs_independent([0, 2], [1, 3], ["a", "a"], ["b", "d"])  # identity a twice


def _clustered_scores(rng, n_subjects, genuine_per=6, impostor_per=2, spread=0.15, noise=0.08):
    """Distances whose level depends on the identity (each identity has its own offset), as real faces do."""
    u, v = rng.normal(0, spread, n_subjects), rng.normal(0, spread, n_subjects)
    gs = np.repeat(np.arange(n_subjects), genuine_per)
    gd = 0.8 + u[gs] + rng.normal(0, noise, gs.size)
    ia, ib = np.triu_indices(n_subjects, 1)
    ia, ib = np.repeat(ia, impostor_per), np.repeat(ib, impostor_per)
    imp = 1.0 + (v[ia] + v[ib]) / 2 + rng.normal(0, noise, ia.size)
    return (np.r_[gd, imp], np.r_[np.ones(gd.size, bool), np.zeros(imp.size, bool)], np.r_[gs, ia], np.r_[gs, ib])


def test_subject_bootstrap_covers_and_pair_bootstrap_does_not():
    """Coverage by simulation: the population AUC (from 200,000 pairs of independent identities) against
    the 95% intervals of 60 small evaluations of 20 identities each."""
    rng = np.random.default_rng(0)
    n = 200_000
    gen = 0.8 + rng.normal(0, 0.15, n) + rng.normal(0, 0.08, n)
    imp = 1.0 + rng.normal(0, 0.15, (n, 2)).mean(1) + rng.normal(0, 0.08, n)
    truth = roc_auc(np.r_[gen, imp], np.r_[np.ones(n, bool), np.zeros(n, bool)])

    def stat(d, s):
        return {"auc": roc_auc(d, s)}

    hits_subject = hits_pair = 0
    reps = 60
    for r in range(reps):
        d, s, sa, sb = _clustered_scores(np.random.default_rng(100 + r), 20)
        lo, hi = subject_bootstrap_ci(d, s, sa, sb, stat, n_boot=150, seed=r)["auc"]
        hits_subject += lo <= truth <= hi
        lo, hi = bootstrap_ci(d, s, stat, n_boot=150, seed=r)["auc"]
        hits_pair += lo <= truth <= hi
    assert hits_subject / reps >= 0.85  # ~0.95 expected
    assert hits_pair / reps <= 0.70  # pairs of one identity are not independent: far too narrow
