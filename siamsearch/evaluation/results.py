"""What ``evaluate`` hands back: JSON-safe metrics and the short table the CLI prints."""
from __future__ import annotations

import numpy as np


def _fmt(x: float) -> str:
    return f"{x:.4f}"


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
        pairs = v.get("pairs") or {}
        rows.append(("pairs (genuine / impostor)", pairs.get("text") or f"{v['n_genuine']:,} / {v['n_impostor']:,}"))
        if v.get("ci_method"):
            rows.append(("intervals", v["ci_method"]))
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
        lci = loo.get("ci95") or {}
        kci = lci.get("recall_at_k") or {}

        def ci_of(c) -> str:
            return f"  [{c[0]:.4f}, {c[1]:.4f}]" if c else ""

        rows.append(("precision@1", _fmt(loo["precision_at_1"]) + ci_of(lci.get("precision_at_1"))))
        rows.append(("recall@5 / recall@10", f"{_fmt(at_k(loo['recall_at_k'], 5))}{ci_of(at_k(kci, 5) if kci else None)}"
                     f" / {_fmt(at_k(loo['recall_at_k'], 10))}{ci_of(at_k(kci, 10) if kci else None)}"))
        rows.append(("R-precision", _fmt(loo["r_precision"]) + ci_of(lci.get("r_precision"))))
        rows.append(("MAP@R", _fmt(loo["map_at_r"]) + ci_of(lci.get("map_at_r"))))
        if i.get("open_set"):
            for r in i["open_set"]["dir_at_fpir"]:
                rows.append((f"open-set DIR @ FPIR={r['fpir']:g}", _fmt(r["dir"]) + ci_of(r.get("ci95"))
                             + ("" if r["supported"] else "  (not supported)")))
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
