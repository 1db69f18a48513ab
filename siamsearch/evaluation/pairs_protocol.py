"""The standard pairs protocol: verification figures on a fixed list of labelled pairs.

``siamsearch evaluate --model M --pairs pairs.txt --images DIR`` (and :func:`evaluate_pairs`)
reads a pairs file in one of two formats:

* **LFW** (``pairs.txt``, ``pairsDevTrain.txt``, ``pairsDevTest.txt``): a first line ``N``
  (one set of ``N`` genuine and ``N`` impostor pairs) or ``K N`` (``K`` folds of ``N`` + ``N``),
  then lines ``name i j`` (genuine: images ``i`` and ``j`` of ``name``) and
  ``name1 i name2 j`` (impostor). Image ``i`` of ``name`` is ``DIR/name/name_%04d.jpg``.
* **CSV**, as ``siamsearch verify --pairs`` reads it: a header ``a,b,is_same``, one pair a row,
  relative paths taken from ``DIR`` when given, else from the CSV's folder.

It embeds each distinct image once (the embedder's streaming loop), then reports the
**K-fold accuracy ± standard error** (threshold chosen on K-1 folds, tested on the K-th: the
file's own blocks for an LFW file with ``K > 1``, seeded stratified folds otherwise), ROC AUC,
EER and TAR at FAR with bootstrap intervals, and, if the model has one, how its calibrated
threshold does on these pairs. With ``out`` it writes ``metrics.json`` and ``report.html``
(see :mod:`siamsearch.evaluation.report`).

Missing or unreadable images are an error that names them (a benchmark with silently dropped
pairs is another benchmark); ``skip_missing=True`` drops their pairs instead and reports how
many in ``metrics.json`` and in a warning.

Building blocks for other protocols (e.g. LFW View 2 with one model per fold):
:func:`read_pairs`, :func:`pair_distances_for` and
:func:`siamsearch.metrics.folds.fold_accuracy`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .._version import __version__
from ..core.distance import DECISION_RULE, pair_distances
from ..core.errors import SiamsearchError
from ..metrics import verification as verif
from ..metrics.folds import fold_accuracy, stratified_folds
from ..core.files import PathLike

#: Pairs file formats :func:`read_pairs` reads.
PAIRS_FORMATS = ("auto", "lfw", "csv")

#: Where image ``i`` of ``name`` lies under the images folder of an LFW pairs file.
LFW_IMAGE_PATTERN = "{name}/{name}_{index:04d}.jpg"

#: Example pairs shown in each image grid of the report.
N_EXAMPLES = 8


@dataclass(frozen=True)
class PairList:
    """Labelled pairs read from a pairs file.

    Attributes:
        path_a, path_b: ``P`` image paths each.
        is_same: ``[P]`` bool, True for genuine pairs (read-only).
        folds: ``[P]`` int64 fold labels from the file (LFW with ``K > 1`` blocks), or ``None``.
        identity_a, identity_b: ``P`` identity names (LFW), or ``None`` (CSV).
        lines: ``[P]`` line number of each pair in the file.
        source: the pairs file.
        format: ``"lfw"`` or ``"csv"``.
    """

    path_a: tuple
    path_b: tuple
    is_same: np.ndarray
    folds: Optional[np.ndarray]
    identity_a: Optional[tuple]
    identity_b: Optional[tuple]
    lines: np.ndarray
    source: str
    format: str

    def __post_init__(self) -> None:
        n = len(self.path_a)
        sizes = [len(self.path_b), len(self.is_same), len(self.lines)]
        sizes += [len(x) for x in (self.folds, self.identity_a, self.identity_b) if x is not None]
        assert all(m == n for m in sizes), "PairList fields differ in length"
        for name in ("is_same", "folds", "lines"):
            arr = getattr(self, name)
            if arr is not None:
                arr = np.array(arr)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return len(self.path_a)

    def images(self) -> list[str]:
        """The distinct image paths, sorted."""
        return sorted(set(self.path_a) | set(self.path_b))

    def subset(self, keep: np.ndarray) -> "PairList":
        """The pairs at boolean mask or indices ``keep``, in file order."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == np.bool_ else np.asarray(keep, dtype=np.int64)

        def pick(x):
            return None if x is None else tuple(x[i] for i in idx)

        return PairList(pick(self.path_a), pick(self.path_b), self.is_same[idx],
                        None if self.folds is None else self.folds[idx], pick(self.identity_a),
                        pick(self.identity_b), self.lines[idx], self.source, self.format)


