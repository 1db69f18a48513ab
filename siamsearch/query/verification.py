"""Verification: are two images the same identity? One pair, or a CSV of many.

The decision rule is the calibration's: **same iff ``distance <= threshold``**, with
the Euclidean distance in [0, 2] between L2-normalised embeddings. The threshold
comes from an explicit value (``threshold=``, CLI ``--threshold``) or from a
calibration record (the model's own, or one passed in) whose model fingerprint
must match the model. There is no default threshold: without either, a
:class:`SiamsearchError` says how to get one.

Python API::

    model = siamsearch.load_model("model.pt")
    r = siamsearch.verify(model, "a.png", "b.png")  # VerificationResult, read-only
    r.is_same, r.distance, r.threshold, r.threshold_source, r.calibration
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .record import binomial_ci, check_record, load_record
from ..core.distance import DECISION_RULE, pair_distances
from ..core.errors import SiamsearchError
from ..core.files import PathLike

CalibrationLike = Union[None, Mapping, PathLike]

#: Where a threshold came from.
SOURCES = ("calibration", "explicit")
#: Pairs embedded per chunk in :func:`verify_pairs` (memory is bounded by this, not by the CSV).
PAIR_CHUNK = 2048
#: Accepted spellings of the optional ``is_same`` column.
TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "same"})
FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "different", "diff"})


def _freeze(x: Any) -> Any:
    """A read-only deep view: dicts become mappingproxies, lists tuples."""
    if isinstance(x, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in x.items()})
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def _thaw(x: Any) -> Any:
    """Back to plain JSON-safe dicts and lists."""
    if isinstance(x, Mapping):
        return {k: _thaw(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [_thaw(v) for v in x]
    return x


def resolve_threshold(model, threshold: Optional[float] = None,
                      calibration: CalibrationLike = None) -> tuple[float, str, Optional[dict]]:
    """The threshold to use with ``model`` and where it came from.

    Args:
        model: an :class:`~siamsearch.core.embedder.Embedder` (its ``fingerprint`` and ``calibration``).
        threshold: an explicit distance in [0, 2]; wins over any calibration.
        calibration: a calibration record, or a path to one (``.json`` or a checkpoint carrying one);
            default: the model's own record.

    Returns:
        ``(threshold, source, record)``: source is ``"explicit"`` (record ``None``) or ``"calibration"``.

    Raises:
        SiamsearchError: no threshold available (the message says how to get one), out of range, or both
            ``threshold`` and ``calibration`` given.
        FingerprintMismatch: the record was made for another model.
    """
    where = f"model {model.path}" if getattr(model, "path", None) else "the model"
    if threshold is not None and calibration is not None:
        raise SiamsearchError("give either --threshold or --calibration, not both: each one sets the threshold")
    if threshold is not None:
        t = float(threshold)
        if not (math.isfinite(t) and 0.0 <= t <= 2.0):
            raise SiamsearchError(f"--threshold is a Euclidean distance in [0, 2]; got {threshold}")
        return t, "explicit", None
    if calibration is not None and not isinstance(calibration, Mapping):
        record = load_record(calibration)
    else:
        record = dict(calibration) if calibration is not None else model.calibration
    if record is None:
        name = model.path or "MODEL.pt"
        raise SiamsearchError(
            f"{where} has no calibrated threshold, and siamsearch does not invent one. Either calibrate it on "
            f"held-out identities: `siamsearch calibrate --model {name} --data HELD_OUT_DATA` (stores the "
            f"threshold in the model), or pass --threshold T (a distance in [0, 2]; same iff distance <= T)")
    check_record(record, model.fingerprint, where)
    return float(record["threshold"]), "calibration", record


@dataclass(frozen=True)
class VerificationResult:
    """The answer for one pair; read-only and checked on construction.

    Attributes:
        is_same: the decision, ``distance <= threshold``.
        distance: Euclidean distance in [0, 2] between the two embeddings.
        threshold: the distance threshold used.
        threshold_source: ``"calibration"`` or ``"explicit"``.
        calibration: the calibration record (read-only mapping), or ``None`` for an explicit threshold.
    """

    is_same: bool
    distance: float
    threshold: float
    threshold_source: str
    calibration: Optional[Mapping] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.threshold_source not in SOURCES:
            raise ValueError(f"threshold_source must be one of {SOURCES}; got {self.threshold_source!r}")
        if not (math.isfinite(self.distance) and -1e-6 <= self.distance <= 2.0 + 1e-6):
            raise ValueError(f"distance {self.distance} is not a Euclidean distance between unit vectors")
        if bool(self.is_same) != (self.distance <= self.threshold):
            raise ValueError("is_same must equal distance <= threshold")
        if (self.calibration is None) != (self.threshold_source == "explicit"):
            raise ValueError("a calibrated threshold carries its record; an explicit one carries none")
        object.__setattr__(self, "is_same", bool(self.is_same))
        object.__setattr__(self, "calibration", None if self.calibration is None else _freeze(self.calibration))

    def to_dict(self) -> dict:
        """The JSON of ``siamsearch verify --json``: ``distance``, ``threshold``, ``is_same``,
        ``threshold_source``, ``calibration`` (the record, or ``None``)."""
        return {
            "distance": float(self.distance),
            "threshold": float(self.threshold),
            "is_same": bool(self.is_same),
            "threshold_source": self.threshold_source,
            "calibration": None if self.calibration is None else _thaw(self.calibration),
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        """:meth:`to_dict` as JSON text (what ``siamsearch verify --json`` prints)."""
        return json.dumps(self.to_dict(), indent=indent)


def verify(model, a, b, threshold: Optional[float] = None, calibration: CalibrationLike = None) -> VerificationResult:
    """Decide whether images ``a`` and ``b`` show the same identity.

    Args:
        model: an :class:`~siamsearch.core.embedder.Embedder`.
        a, b: images (paths, PIL images or arrays).
        threshold: explicit distance threshold; default: the calibration's.
        calibration: a record or a path to one; default: the model's own.

    Raises:
        SiamsearchError: no threshold (says how to get one); UnreadableImage for an unreadable file.
        FingerprintMismatch: the calibration belongs to another model.
    """
    thr, source, record = resolve_threshold(model, threshold, calibration)
    e = model.embed([a, b])
    d = float(pair_distances(e[:1], e[1:])[0])
    return VerificationResult(is_same=d <= thr, distance=d, threshold=thr, threshold_source=source,
                              calibration=record)


# --------------------------------------------------------------------------- many pairs
@dataclass(frozen=True)
class PairRow:
    """One row of a pairs CSV: the paths as written, the given ``is_same`` (or ``None``), the CSV
    line, and the paths resolved against the CSV's folder."""

    a: str
    b: str
    expected: Optional[bool]
    line: int
    path_a: str = ""
    path_b: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_a", self.path_a or self.a)
        object.__setattr__(self, "path_b", self.path_b or self.b)


