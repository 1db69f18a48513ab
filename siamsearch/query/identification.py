"""Identification: who or what in a gallery is this image?

:func:`identify` embeds query images in batches with the gallery's model and
searches the gallery (:meth:`siamsearch.Gallery.search`) for the ``k`` nearest
neighbours. The **prediction is the label of the nearest neighbour** (rank 1);
a majority over the top k is not used, because with few images per identity
it lets a crowd of far neighbours outvote a close one. In **open-set** mode the
prediction is ``"unknown"`` when the nearest neighbour is farther than the
threshold (same rule as verification: a match iff ``distance <= threshold``);
the threshold is an explicit value or the model's calibration. A threshold
calibrated on *pairs* (FAR per impostor pair) accepts an unknown query more
often against a gallery, since the nearest of ``N`` impostors is kept (about
``1 - (1 - FAR)^N``); measure open-set rates on the gallery itself
(``siamsearch evaluate --index``) before relying on ``"unknown"``.

The model is found from the gallery (the checkpoint path it recorded, checked
against the fingerprint it recorded) unless one is given (``model=``, CLI
``--model``) for a gallery whose model file has moved; either way a model whose
fingerprint differs from the gallery's is refused.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


from ..core.errors import SiamsearchError, check_fingerprint
from ..core.images import list_images
from ..core.files import PathLike

#: The prediction for a query whose nearest neighbour is beyond the open-set threshold.
UNKNOWN = "unknown"


def expand_queries(items: Sequence[PathLike]) -> list[str]:
    """Query image paths from files and folders (a folder gives its images, recursively, sorted).

    Raises:
        SiamsearchError: a path that does not exist, or nothing to query.
    """
    return [path for path, _ in expand_labelled_queries(items)]


def expand_labelled_queries(items: Sequence[PathLike]) -> list[tuple[str, Optional[str]]]:
    """Like :func:`expand_queries`, with each query's expected identity when a folder labels it.

    A folder of identity folders labels its images the way datasets and galleries are labelled
    (:func:`siamsearch.data.identity_of`: ``QUERIES/bob/2019/x.png`` is ``bob``); images directly
    in a given folder, and single files, carry no label (``None``).

    Returns:
        ``[(path, expected identity or None)]`` in query order.
    """
    from ..data.identity import identity_of

    out: list[tuple[str, Optional[str]]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise SiamsearchError(f"{p} holds no images (looked for common image extensions, recursively)")
            out.extend((os.fspath(f), identity_of(f.relative_to(p))) for f in found)
        elif p.is_file():
            out.append((os.fspath(p), None))
        else:
            raise SiamsearchError(f"{p}: no such image or folder")
    if not out:
        raise SiamsearchError("give at least one query image or folder")
    return out


@dataclass(frozen=True)
class Neighbor:
    """One gallery match: ``rank`` (1 = nearest), gallery ``path``, its ``label`` and the Euclidean
    ``distance`` in [0, 2]."""

    rank: int
    path: str
    label: Optional[str]
    distance: float

    def to_dict(self) -> dict:
        return {"rank": self.rank, "path": self.path, "label": self.label, "distance": self.distance}


@dataclass(frozen=True)
class QueryAnswer:
    """The answer for one query image.

    Attributes:
        query: the query path.
        prediction: the nearest neighbour's label, ``"unknown"`` (open set, nearest beyond the
            threshold) or ``None`` (unreadable query, or an unlabelled gallery).
        neighbors: up to ``k`` :class:`Neighbor` sorted by distance.
        error: why the query could not be answered, else ``None``.
        expected: the identity the query's folder names (folder queries), else ``None``.
    """

    query: str
    prediction: Optional[str]
    neighbors: tuple
    error: Optional[str] = None
    expected: Optional[str] = None

    def __post_init__(self) -> None:
        d = [n.distance for n in self.neighbors]
        if any(b < a for a, b in zip(d, d[1:])):
            raise ValueError("neighbors must be sorted by distance")
        if [n.rank for n in self.neighbors] != list(range(1, len(d) + 1)):
            raise ValueError("neighbor ranks must be 1..k")

    def to_dict(self) -> dict:
        """One element of ``siamsearch query --json``: ``query``, ``prediction``, ``neighbors``
        (``[{rank, path, label, distance}]``) and ``error`` (only when set)."""
        out = {"query": self.query, "prediction": self.prediction, "neighbors": [n.to_dict() for n in self.neighbors]}
        if self.error is not None:
            out["error"] = self.error
        if self.expected is not None:
            out["expected"] = self.expected
        return out


def predict(neighbors: Sequence[Neighbor], threshold: Optional[float]) -> Optional[str]:
    """The nearest neighbour's label; ``"unknown"`` when ``threshold`` is given and the nearest
    distance exceeds it (``distance <= threshold`` is a match)."""
    if not neighbors:
        return UNKNOWN if threshold is not None else None
    if threshold is not None and neighbors[0].distance > threshold:
        return UNKNOWN
    return neighbors[0].label


@dataclass(frozen=True)
class IdentificationReport:
    """All answers of one :func:`identify` call and the settings they were made under.

    Attributes:
        answers: one :class:`QueryAnswer` per query, in input order.
        k: neighbours asked for.
        open_set: whether ``"unknown"`` answers were possible.
        threshold: the open-set distance threshold, else ``None``.
        threshold_source: ``"calibration"``, ``"explicit"`` or ``None`` (closed set).
        gallery: the gallery folder.
        model_fingerprint: the model used (equal to the gallery's).
    """

    answers: tuple
    k: int
    open_set: bool
    threshold: Optional[float]
    threshold_source: Optional[str]
    gallery: str
    model_fingerprint: str
    gallery_labels: frozenset = frozenset()

    def summary(self) -> dict:
        """Counts over the answers: ``queries``, ``answered`` (read and given neighbours), ``unknown``,
        ``not_read``; for queries whose folder names their identity: ``labelled`` and ``correct``
        (prediction equals that identity, or ``"unknown"`` for an identity the gallery does not hold)."""
        read = [a for a in self.answers if a.error is None]
        labelled = [a for a in read if a.expected is not None]
        correct = sum(a.prediction == (a.expected if a.expected in self.gallery_labels or not self.open_set
                                       else UNKNOWN) for a in labelled)
        return {"queries": len(self.answers), "answered": len(read), "not_read": len(self.answers) - len(read),
                "unknown": sum(a.prediction == UNKNOWN for a in read), "labelled": len(labelled),
                "correct": int(correct) if labelled else None}

    def summary_line(self) -> str:
        """The summary as one line, e.g. ``12 queries: 12 answered (2 unknown), 0 not read; 9 of 10 labelled correct``."""
        s = self.summary()
        line = f"{s['queries']} queries: {s['answered']} answered"
        line += f" ({s['unknown']} unknown)" if self.open_set else ""
        line += f", {s['not_read']} not read"
        if s["labelled"]:
            line += f"; {s['correct']} of {s['labelled']} labelled queries correct ({s['correct'] / s['labelled']:.1%})"
        return line

    def to_dict(self) -> dict:
        """The structure ``siamsearch query --json`` prints: ``answers`` (one object per query, see
        :meth:`QueryAnswer.to_dict`), ``summary`` (:meth:`summary`) and the settings ``k``, ``open_set``,
        ``threshold``, ``threshold_source``, ``gallery``, ``model_fingerprint``."""
        return {"answers": [a.to_dict() for a in self.answers], "summary": self.summary(), "k": self.k,
                "open_set": self.open_set, "threshold": self.threshold, "threshold_source": self.threshold_source,
                "gallery": self.gallery, "model_fingerprint": self.model_fingerprint}

    def to_json(self, indent: Optional[int] = 2) -> str:
        """:meth:`to_dict` as JSON text (exactly what ``siamsearch query --json`` prints)."""
        return json.dumps(self.to_dict(), indent=indent)


def write_results_csv(report: IdentificationReport, out: PathLike) -> None:
    """One row per (query, neighbour): ``query,prediction,rank,path,label,distance,error``
    (a query without neighbours gets one row with empty neighbour columns)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["query", "prediction", "rank", "path", "label", "distance", "error"])
        for a in report.answers:
            pred = "" if a.prediction is None else a.prediction
            if not a.neighbors:
                w.writerow([a.query, pred, "", "", "", "", a.error or ""])
            for n in a.neighbors:
                w.writerow([a.query, pred, n.rank, n.path, "" if n.label is None else n.label, f"{n.distance:.6f}",
                            a.error or ""])