# --------------------------------------------------------------------------- reading
def _lfw_header(tokens: list[str], path: Path) -> tuple[int, int]:
    try:
        nums = [int(t) for t in tokens]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or min(nums) < 1:
        raise SiamsearchError(
            f"{path}, line 1: an LFW pairs file starts with `N` (N genuine then N impostor pairs) or `K N` "
            f"(K folds of N + N); got {' '.join(tokens)!r}"
        )
    return (1, nums[0]) if len(nums) == 1 else (nums[0], nums[1])


def _image_index(token: str, path: Path, line: int) -> int:
    try:
        i = int(token)
    except ValueError:
        i = 0
    if i < 1:
        raise SiamsearchError(f"{path}, line {line}: image numbers are integers from 1; got {token!r}")
    return i


def read_lfw_pairs(path: PathLike, images: Optional[PathLike] = None) -> PairList:
    """Read an LFW-format pairs file (``pairs.txt``, ``pairsDevTest.txt``, ...).

    Args:
        path: the pairs file.
        images: the folder holding ``NAME/NAME_0001.jpg`` (e.g. ``lfw-deepfunneled``); default:
            the pairs file's folder.

    Returns:
        A :class:`PairList`; with a ``K N`` header and ``K > 1``, pair ``p`` is in fold
        ``p // (2 N)`` (the file's blocks), else ``folds`` is ``None``.

    Raises:
        SiamsearchError: unreadable file, a bad header or line (with its number), or a pair count
            that differs from the header's.
    """
    p = Path(path)
    if not p.is_file():
        raise SiamsearchError(f"{p}: no such pairs file")
    root = Path(images) if images is not None else p.parent
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SiamsearchError(f"{p} is not a UTF-8 text file; give an LFW pairs.txt or a CSV a,b,is_same") from None
    lines = [(n, ln.split()) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise SiamsearchError(f"{p} is empty")
    n_sets, per_set = _lfw_header(lines[0][1], p)
    body = lines[1:]
    if len(body) != 2 * n_sets * per_set:
        raise SiamsearchError(
            f"{p}: the header promises {n_sets} x ({per_set} genuine + {per_set} impostor) = "
            f"{2 * n_sets * per_set} pairs, the file has {len(body)} pair lines"
        )
    pa, pb, same, ida, idb, nums = [], [], [], [], [], []
    for n, tok in body:
        if len(tok) == 3:
            a, i, b, j = tok[0], tok[1], tok[0], tok[2]
        elif len(tok) == 4:
            a, i, b, j = tok
        else:
            raise SiamsearchError(f"{p}, line {n}: expected `name i j` or `name1 i name2 j`; got {' '.join(tok)!r}")
        i, j = _image_index(i, p, n), _image_index(j, p, n)
        pa.append(os.fspath(root / LFW_IMAGE_PATTERN.format(name=a, index=i)))
        pb.append(os.fspath(root / LFW_IMAGE_PATTERN.format(name=b, index=j)))
        same.append(len(tok) == 3)
        ida.append(a)
        idb.append(b)
        nums.append(n)
    folds = np.arange(len(body)) // (2 * per_set) if n_sets > 1 else None
    return PairList(tuple(pa), tuple(pb), np.asarray(same, bool), folds, tuple(ida), tuple(idb),
                    np.asarray(nums, np.int64), os.fspath(p), "lfw")


def _read_csv_pairs(path: PathLike, images: Optional[PathLike]) -> PairList:
    from ..query.verification import read_pairs_csv

    rows = read_pairs_csv(path)
    unlabelled = [r.line for r in rows if r.expected is None]
    if unlabelled:
        raise SiamsearchError(
            f"{path}: evaluation needs an is_same value on every row; line {unlabelled[0]} "
            f"({len(unlabelled)} rows in all) has none"
        )

    def where(written: str, resolved: str) -> str:  # relative to --images when given, else to the CSV
        return resolved if images is None or os.path.isabs(written) else os.fspath(Path(images) / written)

    return PairList(tuple(where(r.a, r.path_a) for r in rows), tuple(where(r.b, r.path_b) for r in rows),
                    np.asarray([r.expected for r in rows], bool), None, None, None,
                    np.asarray([r.line for r in rows], np.int64), os.fspath(path), "csv")


def detect_pairs_format(path: PathLike) -> str:
    """``"lfw"`` when the first non-blank line is one or two integers, else ``"csv"``."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    tok = line.split()
                    return "lfw" if 1 <= len(tok) <= 2 and all(t.isdigit() for t in tok) else "csv"
    except (OSError, UnicodeDecodeError) as e:
        raise SiamsearchError(f"cannot read pairs file {path} ({e})") from None
    raise SiamsearchError(f"{path} is empty")


def read_pairs(path: PathLike, images: Optional[PathLike] = None, format: str = "auto") -> PairList:
    """Read a labelled pairs file: LFW format (:func:`read_lfw_pairs`) or CSV ``a,b,is_same``.

    Args:
        path: the pairs file.
        images: folder the image names are relative to (default: the pairs file's folder).
        format: ``auto``, ``lfw`` or ``csv``.
    """
    if format not in PAIRS_FORMATS:
        raise SiamsearchError(f"unknown pairs format {format!r}; choose one of {', '.join(PAIRS_FORMATS)}")
    if not Path(path).is_file():
        raise SiamsearchError(f"{path}: no such pairs file")
    fmt = detect_pairs_format(path) if format == "auto" else format
    return read_lfw_pairs(path, images) if fmt == "lfw" else _read_csv_pairs(path, images)


# --------------------------------------------------------------------------- embedding
def pair_distances_for(model, pairs: PairList, batch_size: int = 64, workers: int = 0,
                       progress: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """Distances of every pair, each distinct image embedded once.

    Args:
        model: an :class:`~siamsearch.core.embedder.Embedder`.
        pairs: from :func:`read_pairs`.
        batch_size, workers, progress: for :meth:`Embedder.embed_files`.

    Returns:
        ``(distances [P] float64, failures {path: reason})``; a pair with a missing or unreadable
        image has distance NaN.
    """
    files = pairs.images()
    pos = {f: i for i, f in enumerate(files)}
    emb = np.zeros((len(files), model.dim), np.float32)
    failures: dict[str, str] = {}
    for batch in model.embed_files(files, batch_size=batch_size, workers=workers, progress=progress):
        emb[batch.positions] = batch.embeddings
        failures.update({files[int(i)]: reason for i, reason in batch.failures})
    ia = np.fromiter((pos[f] for f in pairs.path_a), np.int64, len(pairs))
    ib = np.fromiter((pos[f] for f in pairs.path_b), np.int64, len(pairs))
    d = pair_distances(emb[ia], emb[ib]).astype(np.float64)
    bad = np.array([pairs.path_a[k] in failures or pairs.path_b[k] in failures for k in range(len(pairs))], bool)
    d[bad] = np.nan
    return d, failures


def _missing_error(pairs: PairList, missing: list[str]) -> SiamsearchError:
    shown = "; ".join(missing[:3])
    hint = (f"give --images DIR, the folder holding {LFW_IMAGE_PATTERN.format(name='NAME', index=1)}"
            if pairs.format == "lfw" else "paths are relative to the CSV's folder, or to --images DIR")
    return SiamsearchError(f"{len(missing)} images of {pairs.source} are missing or unreadable ({shown}"
                           f"{'; ...' if len(missing) > 3 else ''}); {hint}, or skip their pairs with "
                           "--skip-missing")


# --------------------------------------------------------------------------- the protocol
class _ImageList:
    """Just enough of a dataset for the report's image grids: ``load(i)``."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def load(self, i: int):
        from ..core.images import read_image

        return read_image(self.paths[i])


def _hardest(pairs: PairList, d: np.ndarray, thr: float, kind: str, index: dict) -> dict:
    s = pairs.is_same
    names_a = pairs.identity_a or pairs.path_a
    names_b = pairs.identity_b or pairs.path_b

    def rows(mask: np.ndarray, far_first: bool) -> list[dict]:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-d[idx] if far_first else d[idx], kind="stable")][:N_EXAMPLES]
        return [{"a": pairs.path_a[k], "b": pairs.path_b[k], "index_a": index[pairs.path_a[k]],
                 "index_b": index[pairs.path_b[k]], "identity_a": os.path.basename(names_a[k]),
                 "identity_b": os.path.basename(names_b[k]), "line": int(pairs.lines[k]),
                 "distance": float(d[k]), "accepted": bool(d[k] <= thr)} for k in idx]

    return {"false_accepts": rows(~s, False), "false_rejects": rows(s, True), "threshold": float(thr),
            "threshold_kind": kind}


