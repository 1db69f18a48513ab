"""The evaluation report: ``report.html`` (self-contained, plots embedded as base64 PNG),
``report.md`` (same figures, linking ``plots/*.png``) and the PNG files themselves.

Plots (matplotlib, Agg backend): ROC with a log-scale FAR axis, DET curve on normal-deviate
axes, genuine vs impostor distance histograms with the decision threshold marked, CMC
curves, per-run one-shot accuracy, and image grids of the hardest false accepts, false
rejects, failed identifications and one-shot mistakes. Figures the data cannot support are
flagged in a warnings box at the top.
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.distance import DECISION_RULE
from ..core.images import as_pil

GENUINE_COLOUR = "#1f77b4"
IMPOSTOR_COLOUR = "#d62728"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def at_k(d: dict, k: int):
    """``d[k]`` for dicts whose int keys may have become strings in JSON."""
    return d[k] if k in d else d[str(k)]


# --------------------------------------------------------------------------- verification plots
def plot_roc(distances: np.ndarray, is_same: np.ndarray, v: dict, threshold: Optional[float], kind: str) -> bytes:
    """TAR against FAR (log axis) with the TAR@FAR points and the decision threshold."""
    from ..metrics.verification import roc_curve

    plt = _plt()
    roc = roc_curve(distances, is_same)
    lo = 1.0 / roc.n_impostor
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(np.maximum(roc.far, lo / 2), roc.tar, color=GENUINE_COLOUR, lw=1.8,
            label=f"ROC (AUC {v['auc']['value']:.4f})")
    for r in v["tar_at_far"]:
        ok = r["supported"]
        ax.plot(max(r["achieved_far"], lo / 2), r["tar"], "o" if ok else "x", color="black" if ok else "grey", ms=6)
        ax.annotate(f"FAR {r['far']:g}" + ("" if ok else " (unsupported)"), (max(r["achieved_far"], lo / 2), r["tar"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=7, color="black" if ok else "grey")
    if threshold is not None:
        far = float(np.mean(distances[~is_same] <= threshold))
        tar = float(np.mean(distances[is_same] <= threshold))
        ax.plot(max(far, lo / 2), tar, "D", color="#2ca02c", ms=7, label=f"{kind} threshold d <= {threshold:.3f}")
    ax.axvspan(lo / 2, 3.0 / roc.n_impostor, color="grey", alpha=0.15,
               label=f"FAR below 3/{roc.n_impostor:,} impostors: not measurable")
    ax.set_xscale("log")
    ax.set_xlim(lo / 2, 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FAR, log scale)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(f"ROC (rule: {DECISION_RULE})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def plot_det(distances: np.ndarray, is_same: np.ndarray, v: dict) -> bytes:
    """FRR against FAR on normal-deviate (probit) axes, the usual DET presentation."""
    from statistics import NormalDist

    from ..metrics.verification import det_curve

    plt = _plt()
    norm = _Probit(NormalDist())
    far, frr, _ = det_curve(distances, is_same)
    n_imp, n_gen = int((~is_same).sum()), int(is_same.sum())
    eps_x, eps_y = 0.5 / n_imp, 0.5 / n_gen
    fx = norm.ppf(np.clip(far, eps_x, 1 - eps_x))
    fy = norm.ppf(np.clip(frr, eps_y, 1 - eps_y))
    fig, ax = plt.subplots(figsize=(5.2, 4.5))
    ax.plot(fx, fy, color=IMPOSTOR_COLOUR, lw=1.8, label="DET")
    e = v["eer"]["value"]
    ax.plot(norm.ppf(np.clip(e, eps_x, 1 - eps_x)), norm.ppf(np.clip(e, eps_y, 1 - eps_y)), "o", color="black",
            label=f"EER {e:.4f}")
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95])
    ticks_x = ticks[(ticks >= eps_x) & (ticks <= 1 - eps_x)]
    ticks_y = ticks[(ticks >= eps_y) & (ticks <= 1 - eps_y)]
    ax.set_xticks(norm.ppf(ticks_x), [f"{t:g}" for t in ticks_x], fontsize=8)
    ax.set_yticks(norm.ppf(ticks_y), [f"{t:g}" for t in ticks_y], fontsize=8)
    ax.set_xlim(norm.ppf(eps_x), norm.ppf(0.95))
    ax.set_ylim(norm.ppf(eps_y), norm.ppf(0.95))
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("false reject rate (FRR)")
    ax.set_title("DET curve (normal-deviate axes)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


class _Probit:
    """``ppf`` (inverse normal CDF) over arrays, without importing scipy."""

    def __init__(self, dist):
        self._ppf = np.vectorize(dist.inv_cdf, otypes=[float])

    def ppf(self, p):
        return self._ppf(np.asarray(p, dtype=float))


def plot_distances(distances: np.ndarray, is_same: np.ndarray, threshold: Optional[float], kind: str,
                   eer_threshold: Optional[float] = None) -> bytes:
    """Histograms (densities) of genuine and impostor distances with the threshold marked."""
    plt = _plt()
    # zoom on the observed range (a collapsed embedding puts everything near 0)
    hi = float(distances.max()) * 1.05 if distances.max() > 0 else 2.0
    bins = np.linspace(0.0, hi, 81)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.hist(distances[is_same], bins=bins, density=True, alpha=0.55, color=GENUINE_COLOUR,
            label=f"genuine (same identity), n={int(is_same.sum()):,}")
    ax.hist(distances[~is_same], bins=bins, density=True, alpha=0.55, color=IMPOSTOR_COLOUR,
            label=f"impostor (different), n={int((~is_same).sum()):,}")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1.6, label=f"{kind} threshold {threshold:.3f}")
    if eer_threshold is not None and kind != "EER":
        ax.axvline(eer_threshold, color="grey", lw=1.2, ls="--", label=f"EER threshold {eer_threshold:.3f}")
    ax.set_xlim(0.0, hi)
    ax.set_xlabel("Euclidean distance between embeddings (0 = identical, 2 = opposite)")
    ax.set_ylabel("density")
    ax.set_title("Genuine vs impostor distances")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- identification plots
def plot_cmc(curves: dict[str, list[float]]) -> bytes:
    """CMC: recall@k (share of queries with a correct match in the top k) for k = 1..K."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, cmc), style in zip(curves.items(), ["-o", "--s", ":^", "-.v"]):
        ks = np.arange(1, len(cmc) + 1)
        ax.plot(ks, cmc, style, ms=3.5, lw=1.5, label=name)
    ax.set_xlabel("rank k")
    ax.set_ylabel("recall@k (identification rate)")
    ax.set_title("CMC curve")
    ax.set_xticks(np.arange(1, max(len(c) for c in curves.values()) + 1, 2))
    ax.set_ylim(min(min(c) for c in curves.values()) * 0.95, 1.005)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def plot_oneshot(per_run: dict[str, float], accuracy: float) -> bytes:
    """Accuracy of each one-shot run."""
    plt = _plt()
    names = list(per_run)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(names)), 3.5))
    ax.bar(range(len(names)), [per_run[n] for n in names], color=GENUINE_COLOUR)
    ax.axhline(accuracy, color="black", lw=1.2, label=f"overall {accuracy:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("One-shot accuracy per run")
    ax.legend(fontsize=8)
    return _png(fig)


def _side_by_side(images: list, height: int = 96):
    from PIL import Image

    ims = []
    for im in images:
        im = as_pil(im)
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        w = max(1, round(im.width * height / max(im.height, 1)))
        ims.append(im.resize((w, height), Image.BILINEAR).convert("RGB"))
    gap = 6
    canvas = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) - 1), height), "white")
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def plot_grid(items: list[tuple[list, str]], title: str, per_row: int = 4) -> bytes:
    """A grid of image pairs (or tuples), each with a caption above it.

    Rows are as tall as their images plus their caption lines (constrained layout), so a caption
    never overlaps the row above; names in any script render with the fonts the machine has, a
    character none of them has shows as ``?`` (:func:`siamsearch.query.sheets.drawable`).
    """
    from ..query.sheets import drawable, text_fonts

    plt = _plt()
    n = len(items)
    rows = max(1, -(-n // per_row))
    lines = max((str(c).count("\n") + 1 for _, c in items), default=1)
    families, _ = text_fonts()
    with plt.rc_context({"font.family": list(families) or ["sans-serif"]}):
        fig, axes = plt.subplots(rows, per_row, figsize=(3.0 * per_row, (1.5 + 0.16 * lines) * rows), squeeze=False,
                                 layout="constrained")
        fig.get_layout_engine().set(h_pad=0.06, hspace=0.08)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (images, caption) in zip(axes.ravel(), items):
            ax.imshow(np.asarray(_side_by_side(images)))
            ax.set_title(drawable(caption), fontsize=7.5)
        fig.suptitle(drawable(title), fontsize=10)
        return _png(fig)


def _short(s: str, n: int = 18) -> str:
    s = str(s)
    return s if len(s) <= n else "..." + s[-(n - 3):]


# --------------------------------------------------------------------------- assembling
def make_figures(metrics: dict, data: dict) -> tuple[dict[str, bytes], dict[str, str]]:
    """All PNGs for a metrics dict.

    Args:
        metrics: what :func:`siamsearch.evaluation.evaluate.evaluate` returns.
        data: in-memory extras: ``verification`` (``distances``, ``is_same``, ``threshold``,
            ``threshold_kind``), ``dataset`` (for image grids), ``oneshot_runs`` ({name: run}).

    Returns:
        ``(pngs {name: bytes}, captions {name: text})``.
    """
    figs: dict[str, bytes] = {}
    caps: dict[str, str] = {}
    v, curves = metrics.get("verification"), data.get("verification")
    ds = data.get("dataset")
    if v and curves:
        d, s = curves["distances"], curves["is_same"]
        thr, kind = curves["threshold"], curves["threshold_kind"]
        figs["roc"] = plot_roc(d, s, v, thr, kind)
        caps["roc"] = "ROC with a log FAR axis; the grey band is where the pair count cannot measure FAR."
        figs["det"] = plot_det(d, s, v)
        caps["det"] = "DET: false rejects against false accepts on normal-deviate axes."
        figs["distances"] = plot_distances(d, s, thr, kind, v["eer"]["threshold"])
        caps["distances"] = f"Distance histograms; the solid line is the {kind} threshold."
        if ds is not None and v.get("hardest"):
            h = v["hardest"]
            for key, title in (("false_accepts", "Hardest impostor pairs (closest different identities)"),
                               ("false_rejects", "Hardest genuine pairs (farthest same identity)")):
                rows = h[key]
                if rows:
                    items = [([ds.load(r["index_a"]), ds.load(r["index_b"])],
                              f"{_short(r['identity_a'])} | {_short(r['identity_b'])}\n"
                              f"d={r['distance']:.3f} {'accepted' if r['accepted'] else 'rejected'}")
                             for r in rows]
                    figs[key] = plot_grid(items, title)
                    caps[key] = (f"{title}; at the {h['threshold_kind']} threshold d <= {h['threshold']:.3f} "
                                 f"a pair is accepted.")
    i = metrics.get("identification")
    cmcs: dict[str, list[float]] = {}
    if i:
        cmcs["leave-one-out (exact)"] = i["leave_one_out"]["cmc"]
        if i.get("open_set"):
            cmcs["gallery/probe, known identities"] = i["open_set"]["closed_set"]["cmc"]
        if ds is not None and i.get("failed"):
            items = [([ds.load(r["index_query"]), ds.load(r["index_match"])],
                      f"{_short(r['identity_query'])} -> {_short(r['identity_match'])}\n"
                      f"d={r['distance']:.3f}, right one at rank {r['first_correct_rank'] or '>k'}")
                     for r in i["failed"]]
            figs["failed_identifications"] = plot_grid(items, "Failed identifications: query | its nearest neighbour")
            caps["failed_identifications"] = ("Queries whose nearest neighbour has another identity, most confident "
                                              "mistakes first.")
    c = metrics.get("index_comparison")
    if c:
        cmcs["gallery, exact search"] = c["exact"]["cmc"]
        cmcs[f"gallery, deployed index ({c.get('index_type') or 'faiss'})"] = c["deployed"]["cmc"]
    if cmcs:
        figs["cmc"] = plot_cmc(cmcs)
        caps["cmc"] = "CMC: share of queries with a correct match within the first k neighbours."
    o = metrics.get("oneshot")
    if o:
        figs["oneshot"] = plot_oneshot(o["per_run"], o["accuracy"])
        caps["oneshot"] = "Accuracy of each one-shot run."
        runs = data.get("oneshot_runs")
        if runs and o["mistakes"]:
            items = []
            worst = sorted(o["mistakes"], key=lambda r: r["distance_predicted"] - r["distance_answer"])[:8]
            for mk in worst:
                run = runs[mk["run"]]
                q = run.queries[run.query_names.index(mk["query"])]
                p = run.references[run.reference_names.index(mk["predicted"])]
                a = run.references[run.reference_names.index(mk["answer"])]
                items.append(([q, p, a], f"{mk['run']} {mk['query'].split('/')[-1]}\n"
                                         f"d(pred)={mk['distance_predicted']:.3f} d(right)={mk['distance_answer']:.3f}"))
            figs["oneshot_mistakes"] = plot_grid(items, "One-shot mistakes: query | predicted | correct", per_row=3)
            caps["oneshot_mistakes"] = ("One-shot queries matched to the wrong reference, the widest margins "
                                        "(wrong one much closer than the right one) first.")
    return figs, caps


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _interval(c) -> str:
    """``[low, high]`` to 4 decimals, or ``""`` for no interval."""
    return f"[{c[0]:.4f}, {c[1]:.4f}]" if c else ""


def _ci(x: dict) -> str:
    return _interval(x.get("ci95"))


def _cv_row(cv: dict) -> list:
    k = cv["n_folds"]
    if "standard_error" in cv:  # the pairs protocol: mean +/- standard error, as LFW reports it
        return [f"{k}-fold accuracy", f"{cv['mean']:.4f} +/- {cv['standard_error']:.4f}", "",
                f"+/- standard error over {cv.get('fold_source', '')} folds; threshold chosen on the other {k - 1}"]
    return [f"{k}-fold CV accuracy", f"{cv['mean']:.4f} +/- {cv['std']:.4f}", "", f"threshold chosen on {k - 1} folds"]


def _sections(metrics: dict) -> list[tuple[str, list[str], list[list]]]:
    """``(title, header, rows)`` tables shared by the HTML and markdown reports."""
    out = []
    v = metrics.get("verification")
    if v:
        rows = [["ROC AUC", f"{v['auc']['value']:.4f}", _ci(v["auc"]), ""],
                ["EER", f"{v['eer']['value']:.4f}", _ci(v["eer"]), f"d <= {v['eer']['threshold']:.4f}"],
                ["best accuracy", f"{v['best_accuracy']['value']:.4f}", _ci(v["best_accuracy"]),
                 f"d <= {v['best_accuracy']['threshold']:.4f}"],
                _cv_row(v["cv_accuracy"])]
        for r in v["tar_at_far"]:
            rows.append([f"TAR @ FAR={r['far']:g}", f"{r['tar']:.4f}", _ci(r),
                         f"d <= {r['threshold']:.4f}, achieved FAR {r['achieved_far']:.2e}"
                         + ("" if r["supported"] else f"; UNSUPPORTED (< {r['min_impostor_pairs']:,} impostors)")])
        if v.get("calibrated"):
            c = v["calibrated"]
            rows.append(["calibrated threshold", f"d <= {c['threshold']:.4f}", "",
                         f"here: FAR {c['far']:.2e}, TAR {c['tar']:.4f}, accuracy {c['accuracy']:.4f}"])
        out.append((f"Verification ({v['n_genuine']:,} genuine, {v['n_impostor']:,} impostor pairs)",
                    ["figure", "value", "95% CI", "notes"], rows))
    i = metrics.get("identification")
    if i:
        loo = i["leave_one_out"]
        ci = loo.get("ci95") or {}
        rows = [["precision@1", f"{loo['precision_at_1']:.4f}", _interval(ci.get("precision_at_1"))]]
        kci = ci.get("recall_at_k") or {}
        rows += [[f"recall@{k}", f"{val:.4f}", _interval(kci.get(k, kci.get(str(k))))]
                 for k, val in loo["recall_at_k"].items()]
        rows += [["R-precision", f"{loo['r_precision']:.4f}", _interval(ci.get("r_precision"))],
                 ["MAP@R", f"{loo['map_at_r']:.4f}", _interval(ci.get("map_at_r"))]]
        out.append((f"Identification, leave-one-out ({loo['n_queries']:,} queries)", ["figure", "value", "95% CI"],
                    rows))
        os_ = i.get("open_set")
        if os_:
            rows = [["closed-set precision@1 (known probes)", f"{os_['closed_set']['precision_at_1']:.4f}", "", ""]]
            rows += [[f"DIR @ FPIR={r['fpir']:g}", f"{r['dir']:.4f}", _ci(r),
                      f"d <= {r['threshold']:.4f}, achieved FPIR {r['achieved_fpir']:.3f}"
                      + ("" if r["supported"] else "; UNSUPPORTED")] for r in os_["dir_at_fpir"]]
            out.append((f"Open set (gallery {os_['gallery_size']:,}; {os_['n_known']:,} known and "
                        f"{os_['n_unknown']:,} unknown probes)", ["figure", "value", "95% CI", "notes"], rows))
    c = metrics.get("index_comparison")
    if c:
        ex, de = c["exact"], c["deployed"]
        rows = [["precision@1", f"{ex['precision_at_1']:.4f}", f"{de['precision_at_1']:.4f}",
                 f"{de['precision_at_1'] - ex['precision_at_1']:+.4f}"]]
        for k in ex["recall_at_k"]:
            a, b = at_k(ex["recall_at_k"], k), at_k(de["recall_at_k"], k)
            rows.append([f"recall@{k}", f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"])
        rows.append(["MAP@R", f"{ex['map_at_r']:.4f}", f"{de['map_at_r']:.4f}", f"{de['map_at_r'] - ex['map_at_r']:+.4f}"])
        params = (c.get("index_meta") or {}).get("params")
        if params:
            rows.append(["index parameters", "", ", ".join(f"{k}={v}" for k, v in params.items()), ""])
        out.append((f"Deployed index vs exact search ({c['index']}, {c['n_items']:,} items)",
                    ["figure", "exact", "deployed index", "difference"], rows))
    o = metrics.get("oneshot")
    if o:
        rows = [["accuracy", f"{o['accuracy']:.4f}", f"{o['n_queries']} queries in {o['n_runs']} runs"],
                ["std over runs", f"{o['per_run_std']:.4f}", ""]]
        out.append((f"One-shot ({'/'.join(map(str, o['ways']))}-way)", ["figure", "value", "notes"], rows))
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em;text-align:left}
th{background:#f3f3f3}.warn{background:#fff4e5;border:1px solid #f0b36b;padding:.6em 1em;border-radius:4px}
.warn li{margin:.2em 0}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:.85em;color:#555;max-width:620px}img{max-width:100%}code{background:#f5f5f5;padding:0 .2em}
.settings td{font-family:monospace;font-size:.82em}
"""

_PLOT_ORDER = ["roc", "det", "distances", "cmc", "oneshot", "false_accepts", "false_rejects",
               "failed_identifications", "oneshot_mistakes"]


def render_html(metrics: dict, figs: dict[str, bytes], caps: dict[str, str]) -> str:
    """The self-contained HTML report (images inlined as base64 PNG)."""
    s = metrics.get("settings", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>siamsearch evaluation</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>siamsearch evaluation report</h1>",
             f"<p>Model <code>{html.escape(str(s.get('model')))}</code> (fingerprint "
             f"<code>{html.escape(str(s.get('model_fingerprint')))}</code>) on "
             f"<code>{html.escape(str(s.get('data')))}</code>. Decision rule: <b>distance &lt;= threshold "
             f"&rarr; same</b>; distances are Euclidean between L2-normalised embeddings, in [0, 2].</p>"]
    if metrics.get("warnings"):
        parts.append("<div class='warn'><b>Warnings: read these before quoting a figure</b><ul>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in metrics["warnings"]) + "</ul></div>")
    for title, header, rows in _sections(metrics):
        parts.append(f"<h2>{html.escape(title)}</h2>" + _table(header, rows))
    parts.append("<h2>Plots</h2>")
    for name in _PLOT_ORDER:
        if name in figs:
            b64 = base64.b64encode(figs[name]).decode("ascii")
            parts.append(f"<figure><img alt='{name}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(caps.get(name, ''))}</figcaption></figure>")
    ds = metrics.get("dataset")
    rows = [[k, v] for k, v in s.items()]
    if ds:
        rows += [[f"dataset.{k}", v] for k, v in ds.items() if k != "unreadable"]
    parts.append("<h2>Settings</h2><div class='settings'>" + _table(["setting", "value"], rows) + "</div>")
    parts.append("<p style='font-size:.85em;color:#555'>Definitions: TAR/FAR at a threshold t count pairs with "
                 "distance &lt;= t; CIs are 95% percentile bootstrap over identities (identities drawn with "
                 "replacement, all their pairs or queries kept, as ISO/IEC 19795-1 does), unless a section names "
                 "another method; a FAR f is measurable only with at least 3/f impostor pairs. MAP@R and R-precision "
                 "follow Musgrave et al. 2020; recall@k is the CMC at rank k. Every figure is in metrics.json.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(metrics: dict, figs: dict[str, bytes], caps: dict[str, str]) -> str:
    """The markdown report; plots are linked as ``plots/NAME.png``."""
    s = metrics.get("settings", {})
    lines = ["# siamsearch evaluation report", "",
             f"Model `{s.get('model')}` ({s.get('model_fingerprint')}) on `{s.get('data')}`; "
             f"rule: {DECISION_RULE}.", ""]
    if metrics.get("warnings"):
        lines += ["**Warnings**", ""] + [f"- {w}" for w in metrics["warnings"]] + [""]
    for title, header, rows in _sections(metrics):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        lines.append("")
    for name in _PLOT_ORDER:
        if name in figs:
            lines += [f"![{name}](plots/{name}.png)", "", f"*{caps.get(name, '')}*", ""]
    return "\n".join(lines)


def write_report(out: os.PathLike, metrics: dict, data: dict) -> dict[str, str]:
    """Write ``report.html``, ``report.md`` and ``plots/*.png`` into ``out``.

    Returns:
        ``{name: path}`` of the files written.
    """
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figs, caps = make_figures(metrics, data)
    written = {}
    for name, png in figs.items():
        p = plots / f"{name}.png"
        p.write_bytes(png)
        written[name] = os.fspath(p)
    (out / "report.html").write_text(render_html(metrics, figs, caps), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(metrics, figs, caps), encoding="utf-8")
    written["report.html"] = os.fspath(out / "report.html")
    written["report.md"] = os.fspath(out / "report.md")
    return written