def _parse_bool(value: str, line: int, path: PathLike) -> Optional[bool]:
    v = (value or "").strip().lower()
    if v == "":
        return None
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise SiamsearchError(f"{path}, line {line}: is_same must be 1/0, true/false, yes/no or same/different; "
                          f"got {value!r}")


def read_pairs_csv(path: PathLike) -> list[PairRow]:
    """Read a pairs CSV with a header row: columns ``a``, ``b`` and optionally ``is_same``.

    Relative image paths are taken relative to the CSV's folder; absolute ones as they are.

    Raises:
        SiamsearchError: missing file, missing columns, empty path cells or bad ``is_same`` values.
    """
    p = Path(path)
    if not p.is_file():
        raise SiamsearchError(f"{p}: no such pairs file; give a CSV with a header row `a,b[,is_same]`")
    base = p.parent
    rows: list[PairRow] = []
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "a" not in cols or "b" not in cols:
                raise SiamsearchError(f"{p}: the header must name columns `a` and `b` (and optionally `is_same`); "
                                      f"found {cols or 'no header'}")
            reader.fieldnames = cols
            for raw in reader:
                line = reader.line_num
                a, b = (raw.get("a") or "").strip(), (raw.get("b") or "").strip()
                if not a and not b and not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
                    continue  # blank line
                if not a or not b:
                    raise SiamsearchError(f"{p}, line {line}: both `a` and `b` need an image path")
                expected = _parse_bool(raw.get("is_same") or "", line, p) if "is_same" in cols else None
                rows.append(PairRow(a, b, expected, line, str(base / a), str(base / b)))
    except UnicodeDecodeError:
        raise SiamsearchError(f"{p} is not a UTF-8 text CSV") from None
    if not rows:
        raise SiamsearchError(f"{p} has no pairs (only a header?)")
    return rows


@dataclass(frozen=True)
class PairOutcome:
    """The result for one CSV row. ``distance`` / ``is_same`` are ``None`` when ``error`` is set."""

    a: str
    b: str
    expected: Optional[bool]
    distance: Optional[float]
    is_same: Optional[bool]
    error: Optional[str]
    line: int

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "distance": self.distance, "is_same": self.is_same,
                "expected": self.expected, "error": self.error}


@dataclass(frozen=True)
class PairsReport:
    """All pairs of a CSV with the threshold used and, when the CSV gives ``is_same``, the figures.

    Attributes:
        pairs: one :class:`PairOutcome` per CSV row, in file order.
        threshold, threshold_source, calibration: as in :class:`VerificationResult`.
        metrics: ``None`` without ``is_same``; else ``n_scored``, ``n_genuine``, ``n_impostor``,
            ``accuracy``, ``far``, ``frr`` (with ``far_ci95`` / ``frr_ci95``, Clopper-Pearson),
            ``false_accepts``, ``false_rejects`` and ``auc`` (``None`` unless both kinds are present).
    """

    pairs: tuple
    threshold: float
    threshold_source: str
    calibration: Optional[Mapping]
    metrics: Optional[Mapping]

    @property
    def n_failed(self) -> int:
        return sum(p.error is not None for p in self.pairs)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "calibration": None if self.calibration is None else _thaw(self.calibration),
            "n_pairs": len(self.pairs),
            "n_failed": self.n_failed,
            "metrics": None if self.metrics is None else _thaw(self.metrics),
            "pairs": [p.to_dict() for p in self.pairs],
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        """:meth:`to_dict` as JSON text (what ``siamsearch verify --pairs ... --json`` prints)."""
        return json.dumps(self.to_dict(), indent=indent)