def _calibrated(calibration: Optional[dict], d: np.ndarray, s: np.ndarray) -> Optional[dict]:
    if not calibration or calibration.get("threshold") is None:
        return None
    thr = float(calibration["threshold"])
    accepted = d <= thr
    return {"threshold": thr, "record": calibration, "far": float(np.mean(accepted[~s])),
            "tar": float(np.mean(accepted[s])), "accuracy": float(np.mean(accepted == s))}


def pairs_metrics(distances, is_same, folds=None, n_folds: int = 10, seed: int = 0, n_boot: int = 1000,
                  fars: Sequence[float] = verif.DEFAULT_FARS, subjects: Optional[tuple] = None) -> dict:
    """Every verification figure of the pairs protocol from distances on arrays.

    Args:
        distances: ``[P]`` pair distances.
        is_same: ``[P]`` bool.
        folds: ``[P]`` fold labels (e.g. :attr:`PairList.folds`), or ``None`` for ``n_folds``
            seeded stratified folds.
        n_folds, seed: the seeded folds (when ``folds`` is ``None``) and the bootstrap's seed.
        n_boot: bootstrap replicates for the 95% intervals of AUC, EER and TAR@FAR (0: none).
        fars: FAR targets.
        subjects: ``(identity_a [P], identity_b [P])`` when the file names people (LFW): the intervals
            then come from the bootstrap over identities; ``None`` (CSV): over pairs (``ci_method`` says which).

    Returns:
        :func:`siamsearch.metrics.verification.verification_metrics`'s dict with
        ``cv_accuracy`` replaced by :func:`~siamsearch.metrics.folds.fold_accuracy` on these
        folds (``mean``, ``standard_error``, ``std``, per-fold ``folds`` and ``thresholds``) plus
        ``fold_source`` (``"file"`` or ``"seeded"``) and ``seed``.
    """
    d = np.asarray(distances, np.float64)
    s = np.asarray(is_same, bool)
    source = "file" if folds is not None else "seeded"
    f = np.asarray(folds) if folds is not None else stratified_folds(s, n_folds, seed)
    k = int(np.unique(f).size)
    m = verif.verification_metrics(d, s, fars=fars, n_folds=min(k, int(s.sum()), int((~s).sum())),
                                   n_boot=n_boot, seed=seed, subjects=subjects)
    cv = fold_accuracy(d, s, f)
    cv.update({"fold_source": source, "seed": int(seed) if source == "seeded" else None})
    m["cv_accuracy"] = cv
    return m


