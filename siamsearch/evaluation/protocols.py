"""The measurements behind ``evaluate``: verification on distinct pairs and identification, with
intervals by the bootstrap over identities (:mod:`siamsearch.metrics.bootstrap`).

Called by :func:`siamsearch.evaluation.evaluate.evaluate`; each function takes embeddings and
identities (no model, no files) and returns the section of ``metrics.json`` it fills.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..core.distance import pair_distances
from ..core.errors import SiamsearchError
from ..metrics import identification as ident
from ..metrics import verification as verif
from ..metrics.bootstrap import MIN_SUBJECTS, SUBJECT_METHOD, subject_bootstrap_mean_ci
from .pairs_sampling import distinct_pairs, pairs_text

#: FPIR targets for open-set identification.
DEFAULT_FPIRS = (1e-1, 1e-2)

#: Share of identities kept out of the open-set gallery (unknown probes).
OPEN_SET_UNKNOWN_FRACTION = 0.2

#: Example pairs / queries shown in each image grid of the report.
N_EXAMPLES = 8


# --------------------------------------------------------------------------- verification
def verification(emb: np.ndarray, ids: np.ndarray, n_pairs: int, seed: int, n_boot: int,
                 calibration: Optional[dict], warnings: list) -> tuple[dict, dict]:
    """Verification on distinct pairs (:func:`~siamsearch.evaluation.pairs_sampling.distinct_pairs`: all of
    them when ``n_pairs`` affords it) with intervals by the bootstrap over identities.

    Args:
        emb: ``[M, d]`` embeddings; ids: ``[M]`` their identities.
        n_pairs, seed, n_boot: pair budget, seed, bootstrap replicates.
        calibration: the model's record (its threshold is checked on these pairs), or ``None``.
        warnings: list that notes are appended to.

    Returns:
        ``(metrics, curves)``: the ``verification`` section of metrics.json and the arrays the report draws.
    """
    a, b, is_same, info = distinct_pairs(ids, n_pairs, seed)
    dist = pair_distances(emb[a], emb[b]).astype(np.float64)
    m = verif.verification_metrics(dist, is_same, n_boot=n_boot, seed=seed, subjects=(ids[a], ids[b]))
    m["pairs"] = {**info, "seed": int(seed), "used_genuine": int(is_same.sum()),
                  "used_impostor": int((~is_same).sum()), "text": pairs_text(int(is_same.sum()),
                                                                              int((~is_same).sum()), info)}
    n_ids = int(np.unique(ids).size)
    if n_boot and n_ids < MIN_SUBJECTS:
        warnings.append(f"only {n_ids} identities: the intervals (bootstrap over identities) are rough; "
                        f"use {MIN_SUBJECTS} or more identities for intervals worth quoting")
    for row in m["tar_at_far"]:
        if not row["supported"]:
            warnings.append(
                f"TAR@FAR={row['far']:g} is not supported by {m['n_impostor']:,} impostor pairs "
                f"(needs >= {row['min_impostor_pairs']:,}); shown for completeness, do not rely on it "
                f"(use --pairs {2 * row['min_impostor_pairs']} or more)"
            )
    thr = None
    if calibration and calibration.get("threshold") is not None:
        thr = float(calibration["threshold"])
        accepted = dist <= thr
        m["calibrated"] = {
            "threshold": thr,
            "record": calibration,
            "far": float(np.mean(accepted[~is_same])),
            "tar": float(np.mean(accepted[is_same])),
            "accuracy": float(np.mean(accepted == is_same)),
        }
        target = calibration.get("target_far")
        if target is not None and m["calibrated"]["far"] > 3 * float(target) and verif.far_supported(
            m["n_impostor"], float(target)
        ):
            warnings.append(
                f"the calibrated threshold {thr:.4f} gives FAR {m['calibrated']['far']:.2e} on this data, "
                f"far above its target {float(target):g}; recalibrate on data like this"
            )
    else:
        m["calibrated"] = None
        warnings.append("the model has no calibrated threshold (run `siamsearch calibrate`); "
                        "plots mark the EER threshold instead")
    curves = {"distances": dist, "is_same": is_same, "pair_a": a, "pair_b": b,
              "threshold": thr if thr is not None else m["eer"]["threshold"],
              "threshold_kind": "calibrated" if thr is not None else "EER"}
    return m, curves


def hardest_pairs(curves: dict, kept: np.ndarray, ds) -> dict:
    """The closest impostor pairs and farthest genuine pairs (each image once), for the report's grids."""
    d, s = curves["distances"], curves["is_same"]
    a, b, thr = curves["pair_a"], curves["pair_b"], curves["threshold"]

    def rows(mask, order_desc: bool) -> list[dict]:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-d[idx] if order_desc else d[idx], kind="stable")]
        out, used = [], set()
        for k in idx:
            # show each image once, so one odd image does not fill the whole grid
            if int(a[k]) in used or int(b[k]) in used:
                continue
            used.update((int(a[k]), int(b[k])))
            ia, ib = int(kept[a[k]]), int(kept[b[k]])
            out.append({"a": ds.source(ia), "b": ds.source(ib), "index_a": ia, "index_b": ib,
                        "identity_a": ds.identity_names[ds.identities[ia]],
                        "identity_b": ds.identity_names[ds.identities[ib]],
                        "distance": float(d[k]), "accepted": bool(d[k] <= thr)})
            if len(out) == N_EXAMPLES:
                break
        return out

    return {"false_accepts": rows(~s, False), "false_rejects": rows(s, True), "threshold": float(thr),
            "threshold_kind": curves["threshold_kind"]}


