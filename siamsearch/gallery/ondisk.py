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
4. the parts' inverted lists are merged into one ``faiss.<generation>.ivfdata`` file
   (Faiss ``OnDiskInvertedLists.merge_from_multiple``, what ``faiss.contrib.ondisk.merge_ondisk``
   does), read memory-mapped, so memory stays at about one shard plus the quantizer.

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
    raise SiamsearchError(f"{n} vectors of dimension {d} need at least {smallest / 2**30:.2f} GiB even as "
                          f"{prefix},{options[-1][0]}; raise --max-index-memory (it is {max_memory / 2**30:.2f} GiB)")


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
        raise SiamsearchError(f"only {len(sample)} vectors to train {choice.factory}; add images or use the local "
                              "format (--engine local) for very small galleries")
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


def merge(trained_path: Path, parts: list, ivfdata: Path, base: Optional[Path] = None) -> faiss.Index:
    """One IVF index whose inverted lists are the union of ``parts`` (and of index ``base``), on disk.

    Inputs are memory-mapped; the merged lists go to ``ivfdata`` (Faiss ``OnDiskInvertedLists``).
    """
    index = faiss.read_index(str(trained_path))
    ivf = faiss.extract_index_ivf(index)
    inputs = [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in parts]
    if base is not None:
        inputs.append(read_ondisk(base))
    lists = []
    for inp in inputs:
        sub = faiss.extract_index_ivf(inp)
        if sub.nlist != ivf.nlist or sub.code_size != ivf.code_size:
            raise SiamsearchError("an index part does not match the trained index; rebuild with --overwrite")
        lists.append(sub.invlists)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    vec = faiss.InvertedListsPtrVector()
    for il in lists:
        vec.push_back(il)
    with quiet_stdout():
        ntotal = invlists.merge_from_multiple(vec.data(), vec.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    del inputs
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
