"""`evaluate`: how well does a model verify and identify on a labelled dataset?

One library function, :func:`evaluate`, behind ``siamsearch evaluate``. It embeds the
dataset once (in batches), then measures

* **verification** on seeded genuine/impostor pairs (:func:`siamsearch.data.sample_pairs`):
  ROC, AUC, EER, TAR at FAR, best and 10-fold CV accuracy, bootstrap 95% CIs, and the
  model's calibrated threshold (if it has one) checked on this data;
* **identification** leave-one-out over the whole set (precision@1, recall@k / CMC,
  R-precision, MAP@R) and an **open-set** split (identities held out of a gallery; DIR at
  FPIR);
* **one-shot** N-way accuracy when the data is in the Omniglot run format;
* with ``index``, identification on a gallery through exact search and through the
  gallery's deployed (possibly approximate) index, and the difference.

It writes ``metrics.json`` (every figure, its CI and the settings) and a self-contained
``report.html`` (plus ``report.md`` and ``plots/*.png``) into ``out``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .._version import __version__
from ..core.distance import DECISION_RULE, pair_distances
from ..core.errors import SiamsearchError
from ..metrics import identification as ident
from ..metrics import oneshot as oneshot_mod
from ..metrics import verification as verif
from ..core.choices import PROTOCOLS  # noqa: F401  (defined once there, torch-free)
from ..core.files import PathLike

#: FPIR targets for open-set identification.
DEFAULT_FPIRS = (1e-1, 1e-2)

#: Share of identities kept out of the open-set gallery (unknown probes).
OPEN_SET_UNKNOWN_FRACTION = 0.2

#: Example pairs / queries shown in each image grid of the report.
N_EXAMPLES = 8


def is_oneshot_runs(path: PathLike) -> bool:
    """Whether ``path`` holds Omniglot one-shot runs (``class_labels.txt`` in a zip or run folders)."""
    p = Path(path)
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            return any(n.split("/")[-1] == oneshot_mod.LABELS_FILE for n in z.namelist())
    if p.is_dir():
        return any(p.glob(oneshot_mod.LABELS_FILE)) or any(p.glob(f"*/{oneshot_mod.LABELS_FILE}")) or any(
            p.glob(f"*/*/{oneshot_mod.LABELS_FILE}")
        )
    return False


def _default_split(data: PathLike, format: str) -> Optional[str]:
    """Evaluate on the held-out split where the format has one (IDX: test; CelebA: test)."""
    from ..data import detect_format

    fmt = format if format != "auto" else detect_format(data)
    return "test" if fmt in ("idx", "mnist", "fashion-mnist", "celeba") else None


def embed_dataset(model, ds, batch_size: int = 128, progress: bool = False) -> tuple[np.ndarray, np.ndarray, list]:
    """Embed every readable image of ``ds`` in batches (:meth:`Embedder.embed_items`, the one embedding loop).

    Returns:
        ``(embeddings [M, d] float32, kept [M] int64 dataset indices, failures [(index, source, reason)])``.
    """
    embs, kept, failures = [], [], []
    for batch in model.embed_items(len(ds), ds.load, batch_size=batch_size, progress=progress):
        embs.append(batch.embeddings)
        kept.append(batch.positions)
        failures += [(int(i), ds.source(int(i)), reason) for i, reason in batch.failures]
    return (
        np.concatenate(embs) if embs else np.zeros((0, model.dim), np.float32),
        np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, np.int64),
        failures,
    )


def _seen_in_training(card: dict, names: Sequence[str]) -> int:
    """How many of these identity names the model's training card lists as training identities."""
    trained = card.get("train_identities") if isinstance(card, dict) else None
    return len(set(map(str, trained)) & set(map(str, names))) if trained else 0


