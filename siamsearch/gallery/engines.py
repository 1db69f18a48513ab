"""Embedding engines for sharded builds: ``local`` (this process) and ``ray`` (a Ray Data pipeline).

Both take the same :class:`ShardTask` list and yield one :class:`ShardResult` per
task, whole, in task order; the caller writes each shard atomically and records
it in the run's journal. A task is only reported once every one of its files is
embedded or failed, so a driver killed mid-run loses uncommitted shards only.

The Ray pipeline (:func:`run_ray`): the file list (one row per image, with its
shard) -> ``map_batches`` decode tasks on CPUs (read bytes, SHA-256, decode,
preprocess with the model's spec) -> ``map_batches`` with a callable class whose
actors load the model once (``num_gpus=1`` each when the cluster has GPUs) ->
rows streamed back in order. Ray retries tasks and restarts actors that die; a
shard is written only when all its rows have arrived, so it is never half-written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..core.errors import SiamsearchError
from .resolve import embedding_precision

ENGINES = ("local", "ray")
RAY_HINT = "pip install 'siamsearch[ray]'"
_MODEL_ERROR = "siamsearch: model unreadable on worker"
#: Seconds the Ray pipeline waits for its embedding actors to start (a cluster without the resources fails then).
ACTOR_START_TIMEOUT_S = 300
#: Forward passes per call of a CPU embedding actor: fewer, larger calls through Ray Data.
CPU_ACTOR_SUB_BATCHES = 8


@dataclass
class ShardTask:
    """Files to embed into one shard: ``relpaths`` below the source folder, ids from ``first_id`` on."""

    name: str  # shard file, relative to the gallery folder
    first_id: int
    relpaths: list


@dataclass
class ShardResult:
    """A finished task: the rows that embedded (in task order) and the files that failed."""

    task: ShardTask
    relpaths: list
    sha256: list
    embeddings: np.ndarray  # [b, d] float32
    failures: list  # [(relpath, reason)]
    nodes: list = field(default_factory=list)


# --------------------------------------------------------------------------- local

#: An embedding job of fewer images than this decodes in this process even when workers are asked for:
#: starting DataLoader worker processes (fork, pipes, the first prefetched batch) costs about as much as
#: decoding a few hundred small images, and so many make only a few batches with little to overlap. An
#: update of a 1 % change of a 20,000-image gallery (200 images) is such a job.
INPROCESS_DECODE_MAX = 256

#: On two cores, files smaller than this on average (thumbnails, scans of characters, small PNGs) decode in
#: this process: each takes well under a millisecond, and worker processes then only compete with the
#: model's two threads (22,000 images of 28-224 px on 2 idle cores: 3,050 images/s in-process, 2,470 with
#: 2 workers, 2,290 with 1). Larger files (photos) decode in 2 workers (400 JPEGs of 1600 x 1200,
#: ~900 KB: 213 images/s with 2 workers, 119 in-process).
SMALL_FILE_BYTES = 32 * 1024


def default_workers(paths: Optional[Sequence] = None) -> int:
    """DataLoader workers used when none are given. One core: none. Two cores: none when ``paths`` (a sample
    of up to 64 is stat'ed) average under :data:`SMALL_FILE_BYTES`, else 2. More: one per spare core, at
    most 4."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return 0
    if cores > 2:
        return min(4, cores - 1)
    if paths is not None and len(paths):
        step = max(1, len(paths) // 64)
        sizes = []
        for p in list(paths)[::step][:64]:
            try:
                sizes.append(os.path.getsize(p))
            except OSError:
                continue
        if sizes and sum(sizes) / len(sizes) < SMALL_FILE_BYTES:
            return 0
    return 2


def decode_workers(workers: Optional[int], paths: Sequence) -> int:
    """The decoding workers for a job embedding ``paths``: 0 below :data:`INPROCESS_DECODE_MAX` images, else
    ``workers``, or :func:`default_workers` when it is ``None``."""
    if len(paths) < INPROCESS_DECODE_MAX:
        return 0
    return default_workers(paths) if workers is None else int(workers)


def embedding_layout(workers: Optional[int], paths: Sequence) -> dict:
    """How a local job embeds ``paths``: the keyword arguments ``workers`` and ``embed_workers`` of
    :meth:`~siamsearch.core.embedder.Embedder.embed_files`.

    When ``workers`` is not given and the job would decode in this process on two cores (small files, see
    :func:`default_workers`), two worker processes each decode and embed whole batches with the model on
    one thread (and hash the bytes they read), and this process writes: 20,000 48-px PNGs, smallcnn 64 px,
    2 cores, in-process 2,100-2,350 images/s, two embedding workers 2,600-3,150 (the model scales only 1.8x
    from one thread to two, and decoding in this process left one core idle). The embedder falls back to the in-process loop
    where it cannot use them (GPU, compiled network, no ``fork``).
    """
    n_decode = decode_workers(workers, paths)
    if workers is None and n_decode == 0 and len(paths) >= INPROCESS_DECODE_MAX and (os.cpu_count() or 1) == 2:
        return {"workers": 0, "embed_workers": 2}
    return {"workers": n_decode, "embed_workers": 0}



def run_local(tasks: list, source: Path, embedder, batch_size: int, workers: Optional[int],
              progress: bool) -> Iterator[ShardResult]:
    """Embed each task's files in this process (DataLoader decoding workers), one task after another."""
    for task in tasks:
        paths = [str(source / r) for r in task.relpaths]
        rels, shas, embs, failures = [], [], [], []
        for batch in embedder.embed_files(paths, batch_size=batch_size, progress=progress, digests=True,
                                          **embedding_layout(workers, paths)):
            failures += [(task.relpaths[pos], reason) for pos, reason in batch.failures]
            rels += [task.relpaths[pos] for pos in batch.positions.tolist()]
            shas += list(batch.digests or [])  # hashed from the bytes that were embedded
            embs.append(np.asarray(batch.embeddings, dtype="float32"))
        emb = np.concatenate(embs) if embs else np.zeros((0, embedder.dim), "float32")
        yield ShardResult(task, rels, shas, emb, sorted(failures))


# --------------------------------------------------------------------------- ray


def import_ray():
    """The ``ray`` module, or a :class:`SiamsearchError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SiamsearchError(f"--engine ray needs Ray Data and pyarrow: {RAY_HINT}") from None
    return ray


class RaySession:
    """Connect to ``address`` (``auto`` or ``HOST:PORT``) or start a local cluster; stop what was started.

    Raises:
        SiamsearchError: Ray is not installed, or the cluster at ``address`` cannot be reached.
    """

    def __init__(self, address: Optional[str] = None):
        self.ray = import_ray()
        self.started = False
        if address and address != "auto" and not address.startswith("ray://"):
            _check_reachable(address)
        if self.ray.is_initialized():
            return
        try:
            if address:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                self.ray.init(include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise SiamsearchError(f"cannot reach a Ray cluster at {address or 'a new local cluster'} ({first}); "
                                  "check --address (HOST:PORT of the head node, or auto on a node of the "
                                  "cluster), or leave it out to start a local cluster") from None
        self.started = True

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def __enter__(self) -> "RaySession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at ``HOST:PORT``."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise SiamsearchError(f"cannot reach a Ray cluster at {address} ({reason}); check --address (HOST:PORT of "
                              "the head node's GCS, by default port 6379, or auto on a node of the cluster), or "
                              "leave it out to start a local cluster") from None


def _decode_batch(batch: dict, config_json: str) -> dict:
    """Ray Data task: read, hash, decode and preprocess a batch of files (CPU) with the local engine's reader
    and item loader (:class:`~siamsearch.core.embedder.DigestedFiles`, :class:`~siamsearch.core.inference.Items`:
    one read, the hash of the bytes decoded, JPEGs at reduced scale, the same failure reasons), so that both
    engines store the same embeddings and hashes."""
    from ..core.config import ModelConfig
    from ..core.embedder import DigestedFiles
    from ..core.inference import Items
    from ..core.preprocess import build_transform, decode_mode, decode_size

    config = ModelConfig.from_json(config_json)
    paths = batch["path"].tolist()
    items = Items(len(paths), DigestedFiles(paths, decode_size(config), decode_mode(config)),
                  build_transform(config, train=False))
    pixels, ok, reasons, shas = [], [], [], []
    shape = None
    for j in range(len(paths)):
        _, x, sha = items[j]
        if isinstance(x, str):  # the reason it could not be read
            pixels.append(None), ok.append(False), reasons.append(x), shas.append("")
            continue
        x = x.numpy()
        shape = x.shape
        pixels.append(x), ok.append(True), reasons.append(""), shas.append(sha)
    if shape is None:
        shape = (config.in_channels, config.input_size, config.input_size)
    filled = np.stack([p if p is not None else np.zeros(shape, "float32") for p in pixels]).astype("float32")
    return {"task": batch["task"], "pos": batch["pos"], "pixels": filled, "ok": np.asarray(ok, bool),
            "reason": np.asarray(reasons, dtype=object), "sha": np.asarray(shas, dtype=object)}


class EmbedActor:
    """Ray Data callable class: loads the model once per actor, embeds decoded batches."""

    def __init__(self, model_path: str, fingerprint: str, device: str, threads: int, precision: str = "fp32",
                 sub_batch: int = 64):
        import ray
        import torch

        from ..core.embedder import load_model

        self.threads = max(1, int(threads))
        torch.set_num_threads(self.threads)
        try:
            self.embedder = load_model(model_path, device=device, precision=precision)
        except (OSError, SiamsearchError) as e:
            raise RuntimeError(f"{_MODEL_ERROR}: {model_path} on node {ray.get_runtime_context().get_node_id()}: "
                               f"{e}") from None
        if self.embedder.fingerprint != fingerprint:
            raise RuntimeError(f"{_MODEL_ERROR}: {model_path} is model {self.embedder.fingerprint} on this worker, "
                               f"not {fingerprint}")
        self.node = ray.get_runtime_context().get_node_id()
        self.sub_batch = max(1, int(sub_batch))
        self.config_json = self.embedder.config.to_json()

    def __call__(self, batch: dict) -> dict:
        import torch

        # OpenMP's thread count is per calling thread, and Ray may call this from another thread than
        # __init__ (under its OMP_NUM_THREADS=1): without this the model ran on one thread
        torch.set_num_threads(self.threads)
        if "pixels" in batch:  # decoded by CPU tasks (GPU clusters)
            return self._embed(batch)
        # CPU clusters: this actor reads and decodes its own rows (see run_ray), a forward pass's worth at a time
        return _concat([self._embed(_decode_batch(part, self.config_json)) for part in _split(batch, self.sub_batch)])

    def _embed(self, batch: dict) -> dict:
        import torch

        ok = batch["ok"].astype(bool)
        emb = np.zeros((len(ok), self.embedder.dim), "float32")
        if ok.any():
            emb[ok] = self.embedder.embed_tensor(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {"task": batch["task"], "pos": batch["pos"], "ok": ok, "reason": batch["reason"],
                "sha": batch["sha"], "embedding": emb, "node": np.asarray([self.node] * len(ok), dtype=object)}


def _split(batch: dict, size: int) -> list:
    """A numpy batch (dict of equal-length columns) as consecutive batches of at most ``size`` rows."""
    n = len(next(iter(batch.values())))
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, max(1, size))]


def _concat(batches: list) -> dict:
    """The inverse of :func:`_split`."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _actor_resources(ray) -> tuple[int, dict, int]:
    """(actors, resources per actor, torch threads per actor).

    With GPUs: one actor per GPU. On CPUs only: one actor per CPU, spread over the nodes, each running the
    model on one thread and decoding its own rows. One actor per two CPUs with two threads (the local
    engine's layout) was slower: its decoding ran on one core while the other waited, and any other process
    on either core (the driver, Ray's daemons) stalled both threads of the model at every OpenMP barrier.
    The model itself scales 1.8x from one thread to two (smallcnn 64 px: 2,190 -> 3,920 images/s), so one
    single-threaded actor per core does more per core: 20,000 images on 2 CPUs, 3 interleaved rounds against
    the local engine with 2 decoding workers, 0.60x (0.57-0.63) with 1 actor x 2 threads, 0.70x (0.59-0.76)
    with 2 x 1.
    """
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}, 1
    cpus = int(res.get("CPU", 1))
    return max(1, cpus), {"num_cpus": 1, "scheduling_strategy": "SPREAD"}, 1


def run_ray(tasks: list, source: Path, embedder, batch_size: int, progress: bool) -> Iterator[ShardResult]:
    """Embed the tasks' files with a Ray Data pipeline on the connected cluster (see the module docstring).

    Raises:
        SiamsearchError: the model cannot be read on a worker, or the pipeline fails for good.
    """
    ray = import_ray()
    if embedder.path is None:
        raise SiamsearchError("--engine ray needs the model as a checkpoint file (workers load it by path)")
    items = [{"task": t, "pos": j, "path": str(source / r)} for t, task in enumerate(tasks)
             for j, r in enumerate(task.relpaths)]
    if not items:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in task order: one shard pending at a time
    ctx.enable_progress_bars = bool(progress)
    # start every actor before any block is handed out: otherwise the first actor up (the driver's node,
    # where the model is warm in the page cache) takes a small job's blocks before the others exist
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    actors, resources, threads = _actor_resources(ray)
    # at least 4 blocks per actor, so that every actor gets work even when a small job's blocks are few
    blocks = max(4 * actors, min(len(items) // max(batch_size, 1), 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))))
    blocks = max(1, min(blocks, len(items)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    device = "cuda" if resources.get("num_gpus") else "cpu"
    if device == "cuda":  # GPU actors are fed by decoding tasks on the CPUs (not fused into the actors)
        ds = ds.map_batches(_decode_batch, fn_kwargs={"config_json": embedder.config.to_json()},
                            batch_size=batch_size, batch_format="numpy", num_cpus=0.5)
    # On CPUs each actor decodes its own rows in its process: separate decoding tasks only added object-store
    # copies and contention for the same cores (2 CPUs, 6,000 images: 700 images/s with decoding tasks, vs
    # the local engine's ~2,000). Each call takes CPU_ACTOR_SUB_BATCHES forward passes' rows, but never more
    # than a block's: Ray Data bundles whole blocks up to a call's rows, and a small job's blocks would all go
    # to one actor.
    rows = batch_size if device == "cuda" else max(1, min(batch_size * CPU_ACTOR_SUB_BATCHES,
                                                          len(items) // blocks))
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={
        "model_path": os.path.abspath(embedder.path), "fingerprint": embedder.fingerprint, "device": device,
        "threads": threads, "sub_batch": batch_size,
        "precision": embedding_precision(embedder) if device == "cpu" else "auto"},
        batch_size=rows, batch_format="numpy", concurrency=actors, **resources)
    yield from _collect(ds, tasks, rows)


def _collect(ds, tasks: list, batch_size: int) -> Iterator[ShardResult]:
    """Group the pipeline's ordered rows into whole tasks."""
    pending: dict = {}
    try:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            for i in range(len(batch["task"])):
                t = int(batch["task"][i])
                acc = pending.setdefault(t, {"rows": {}, "nodes": set()})
                acc["rows"][int(batch["pos"][i])] = (bool(batch["ok"][i]), str(batch["reason"][i]),
                                                     str(batch["sha"][i]), batch["embedding"][i])
                acc["nodes"].add(str(batch["node"][i]))
                if len(acc["rows"]) == len(tasks[t].relpaths):
                    yield _result(tasks[t], pending.pop(t))
    except Exception as e:  # Ray wraps worker errors in its own exception types
        text = str(e)
        if _MODEL_ERROR in text:
            detail = text[text.index(_MODEL_ERROR) + len(_MODEL_ERROR) + 2:].splitlines()[0][:300]
            raise SiamsearchError(f"the model cannot be loaded on a Ray worker ({detail}); put the checkpoint on a "
                                  "filesystem every node reads at the same path (or copy it there)") from None
        first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
        raise SiamsearchError(f"the Ray pipeline failed ({type(e).__name__}: {first}); committed shards are kept: "
                              "re-run the same command to resume") from None
    assert not pending, "rows of unfinished tasks left"


def _result(task: ShardTask, acc: dict) -> ShardResult:
    rels, shas, embs, failures = [], [], [], []
    for pos in range(len(task.relpaths)):
        ok, reason, sha, emb = acc["rows"][pos]
        if ok:
            rels.append(task.relpaths[pos])
            shas.append(sha)
            embs.append(emb)
        else:
            failures.append((task.relpaths[pos], reason))
    dim = len(acc["rows"][0][3]) if acc["rows"] else 0
    emb = np.stack(embs).astype("float32") if embs else np.zeros((0, dim), "float32")
    return ShardResult(task, rels, shas, emb, sorted(failures), sorted(acc["nodes"]))
