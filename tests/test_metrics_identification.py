"""Identification metrics against brute-force references over a full distance matrix."""
import numpy as np
import pytest

from siamsearch.core.errors import SiamsearchError
from siamsearch.metrics import identification as ident


def _data(n=300, d=8, classes=12, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    x = centres[labels] + spread * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def _brute(q, qy, g, gy, exclude_self):
    """Reference: full distance matrix, argsort, PML's formulas written out per query."""
    dist = np.linalg.norm(q[:, None, :].astype(np.float64) - g[None, :, :], axis=2)
    out = {"p1": [], "first": [], "rp": [], "ap": []}
    for i in range(q.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        if exclude_self:
            order = order[order != i]
        rel = gy[order] == qy[i]
        r = int(rel.sum())
        if r == 0:
            continue
        out["p1"].append(rel[0])
        out["first"].append(int(np.argmax(rel)) + 1)
        out["rp"].append(rel[:r].sum() / r)
        ap = sum(rel[:j + 1].sum() / (j + 1) for j in range(r) if rel[j]) / r
        out["ap"].append(ap)
    first = np.array(out["first"])
    return {
        "precision_at_1": float(np.mean(out["p1"])),
        "recall": lambda k: float(np.mean(first <= k)),
        "r_precision": float(np.mean(out["rp"])),
        "map_at_r": float(np.mean(out["ap"])),
        "n": len(out["p1"]),
    }


@pytest.mark.parametrize("batch_size", [None, 7])
def test_leave_one_out_matches_brute_force(batch_size):
    x, y = _data()
    ref = _brute(x, y, x, y, exclude_self=True)
    m, per = ident.leave_one_out(x, y, ks=(1, 5, 10), batch_size=batch_size)
    assert m["n_queries"] == ref["n"]
    assert m["precision_at_1"] == pytest.approx(ref["precision_at_1"])
    for k in (1, 5, 10):
        assert m["recall_at_k"][k] == pytest.approx(ref["recall"](k))
    assert m["r_precision"] == pytest.approx(ref["r_precision"])
    assert m["map_at_r"] == pytest.approx(ref["map_at_r"])
    assert m["cmc"][0] == m["precision_at_1"] and len(m["cmc"]) == 20
    assert np.all(np.diff(m["cmc"]) >= 0)
    assert per["top1_id"].shape == (300,) and not np.any(per["top1_id"] == np.arange(300))
    assert ident.precision_at_1(x, y, batch_size=batch_size) == pytest.approx(ref["precision_at_1"])
    assert ident.map_at_r(x, y) == pytest.approx(ref["map_at_r"])
    assert ident.r_precision(x, y) == pytest.approx(ref["r_precision"])
    assert ident.cmc_recall_at_k(x, y, ks=(3,))[3] == pytest.approx(ref["recall"](3))


def test_gallery_probe_matches_brute_force():
    x, y = _data(n=400, seed=1)
    g, gy, q, qy = x[:250], y[:250], x[250:], y[250:]
    qy = qy.copy()
    qy[:5] = 99  # identities absent from the gallery are excluded from closed-set figures
    ref = _brute(q, qy, g, gy, exclude_self=False)
    m, _ = ident.gallery_probe(q, qy, g, gy, batch_size=11)
    assert m["n_excluded"] == 5 and m["n_queries"] == ref["n"] == 145
    assert m["precision_at_1"] == pytest.approx(ref["precision_at_1"])
    assert m["recall_at_k"][5] == pytest.approx(ref["recall"](5))
    assert m["map_at_r"] == pytest.approx(ref["map_at_r"])
    assert m["r_precision"] == pytest.approx(ref["r_precision"])


def test_hand_made_map_at_r():
    # probe at 0 (label a); gallery at 1 (b), 2 (a), 10 (a): R = 2, relevant at ranks 2 and 3
    g = np.array([[1.0, 0], [2.0, 0], [10.0, 0]], np.float32)
    m, per = ident.gallery_probe(np.zeros((1, 2), np.float32), ["a"], g, ["b", "a", "a"], ks=(1, 2))
    assert m["precision_at_1"] == 0.0
    assert m["recall_at_k"] == {1: 0.0, 2: 1.0}
    assert m["r_precision"] == 0.5
    assert m["map_at_r"] == 0.25  # (1/R) * P(2) = 1/2 * 1/2
    assert per["first_hit_rank"][0] == 2


def test_perfect_clusters_score_one():
    x, y = _data(n=200, classes=5, spread=0.01)
    m, _ = ident.leave_one_out(x, y)
    assert m["precision_at_1"] == m["map_at_r"] == m["r_precision"] == 1.0


def test_self_is_never_its_own_neighbour_even_with_duplicates():
    x = np.array([[0, 0], [0, 0], [3, 0], [3.5, 0]], np.float32)
    m, per = ident.leave_one_out(x, [7, 8, 7, 8], ks=(1,), cmc_ranks=3)
    assert m["precision_at_1"] == 0.0
    assert per["top1_id"][0] == 1 and per["top1_id"][1] == 0


def test_singletons_are_excluded():
    x, y = _data(n=50)
    y = y.copy()
    y[0] = 1000
    m, _ = ident.leave_one_out(x, y)
    assert m["n_excluded"] == 1 and m["n_queries"] == 49
    with pytest.raises(SiamsearchError, match="at least two"):
        ident.leave_one_out(x[:3], [1, 2, 3])


def test_custom_search_is_used():
    x, y = _data(n=120)
    exact = ident.exact_search(x)
    calls = []

    def search(q, k):
        calls.append(k)
        return exact(q, k)

    a, _ = ident.leave_one_out(x, y, search=search)
    b, _ = ident.leave_one_out(x, y)
    assert calls and a == b


def test_max_r_caps_the_search():
    x, y = _data(n=200, classes=2)
    calls = []
    exact = ident.exact_search(x)
    ident.leave_one_out(x, y, search=lambda q, k: (calls.append(k), exact(q, k))[1], max_r=30)
    assert max(calls) == 31


def test_dir_at_fpir_hand_made():
    known_d = np.array([0.1, 0.2, 0.3, 0.9])
    known_ok = np.array([True, False, True, True])
    unknown_d = np.array([0.25, 0.8, 1.0, 1.2])
    dr, thr, achieved = ident.dir_at_fpir(known_d, known_ok, unknown_d, 0.0)
    assert thr == 0.2 and achieved == 0.0 and dr == 0.25  # only probe 0 is accepted and right
    dr, thr, achieved = ident.dir_at_fpir(known_d, known_ok, unknown_d, 0.25)
    assert thr == 0.3 and achieved == 0.25 and dr == 0.5


def test_open_set_metrics():
    x, y = _data(n=300, classes=10, spread=0.3)
    gallery = y < 7
    probes = np.arange(300) % 3 == 0
    m = ident.open_set_metrics(x[probes], y[probes], x[~probes & gallery], y[~probes & gallery], fpirs=(0.1,))
    assert m["n_known"] + m["n_unknown"] == probes.sum()
    row = m["dir_at_fpir"][0]
    assert row["achieved_fpir"] <= 0.1 and 0.0 <= row["dir"] <= 1.0
    assert row["supported"] == (m["n_unknown"] >= 30)


def _naive_dir_ci(kd, kc, ks, ud, us, fpir, n_boot, seed):
    """Reference: rebuild each replicate's probe lists identity by identity (every probe of an identity
    once per draw, the draws taken from the same seeded generator), then :func:`dir_at_fpir` on them."""
    names = np.unique(np.r_[ks, us])
    rng = np.random.default_rng(seed)
    values = []
    while len(values) < n_boot:
        drawn = names[rng.integers(0, names.size, names.size)]
        k_idx = np.concatenate([np.flatnonzero(ks == s) for s in drawn])
        u_idx = np.concatenate([np.flatnonzero(us == s) for s in drawn])
        if k_idx.size == 0 or u_idx.size == 0:
            continue
        values.append(ident.dir_at_fpir(kd[k_idx], kc[k_idx], ud[u_idx], fpir)[0])
    return np.percentile(values, 2.5), np.percentile(values, 97.5)


def test_dir_at_fpir_ci_equals_a_naive_identity_bootstrap():
    rng = np.random.default_rng(1)
    ks, us = rng.integers(0, 15, 60), rng.integers(15, 22, 30)  # unknown identities are not in the gallery
    kd, ud = rng.uniform(0, 1, 60), rng.uniform(0.3, 1.3, 30)
    kc = rng.uniform(size=60) < 0.8
    ci = ident.dir_at_fpir_ci(kd, kc, ks, ud, us, (0.1, 0.3), n_boot=200, seed=5)
    for f in (0.1, 0.3):
        assert ci[f] == pytest.approx(_naive_dir_ci(kd, kc, ks, ud, us, f, 200, 5), abs=1e-12)
    point = ident.dir_at_fpir(kd, kc, ud, 0.3)[0]
    assert ci[0.3][0] < point < ci[0.3][1]


def test_dir_at_fpir_ci_narrows_with_more_identities():
    def width(n_ids):
        rng = np.random.default_rng(0)
        ks, us = rng.integers(0, n_ids, 20 * n_ids), rng.integers(n_ids, 2 * n_ids, 10 * n_ids)
        kd, ud = rng.uniform(0, 1, ks.size), rng.uniform(0.3, 1.3, us.size)
        lo, hi = ident.dir_at_fpir_ci(kd, rng.uniform(size=ks.size) < 0.8, ks, ud, us, (0.1,), n_boot=300)[0.1]
        return hi - lo

    assert width(200) < 0.5 * width(10)


def test_open_set_metrics_intervals():
    x, y = _data(n=300, classes=10, spread=1.0)
    gallery, probes = y < 7, np.arange(300) % 3 == 0
    args = (x[probes], y[probes], x[~probes & gallery], y[~probes & gallery])
    plain = ident.open_set_metrics(*args, fpirs=(0.1,))
    assert "ci_method" not in plain and "ci95" not in plain["dir_at_fpir"][0]
    m = ident.open_set_metrics(*args, fpirs=(0.1,), n_boot=100, seed=2)
    row = m["dir_at_fpir"][0]
    assert "identities" in m["ci_method"] and row["dir"] == plain["dir_at_fpir"][0]["dir"]
    lo, hi = row["ci95"]
    assert 0.0 <= lo <= hi <= 1.0 and lo < hi
    assert m == ident.open_set_metrics(*args, fpirs=(0.1,), n_boot=100, seed=2)  # seeded


def test_bad_inputs():
    with pytest.raises(SiamsearchError, match="2-D"):
        ident.leave_one_out(np.zeros(5), np.zeros(5))
    with pytest.raises(SiamsearchError, match="entries"):
        ident.leave_one_out(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(SiamsearchError, match="dimension"):
        ident.gallery_probe(np.zeros((2, 3)), [0, 1], np.zeros((2, 4)), [0, 1])
