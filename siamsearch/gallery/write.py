"""Step 3 of a sync (:mod:`siamsearch.gallery.sync`): the new ``gallery.h5`` under a temporary name.

An update patches a byte copy of the committed file (:meth:`~siamsearch.gallery.hdf5.GalleryWriter.patch_copy`:
new rows appended, the ``deleted`` and ``mtime`` columns set), so that it costs the size of the change; a
first build, a compaction, or a file that patching has grown too much is written complete.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from . import store as _store
from .store import GalleryReader

#: An update patches a copy of ``gallery.h5`` while the file stays within this factor of the size a complete
#: rewrite gave it (scaled to its rows), plus :data:`PATCH_SLACK_BYTES`; else it rewrites it (:func:`patchable`).
PATCH_GROWTH = 1.25
PATCH_SLACK_BYTES = 1 << 20


def write_rows(tmp: str, old: Optional[GalleryReader], plan: Any, deleted: np.ndarray, compact: bool,
               journal: dict, pending: _store.PendingLog, code: dict, attrs: dict, dim: int,
               names: list, skipped: list) -> tuple[int, int, bool]:
    """The new row store at ``tmp``: kept old rows first, then the journal's rows.

    ``plan`` is the run's :class:`siamsearch.gallery.sync.Plan` (its ``old`` rows and ``touched`` count).

    Without compaction the committed file is copied byte for byte and patched (only the journal's
    rows are written, plus the ``deleted`` and ``mtime`` columns), so an update costs the size of
    the change, not of the gallery; for a first build, a compaction, or a file that is not
    :func:`patchable`, a complete store is streamed.

    Returns:
        ``(first new row id, rows in the new store, whether it is a patched copy)``.
    """
    rows = plan.old
    writer = None
    rows_after = rows.n + len(journal)
    if old is not None and not compact and isinstance(old, _store.GalleryFile) and patchable(old, rows_after):
        writer = _store.GalleryWriter.patch_copy(old.path, tmp, rows_after=rows_after)
    patched = writer is not None
    try:
        if writer is not None:
            assert writer.n == rows.n, "the copied store must hold the rows read from it"
            writer.set_column("deleted", deleted)
            if plan.touched:
                writer.set_column("mtime", rows.mtime)
        else:
            writer = _store.GalleryWriter(tmp, dim, attrs, expected_rows=rows.n + len(journal))
            if old is not None:
                _copy_old_rows(writer, old, rows, deleted, compact)
        first_new = writer.n
        _append_journal(writer, journal, pending, code)
        writer.finish(names, skipped, attrs)
    except BaseException:
        writer.abort()
        raise
    return first_new, writer.n, patched


def patchable(old: GalleryReader, rows_after: int) -> bool:
    """Whether an update may patch a copy of ``old``'s file rather than write a complete new one.

    Patching leaves a little unused space in the file each time (HDF5 does not reuse the space of
    the strings and small datasets it replaces: a few kB per update). A complete rewrite records the
    file's size and rows (``rewrite_bytes``, ``rewrite_rows``); once the file exceeds
    :data:`PATCH_GROWTH` times that size scaled to its rows now (plus :data:`PATCH_SLACK_BYTES`), or
    when they are not recorded (a file written before this rule), the next update rewrites it.
    """
    a = old.attrs
    base, base_rows = int(a.get("rewrite_bytes", 0) or 0), int(a.get("rewrite_rows", 0) or 0)
    if base <= 0 or base_rows <= 0:
        return False
    try:
        size = os.path.getsize(old.path)
    except OSError:
        return False
    return size <= PATCH_GROWTH * base * max(rows_after, 1) / base_rows + PATCH_SLACK_BYTES


def _copy_old_rows(writer, old: GalleryReader, rows: Any, deleted: np.ndarray, compact: bool) -> None:
    """Stream the committed rows into a new store (all of them, or the live ones when compacting)."""
    keep_old = np.flatnonzero(~deleted) if compact else np.arange(rows.n)
    labels = old.labels()
    for ids, emb in old.source(keep_old).blocks(_store.BLOCK_ROWS):
        writer.append([rows.relpaths[i] for i in ids], labels[ids], [rows.sha256[i] for i in ids],
                      rows.mtime[ids], rows.size[ids], emb, deleted[ids])


def _append_journal(writer, journal: dict, pending: _store.PendingLog, code: dict) -> None:
    """Append the journal's rows (``relpath -> (segment, row)``), segment by segment."""
    by_seg: dict = {}
    for seg, j in journal.values():
        by_seg.setdefault(seg, []).append(j)
    for seg in sorted(by_seg):
        block = pending.read(seg)
        take = sorted(by_seg[seg])
        writer.append([block.relpaths[j] for j in take],
                      np.asarray([code.get(block.labels[j], -1) if block.labels[j] else -1 for j in take],
                                 "int64"),
                      [block.sha256[j] for j in take], block.mtime[take], block.size[take],
                      block.embeddings[take], np.zeros(len(take), "uint8"))
