"""Build and update: bring a gallery folder in line with its image folder, in named steps.

:func:`sync` is the shared core of ``index build`` and ``index update``:

1. **plan** (:func:`plan_sync`): scan the folder, keep rows whose files are unchanged
   (size and mtime, else content hash), find new, changed and removed files, and
   rows an interrupted run already embedded (the journal);
2. **embed** (:func:`embed_missing`): embed what is missing in streamed batches into
   journal segments (:class:`~siamsearch.gallery.store.PendingLog`);
3. **write** (:func:`write_rows`): a new row store under a temporary name: a byte copy of
   the committed one patched with the change (new rows appended, tombstones set), or, for a
   first build or when tombstones pass a threshold (compaction), a complete stream of rows;
4. **index** (:func:`index_rows`): patch the committed Faiss index when it is still the
   right kind, else build one from the stored embeddings;
5. **commit** (:func:`siamsearch.gallery.store.commit`): rename index and store into place.

All row-store access goes through :class:`~siamsearch.gallery.store.GalleryReader`
(reading) and :class:`~siamsearch.gallery.hdf5.GalleryWriter` (writing).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .._version import __version__
from ..core.errors import GalleryError, SiamsearchError
from ..core.images import sha256_file
from . import ann as _ann
from . import store as _store
from .results import BuildReport
from . import guards
from .scan import Scan, same_stat, scan_folder
from .store import GalleryReader, RowBlock
from .engines import embedding_layout
from .resolve import embedding_precision
from .write import write_rows

#: An approximate index is rebuilt (re-trained, re-tuned) when the gallery has grown or shrunk by this factor.
RETUNE_FACTOR = 2.0


# --------------------------------------------------------------------------- plan


@dataclass
class OldRows:
    """The rows the committed gallery holds (``n`` rows, deleted ones included), as arrays."""

    n: int
    deleted: np.ndarray  # [n] bool
    relpaths: list
    sha256: list
    size: np.ndarray  # [n] int64
    mtime: np.ndarray  # [n] float64, a copy: touched files get their new mtime
    label_names: list

    @classmethod
    def of(cls, old: Optional[GalleryReader]) -> "OldRows":
        if old is None:
            return cls(0, np.zeros(0, bool), [], [], np.zeros(0, "int64"), np.zeros(0, "float64"), [])
        return cls(old.n_rows, old.deleted(), old.relpaths(), old.sha256(), old.size(), old.mtime().copy(),
                   old.label_names())

    def live_rows(self) -> dict:
        """``relpath -> row`` of the live rows."""
        relpaths = self.relpaths
        return {relpaths[i]: i for i in np.flatnonzero(~self.deleted).tolist()}


@dataclass
class Plan:
    """What a run must do: the files to embed and the rows that stay, go or come back from the journal."""

    scan: Scan
    label_mode: str
    old: OldRows
    live_row: dict  # relpath -> live old row
    to_embed: list  # relpaths to embed now
    needed: set  # relpaths that need a new row (new or changed content)
    replaced: dict  # relpath -> old row, for changed files
    removed_rows: list  # old rows of files that are gone
    unchanged: int
    resumed: int
    touched: int  # unchanged bytes under a new mtime

    @property
    def files(self) -> int:
        return len(self.scan.relpaths) + len(self.scan.skipped)


def scan_source(folder: Path, source: Path, old: Optional[GalleryReader], dim: int,
                label_mode: str) -> tuple[int, Scan, str]:
    """The first step of every sync (HDF5 or sharded): refuse a model whose embedding length is not the
    gallery's, scan ``source`` with the gallery's label mode (a new gallery: ``label_mode``), and refuse a
    first build of a folder without images.

    Returns:
        ``(dim, scan, mode)``: the embedding length, the folder scan and the label mode it used.
    """
    if old is not None and old.dim != dim:
        raise GalleryError(f"{folder} holds {old.dim}-d embeddings but the model makes {dim}-d; "
                           f"{_store.rebuild_hint(folder)}")
    mode = label_mode if old is None else old.attrs.get("label_mode", label_mode)
    scan, mode = scan_folder(source, mode)
    if old is None:
        guards.check_not_empty(source, len(scan.relpaths))
    return dim, scan, mode


def plan_sync(source: Path, old: Optional[GalleryReader], scan: Scan, label_mode: str, journal: dict) -> Plan:
    """Classify every file of ``scan`` against the committed rows and the journal (``relpath -> record``).

    The change-detection rule (docs/gallery.md, "What an update looks at"): a file whose size and mtime
    equal its row's is unchanged and is not read; only the others are hashed (SHA-256), and a file with
    the same bytes under a new mtime keeps its row (``touched``). The size/mtime comparison runs on
    arrays, so the work per unchanged file is one dictionary lookup.
    """
    rows = OldRows.of(old)
    live_row = rows.live_rows()
    n = len(scan.relpaths)
    row_of = np.fromiter((live_row.get(r, -1) for r in scan.relpaths), "int64", n)
    same = np.zeros(n, bool)
    known = np.flatnonzero(row_of >= 0)
    kr = row_of[known]
    same[known] = (scan.size[known] == rows.size[kr]) & (np.abs(scan.mtime[known] - rows.mtime[kr]) < 1e-6)
    needed, replaced, to_embed = set(), {}, []
    resumed = touched = 0
    for i in np.flatnonzero(~same).tolist():  # new files, and files whose size or mtime differ
        r, row = scan.relpaths[i], int(row_of[i])
        if row >= 0:
            try:
                same_bytes = sha256_file(source / r) == rows.sha256[row]
            except OSError:
                same_bytes = False
            if same_bytes:
                rows.mtime[row] = scan.mtime[i]  # touched, same bytes: keep the row, remember the new mtime
                touched += 1
                continue
            replaced[r] = row
        needed.add(r)
        if r in journal:
            resumed += 1
        else:
            to_embed.append(r)
    current = set(scan.relpaths)
    removed_rows = [i for r, i in live_row.items() if r not in current]
    return Plan(scan, label_mode, rows, live_row, to_embed, needed, replaced, removed_rows,
                int(same.sum()) + touched, resumed, touched)


def journal_records(pending: _store.PendingLog, stat_now: dict) -> dict:
    """``relpath -> (segment, row)``: the last journal record of each file whose size and mtime still match."""
    records: dict = {}
    for seg in pending.segments():
        rows = pending.read(seg, embeddings=False)
        if rows is None:  # unreadable segment: its files are embedded again
            seg.unlink()
            continue
        for j, (r, s, m) in enumerate(zip(rows.relpaths, rows.size, rows.mtime)):
            if r in stat_now and same_stat(s, m, *stat_now[r]):
                records[r] = (seg, j)
    return records


# --------------------------------------------------------------------------- embed


def embed_missing(plan: Plan, source: Path, embedder, pending: _store.PendingLog, batch_size: int,
                  workers: int, progress: bool) -> tuple[int, list]:
    """Embed ``plan.to_embed`` into journal segments of :data:`~siamsearch.gallery.store.CHUNK_ROWS` rows.

    Returns:
        ``(images embedded, skipped files [(relpath, reason)])``.
    """
    skipped: list = []
    if not plan.to_embed:
        return 0, skipped
    stat_now = plan.scan.stat()
    label_of = dict(zip(plan.scan.relpaths, plan.scan.labels))
    to_embed = plan.to_embed
    paths = [str(source / r) for r in to_embed]
    buf: list = []
    buf_emb: list = []
    embedded = 0

    def flush() -> None:
        if buf:
            pending.write(RowBlock([b[0] for b in buf], [b[1] for b in buf], [b[2] for b in buf],
                                   np.asarray([b[3] for b in buf], "float64"),
                                   np.asarray([b[4] for b in buf], "int64"), np.concatenate(buf_emb)))
            buf.clear()
            buf_emb.clear()

    for batch in embedder.embed_files(paths, batch_size=batch_size, progress=progress, digests=True,
                                      **embedding_layout(workers, paths)):
        skipped += [(to_embed[pos], reason) for pos, reason in batch.failures]
        # the content hash is of the bytes that were embedded, taken where the file was read
        for pos, sha in zip(batch.positions.tolist(), batch.digests or []):
            r = to_embed[pos]
            s, m = stat_now[r]
            buf.append((r, label_of[r], sha, m, s))
        if len(batch.positions):
            buf_emb.append(np.asarray(batch.embeddings, dtype="float32"))
            embedded += len(batch.positions)
        if len(buf) >= _store.CHUNK_ROWS:
            flush()
    flush()
    return embedded, skipped


# --------------------------------------------------------------------------- write


def label_codes(names: list, new_labels: set) -> dict:
    """``name -> code`` for the old names (kept) and new ones (appended sorted); extends ``names``."""
    code = {nm: i for i, nm in enumerate(names)}
    for nm in sorted(new_labels - set(code) - {""}):
        code[nm] = len(names)
        names.append(nm)
    return code


# --------------------------------------------------------------------------- index


def index_rows(folder: Path, old: Optional[GalleryReader], new: GalleryReader, factory: str, first_new: int,
               newly_deleted: list, compact: bool, progress: bool) -> tuple[_ann.AnnIndex, str, int]:
    """The index for the new store: the committed one patched when reusable, else built from ``new``.

    Returns:
        ``(index, what happened: built|rebuilt|updated|unchanged, live rows)``.
    """
    live = new.live_ids()
    state = "built" if old is None else "rebuilt"
    ann = None
    if old is not None and not compact:
        ann = reusable_index(folder, old, factory, len(live), new.dim)
        if ann is not None:
            ids_new = np.arange(first_new, new.n_rows, dtype="int64")
            for ids, x in new.source(ids_new).blocks(_store.BLOCK_ROWS):
                ann.add(x, ids)
            ann.remove(np.asarray(sorted(set(newly_deleted)), "int64"))
            state = "updated" if (len(ids_new) or newly_deleted) else "unchanged"
            if ann.needs_rebuild:
                ann, state = None, "rebuilt"
    if ann is None:
        bar = _progress_bar(progress, len(live), "indexing")
        ann = _ann.build_index(new.source(live), factory=factory,
                               progress=(lambda n: bar.update(n)) if bar is not None else None)
        if bar is not None:
            bar.close()
    return ann, state, int(len(live))


def load_index(folder: Path, file: GalleryReader) -> _ann.AnnIndex:
    """The committed ``faiss.index`` of ``folder``, checked against the row store ``file``.

    Raises:
        GalleryError: missing, stale, unreadable or of another width (the message says how to repair).
    """
    a = file.attrs
    path = folder / _store.INDEX_NAME
    if not path.is_file():
        raise GalleryError(f"{path} is missing; run `siamsearch index update {folder}` to "
                           f"rebuild it from the stored embeddings, or {_store.rebuild_hint(folder)}")
    if not _store.index_is_current(folder, a):
        raise GalleryError(f"{path} is damaged or does not belong to {_store.H5_NAME} "
                           f"(an interrupted update?); run `siamsearch index update {folder}` to rebuild it from "
                           f"the stored embeddings, or {_store.rebuild_hint(folder)}")
    try:
        params = json_or_raw(a.get("index_params", "{}"))
        index = _ann.AnnIndex.load(path, a["index_factory"], params, tombstones=np.flatnonzero(file.deleted()))
    except (SiamsearchError, KeyError) as e:
        raise GalleryError(f"{path} cannot be read ({e}); run `siamsearch index update "
                           f"{folder}` to rebuild it, or {_store.rebuild_hint(folder)}") from None
    if index.dim != file.dim:
        raise GalleryError(f"{path} holds {index.dim}-d vectors but the gallery {file.dim}-d; "
                           f"{_store.rebuild_hint(folder)}")
    return index


def reusable_index(folder: Path, old: GalleryReader, factory: str, n_live: int, dim: int) -> Optional[_ann.AnnIndex]:
    """The committed index, when it is intact and still the right kind for ``n_live`` entries; else None."""
    a = old.attrs
    if a.get("requested_factory") != factory:
        return None
    try:
        ann = load_index(folder, old)  # checks that the index is the committed one (its SHA-256)
    except GalleryError:
        return None
    wanted = _ann.resolve_factory(factory, max(n_live, 1), dim) if factory.lower() == "auto" else ann.factory
    if wanted != ann.factory:
        return None
    tuned_on = ann.params.get("tuned_on")
    if isinstance(tuned_on, int) and tuned_on > 0 and not (
            tuned_on / RETUNE_FACTOR <= n_live <= tuned_on * RETUNE_FACTOR):
        return None
    return ann


# --------------------------------------------------------------------------- the whole run


def sync(folder: Path, source: Path, embedder, old: Optional[GalleryReader], factory: str,
         label_mode: Optional[str], strict: bool, batch_size: int, workers: Optional[int],
         progress: bool, allow_mass_removal: bool = False) -> BuildReport:
    """Bring ``folder`` in line with the images of ``source`` (the shared core of build and update).

    ``old`` is the committed row store (``None`` for a first build); the caller holds the folder lock.
    A first build of a folder without images, and a run that would remove more than half of the
    gallery (without ``allow_mass_removal``), are refused (:mod:`siamsearch.gallery.guards`); Ctrl-C
    raises :class:`~siamsearch.core.errors.GalleryInterrupted` saying what was kept.
    """
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    _store.remove_stale_temps(folder)
    if batch_size < 1:
        raise SiamsearchError(f"batch size must be at least 1, got {batch_size}")
    dim, scan, mode = scan_source(folder, source, old, embedder.dim, label_mode)
    pending = _store.PendingLog(folder, embedder.fingerprint, str(source), dim, mode, embedding_precision(embedder))
    journal = journal_records(pending, scan.stat())  # rows recovered from an interrupted run
    plan = plan_sync(source, old, scan, mode, journal)
    if old is not None:
        guards.check_removal(folder, source, len(plan.live_row), len(plan.removed_rows), allow_mass_removal)
    try:
        return _embed_and_publish(folder, source, embedder, old, plan, pending, factory, strict, batch_size,
                                  workers, progress, t0)
    except KeyboardInterrupt:
        published = None if old is None else len(plan.live_row)
        raise guards.interrupted_message(folder, published, len(journal_records(pending, scan.stat()))) from None


def _embed_and_publish(folder: Path, source: Path, embedder, old: Optional[GalleryReader], plan: Plan,
                       pending: _store.PendingLog, factory: str, strict: bool, batch_size: int,
                       workers: Optional[int], progress: bool, t0: float) -> BuildReport:
    """Steps embed -> write -> index -> commit of :func:`sync`."""
    embedded, skipped = embed_missing(plan, source, embedder, pending, batch_size, workers, progress)
    journal = journal_records(pending, plan.scan.stat())
    # only files that need a row: a journal left by a run killed after its commit holds rows already stored
    journal = {r: loc for r, loc in journal.items() if r in plan.needed}
    skipped = sorted(plan.scan.skipped + skipped)
    if strict and skipped:
        listing = "\n".join(f"  {p}: {r}" for p, r in skipped)
        raise SiamsearchError(f"--strict: {len(skipped)} file(s) could not be read, nothing was published "
                              f"(rows embedded so far are kept for the next run):\n{listing}")
    if old is None:
        guards.check_some_readable(source, len(plan.scan.relpaths) + len(plan.scan.skipped), len(journal))
    # a changed file loses its old row whether or not its new content could be read
    newly_deleted = plan.removed_rows + list(plan.replaced.values())
    if old is not None and _nothing_changed(folder, old, plan, journal, newly_deleted, skipped, factory):
        pending.clear()  # the published gallery stands as it is
        return BuildReport(folder=str(folder), source_dir=str(source), files=plan.files, added=0, changed=0,
                           removed=0, unchanged=plan.unchanged, resumed=0, skipped=tuple(skipped), embedded=0,
                           seconds=time.perf_counter() - t0, index="unchanged",
                           factory=str(old.attrs.get("index_factory", "")), rows=int(len(plan.live_row)))
    return _publish(folder, source, embedder, old, plan, journal, pending, newly_deleted, skipped, factory,
                    embedded, progress, t0)


def _nothing_changed(folder: Path, old: GalleryReader, plan: Plan, journal: dict, newly_deleted: list,
                     skipped: list, factory: str) -> bool:
    return (not journal and not newly_deleted and not plan.touched and skipped == sorted(old.skipped())
            and old.attrs.get("requested_factory") == factory and _store.index_is_current(folder, old.attrs))


def _publish(folder: Path, source: Path, embedder, old: Optional[GalleryReader], plan: Plan, journal: dict,
             pending: _store.PendingLog, newly_deleted: list, skipped: list, factory: str, embedded: int,
             progress: bool, t0: float) -> BuildReport:
    """Steps write -> index -> commit, and the report of the run."""
    deleted = plan.old.deleted.copy()
    deleted[newly_deleted] = True
    compact = old is not None and deleted.sum() > _ann.REBUILD_SHARE * max(plan.old.n + len(journal), 1)
    names = list(plan.old.label_names)
    label_of = dict(zip(plan.scan.relpaths, plan.scan.labels))
    code = label_codes(names, {label_of[r] for r in journal})
    attrs = store_attrs(old, embedder, source, plan.label_mode, factory, kept=plan.unchanged > 0)
    tmp = _store.temp_store_path(folder)
    first_new, n_rows, patched = write_rows(tmp, old, plan, deleted, compact, journal, pending, code, attrs,
                                            embedder.dim, names, skipped)
    # a complete store records its size, against which patched copies' growth is judged (patchable)
    rewrite = {} if patched else {"rewrite_bytes": os.path.getsize(tmp), "rewrite_rows": n_rows}
    new = _store.GalleryFile(tmp)
    try:
        ann, state, live = index_rows(folder, old, new, factory, first_new, newly_deleted, compact, progress)
    finally:
        new.close()
    changed = sum(1 for r in journal if r in plan.replaced)
    lost = len(plan.replaced) - changed  # changed files that are now unreadable
    report = BuildReport(folder=str(folder), source_dir=str(source), files=plan.files,
                         added=len(journal) - changed, changed=changed, removed=len(plan.removed_rows) + lost,
                         unchanged=plan.unchanged, resumed=plan.resumed, skipped=tuple(skipped), embedded=embedded,
                         seconds=time.perf_counter() - t0, index=state, factory=ann.factory, rows=live)
    manifest = gallery_manifest(attrs, ann, report, n_rows=n_rows, live=live, label_count=len(names))
    _store.commit(folder, tmp, ann, manifest, {"index_factory": ann.factory,
                                               "index_params": json.dumps(ann.params, sort_keys=True), **rewrite})
    pending.clear()
    return report


def store_attrs(old: Optional[GalleryReader], embedder, source: Path, label_mode: str, factory: str,
                kept: bool = False) -> dict:
    """The new store's attributes (index ones are filled in at commit). ``kept``: rows of ``old`` stay, so
    the recorded precision names theirs too when this run embeds in another (``fp32+bf16``)."""
    created = old.attrs.get("created", _store.now_iso()) if old is not None else _store.now_iso()
    precision = embedding_precision(embedder)
    if old is not None and kept:
        before = str(old.attrs.get("embedding_precision", "fp32")).split("+")
        precision = "+".join(before + [precision] if precision not in before else before)
    return {"siamsearch_version": __version__, "created": created, "updated": _store.now_iso(),
            "model_fingerprint": embedder.fingerprint, "model_config": embedder.config.to_json(),
            "model_path": os.path.abspath(embedder.path) if embedder.path else "",
            "embedding_precision": precision,
            "source_dir": str(source), "label_mode": label_mode, "requested_factory": factory,
            "index_sha256": "", "generation": "", "index_factory": "", "index_params": "{}"}


def json_or_raw(text: str) -> Any:
    """``text`` parsed as JSON, or ``text`` itself when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", leave=False)


def gallery_manifest(attrs: dict, ann: _ann.AnnIndex, report: BuildReport, n_rows: int, live: int,
              label_count: int) -> dict:
    return {
        "format": _store.FORMAT,
        "format_version": _store.FORMAT_VERSION,
        "siamsearch_version": __version__,
        "created": attrs["created"],
        "updated": attrs["updated"],
        "source_dir": attrs["source_dir"],
        "model": {"fingerprint": attrs["model_fingerprint"], "path": attrs["model_path"],
                  "config": json_or_raw(attrs["model_config"]),
                  "precision": attrs.get("embedding_precision", "fp32")},
        "size": live,
        "rows": n_rows,
        "dim": ann.dim,
        "labels": {"mode": attrs["label_mode"], "count": label_count},
        "index": ann.meta,
        "files": {"embeddings": _store.H5_NAME, "index": _store.INDEX_NAME},
        "last_run": {k: v for k, v in report.to_dict().items() if k != "skipped"},
        "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
    }
