"""Exact k-NN (siamsearch.metrics.knn) against brute force, and the boundary checks."""
from __future__ import annotations

import numpy as np
import pytest

from siamsearch.core.errors import SiamsearchError
from siamsearch.metrics.knn import as_vectors, exact_knn, knn_recall_at_k


def brute(q, x, k, ids=None):
    d2 = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    ids = np.arange(len(x)) if ids is None else ids
    return np.take_along_axis(d2, order, 1), ids[order]


@pytest.mark.parametrize("n,k", [(5000, 10), (32 * 7 + 5, 3), (40, 10), (6, 10), (3000, 1)])
def test_exact_knn_matches_brute_force(n, k):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((n, 24)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1)).astype(np.float32)
    q = rng.standard_normal((37, 24)).astype(np.float32)
    d2, ids = exact_knn(q, x, k, block_rows=1000)
    ref_d, ref_i = brute(q, x, min(k, n))
    assert np.array_equal(ids[:, :min(k, n)], ref_i)
    assert np.allclose(d2[:, :min(k, n)], ref_d, rtol=1e-4, atol=1e-3)
    if k > n:
        assert (ids[:, n:] == -1).all() and np.isinf(d2[:, n:]).all()


def test_exact_knn_streams_blocks_with_ids_and_exclusions():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2500, 16)).astype(np.float32)
    ids = rng.permutation(10_000)[:2500].astype(np.int64)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    drop = ids[::3]
    blocks = ((ids[s:s + 300], x[s:s + 300]) for s in range(0, 2500, 300))
    _, got = exact_knn(q, blocks, 7, exclude=drop)
    keep = ~np.isin(ids, drop)
    assert np.array_equal(got, brute(q, x[keep], 7, ids[keep])[1])


def test_boundary_checks():
    with pytest.raises(SiamsearchError, match="dimension"):
        as_vectors(np.zeros((2, 3)), 4)
    with pytest.raises(SiamsearchError, match="NaN"):
        as_vectors(np.array([[np.nan, 1.0]]))
    with pytest.raises(SiamsearchError, match="k must be"):
        exact_knn(np.zeros((1, 2)), np.zeros((3, 2)), 0)
    v = as_vectors(np.arange(4, dtype=np.float64))
    assert v.shape == (1, 4) and v.dtype == np.float32 and v.flags.c_contiguous


def test_knn_recall_is_set_overlap():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [8, 7, 6, 5]])
    assert knn_recall_at_k(found, truth) == pytest.approx((0.5 + 1.0) / 2)


def test_identical_vector_is_at_distance_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d2, ids = exact_knn(x[[5, 2999]], x, 3)
    assert ids[:, 0].tolist() == [5, 2999] and (d2[:, 0] == 0).all()


def test_many_neighbours_of_long_vectors_stay_memory_bounded():
    """MAP@R asks for k ~ R neighbours: the winners' differences [queries, k, d] must be batched too
    (unbatched, this case allocates 1,000 x 500 x 128 floats = 256 MB at once; a Fashion-MNIST
    benchmark with 1,024-d embeddings and R ~ 1,000 reached 23 GB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 128)).astype(np.float32)
    tracemalloc.start()
    try:
        d2, ids = exact_knn(x, x, 500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    full = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    expect = np.sort(full, axis=1)[:, :500]
    np.testing.assert_allclose(d2, expect, rtol=1e-4, atol=1e-3)
    assert (ids[:, 0] == np.arange(1000)).all()
