"""What gallery operations return: :class:`SearchResult` (neighbours) and :class:`BuildReport` (a build/update)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """The k nearest gallery entries of each query; validated and read-only.

    Attributes:
        distances: ``[Q, k]`` float32 Euclidean distances in [0, 2], ascending in each row.
        ids: ``[Q, k]`` int64 gallery row ids (``gallery.h5`` rows), unique in each row.
        paths: ``Q`` tuples of ``k`` absolute image paths.
        labels: ``Q`` tuples of ``k`` label names (``None`` for unlabelled entries).
        label_ids: ``[Q, k]`` int64 label codes (-1 = none), indexes into ``Gallery.label_names``.

    ``k`` is ``min(requested k, live gallery size)``.
    """

    distances: np.ndarray
    ids: np.ndarray
    paths: tuple
    labels: tuple
    label_ids: np.ndarray

    def __post_init__(self) -> None:
        d, i, lab = self.distances, self.ids, self.label_ids
        if d.ndim != 2 or d.shape != i.shape or d.shape != lab.shape or d.dtype != np.float32 or i.dtype != np.int64:
            raise ValueError(f"SearchResult: inconsistent arrays {d.shape}/{d.dtype}, {i.shape}/{i.dtype}, {lab.shape}")
        if len(self.paths) != d.shape[0] or any(len(r) != d.shape[1] for r in self.paths):
            raise ValueError("SearchResult: paths do not match the id array")
        if len(self.labels) != d.shape[0] or any(len(r) != d.shape[1] for r in self.labels):
            raise ValueError("SearchResult: labels do not match the id array")
        if d.size:
            if not np.isfinite(d).all() or d.min() < 0 or d.max() > 2.0 + 1e-3:
                raise ValueError("SearchResult: distances must be finite and in [0, 2]")
            if (np.diff(d, axis=1) < 0).any():
                raise ValueError("SearchResult: distances must be sorted ascending in each row")
            if i.min() < 0:
                raise ValueError("SearchResult: missing neighbours (-1 ids)")
            srt = np.sort(i, axis=1)
            if (srt[:, 1:] == srt[:, :-1]).any():
                raise ValueError("SearchResult: ids must be unique in each row")
        for a in (d, i, lab):
            a.flags.writeable = False

    @property
    def k(self) -> int:
        return int(self.distances.shape[1])

    def __len__(self) -> int:
        """Number of queries."""
        return int(self.distances.shape[0])

    def neighbours(self, q: int = 0) -> list[dict]:
        """The neighbours of query ``q`` as dicts: rank, id, distance, path, label."""
        return [{"rank": r + 1, "id": int(self.ids[q, r]), "distance": float(self.distances[q, r]),
                 "path": self.paths[q][r], "label": self.labels[q][r]} for r in range(self.k)]

    def to_dict(self) -> dict:
        """JSON-ready: ``{"k": k, "queries": [[neighbour, ...], ...]}``."""
        return {"k": self.k, "queries": [self.neighbours(q) for q in range(len(self))]}


@dataclass(frozen=True)
class BuildReport:
    """What a build or update did.

    Attributes:
        files: image files found in the folder.
        added, changed, removed, unchanged: files newly embedded, re-embedded after a
            content change, dropped because they disappeared, kept as they were.
        resumed: rows recovered from an interrupted run's journal instead of re-embedded.
        skipped: ``(relative path, reason)`` for files that could not be read.
        embedded: images embedded in this run; seconds: wall time; index: what happened
            to the Faiss index (``built``, ``rebuilt``, ``updated``, ``unchanged``).
    """

    folder: str
    source_dir: str
    files: int
    added: int
    changed: int
    removed: int
    unchanged: int
    resumed: int
    skipped: tuple
    embedded: int
    seconds: float
    index: str
    factory: str
    rows: int = 0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"folder": self.folder, "source_dir": self.source_dir, "files": self.files, "added": self.added,
                "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged,
                "resumed": self.resumed, "embedded": self.embedded, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 1), "index": self.index,
                "factory": self.factory, "rows": self.rows,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}

    def summary(self) -> str:
        """The end-of-run summary printed by the CLI."""
        lines = [f"{self.folder}: {self.rows} images indexed from {self.source_dir} "
                 f"({self.added} added, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged"
                 + (f", {self.resumed} resumed from an interrupted run" if self.resumed else "") + ")",
                 f"embedded {self.embedded} images in {self.seconds:.1f} s"
                 + (f" ({self.images_per_second:.1f} images/s)" if self.embedded >= 100 else "")
                 + f"; index {self.factory} {self.index}"]
        if self.skipped:
            lines.append(f"warning: skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {p}: {r}" for p, r in self.skipped]
        return "\n".join(lines)
