"""Splits and samplers: disjoint, seeded, balanced, no self pairs."""
from __future__ import annotations

import time

import numpy as np
import pytest

from siamsearch.data import MPerClassBatchSampler, sample_pairs, split_by_identity
from siamsearch.core.errors import SiamsearchError


def _labels(seed=0, k=30, n=400):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n) * 7 + 3  # non-contiguous labels
    labels[:3] = [1000, 1001, 1002]  # single-sample identities
    return labels


# ----------------------------------------------------------------- splits
def test_split_by_identity_disjoint_seeded_covering():
    y = _labels()
    tr, va = split_by_identity(y, 0.2, seed=1)
    assert len(np.intersect1d(tr, va)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(y)))
    assert not set(y[tr]) & set(y[va])
    k = len(np.unique(y))
    assert len(np.unique(y[va])) == round(0.2 * k)
    _, counts = np.unique(y[va], return_counts=True)
    assert counts.min() >= 2  # validation identities can form genuine pairs
    tr2, va2 = split_by_identity(y, 0.2, seed=1)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    _, va3 = split_by_identity(y, 0.2, seed=2)
    assert not np.array_equal(va, va3)
    assert {1000, 1001, 1002} <= set(y[tr].tolist())


def test_split_errors_and_zero():
    tr, va = split_by_identity([0, 0, 1, 1], 0.0, seed=0)
    assert len(tr) == 4 and len(va) == 0
    with pytest.raises(SiamsearchError, match="validation"):
        split_by_identity([0, 0, 1, 1, 2, 2], 0.5, seed=0)
    with pytest.raises(SiamsearchError, match="val_fraction"):
        split_by_identity([0, 1], 1.0, seed=0)
    with pytest.raises(SiamsearchError):
        split_by_identity([0, 1, 2, 3, 4, 5], 0.5, seed=0)  # no identity with 2 images


# ----------------------------------------------------------------- pair sampler
def test_sample_pairs_balanced_no_self_consistent_seeded():
    y = _labels()
    a, b, same = sample_pairs(y, 2001, seed=3)
    assert a.dtype == np.int64 and b.dtype == np.int64 and same.dtype == bool
    assert len(a) == 2001
    assert same.sum() == round(2001 * 0.5)
    assert np.array_equal(same, y[a] == y[b])
    assert not np.any(a == b)
    # genuine pairs never use single-sample identities
    assert not np.isin(y[a][same], [1000, 1001, 1002]).any()
    a2, b2, s2 = sample_pairs(y, 2001, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2) and np.array_equal(same, s2)
    a3, _, _ = sample_pairs(y, 2001, seed=4)
    assert not np.array_equal(a, a3)
    # shuffled: positives are not all first
    assert 0.3 < same[:1000].mean() < 0.7


def test_sample_pairs_fraction_and_coverage():
    y = np.repeat(np.arange(5), 4)
    a, b, same = sample_pairs(y, 1000, seed=0, positive_fraction=0.25)
    assert same.sum() == 250
    # every same-identity ordered pair (i != j) reachable; impostor partners cover all other samples
    pos_pairs = set(zip(a[same].tolist(), b[same].tolist()))
    assert len(pos_pairs) > 40
    assert set(b[~same].tolist()) == set(range(20))
    empty = sample_pairs(y, 0, seed=0)
    assert all(len(x) == 0 for x in empty)


def test_sample_pairs_errors():
    with pytest.raises(SiamsearchError, match="2 or more"):
        sample_pairs([0, 1, 2], 10, seed=0)
    with pytest.raises(SiamsearchError, match="one identity"):
        sample_pairs([0, 0, 0], 10, seed=0)
    a, b, same = sample_pairs([0, 0, 0], 10, seed=0, positive_fraction=1.0)
    assert same.all()
    a, b, same = sample_pairs([0, 1, 2], 10, seed=0, positive_fraction=0.0)
    assert not same.any()


def test_sample_pairs_fast_on_100k():
    y = np.random.default_rng(0).integers(0, 10_000, size=100_000)
    t = time.perf_counter()
    a, b, same = sample_pairs(y, 200_000, seed=0)
    assert time.perf_counter() - t < 2.0
    assert np.array_equal(same, y[a] == y[b]) and not np.any(a == b)


def test_m_per_class_batches():
    y = np.concatenate([np.repeat(np.arange(10), 8), np.repeat([10, 11], 3), [12]])  # 12: single, dropped
    s = MPerClassBatchSampler(y, m=4, batch_size=16, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == (80 + 6) // 16
    for batch in batches:
        assert len(batch) == 16
        ids, counts = np.unique(y[batch], return_counts=True)
        assert len(ids) == 4 and (counts == 4).all()
        assert 12 not in ids
        for k in ids:  # distinct samples when the identity has >= m
            members = [i for i in batch if y[i] == k]
            if (y == k).sum() >= 4:
                assert len(set(members)) == 4
    again = list(MPerClassBatchSampler(y, m=4, batch_size=16, seed=0))
    assert again == batches
    s.set_epoch(1)
    assert list(s) != batches


def test_m_per_class_small_identities_and_identity_cycling():
    y = np.repeat(np.arange(20), [2] * 20)  # every identity smaller than m
    s = MPerClassBatchSampler(y, m=4, batch_size=8, seed=1)
    for e in range(2):
        s.set_epoch(e)
        visited = []
        for batch in s:
            ids, counts = np.unique(y[batch], return_counts=True)
            assert len(ids) == 2 and (counts == 4).all()
            assert set(batch) == set(np.flatnonzero(np.isin(y, ids)))  # all of a small identity's samples
            visited += ids.tolist()
        assert len(visited) == 10 and len(set(visited)) == 10  # no identity twice before all were used


def test_m_per_class_errors():
    with pytest.raises(SiamsearchError, match="multiple"):
        MPerClassBatchSampler(np.repeat(np.arange(5), 4), m=4, batch_size=10)
    with pytest.raises(SiamsearchError, match="identities"):
        MPerClassBatchSampler(np.repeat(np.arange(3), 4), m=2, batch_size=8)


def test_m_per_class_num_batches_override():
    y = np.repeat(np.arange(6), 4)
    s = MPerClassBatchSampler(y, m=2, batch_size=4, seed=0, num_batches=11)
    assert len(s) == 11 and len(list(s)) == 11
