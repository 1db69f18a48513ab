"""Build and update a sharded gallery (Parquet shards + an IVF index merged on disk), with either engine.

The same steps as :mod:`siamsearch.gallery.sync`, at shard granularity:

1. **plan**: scan the folder and classify files against the published rows and the
   shards an interrupted run already committed (:class:`ShardJournal`); split what
   is left into :class:`~siamsearch.gallery.engines.ShardTask` s of ``shard_size`` files with
   id ranges from the allocator (a re-run reuses its unfinished tasks and ids);
2. **embed**: the engine (``local`` or ``ray``) yields whole shards; each is written
   atomically and recorded in the journal (a killed build re-run embeds only the rest);
3. **write**: the new store manifest: old shards + new ones, tombstones for removed and
   replaced files, compaction past :data:`~siamsearch.gallery.ann.REBUILD_SHARE`;
4. **index**: new shards merged into the committed on-disk index, or a new index trained
   on a sample across shards and merged (:mod:`siamsearch.gallery.ondisk`);
5. **commit**: ``faiss.index`` renamed into place, then ``shards.json`` (the commit point).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from ..core.errors import GalleryError, SiamsearchError
from ..core.files import atomic_path, write_json_atomic
from ..core.images import sha256_file
from . import ann as _ann
from . import guards
from . import ondisk
from . import shards as _sh
from . import store as _store
from .engines import ENGINES, RaySession, ShardResult, ShardTask, run_local, run_ray
from .resolve import embedding_precision
from .results import BuildReport
from .scan import same_stat
from .sync import Plan, scan_source, store_attrs, gallery_manifest, json_or_raw, label_codes, plan_sync

#: Images per shard when none is given.
SHARD_SIZE = 100_000


# --------------------------------------------------------------------------- the run's journal


class ShardJournal:
    """``.pending/run.json`` (the task plan of an unfinished run) and ``.pending/committed.jsonl`` (the shards
    it committed, one JSON line each, appended and fsynced as each shard is written).

    Belongs to one model, source folder, label mode and precision; a journal of another is discarded. The plan is
    written once per run and a commit appends one line: rewriting the plan (every file of the run) at each
    commit, as before, grew with files x shards (a 100M-image build in 1,000 shards would have rewritten
    ~4 GB of JSON a thousand times).
    """

    def __init__(self, folder: Path, fingerprint: str, source_dir: str, dim: int, label_mode: str,
                 precision: str = "fp32"):
        self.folder = folder
        self.path = folder / _store.PENDING_NAME / "run.json"
        self.commits = folder / _store.PENDING_NAME / "committed.jsonl"
        self.session = {"fingerprint": fingerprint, "source_dir": source_dir, "dim": int(dim),
                        "label_mode": label_mode, "precision": precision}
        self.plan: list = []
        self.committed: list = []
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            if _store.same_session(d.get("session"), self.session):
                self.plan = [ShardTask(t["name"], int(t["first_id"]), list(t["relpaths"])) for t in d["plan"]]
                entries = list(d.get("committed", []))  # journals written before committed.jsonl
                entries += _json_lines(self.commits)
                self.committed = [_sh.ShardEntry.from_dict(e) for e in entries]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self.committed = [e for e in self.committed if (folder / e.file).is_file()]

    def save(self) -> None:
        """Write the plan and the commits so far (once per run; commits then append)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.commits) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in self.committed)
        write_json_atomic(self.path, {"session": self.session,
                                      "plan": [{"name": t.name, "first_id": t.first_id, "relpaths": t.relpaths}
                                               for t in self.plan]})

    def commit(self, entry: _sh.ShardEntry) -> None:
        """Record a written shard: one line appended to ``committed.jsonl`` and fsynced."""
        self.committed.append(entry)
        with open(self.commits, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry.to_dict(), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        _store.clear_pending(self.folder)

    def records(self, stat_now: dict, skip: set) -> dict:
        """``relpath -> (shard file, id)``: committed rows whose file's size and mtime still match."""
        out: dict = {}
        for e in self.committed:
            if e.file in skip:
                continue
            meta = _sh.read_shard_meta(self.folder / e.file)
            for i, r, s, m in zip(meta["id"].tolist(), meta["path"], meta["size"], meta["mtime"]):
                if r in stat_now and same_stat(s, m, *stat_now[r]):
                    out[r] = (e.file, i)
        return out

    def tasks(self, to_embed: list, shard_size: int, next_id: int, next_shard: int) -> list:
        """Tasks for ``to_embed``: unfinished planned tasks whose files all still need embedding, then new ones."""
        todo = dict.fromkeys(to_embed)
        done = {e.file for e in self.committed}
        tasks = []
        for t in self.plan:
            if t.name not in done and t.relpaths and all(r in todo for r in t.relpaths):
                tasks.append(t)
                for r in t.relpaths:
                    del todo[r]
        ends = [t.first_id + len(t.relpaths) for t in self.plan] + [e.id_end for e in self.committed]
        next_id = max([next_id] + ends)
        numbers = [_shard_number(n) for n in [t.name for t in self.plan] + list(done)]
        number = max([next_shard - 1] + numbers) + 1
        rest = list(todo)
        for s in range(0, len(rest), shard_size):
            chunk = rest[s:s + shard_size]
            tasks.append(ShardTask(f"{_sh.SHARDS_DIR}/shard-{number:06d}.parquet", next_id, chunk))
            next_id += len(chunk)
            number += 1
        self.plan = tasks
        self.save()
        return tasks


def _json_lines(path: Path) -> list:
    """The JSON objects of a JSON-lines file; a last line cut short by a crash is ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _shard_number(name: str) -> int:
    try:
        return int(Path(name).stem.split("-")[1])
    except (IndexError, ValueError):
        return -1


# --------------------------------------------------------------------------- the whole run


def sync_sharded(folder: Path, source: Path, embedder, old: Optional[_sh.ShardedReader], factory: str,
                 label_mode: Optional[str], strict: bool, batch_size: int, workers: Optional[int], progress: bool,
                 engine: str = "local", address: Optional[str] = None, shard_size: Optional[int] = None,
                 max_index_memory: Optional[int] = None, allow_mass_removal: bool = False) -> BuildReport:
    """Bring the sharded gallery ``folder`` in line with ``source``; the caller holds the folder lock.

    Like :func:`~siamsearch.gallery.sync.sync`, a first build of a folder without images and a run that
    would remove more than half of the gallery (without ``allow_mass_removal``) are refused
    (:mod:`siamsearch.gallery.guards`).

    Args:
        engine: ``local`` or ``ray``. address: Ray cluster (``auto``, ``HOST:PORT``; default: start one).
        shard_size: images per shard (default :data:`SHARD_SIZE`).
        max_index_memory: byte budget for the index (picks the codes; see :func:`ondisk.choose_index`).
    """
    t0 = time.perf_counter()
    _check_args(factory, engine, batch_size, shard_size)
    _choice(factory, 1, embedder.dim, None)  # a factory that does not fit d fails now, not after the embedding
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _sh.SHARDS_DIR).mkdir(exist_ok=True)
    _store.remove_stale_temps(folder)
    _store.remove_stale_temps(folder / _sh.SHARDS_DIR)
    dim, scan, mode = scan_source(folder, source, old, embedder.dim, label_mode)
    journal = ShardJournal(folder, embedder.fingerprint, str(source), dim, mode, embedding_precision(embedder))
    published = {s.file for s in old.shards} if old is not None else set()
    plan = plan_sync(source, old, scan, mode, journal.records(scan.stat(), published))
    if old is not None:
        guards.check_removal(folder, source, len(plan.live_row), len(plan.removed_rows), allow_mass_removal)
    next_id = old.n_rows if old is not None else 0
    # above every shard file present, not only the published ones: an --overwrite build must not write over
    # the shards of the gallery it replaces, which stays the committed one until this run commits
    on_disk = [p.name for p in (folder / _sh.SHARDS_DIR).glob("*.parquet")]
    next_shard = 1 + max([_shard_number(f) for f in list(published) + on_disk] + [-1])
    tasks = journal.tasks(plan.to_embed, int(shard_size or SHARD_SIZE), next_id, next_shard)
    embedded = _embed(folder, source, embedder, tasks, journal, engine, address, batch_size, workers, progress,
                      scan)
    records = {r: loc for r, loc in journal.records(scan.stat(), published).items() if r in plan.needed}
    failed = [(r, why) for e in journal.committed if e.file not in published for r, why in e.skipped
              if r in plan.needed and r not in records]
    skipped = sorted(set(plan.scan.skipped + failed))
    if strict and skipped:
        listing = "\n".join(f"  {p}: {r}" for p, r in skipped)
        raise SiamsearchError(f"--strict: {len(skipped)} file(s) could not be read, nothing was published "
                              f"(shards embedded so far are kept for the next run):\n{listing}")
    if old is None:
        guards.check_some_readable(source, len(plan.scan.relpaths) + len(plan.scan.skipped), len(records))
    newly_deleted = plan.removed_rows + list(plan.replaced.values())
    if old is not None and not records and not newly_deleted and skipped == sorted(old.skipped()) \
            and old.attrs.get("requested_factory") == factory and _store.index_is_current(folder, old.attrs):
        journal.clear()
        return BuildReport(folder=str(folder), source_dir=str(source), files=plan.files, added=0, changed=0,
                           removed=0, unchanged=plan.unchanged, resumed=0, skipped=tuple(skipped), embedded=0,
                           seconds=time.perf_counter() - t0, index="unchanged",
                           factory=str(old.attrs.get("index_factory", "")), rows=int(len(plan.live_row)))
    return _publish(folder, source, embedder, old, plan, journal, records, newly_deleted, skipped, factory,
                    max_index_memory, embedded, t0, shard_size)


def _check_args(factory: str, engine: str, batch_size: int, shard_size: Optional[int]) -> None:
    if engine not in ENGINES:
        raise SiamsearchError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if batch_size < 1:
        raise SiamsearchError(f"batch size must be at least 1, got {batch_size}")
    if shard_size is not None and int(shard_size) < 1:
        raise SiamsearchError(f"--shard-size must be at least 1, got {shard_size}")
    if factory.lower() != "auto" and "IVF" not in factory.upper():
        raise SiamsearchError(f"a sharded gallery uses an IVF index merged on disk; use --factory auto or an IVF "
                              f"factory such as IVF4096,Flat (got {factory})")


def _embed(folder: Path, source: Path, embedder, tasks: list, journal: ShardJournal, engine: str,
           address: Optional[str], batch_size: int, workers: Optional[int], progress: bool, scan) -> int:
    """Run the engine over ``tasks``; write and journal each finished shard. Returns images embedded."""
    if not tasks:
        return 0
    embedded = 0
    stat, label_of = scan.stat(), dict(zip(scan.relpaths, scan.labels))
    if engine == "ray":
        with RaySession(address):
            for res in run_ray(tasks, source, embedder, batch_size, progress):
                embedded += _write_result(folder, res, journal, stat, label_of)
    else:
        for res in run_local(tasks, source, embedder, batch_size, workers, progress):
            embedded += _write_result(folder, res, journal, stat, label_of)
    return embedded


def _write_result(folder: Path, res: ShardResult, journal: ShardJournal, stat: dict, label_of: dict) -> int:
    """Write one finished shard atomically (size and mtime as scanned) and record it in the journal."""
    t = res.task
    ids = t.first_id + np.arange(len(res.relpaths), dtype="int64")
    _sh.write_shard(folder / t.name, ids, res.relpaths, [label_of[r] for r in res.relpaths], res.sha256,
                    np.asarray([stat[r][1] for r in res.relpaths], "float64"),
                    np.asarray([stat[r][0] for r in res.relpaths], "int64"), res.embeddings)
    journal.commit(_sh.ShardEntry(t.name, len(ids), t.first_id, t.first_id + len(t.relpaths), res.nodes,
                                  res.failures))
    return len(ids)


# --------------------------------------------------------------------------- write, index, commit


def _publish(folder: Path, source: Path, embedder, old: Optional[_sh.ShardedReader], plan: Plan,
             journal: ShardJournal, records: dict, newly_deleted: list, skipped: list, factory: str,
             max_index_memory: Optional[int], embedded: int, t0: float, shard_size: Optional[int]) -> BuildReport:
    gen = uuid.uuid4().hex[:12]
    published = list(old.shards) if old is not None else []
    fresh = [e for e in journal.committed if e.file not in {s.file for s in published}]
    taken = {i for _, i in records.values()}
    unused = [i for e in fresh for i in _sh.read_shard_meta(folder / e.file)["id"].tolist() if i not in taken]
    old_del = (old._deleted_ids, old._in_index) if old is not None else (np.zeros(0, "int64"), np.zeros(0, bool))
    deleted = np.concatenate([old_del[0], np.asarray(newly_deleted, "int64"), np.asarray(unused, "int64")])
    in_index = np.concatenate([old_del[1], np.ones(len(newly_deleted), bool), np.zeros(len(unused), bool)])
    names = list(old.label_names()) if old is not None else []
    label_of = dict(zip(plan.scan.relpaths, plan.scan.labels))
    label_codes(names, {label_of[r] for r in records})
    shards = published + fresh
    total = sum(e.rows for e in shards)
    compact = len(deleted) > _ann.REBUILD_SHARE * max(total, 1)
    if compact:
        shards = _compact(folder, shards, deleted, 1 + max(_shard_number(e.file) for e in shards))
        deleted, in_index = np.zeros(0, "int64"), np.zeros(0, bool)
    attrs = dict(store_attrs(old, embedder, source, plan.label_mode, factory, kept=plan.unchanged > 0),
                 max_index_memory=int(max_index_memory or 0))
    manifest = {"attrs": attrs, "dim": embedder.dim, "label_names": names, "skipped": [list(s) for s in skipped],
                "next_id": max([e.id_end for e in shards] + [old.n_rows if old is not None else 0]),
                "shards": [e.to_dict() for e in shards], "deleted": None}
    reader = _sh.ShardedReader(folder, manifest, deleted=(deleted, in_index))
    ann, state, trained_sha256 = _index(folder, old, reader, factory, max_index_memory, compact, gen)
    # ties faiss.trained.index to this commit: an --overwrite killed after training replaces the file
    manifest["attrs"]["trained_sha256"] = trained_sha256
    if len(deleted):
        manifest["deleted"] = f"deleted-{gen}.parquet"
        _sh.write_deleted(folder / manifest["deleted"], deleted, in_index & (state == "updated"))
    live = int(len(reader.live_ids()))
    changed = sum(1 for r in records if r in plan.replaced)
    report = BuildReport(folder=str(folder), source_dir=str(source), files=plan.files,
                         added=len(records) - changed, changed=changed,
                         removed=len(plan.removed_rows) + len(plan.replaced) - changed, unchanged=plan.unchanged,
                         resumed=plan.resumed, skipped=tuple(skipped), embedded=embedded,
                         seconds=time.perf_counter() - t0, index=state, factory=ann.factory, rows=live)
    _commit(folder, manifest, ann, gen, report, live, len(names))
    journal.clear()
    _remove_unreferenced(folder, manifest, gen)
    return report


def _compact(folder: Path, shards: list, deleted: np.ndarray, number: int) -> list:
    """Rewrite the shards holding deleted rows without them (ids kept); returns the new shard list."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = []
    for e in shards:
        table = pq.read_table(folder / e.file)
        keep = pc.invert(pc.is_in(table["id"], value_set=pa.array(deleted)))
        if pc.all(keep).as_py():
            out.append(e)
            continue
        name = f"{_sh.SHARDS_DIR}/shard-{number:06d}.parquet"
        number += 1
        with atomic_path(folder / name) as tmp:
            pq.write_table(table.filter(keep), tmp, compression="zstd", row_group_size=16384)
        out.append(_sh.ShardEntry(name, int(pc.sum(keep).as_py() or 0), e.first_id, e.id_end, e.nodes, e.skipped))
    return out


def _index(folder: Path, old: Optional[_sh.ShardedReader], reader: _sh.ShardedReader, factory: str,
           max_index_memory: Optional[int], compact: bool, gen: str) -> tuple[_ann.AnnIndex, str, str]:
    """The merged on-disk index of ``reader``'s live rows: the old one plus new shards, or a new one.

    Returns:
        ``(index, "updated" | "built" | "rebuilt", SHA-256 of the faiss.trained.index it was built with)``.
    """
    live = reader.live_ids()
    source = reader.source(live)
    work = folder / _store.PENDING_NAME / f"parts-{gen}"
    ivfdata = folder / f"faiss.{gen}.ivfdata"
    trained = folder / ondisk.TRAINED_NAME
    choice = _choice(factory, len(live), reader.dim, max_index_memory)
    base = None
    reusable = old is not None and not compact and old.attrs.get("index_factory") == choice.factory \
        and old.attrs.get("requested_factory") == factory and trained.is_file() \
        and _store.index_is_current(folder, old.attrs)
    trained_sha256 = sha256_file(trained) if reusable else None  # hashed only when it may be reused
    if reusable and old.attrs.get("trained_sha256") in (None, trained_sha256):
        base, state = folder / _store.INDEX_NAME, "updated"
        new_ids = live[live >= old.n_rows]
        blocks = reader.source(new_ids).shard_blocks()
        params = json_or_raw(old.attrs.get("index_params", "{}"))
    else:
        state = "built" if old is None else "rebuilt"
        index = ondisk.train_empty(source, choice)
        with atomic_path(trained) as tmp:
            faiss.write_index(index, tmp)
        trained_sha256 = sha256_file(trained)
        blocks, params = source.shard_blocks(), {}
    parts = ondisk.write_parts(trained, blocks, work)
    merged = ondisk.merge(trained, parts, ivfdata, base=base)
    ann = _ann.AnnIndex(merged, choice.factory, dict(params, removal="tombstone", requested=factory,
                                                      storage="on-disk", ivfdata=ivfdata.name),
                        tombstones=reader.index_tombstones() if state == "updated" else ())
    if state != "updated" or not isinstance(params.get("tuned_on"), int):
        ondisk.tune(ann, source)
    return ann, state, trained_sha256


def _choice(factory: str, n: int, dim: int, max_index_memory: Optional[int]) -> ondisk.IndexChoice:
    if factory.lower() == "auto":
        return ondisk.choose_index(max(n, 1), dim, max_index_memory)
    resolved = _ann.resolve_factory(factory, max(n, 1), int(dim))  # IVF, IVF4096 expanded; d checked
    ivf = faiss.extract_index_ivf(faiss.index_factory(int(dim), resolved))
    return ondisk.IndexChoice(resolved, int(ivf.nlist), int(ivf.code_size), 0,
                              min(max(ondisk.TRAIN_PER_LIST * ivf.nlist, 10_000), ondisk.MAX_TRAIN, max(n, 1)))


def _commit(folder: Path, manifest: dict, ann: _ann.AnnIndex, gen: str, report: BuildReport, live: int,
            label_count: int) -> None:
    """``faiss.index`` renamed into place, then ``shards.json`` (the commit point), then ``manifest.json``."""
    with atomic_path(folder / _store.INDEX_NAME) as tmp:
        faiss.write_index(ann.index, tmp)
        sha = sha256_file(tmp)
    manifest["attrs"].update(index_sha256=sha, generation=gen, index_factory=ann.factory,
                             index_params=json.dumps(ann.params, sort_keys=True))
    manifest["attrs"]["format"] = _sh.FORMAT
    _sh.write_store_manifest(folder, manifest)
    summary = gallery_manifest(manifest["attrs"], ann, report, n_rows=int(manifest["next_id"]), live=live,
                        label_count=label_count)
    summary.update(format=_sh.FORMAT, format_version=_sh.FORMAT_VERSION,
                   files={"store": _sh.STORE_NAME, "shards": [s["file"] for s in manifest["shards"]],
                          "index": _store.INDEX_NAME, "ivfdata": f"faiss.{gen}.ivfdata"}, generation=gen)
    write_json_atomic(folder / _store.MANIFEST_NAME, summary)


def _remove_unreferenced(folder: Path, manifest: dict, gen: str) -> None:
    """Delete shard, tombstone and list files the committed manifest no longer names."""
    keep = {s["file"] for s in manifest["shards"]} | {manifest.get("deleted") or "", f"faiss.{gen}.ivfdata"}
    for p in list(folder.glob("faiss.*.ivfdata")) + list(folder.glob("deleted-*.parquet")) + \
            list((folder / _sh.SHARDS_DIR).glob("*.parquet")):
        if p.relative_to(folder).as_posix() not in keep:
            p.unlink(missing_ok=True)


def load_sharded_index(folder: Path, reader: _sh.ShardedReader) -> _ann.AnnIndex:
    """The committed on-disk index of a sharded gallery, with its tombstones.

    Raises:
        GalleryError: missing, stale or unreadable (the message says how to repair).
    """
    a = reader.attrs
    path = folder / _store.INDEX_NAME
    if not path.is_file() or not _store.index_is_current(folder, a):
        raise GalleryError(f"{path} is missing, damaged or does not belong to {_sh.STORE_NAME}; run "
                           f"`siamsearch index update {folder}` to rebuild it from the shards, or "
                           f"{_store.rebuild_hint(folder)}")
    try:
        index = ondisk.read_ondisk(path)
    except SiamsearchError as e:
        raise GalleryError(f"{e}; run `siamsearch index update {folder}` to rebuild it") from None
    params = json_or_raw(a.get("index_params", "{}"))
    return _ann.AnnIndex(index, a["index_factory"], params, tombstones=reader.index_tombstones())
