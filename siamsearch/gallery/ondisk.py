"""A Faiss IVF index built from embedding shards and merged on disk, and the sizing rules that pick it.

The index of a sharded gallery never holds all vectors in the building process:

1. :func:`choose_index` picks the factory from the number of vectors ``n``, the
   dimension ``d`` and a memory budget (rules in the spirit of autofaiss: ``nlist`` a
   power of two near ``4 sqrt(n)``, an HNSW coarse quantizer past 65,536 lists, and
   the most precise codes, Flat > SQ8 > PQ, whose size fits the budget);
2. the coarse quantizer (and PQ codebooks) are trained on a random sample drawn
   across all shards (:meth:`ShardSource.sample`), and saved empty as ``faiss.trained.index``;
3. each shard is added to its own copy of the trained index, with its global ids,
   and written to a part file;
4. the parts' inverted lists are merged into one ``faiss.<generation>.ivfdata`` file, the file
   Faiss ``OnDiskInvertedLists.merge_from_multiple`` (``faiss.contrib.ondisk.merge_ondisk``) writes,
   but streamed a run of lists at a time with ``pread``/``pwrite`` (:func:`merge`), so memory stays at
   about one shard plus the quantizer while building and two small buffers while merging; the
   merged index reads its lists memory-mapped.

An update merges the committed index with parts for the new shards only (no re-training).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import faiss
import numpy as np

from ..core.errors import SiamsearchError
from . import ann as _ann

TRAINED_NAME = "faiss.trained.index"
#: Bytes per stored id in an inverted list.
ID_BYTES = 8
#: Coarse quantizers past this many lists are HNSW graphs (brute-force assignment gets too slow).
HNSW_QUANTIZER_LISTS = 1 << 16
#: Training points per list (Faiss warns below 39), and the cap on the training sample.
TRAIN_PER_LIST = 40
MAX_TRAIN = 1 << 20
#: Upper bound on inverted lists (4 sqrt(1e9) is about 2^17).
MAX_LISTS = 1 << 18
#: Bytes of inverted lists the merge holds in memory at once (one run of lists, read from the inputs and
#: written out); the merging process's memory is about twice this, not the index.
MERGE_BUFFER_BYTES = 16 << 20


@dataclass(frozen=True)
class IndexChoice:
    """What :func:`choose_index` picked and what it costs.

    Attributes:
        factory: Faiss factory string (``IVF1024,Flat``, ``IVF262144_HNSW32,PQ64``...).
        nlist: inverted lists. code_bytes: bytes per vector code.
        index_bytes: size of the index (codes + ids + quantizer), in memory or on disk.
        train_size: vectors sampled to train it.
    """

    factory: str
    nlist: int
    code_bytes: int
    index_bytes: int
    train_size: int

    def to_dict(self) -> dict:
        return {"factory": self.factory, "nlist": self.nlist, "code_bytes": self.code_bytes,
                "index_bytes": self.index_bytes, "train_size": self.train_size}


def parse_memory(text: str | int | None) -> Optional[int]:
    """``"8G"``, ``"512M"``, ``"1.5GB"`` or bytes -> bytes (None stays None).

    Raises:
        SiamsearchError: for text that is not a size.
    """
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise SiamsearchError(f"memory size {text!r} not understood; write e.g. 512M, 8G or 1T") from None
    if value <= 0:
        raise SiamsearchError(f"memory size must be positive, got {text!r}")
    return int(value * scale)


def lists_for(n: int) -> int:
    """``nlist``: a power of two near ``4 sqrt(n)`` (at most :data:`MAX_LISTS`), with at least
    :data:`TRAIN_PER_LIST` vectors per list."""
    nlist = int(min(MAX_LISTS, 2 ** round(math.log2(4.0 * math.sqrt(max(n, 1))))))
    while nlist > 1 and nlist * TRAIN_PER_LIST > n:
        nlist //= 2
    return max(nlist, 1)


def _code_options(d: int) -> list[tuple[str, int]]:
    opts = [("Flat", 4 * d), ("SQ8", d)]
    m = d // 2
    while m >= 8:
        if d % m == 0:
            opts.append((f"PQ{m}", m))
        m //= 2
    return opts


def choose_index(n: int, d: int, max_memory: Optional[int] = None) -> IndexChoice:
    """The IVF index for ``n`` vectors of dimension ``d`` whose size fits ``max_memory`` bytes.

    Without a budget the codes are Flat (exact distances). With one, the most
    precise codes that fit (Flat, SQ8, then PQ with fewer bytes).

    Raises:
        SiamsearchError: when even the smallest PQ codes do not fit the budget.
    """
    nlist = lists_for(n)
    hnsw = nlist > HNSW_QUANTIZER_LISTS
    quantizer_bytes = nlist * d * 4 + (nlist * 32 * 2 * 4 if hnsw else 0)
    prefix = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    options = _code_options(d)
    for code, cb in options:
        size = n * (cb + ID_BYTES) + quantizer_bytes
        if max_memory is None or size <= max_memory:
            train = min(max(TRAIN_PER_LIST * nlist, 10_000 if code.startswith("PQ") else 0), MAX_TRAIN, n)
            return IndexChoice(f"{prefix},{code}", nlist, cb, int(size), int(train))
    smallest = n * (options[-1][1] + ID_BYTES) + quantizer_bytes
    raise SiamsearchError(f"{n} vectors of dimension {d} need at least {human(smallest)} even as "
                          f"{prefix},{options[-1][0]}; raise --max-index-memory (it is {human(max_memory)})")


# --------------------------------------------------------------------------- building and merging


@contextlib.contextmanager
def quiet_stdout():
    """Silence C-level stdout (Faiss's on-disk lists print progress lines that would corrupt ``--json`` output)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def train_empty(source, choice: IndexChoice, seed: int = 0) -> faiss.Index:
    """An empty index of ``choice.factory`` trained on a sample drawn across all shards of ``source``."""
    index = faiss.index_factory(int(source.dim), choice.factory, faiss.METRIC_L2)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = _ann.IVF_TRAIN_ITERATIONS
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False
    _, sample = source.sample(max(choice.train_size, ivf.nlist), seed)
    if len(sample) < ivf.nlist:
        raise SiamsearchError(f"only {len(sample)} vectors to train {choice.factory}, which has {ivf.nlist} lists; "
                              "give --factory auto or an IVF with fewer lists, or add images (a small gallery can "
                              "also be built without --engine ray and --shard-size)")
    index.train(np.ascontiguousarray(sample, dtype="float32"))
    return index


def write_parts(trained_path: Path, blocks: Iterable[tuple[int, np.ndarray, np.ndarray]], workdir: Path) -> list:
    """Add each shard's ``(k, ids, vectors)`` to its own copy of the trained index; returns the part files."""
    workdir.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, ids, x in blocks:
        part = faiss.read_index(str(trained_path))
        if len(ids):
            part.add_with_ids(np.ascontiguousarray(x, dtype="float32"), np.ascontiguousarray(ids, dtype="int64"))
        path = workdir / f"part-{k:06d}.index"
        faiss.write_index(part, str(path))
        parts.append(path)
        del part
    return parts


@dataclass
class _Lists:
    """Where one input's inverted lists lie: ``sizes``, ``capacities`` and byte ``offsets`` (each ``[nlist]``)
    in ``path``, or ``path`` None for lists held in memory (``invlists``)."""

    invlists: object
    sizes: np.ndarray
    capacities: np.ndarray
    offsets: np.ndarray
    path: Optional[str]


def _lists_of(index: faiss.Index, path: Optional[str]) -> _Lists:
    """The lists of an IVF index read memory-mapped (a part) or on disk (a merged index)."""
    il = faiss.extract_index_ivf(index).invlists
    od = faiss.downcast_InvertedLists(il)
    nlist = il.nlist
    if not isinstance(od, faiss.OnDiskInvertedLists):
        sizes = np.array([il.list_size(j) for j in range(nlist)], dtype=np.int64)
        return _Lists(il, sizes, sizes, np.zeros(nlist, np.int64), None)
    rows = np.array([(v.size, v.capacity, v.offset) for v in (od.lists.at(j) for j in range(nlist))],
                    dtype=np.uint64).reshape(nlist, 3).astype(np.int64)  # empty lists have offset -1
    return _Lists(None, rows[:, 0], rows[:, 1], rows[:, 2], path or od.filename)


def _read_exact(fd: int, buf: np.ndarray, offset: int) -> None:
    view, done = memoryview(buf).cast("B"), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise SiamsearchError(f"an index part ended early (at byte {offset + done}); rebuild with --overwrite")
        done += got


def _write_exact(fd: int, buf: np.ndarray, offset: int) -> None:
    view, done = memoryview(buf).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _read_run(src: _Lists, fd: Optional[int], a: int, b: int, cs: int) -> list:
    """``[(codes, ids)]`` of lists ``a:b`` of ``src`` as uint8 arrays (``size * cs`` and ``size * 8`` bytes)."""
    n = src.sizes[a:b]
    if fd is None:  # lists in memory
        return [(faiss.rev_swig_ptr(src.invlists.get_codes(j), int(k) * cs).copy(),
                 faiss.rev_swig_ptr(src.invlists.get_ids(j), int(k)).view(np.uint8).copy()) if k else None
                for j, k in zip(range(a, b), n)]
    full = np.flatnonzero(n)
    if not len(full):
        return [None] * (b - a)
    off, cap = src.offsets[a:b], src.capacities[a:b]
    lo, hi = int(off[full].min()), int((off[full] + cap[full] * (cs + ID_BYTES)).max())
    packed = bool(np.all(n[full] == cap[full])) and hi - lo == int((n * (cs + ID_BYTES)).sum())
    out = []
    if packed:  # the usual layout (parts, merged lists): one read for the run
        buf = np.empty(hi - lo, np.uint8)
        _read_exact(fd, buf, lo)
    for j, k in enumerate(n):
        if not k:
            out.append(None)
            continue
        if packed:
            p = int(off[j]) - lo
            whole = buf[p:p + int(k) * (cs + ID_BYTES)]
        else:
            whole = np.empty(int(cap[j]) * (cs + ID_BYTES), np.uint8)
            _read_exact(fd, whole, int(off[j]))
        out.append((whole[:int(k) * cs], whole[int(cap[j]) * cs:int(cap[j]) * cs + int(k) * ID_BYTES]))
    return out


def _stream(srcs: list, sizes: np.ndarray, cs: int, ivfdata: Path, buffer_bytes: int) -> None:
    """Write the merged lists to ``ivfdata``: list by list, each the inputs' codes then their ids, in input
    order, a run of lists (about ``buffer_bytes``) at a time, with ``pread``/``pwrite`` (no memory map)."""
    ends = np.concatenate([[0], np.cumsum(sizes * (cs + ID_BYTES))])
    fds = [os.open(s.path, os.O_RDONLY) if s.path is not None else None for s in srcs]
    out = os.open(str(ivfdata), os.O_WRONLY)
    try:
        a, nlist = 0, len(sizes)
        while a < nlist:
            b = max(a + 1, int(np.searchsorted(ends, ends[a] + buffer_bytes, side="right")) - 1)
            b = min(b, nlist)
            runs = [_read_run(s, fd, a, b, cs) for s, fd in zip(srcs, fds)]
            buf = np.empty(int(ends[b] - ends[a]), np.uint8)
            for j in range(a, b):
                p = int(ends[j] - ends[a])
                q = p + int(sizes[j]) * cs
                for run in runs:
                    got = run[j - a]
                    if got is not None:
                        buf[p:p + len(got[0])] = got[0]
                        buf[q:q + len(got[1])] = got[1]
                        p += len(got[0])
                        q += len(got[1])
            _write_exact(out, buf, int(ends[a]))
            a = b
        os.fsync(out)
    finally:
        os.close(out)
        for fd in fds:
            if fd is not None:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the inputs' pages are not needed again
                os.close(fd)


def merge(trained_path: Path, parts: list, ivfdata: Path, base: Optional[Path] = None) -> faiss.Index:
    """One IVF index whose inverted lists are the union of ``parts`` (and of index ``base``), on disk.

    The result is the one Faiss's ``OnDiskInvertedLists.merge_from_multiple`` gives (the same
    ``ivfdata`` bytes: per list, the inputs' codes then their ids, in the order ``parts`` then ``base``),
    but the lists are streamed a run at a time (:data:`MERGE_BUFFER_BYTES`) with ``pread``/``pwrite``
    instead of through memory maps: touching mmapped pages of the inputs and of the output made them
    resident in this process (its RSS grew by about twice the index), whereas pages read or written with
    system calls stay in the kernel's page cache, which is not the process's memory and which it can
    write back and drop. The inputs' cached pages are dropped after the merge (``POSIX_FADV_DONTNEED``)
    and the output is fsynced.
    """
    index = faiss.read_index(str(trained_path))
    ivf = faiss.extract_index_ivf(index)
    srcs, inputs = [], []
    for p in list(parts) + ([base] if base is not None else []):
        inp = read_ondisk(p) if p is base else faiss.read_index(str(p), faiss.IO_FLAG_MMAP)  # maps, reads sizes
        sub = faiss.extract_index_ivf(inp)
        if sub.nlist != ivf.nlist or sub.code_size != ivf.code_size:
            raise SiamsearchError("an index part does not match the trained index; rebuild with --overwrite")
        srcs.append(_lists_of(inp, None if p is base else str(p)))
        if srcs[-1].path is None:
            inputs.append(inp)  # lists held in memory: keep their index alive
    sizes = np.sum([s.sizes for s in srcs], axis=0, dtype=np.int64) if srcs else np.zeros(ivf.nlist, np.int64)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    with quiet_stdout():
        invlists.update_totsize(int((sizes * (ivf.code_size + ID_BYTES)).sum()))  # creates the file and maps it
    sizes_t = np.ascontiguousarray(sizes, dtype=np.uint64)  # named: swig_ptr does not keep it alive
    invlists.set_all_lists_sizes(faiss.swig_ptr(sizes_t))
    _stream(srcs, sizes, int(ivf.code_size), ivfdata, MERGE_BUFFER_BYTES)
    index.ntotal = ivf.ntotal = int(sizes.sum())
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    del inputs, srcs
    return index


def read_ondisk(path: os.PathLike | str) -> faiss.Index:
    """Read a merged index; its ``.ivfdata`` is looked up beside it and memory-mapped.

    Raises:
        SiamsearchError: when the index or its lists cannot be read.
    """
    try:
        with quiet_stdout():
            return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    except RuntimeError as e:
        raise SiamsearchError(f"{path} (or its .ivfdata file) is not readable "
                              f"({str(e).strip().splitlines()[-1][:200]})") from None


def tune(ann: "_ann.AnnIndex", source, seed: int = 0) -> dict:
    """Tune ``nprobe`` of a merged index on queries drawn from ``source``, against exact search."""
    n = len(source)
    if n <= 2 * _ann.TUNE_QUERIES:
        ann.params.update({"nprobe": ann._param_max(), "tuned_on": "not tuned (too few vectors): all lists"})
        ann._apply_params()
        return ann.params
    _, queries = source.sample(_ann.TUNE_QUERIES, seed + 1)
    _, truth = _ann.exact_knn(queries, source.blocks(65536), min(10, n))
    return ann.tune(queries, truth)


def index_size_bytes(path: Path, ivfdata: Optional[Path]) -> int:
    """Bytes of a merged index on disk (header + lists)."""
    return path.stat().st_size + (ivfdata.stat().st_size if ivfdata is not None and ivfdata.exists() else 0)


def estimate_build_memory(choice: IndexChoice, d: int, shard_rows: int) -> int:
    """Peak memory of building ``choice`` from shards of ``shard_rows`` rows: one shard + sample + quantizer."""
    shard = shard_rows * (4 * d + choice.code_bytes + ID_BYTES)
    sample = choice.train_size * 4 * d
    return int(shard + sample + choice.nlist * d * 4 * 2)


def lists_bytes(n: int, d: int) -> int:
    """Raw float32 embedding storage of ``n`` vectors (what the Parquet shards hold before compression)."""
    return int(n) * int(d) * 4


def human(nbytes: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    k = 0 if nbytes <= 0 else min(int(math.log(nbytes, 1024)), len(units) - 1)
    return f"{nbytes / 1024 ** k:.1f} {units[k]}"