def _chunks(rows: Sequence[PairRow], size: int) -> Iterator[Sequence[PairRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _pair_metrics(d: np.ndarray, expected: np.ndarray, threshold: float) -> dict:
    from ..metrics import verification as verif

    accepted = d <= threshold
    gen, imp = expected, ~expected
    n_gen, n_imp = int(gen.sum()), int(imp.sum())
    fa, fr = int((accepted & imp).sum()), int((~accepted & gen).sum())
    return {
        "n_scored": int(d.size),
        "n_genuine": n_gen,
        "n_impostor": n_imp,
        "accuracy": verif.accuracy_at(d, expected, threshold),
        "far": fa / n_imp if n_imp else None,
        "far_ci95": list(binomial_ci(fa, n_imp)) if n_imp else None,
        "frr": fr / n_gen if n_gen else None,
        "frr_ci95": list(binomial_ci(fr, n_gen)) if n_gen else None,
        "false_accepts": fa,
        "false_rejects": fr,
        "auc": verif.roc_auc(d, expected) if n_gen and n_imp else None,
        "ci_method": ("Clopper-Pearson exact binomial interval on the pair counts (95%); a pairs file names no "
                      "identities, so the pairs are treated as independent: too narrow when people repeat"),
        "decision_rule": DECISION_RULE,
    }


def verify_pairs(model, pairs: Union[PathLike, Sequence[PairRow]], threshold: Optional[float] = None,
                 calibration: CalibrationLike = None, batch_size: int = 64, workers: int = 0,
                 progress: bool = False) -> PairsReport:
    """Verify every pair of a CSV (or of :class:`PairRow` s) in batched passes.

    Images are embedded per chunk of :data:`PAIR_CHUNK` pairs (each distinct file once per
    chunk) with :meth:`Embedder.embed_files`, so memory does not grow with the CSV. A pair
    with an unreadable image gets ``error`` set (the reader's reason) and no decision; the run
    goes on.

    Args:
        model: an :class:`~siamsearch.core.embedder.Embedder`.
        pairs: path of a CSV ``a,b[,is_same]`` (see :func:`read_pairs_csv`) or rows.
        threshold, calibration: as in :func:`verify`.
        batch_size, workers: for :meth:`Embedder.embed_files`.
        progress: a tqdm bar (pairs) on stderr.

    Returns:
        A :class:`PairsReport`; with ``is_same`` given, accuracy / FAR / FRR at the threshold and AUC.
    """
    thr, source, record = resolve_threshold(model, threshold, calibration)
    rows = read_pairs_csv(pairs) if isinstance(pairs, (str, os.PathLike)) else list(pairs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="verifying", unit="pair")
    outcomes: list[PairOutcome] = []
    for chunk in _chunks(rows, PAIR_CHUNK):
        files = sorted({r.path_a for r in chunk} | {r.path_b for r in chunk})
        pos = {f: i for i, f in enumerate(files)}
        emb = np.zeros((len(files), model.dim), np.float32)
        failed: dict[int, str] = {}
        for batch in model.embed_files(files, batch_size=batch_size, workers=workers):
            emb[batch.positions] = batch.embeddings
            failed.update({int(i): reason for i, reason in batch.failures})
        ia = np.array([pos[r.path_a] for r in chunk], dtype=np.int64)
        ib = np.array([pos[r.path_b] for r in chunk], dtype=np.int64)
        dist = pair_distances(emb[ia], emb[ib])
        for r, i, j, d in zip(chunk, ia, ib, dist):
            errs = [f"{f}: {failed[k]}" for f, k in ((r.path_a, int(i)), (r.path_b, int(j))) if k in failed]
            if errs:
                outcomes.append(PairOutcome(r.a, r.b, r.expected, None, None, "; ".join(dict.fromkeys(errs)), r.line))
            else:
                outcomes.append(PairOutcome(r.a, r.b, r.expected, float(d), bool(d <= thr), None, r.line))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    labelled = [o for o in outcomes if o.error is None and o.expected is not None]
    metrics = None
    if labelled:
        metrics = _pair_metrics(np.array([o.distance for o in labelled], dtype=np.float64),
                                np.array([o.expected for o in labelled], dtype=bool), thr)
    return PairsReport(pairs=tuple(outcomes), threshold=thr, threshold_source=source,
                       calibration=None if record is None else _freeze(record),
                       metrics=None if metrics is None else _freeze(metrics))


def write_pairs_csv(report: PairsReport, out: PathLike) -> None:
    """Write one row per pair: ``a,b,distance,is_same,expected,error`` (``is_same`` is the decision)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "distance", "is_same", "expected", "error"])
        for p in report.pairs:
            w.writerow([p.a, p.b, "" if p.distance is None else f"{p.distance:.6f}",
                        "" if p.is_same is None else str(p.is_same).lower(),
                        "" if p.expected is None else str(p.expected).lower(), p.error or ""])