def evaluate_pairs(
    model: Union[PathLike, object],
    pairs: Union[PathLike, PairList],
    images: Optional[PathLike] = None,
    *,
    format: str = "auto",
    n_folds: int = 10,
    seed: int = 0,
    n_boot: int = 1000,
    skip_missing: bool = False,
    out: Optional[PathLike] = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """The standard pairs protocol (LFW, CFP, AgeDB style) on a model; see the module docstring.

    Args:
        model: a checkpoint path or a loaded :class:`~siamsearch.core.embedder.Embedder`.
        pairs: a pairs file (LFW format or CSV ``a,b,is_same``) or a :class:`PairList`.
        images: folder the file's image names are relative to (LFW: the folder holding
            ``NAME/NAME_0001.jpg``); default: the pairs file's folder.
        format: ``auto``, ``lfw`` or ``csv``.
        n_folds, seed: seeded stratified folds when the file has no folds of its own.
        n_boot: bootstrap replicates for the 95% intervals (0: none).
        skip_missing: drop pairs whose images are missing or unreadable (counted in
            ``metrics.json``) instead of raising.
        out: folder for ``metrics.json``, ``report.html``, ``report.md`` and ``plots/``.
        batch_size, workers, device, progress: embedding.

    Returns:
        The metrics dict (``metrics.json``): ``settings``, ``warnings``, ``dataset`` (the pairs
        file: counts, skipped pairs), ``verification`` (:func:`pairs_metrics`, with ``calibrated``
        and ``hardest``).

    Raises:
        SiamsearchError: unreadable pairs file; missing images without ``skip_missing``; too few
            genuine or impostor pairs left for the folds.
    """
    from ..core.embedder import Embedder, load_model

    emb_model = model if isinstance(model, Embedder) else load_model(model, device=device)
    plist = pairs if isinstance(pairs, PairList) else read_pairs(pairs, images, format)
    warnings: list[str] = []
    files = plist.images()
    missing = [f for f in files if not os.path.isfile(f)]
    if missing and not skip_missing:
        raise _missing_error(plist, missing)
    gone = set(missing)
    present = plist.subset(np.array([a not in gone and b not in gone for a, b in zip(plist.path_a, plist.path_b)],
                                    bool)) if missing else plist
    dist, failures = pair_distances_for(emb_model, present, batch_size, workers, progress)
    if failures and not skip_missing:
        raise _missing_error(plist, sorted(failures))
    ok = np.isfinite(dist)
    scored = present.subset(ok) if not ok.all() else present
    dist = dist[ok]
    n_skipped = len(plist) - len(scored)
    if n_skipped:
        warnings.append(f"{n_skipped} of {len(plist)} pairs were skipped: {len(missing)} images missing, "
                        f"{len(failures)} unreadable (listed in metrics.json)")
    subjects = None if scored.identity_a is None else (np.asarray(scored.identity_a), np.asarray(scored.identity_b))
    m = pairs_metrics(dist, scored.is_same, scored.folds, n_folds=n_folds, seed=seed, n_boot=n_boot,
                      subjects=subjects)
    for row in m["tar_at_far"]:
        if not row["supported"]:
            warnings.append(f"TAR@FAR={row['far']:g} is not supported by {m['n_impostor']:,} impostor pairs "
                            f"(needs >= {row['min_impostor_pairs']:,}); shown for completeness, do not rely on it")
    m["calibrated"] = _calibrated(emb_model.calibration, dist, scored.is_same)
    thr, kind = ((m["calibrated"]["threshold"], "calibrated") if m["calibrated"]
                 else (float(np.median(m["cv_accuracy"]["thresholds"])), "median fold"))
    images_list = scored.images()
    m["hardest"] = _hardest(scored, dist, thr, kind, {f: i for i, f in enumerate(images_list)})
    cv = m["cv_accuracy"]
    metrics = {
        "settings": {
            "model": emb_model.path, "model_fingerprint": emb_model.fingerprint, "data": plist.source,
            "images": None if images is None else os.fspath(images), "format": f"{plist.format}-pairs",
            "protocol": "pairs", "n_folds": cv["n_folds"], "fold_source": cv["fold_source"], "seed": int(seed),
            "n_boot": int(n_boot), "skip_missing": bool(skip_missing),
            "decision_rule": DECISION_RULE, "siamsearch": __version__,
            "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "warnings": warnings,
        "dataset": {
            "format": f"{plist.format}-pairs", "pairs_file": plist.source, "n_pairs_in_file": len(plist),
            "n_pairs_scored": len(scored), "n_pairs_skipped": n_skipped, "n_images": len(images_list),
            "n_missing": len(missing), "n_unreadable": len(failures),
            "unreadable": ([{"source": f, "reason": "missing"} for f in missing]
                           + [{"source": k, "reason": v} for k, v in failures.items()])[:100],
        },
        "verification": m,
    }
    if out is not None:
        from .report import write_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        metrics["settings"]["out"] = os.fspath(out)
        curves = {"distances": dist, "is_same": scored.is_same, "threshold": thr, "threshold_kind": kind}
        write_report(out, metrics, {"verification": curves, "dataset": _ImageList(images_list)})
        (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
    return _jsonable(metrics)


def _jsonable(x):
    """numpy scalars/arrays -> Python values, non-finite floats -> None (recursively)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    """The short table the CLI prints: the K-fold accuracy ± standard error first."""
    v = metrics["verification"]
    cv = v["cv_accuracy"]
    rows = [("pairs (genuine / impostor)", f"{v['n_genuine']:,} / {v['n_impostor']:,}"),
            (f"{cv['n_folds']}-fold accuracy ({'file' if cv['fold_source'] == 'file' else 'seeded'} folds)",
             f"{cv['mean']:.4f} +/- {cv['standard_error']:.4f} (standard error)")]

    def ci(d: dict) -> str:
        c = d.get("ci95")
        return f"  [{c[0]:.4f}, {c[1]:.4f}]" if c else ""

    rows.append(("ROC AUC", f"{v['auc']['value']:.4f}{ci(v['auc'])}"))
    rows.append(("EER", f"{v['eer']['value']:.4f}{ci(v['eer'])}  at d <= {v['eer']['threshold']:.4f}"))
    for r in v["tar_at_far"]:
        flag = "" if r["supported"] else "  (not supported: too few impostor pairs)"
        rows.append((f"TAR @ FAR={r['far']:g}", f"{r['tar']:.4f}{ci(r)}{flag}"))
    if v.get("calibrated"):
        c = v["calibrated"]
        rows.append(("calibrated threshold", f"d <= {c['threshold']:.4f}: FAR {c['far']:.2e}, TAR {c['tar']:.4f}, "
                                             f"accuracy {c['accuracy']:.4f}"))
    return rows