# --------------------------------------------------------------------------- identification
def _open_set_split(ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gallery and probe indices: 20% of identities are unknown (probes only); each known identity
    puts half its images (at least one) in the gallery and the rest in the probes."""
    from ..data import split_by_identity

    known, unknown = split_by_identity(ids, OPEN_SET_UNKNOWN_FRACTION, seed=seed)
    rng = np.random.default_rng(seed)
    known = known[rng.permutation(known.size)]
    known = known[np.argsort(ids[known], kind="stable")]
    _, first, counts = np.unique(ids[known], return_index=True, return_counts=True)
    rank = np.arange(known.size) - np.repeat(first, counts)
    gallery = known[rank % 2 == 0]
    probes = np.r_[known[rank % 2 == 1], unknown]
    return np.sort(gallery), np.sort(probes)


def identification_cis(per_query: dict, ids: np.ndarray, ks: Sequence[int], n_boot: int, seed: int) -> dict:
    """95% intervals of the leave-one-out figures by the bootstrap over the queries' identities.

    Args:
        per_query: :meth:`RetrievalAccumulator.per_query` arrays (``first_hit_rank``, ``ap_at_r``,
            ``r_precision``, ``r``), in query order.
        ids: ``[Q]`` identity of each query.
        ks: the k of recall@k.

    Returns:
        ``{"precision_at_1": [lo, hi], "map_at_r": ..., "r_precision": ..., "recall_at_k": {k: [lo, hi]}}``.
    """
    ok = per_query["r"] >= 1
    first = per_query["first_hit_rank"][ok]
    values = {"precision_at_1": first == 1, "map_at_r": per_query["ap_at_r"][ok],
              "r_precision": per_query["r_precision"][ok]}
    values.update({f"recall@{k}": (first >= 1) & (first <= k) for k in ks})
    ci = subject_bootstrap_mean_ci(values, ids[ok], n_boot=n_boot, seed=seed)
    out = {k: list(ci[k]) for k in ("precision_at_1", "map_at_r", "r_precision") if k in ci}
    out["recall_at_k"] = {int(k): list(ci[f"recall@{k}"]) for k in ks if f"recall@{k}" in ci}
    return out


def identification(emb: np.ndarray, ids: np.ndarray, seed: int, warnings: list, progress: bool,
                   n_boot: int = 0) -> tuple[dict, dict]:
    """Leave-one-out identification and an open-set split (DIR@FPIR), with intervals over identities for
    both when ``n_boot``.

    Returns:
        ``(metrics, per_query)``: the ``identification`` section of metrics.json and the per-query arrays.
    """
    loo, per_query = ident.leave_one_out(emb, ids, progress=progress)
    if n_boot:
        ks = sorted(int(k) for k in loo["recall_at_k"])
        loo["ci95"] = identification_cis(per_query, ids, ks, n_boot, seed)
        loo["ci_method"] = SUBJECT_METHOD
    out = {"leave_one_out": loo}
    if loo["n_excluded"]:
        warnings.append(f"{loo['n_excluded']} images are the only one of their identity and were left out of "
                        "identification")
    if loo["n_queries"] < 100:
        warnings.append(f"identification figures rest on only {loo['n_queries']} queries; their spread is wide")
    try:
        gallery, probes = _open_set_split(ids, seed)
    except SiamsearchError as e:
        warnings.append(f"open-set identification skipped: {e}")
        out["open_set"] = None
    else:
        closed, _ = ident.gallery_probe(emb[probes], ids[probes], emb[gallery], ids[gallery])
        open_m = ident.open_set_metrics(emb[probes], ids[probes], emb[gallery], ids[gallery], fpirs=DEFAULT_FPIRS,
                                         n_boot=n_boot, seed=seed)
        open_m.update({"gallery_size": int(gallery.size), "n_probes": int(probes.size), "closed_set": closed,
                       "unknown_identity_fraction": OPEN_SET_UNKNOWN_FRACTION, "seed": int(seed)})
        for row in open_m["dir_at_fpir"]:
            if not row["supported"]:
                warnings.append(f"DIR@FPIR={row['fpir']:g} is not supported by {open_m['n_unknown']:,} unknown "
                                f"probes (needs >= {verif.min_impostor_pairs(row['fpir']):,})")
        out["open_set"] = open_m
    return out, per_query


def failed_identifications(per_query: dict, ids: np.ndarray, kept: np.ndarray, ds) -> list[dict]:
    """Queries whose nearest neighbour is another identity (each image once), for the report."""
    failed = np.flatnonzero((per_query["r"] >= 1) & (per_query["first_hit_rank"] != 1))
    failed = failed[np.argsort(per_query["top1_distance"][failed], kind="stable")]
    rows, used = [], set()
    for q in failed:
        match = int(per_query["top1_id"][q])
        if int(q) in used or match in used:  # each image once (a confusable pair fails both ways)
            continue
        used.update((int(q), match))
        if len(rows) == N_EXAMPLES:
            break
        iq, im = int(kept[q]), int(kept[match])
        rows.append({"query": ds.source(iq), "match": ds.source(im), "index_query": iq, "index_match": im,
                     "identity_query": ds.identity_names[ds.identities[iq]],
                     "identity_match": ds.identity_names[ds.identities[im]],
                     "distance": float(per_query["top1_distance"][q]),
                     "first_correct_rank": int(per_query["first_hit_rank"][q]) or None})
    return rows