def _subsample(n: int, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def _fmt(x: float) -> str:
    return f"{x:.4f}"


# --------------------------------------------------------------------------- verification
def _verification(emb, ids, n_pairs, seed, n_boot, calibration, warnings) -> tuple[dict, dict]:
    from ..data import sample_pairs

    a, b, is_same = sample_pairs(ids, n_pairs, seed=seed)
    dist = pair_distances(emb[a], emb[b]).astype(np.float64)
    m = verif.verification_metrics(dist, is_same, n_boot=n_boot, seed=seed)
    m["pairs"] = {"requested": int(n_pairs), "seed": int(seed), "sampler": "siamsearch.data.sample_pairs"}
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


def _hardest_pairs(curves: dict, kept: np.ndarray, ds) -> dict:
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


def _identification(emb, ids, seed, warnings, progress) -> tuple[dict, dict]:
    loo, per_query = ident.leave_one_out(emb, ids, progress=progress)
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
        open_m = ident.open_set_metrics(emb[probes], ids[probes], emb[gallery], ids[gallery], fpirs=DEFAULT_FPIRS)
        open_m.update({"gallery_size": int(gallery.size), "n_probes": int(probes.size), "closed_set": closed,
                       "unknown_identity_fraction": OPEN_SET_UNKNOWN_FRACTION, "seed": int(seed)})
        for row in open_m["dir_at_fpir"]:
            if not row["supported"]:
                warnings.append(f"DIR@FPIR={row['fpir']:g} is not supported by {open_m['n_unknown']:,} unknown "
                                f"probes (needs >= {verif.min_impostor_pairs(row['fpir']):,})")
        out["open_set"] = open_m
    return out, per_query


def _failed_identifications(per_query: dict, ids: np.ndarray, kept: np.ndarray, ds) -> list[dict]:
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


# --------------------------------------------------------------------------- deployed index
def gallery_search_fn(gallery) -> ident.SearchFn:
    """A :data:`~siamsearch.metrics.identification.SearchFn` through a gallery's deployed Faiss index,
    with ids mapped from the gallery's row ids to positions in ``gallery.embeddings``."""
    row_ids = np.asarray(gallery.ids, dtype=np.int64)
    emb = gallery.embeddings

    def exact_vectors(ids: np.ndarray) -> np.ndarray:  # for re-ranking lossy codes (PQ, SQ)
        return emb[np.searchsorted(row_ids, ids)]

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = gallery.index.search(queries, k, vectors=exact_vectors)
        pos = np.searchsorted(row_ids, ids)
        pos = np.where((ids >= 0) & (pos < row_ids.size), pos, -1)
        return dist, pos

    return search


def _two_pass(emb: np.ndarray, labels: np.ndarray, search: ident.SearchFn, progress: bool) -> dict:
    """Identification through ``search`` the way it is used: rank figures (P@1, recall@k, CMC) from
    searches of k = 21 neighbours, as a query would ask; MAP@R and R-precision need R neighbours per
    query and come from a second pass with k = R + 1 (an approximate index may search wider for it)."""
    ranks, _ = ident.leave_one_out(emb, labels, search=search, max_r=1, progress=progress)
    full, _ = ident.leave_one_out(emb, labels, search=search, progress=progress)
    full.update({k: ranks[k] for k in ("precision_at_1", "recall_at_k", "cmc")})
    full["k_for_rank_figures"] = len(ranks["cmc"]) + 1
    return full


def _index_comparison(index_path: PathLike, model, progress: bool, warnings: list) -> dict:
    """Leave-one-out identification on a gallery: exact search vs its deployed index."""
    from ..gallery import Gallery

    with Gallery.open(index_path, model=model) as g:
        labels = np.asarray(g.labels, dtype=np.int64)
        labelled = labels >= 0
        if labelled.sum() < 2:
            raise SiamsearchError(
                f"{index_path} has no identity labels, so identification cannot be scored; build it from "
                "identity folders with `siamsearch index build DIR --labels from-folder`"
            )
        if not labelled.all():
            warnings.append(f"{int((~labelled).sum())} unlabelled gallery images take part as distractors only")
            # each unlabelled image becomes its own singleton identity: never relevant, never scored
            labels = np.where(labelled, labels, -1 - np.arange(labels.size))
        emb = g.embeddings
        exact = _two_pass(emb, labels, ident.exact_search(emb), progress)
        deployed = _two_pass(emb, labels, gallery_search_fn(g), progress)
        index_meta = dict(g.index.meta)
    diff = {
        "precision_at_1": deployed["precision_at_1"] - exact["precision_at_1"],
        "map_at_r": deployed["map_at_r"] - exact["map_at_r"],
        "r_precision": deployed["r_precision"] - exact["r_precision"],
        "recall_at_k": {k: deployed["recall_at_k"][k] - exact["recall_at_k"][k] for k in exact["recall_at_k"]},
    }
    return {"index": os.fspath(index_path), "index_type": index_meta.get("factory"), "index_meta": index_meta,
            "n_items": int(labels.size), "exact": exact, "deployed": deployed, "difference": diff}


# --------------------------------------------------------------------------- entry point
def evaluate(
    model_path: PathLike,
    data: Optional[Union[PathLike, Sequence[PathLike]]] = None,
    format: str = "auto",
    protocol: str = "all",
    index: Optional[PathLike] = None,
    pairs: Union[int, PathLike] = 20000,
    seed: int = 0,
    out: Optional[PathLike] = None,
    split: Optional[str] = None,
    limit: Optional[int] = None,
    n_boot: int = 1000,
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = False,
    images: Optional[PathLike] = None,
    skip_missing: bool = False,
) -> dict:
    """Measure a model on a labelled dataset and (with ``out``) write metrics.json and report.html.

    Args:
        model_path: checkpoint written by ``siamsearch train``.
        data: dataset path (any format :func:`siamsearch.data.open_dataset` reads) or Omniglot
            one-shot runs (``all_runs.zip`` or its folder). May be ``None`` when ``index`` is given.
        format: dataset layout, or ``"auto"``.
        protocol: ``verification``, ``identification``, ``oneshot`` or ``all`` (everything the data
            allows: one-shot for run-format data, verification + identification otherwise).
        index: a gallery folder (``index/NAME``); identification is measured through exact search
            and through its deployed index.
        pairs: verification pairs to sample (half genuine, half impostor); or a pairs file (LFW
            ``pairs.txt`` format or CSV ``a,b,is_same``): then ``data`` is not needed and the
            standard pairs protocol runs instead
            (:func:`siamsearch.evaluation.pairs_protocol.evaluate_pairs`: 10-fold accuracy +/-
            standard error, AUC, EER, TAR@FAR on exactly those pairs).
        images: with a pairs file, the folder its image names are relative to.
        skip_missing: with a pairs file, skip pairs with missing images instead of failing.
        seed: seeds the pairs, subsampling, open-set split, CV folds and bootstrap.
        out: folder for ``metrics.json``, ``report.html``, ``report.md`` and ``plots/``; ``None``
            writes nothing.
        split: dataset split (default: ``test`` for IDX and CelebA, the whole set otherwise).
        limit: evaluate a seeded random subset of this many images.
        n_boot: bootstrap replicates for the confidence intervals (0 = none).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: tqdm bars on stderr.

    Returns:
        The metrics dict that ``metrics.json`` holds.
    """
    from ..core.embedder import load_model

    if isinstance(pairs, (str, os.PathLike)):  # a pairs file: the standard pairs protocol
        from .pairs_protocol import evaluate_pairs

        if data is not None or index is not None:
            raise SiamsearchError("a pairs file is evaluated on its own; drop --data / --index, or give --pairs N")
        return evaluate_pairs(model_path, pairs, images, seed=seed, n_boot=n_boot, skip_missing=skip_missing,
                              out=out, batch_size=batch_size, device=device, progress=progress)
    if images is not None:
        raise SiamsearchError("--images goes with a pairs file (--pairs pairs.txt); for a dataset use --data")
    if protocol not in PROTOCOLS:
        raise SiamsearchError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if data is None and index is None:
        raise SiamsearchError("give a dataset to evaluate on (--data) or a gallery (--index)")
    if pairs < 20:
        raise SiamsearchError(f"--pairs must be at least 20 (10-fold CV needs genuine and impostor pairs); got {pairs}")
    if limit is not None and limit < 2:
        raise SiamsearchError(f"--limit must be at least 2 images; got {limit}")
    model = load_model(model_path, device=device)
    warnings: list[str] = []
    metrics: dict = {
        "settings": {
            "model": os.fspath(model_path), "model_fingerprint": model.fingerprint,
            "data": None if data is None else (os.fspath(data) if isinstance(data, (str, os.PathLike))
                                               else [os.fspath(p) for p in data]),
            "format": format, "split": split, "protocol": protocol, "index": None if index is None else os.fspath(index),
            "pairs": int(pairs), "seed": int(seed), "limit": limit, "n_boot": int(n_boot),
            "decision_rule": DECISION_RULE, "siamsearch": __version__,
            "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "warnings": warnings,
    }
    report_data: dict = {"examples": {}}
    oneshot_data = data is not None and isinstance(data, (str, os.PathLike)) and is_oneshot_runs(data)
    if oneshot_data:
        if protocol not in ("oneshot", "all"):
            raise SiamsearchError(f"{data} holds one-shot runs; use --protocol oneshot (or all) with it")
        runs = oneshot_mod.load_oneshot_runs(data)
        om = oneshot_mod.oneshot_metrics(runs, lambda ims: model.embed(ims, batch_size=batch_size))
        metrics["oneshot"] = om
        metrics["settings"]["format"] = "oneshot-runs"
        if om["n_queries"] < 100:
            warnings.append(f"one-shot accuracy rests on {om['n_queries']} queries only")
        report_data["oneshot_runs"] = {r.name: r for r in runs}
    elif data is not None:
        if protocol == "oneshot":
            raise SiamsearchError(
                f"{data} is not in the one-shot run format (runNN/class_labels.txt, training/, test/); "
                "give all_runs.zip or choose --protocol verification|identification"
            )
        from ..data import open_dataset

        if split is None:
            split = _default_split(data, format)
            metrics["settings"]["split"] = split
        ds = open_dataset(data, format=format, split=split)
        ds = ds.subset(_subsample(len(ds), limit, seed), reindex=False) if limit else ds
        emb, kept, failures = embed_dataset(model, ds, batch_size=batch_size, progress=progress)
        ids = ds.identities[kept]
        metrics["dataset"] = {
            "format": ds.format, "n_images": int(len(ds)), "n_embedded": int(kept.size),
            "n_identities": int(np.unique(ids).size), "digest": ds.digest(),
            "unreadable": [{"source": s, "reason": r} for _, s, r in failures[:100]],
            "n_unreadable": len(failures),
        }
        if failures:
            warnings.append(f"{len(failures)} unreadable images were skipped (listed in metrics.json)")
        if np.unique(ids).size < 2:
            raise SiamsearchError(f"{data} has fewer than 2 identities; evaluation needs several")
        seen = _seen_in_training(model.card, [ds.identity_names[i] for i in np.unique(ids)])
        metrics["dataset"]["identities_seen_in_training"] = seen
        if seen:
            warnings.append(
                f"{seen} of {metrics['dataset']['n_identities']} identities here were also training identities of "
                "this model (other images of them); figures need not carry over to identities it has never seen"
            )
        report_data["dataset"] = ds
        if protocol in ("verification", "all"):
            m, curves = _verification(emb, ids, pairs, seed, n_boot, model.calibration, warnings)
            hardest = _hardest_pairs(curves, kept, ds)
            m["hardest"] = hardest
            metrics["verification"] = m
            report_data["verification"] = curves
        if protocol in ("identification", "all"):
            m, per_query = _identification(emb, ids, seed, warnings, progress)
            m["failed"] = _failed_identifications(per_query, ids, kept, ds)
            metrics["identification"] = m
    if index is not None and protocol in ("identification", "all"):
        metrics["index_comparison"] = _index_comparison(index, model, progress, warnings)
    elif index is not None:
        warnings.append("--index only affects identification; it was ignored for this protocol")
    if out is not None:
        from .report import write_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        metrics["settings"]["out"] = os.fspath(out)
        write_report(out, metrics, report_data)
        (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=False) + "\n")
    return _jsonable(metrics)


def _jsonable(x):
    """Turn numpy scalars/arrays and int dict keys into JSON-safe values (recursively)."""
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    """The short table printed by the CLI: ``(figure, value with CI)`` rows."""
    from .report import at_k

    rows: list[tuple[str, str]] = []

    def ci(d: dict) -> str:
        c = d.get("ci95")
        return f"  [{c[0]:.4f}, {c[1]:.4f}]" if c else ""

    v = metrics.get("verification")
    if v:
        rows.append(("pairs (genuine / impostor)", f"{v['n_genuine']:,} / {v['n_impostor']:,}"))
        rows.append(("ROC AUC", _fmt(v["auc"]["value"]) + ci(v["auc"])))
        rows.append(("EER", f"{_fmt(v['eer']['value'])}{ci(v['eer'])}  at d <= {v['eer']['threshold']:.4f}"))
        for r in v["tar_at_far"]:
            flag = "" if r["supported"] else "  (not supported: too few impostor pairs)"
            rows.append((f"TAR @ FAR={r['far']:g}", f"{_fmt(r['tar'])}{ci(r)}{flag}"))
        cv = v["cv_accuracy"]
        rows.append((f"{cv['n_folds']}-fold CV accuracy", f"{_fmt(cv['mean'])} +/- {cv['std']:.4f}"))
        if v.get("calibrated"):
            c = v["calibrated"]
            rows.append(("calibrated threshold", f"d <= {c['threshold']:.4f}: FAR {c['far']:.2e}, TAR {c['tar']:.4f}"))
    i = metrics.get("identification")
    if i:
        loo = i["leave_one_out"]
        rows.append(("precision@1", _fmt(loo["precision_at_1"])))
        rows.append(("recall@5 / recall@10", f"{_fmt(at_k(loo['recall_at_k'], 5))} / {_fmt(at_k(loo['recall_at_k'], 10))}"))
        rows.append(("R-precision", _fmt(loo["r_precision"])))
        rows.append(("MAP@R", _fmt(loo["map_at_r"])))
        if i.get("open_set"):
            for r in i["open_set"]["dir_at_fpir"]:
                rows.append((f"open-set DIR @ FPIR={r['fpir']:g}", _fmt(r["dir"]) + ("" if r["supported"] else "  (not supported)")))
    o = metrics.get("oneshot")
    if o:
        ways = "/".join(str(w) for w in o["ways"])
        rows.append((f"{ways}-way one-shot accuracy", f"{_fmt(o['accuracy'])} ({o['n_runs']} runs, std {o['per_run_std']:.3f})"))
    c = metrics.get("index_comparison")
    if c:
        rows.append(("index: recall@1 exact -> deployed",
                     f"{_fmt(at_k(c['exact']['recall_at_k'], 1))} -> {_fmt(at_k(c['deployed']['recall_at_k'], 1))}"))
        rows.append(("index: MAP@R exact -> deployed",
                     f"{_fmt(c['exact']['map_at_r'])} -> {_fmt(c['deployed']['map_at_r'])}"))
    return rows