def open_gallery(index, model=None, device: str = "auto"):
    """The gallery and the model to query it with, fingerprints checked.

    Args:
        index: a gallery folder (``index/NAME``) or an opened :class:`~siamsearch.gallery.Gallery`.
        model: ``None`` (use the checkpoint the gallery recorded, checked against its fingerprint),
            a checkpoint path (a moved model) or an :class:`~siamsearch.core.embedder.Embedder`.

    Returns:
        ``(gallery, embedder)``.

    Raises:
        FingerprintMismatch: the model is not the one that built the gallery.
        SiamsearchError: the recorded model is gone and none was given; damaged gallery (GalleryError).
    """
    from ..gallery import Gallery

    if model is not None and not hasattr(model, "fingerprint"):
        from ..core.embedder import load_model

        model = load_model(model, device=device)
    if isinstance(index, Gallery):
        if model is not None:
            check_fingerprint(index.fingerprint, model.fingerprint, made=f"{index.folder} was built with",
                              what="the given model", fix="query with the model that built it")
        gallery = index
    else:
        gallery = Gallery.open(index, model=model)
    return gallery, (model if model is not None else gallery.model)


def identify(
    index,
    queries: Sequence[PathLike],
    k: int = 5,
    open_set: bool = False,
    threshold: Optional[float] = None,
    model=None,
    calibration=None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> IdentificationReport:
    """Top-k gallery neighbours and a predicted identity for each query image.

    Queries are embedded in streamed batches (:meth:`Embedder.embed_files`; an unreadable
    file is reported in its answer's ``error``, never raised) and each batch is searched
    with :meth:`siamsearch.gallery.Gallery.search`.

    Args:
        index: gallery folder (``index/NAME``) or an opened Gallery (load once, query many times).
        queries: image files and/or folders of images.
        k: neighbours per query (capped at the gallery size).
        open_set: answer ``"unknown"`` when the nearest neighbour is farther than the threshold;
            the threshold is ``threshold``, ``calibration`` or the model's calibration (error when none exists).
        threshold: an explicit open-set distance threshold in [0, 2]; giving it turns open set on.
        calibration: a calibration record or a path to one, instead of the model's own; giving it turns
            open set on too, and it is always checked (a file that is no record is an error).
        model: checkpoint path or Embedder when the gallery's recorded model has moved (must match).
        batch_size, workers: embedding batch size and image-decoding processes.
        device: for a model loaded here.
        progress: a tqdm bar (images) on stderr.

    Returns:
        An :class:`IdentificationReport`; ``report.to_json()`` is the ``query --json`` text.

    Raises:
        FingerprintMismatch: model vs gallery, or calibration vs model.
        SiamsearchError: open set without any threshold (says how to get one), k < 1, missing queries.
    """
    from .verification import resolve_threshold

    if int(k) < 1:
        raise SiamsearchError(f"-k must be at least 1; got {k}")
    gallery, embedder = open_gallery(index, model, device)
    source = None
    if threshold is not None or open_set or calibration is not None:  # each one asks for the open set
        threshold, source, _ = resolve_threshold(embedder, threshold, calibration)
        open_set = True
    labelled = expand_labelled_queries(queries)
    paths = [p for p, _ in labelled]
    answers: list[QueryAnswer] = []
    for batch in embedder.embed_files(paths, batch_size=batch_size, workers=workers, progress=progress):
        rows: dict[int, QueryAnswer] = {int(p): QueryAnswer(paths[int(p)], None, (), reason, labelled[int(p)][1])
                                        for p, reason in batch.failures}
        if len(batch.positions):
            res = gallery.search(batch.embeddings, k=k)
            for q, pos in enumerate(batch.positions.tolist()):
                nbrs = tuple(Neighbor(rank=r + 1, path=res.paths[q][r], label=res.labels[q][r],
                                      distance=float(res.distances[q, r])) for r in range(res.k))
                rows[pos] = QueryAnswer(paths[pos], predict(nbrs, threshold), nbrs, expected=labelled[pos][1])
        answers.extend(rows[p] for p in sorted(rows))
    return IdentificationReport(answers=tuple(answers), k=int(k), open_set=bool(open_set), threshold=threshold,
                                threshold_source=source, gallery=os.fspath(gallery.folder),
                                model_fingerprint=embedder.fingerprint,
                                gallery_labels=frozenset(map(str, gallery.label_names)))
