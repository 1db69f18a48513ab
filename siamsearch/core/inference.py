"""Running a network for inference: precision, memory format, compilation, and THE embedding loop.

Every embedding in siamsearch goes through :func:`stream_embeddings` (index build
and update, queries, verification CSVs, evaluation, calibration, the trainer's
validation) with an :class:`InferenceRunner` doing the forward pass.

Precision (``--precision``):

* ``fp32``: plain float32.
* ``bf16``: bfloat16 autocast (convolutions and matrix products in bf16,
  accumulation and normalisation in fp32). Fast where the CPU has native bf16
  instructions (AVX512-BF16 / AMX on x86, the BF16 extension on Arm) and on
  recent GPUs; emulated (slow) elsewhere.
* ``fp16``: float16 autocast; the usual choice on CUDA GPUs without bf16. On a CPU it runs, about 10x
  slower than fp32, with a warning.
* ``auto``: CUDA -> bf16 where the GPU supports it, else fp16; CPU -> bf16
  where the CPU has native bf16 (:func:`cpu_has_native_bf16`), else fp32.

Reduced precision changes embeddings by about 1e-3 in cosine (bf16 keeps 8
mantissa bits); the tests check cosine to fp32 >= 0.999 and the same nearest
neighbour for >= 99.5 % of queries, so a gallery embedded in one precision is
searched correctly with queries embedded in another.

Memory: on Linux with glibc, the first CPU :class:`InferenceRunner` of a process asks malloc to keep
freed memory for reuse (:func:`keep_freed_memory`). Without it every activation larger than malloc's
mmap threshold (at most 32 MB; smallcnn's first feature map at 64 px is 17-67 MB a batch) is mapped and
unmapped on every forward pass, and the kernel zero-fills its pages again each time: on this project's
2-core machine that halved fp32 throughput at batch 128 (960 -> 1,800 images/s) and cost bf16 a third.

``torch.compile`` (``compile="auto"``) is used only on CUDA, for jobs of at least
:data:`COMPILE_MIN_IMAGES` images (see there for why), and falls back to eager mode when compiling fails.
"""
from __future__ import annotations

import functools
import os
import platform
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .choices import PRECISIONS  # (accepted by ``--precision`` and the API; defined once there, torch-free)
from .errors import SiamsearchError, UnreadableImage

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: ``compile="auto"`` compiles the network on CUDA for jobs of at least this many images, and never on the
#: CPU. Why: compiling is paid once per process and can be long (smallcnn, 64 px, on this project's 2-core
#: machine: 424 s cold under load, 5-45 s with Inductor's on-disk cache warm). On the CPU the eager network
#: as rewritten by :mod:`siamsearch.core.fusion` (oneDNN conv+ReLU, fast pooling) is about as fast as the
#: compiled one: 2026-12-02 on 2 idle cores, compiled / eager bf16 = 1.08x at 64 px and 0.46x at 32 px
#: (``benchmarks/results/embed_speed_compile.json``), too little to repay even a warm compile. On a GPU the
#: forward is far faster and a compile repays itself only on large jobs: index builds, never a query.
COMPILE_MIN_IMAGES = 200_000

#: fp16 against fp32 on the CPU, as the warning states it: 2026-12-03 on this project's 2-core machine,
#: smallcnn 32 px, batch 64, one thread: 153-239 vs 1,839-3,844 images/s (autocast float16 has no fast CPU
#: kernels). fp16 is for GPUs without bf16.
CPU_FP16_SLOWDOWN = 10


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 arithmetic natively (x86 AVX512-BF16 or AMX-BF16; Arm BF16).

    Read from ``/proc/cpuinfo`` flags on Linux; ``False`` where that cannot be read. The environment
    variable ``SIAMSEARCH_CPU_BF16=0/1`` overrides the detection.
    """
    env = os.environ.get("SIAMSEARCH_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    return _cpuinfo_bf16()


@functools.lru_cache(maxsize=1)
def _cpuinfo_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(1 << 20)
    except OSError:
        return False
    flags: set = set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            flags.update(line.split(":", 1)[1].split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


_malloc_tuned = {"done": False}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap and keep freed memory (no ``mmap`` per large
    block, no trimming), so that the same activation buffers are reused from one batch to the next instead of
    being page-faulted in again. Process-wide; done once. The process's RSS stays at its peak instead of
    shrinking after a batch (the peak itself is unchanged).

    Does nothing (returns ``False``) off Linux, without glibc, or when ``$SIAMSEARCH_MALLOC_TUNING=0``.
    """
    if _malloc_tuned["done"]:
        return True
    if os.environ.get("SIAMSEARCH_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1  # an int: 2 GiB
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False
    _malloc_tuned["done"] = ok
    return ok


_default_precision = {"value": os.environ.get("SIAMSEARCH_PRECISION", "auto")}


def set_default_precision(precision: str) -> None:
    """The precision used where none is given (``load_model(path)``, models a gallery or a command loads
    itself). Starts as ``$SIAMSEARCH_PRECISION`` or ``auto``; the CLI's ``--precision`` sets it.

    Raises:
        SiamsearchError: for an unknown name.
    """
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise SiamsearchError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    _default_precision["value"] = p


def default_precision() -> str:
    """The process default precision, as set (``auto``, ``fp32``, ``bf16`` or ``fp16``; not resolved)."""
    return _default_precision["value"]


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """``auto|fp32|bf16|fp16`` -> the concrete precision (``fp32``, ``bf16`` or ``fp16``) for ``device``.

    ``None`` means the process default (:func:`set_default_precision`).

    Raises:
        SiamsearchError: for an unknown name.
    """
    p = (_default_precision["value"] if precision is None else precision or "auto").lower()
    if p not in PRECISIONS:
        where = " (from $SIAMSEARCH_PRECISION)" if precision is None else ""
        raise SiamsearchError(f"unknown precision {p!r}{where}; use one of {', '.join(PRECISIONS)}")
    if p != "auto":
        return p
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class InferenceRunner:
    """``runner(x [B, C, H, W]) -> [B, d]`` float32 unit rows: ``net`` in inference mode.

    Args:
        net: the network (not modified, except by ``compile``: a compiled wrapper is kept beside it).
        device: where ``net`` lives.
        precision: ``auto|fp32|bf16|fp16`` (see the module docstring); ``None``: the process default.
        channels_last: feed inputs in channels-last memory format (faster with oneDNN and tensor cores).

    Attributes:
        precision: the resolved precision (``fp32``, ``bf16`` or ``fp16``).
        compiled: whether the forward pass now runs a ``torch.compile``'d network.
    """

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: Optional[str] = None,
                 channels_last: bool = True):
        self.net = net
        self.device = device
        self.precision = resolve_precision(precision, device)
        if device.type == "cpu" and self.precision == "fp16":
            warnings.warn(f"fp16 on the CPU runs, but about {CPU_FP16_SLOWDOWN}x slower than fp32 (CPUs have no fast "
                          "float16 kernels); use fp32, or bf16 (what auto picks where the CPU has it)",
                          RuntimeWarning, stacklevel=2)
        self.channels_last = channels_last
        if device.type == "cpu":
            keep_freed_memory()
        self.compiled = False
        self.compile_note: Optional[str] = None
        self._fn: Callable = net
        self._static_batch: Optional[int] = None  # the batch size the compiled network was built for

    def compile(self) -> bool:
        """Switch to a ``torch.compile``'d forward; falls back to eager (with a warning) on any failure.

        Returns:
            whether the compiled forward is now in use.
        """
        if self.compiled:
            return True
        try:
            fn = torch.compile(self.net, dynamic=False)  # static shapes: see _run_static
            self._fn = fn
            self.compiled = True
            self.compile_note = "compiling on first batch"
        except Exception as e:  # no compiler, unsupported platform...
            self.compile_note = f"torch.compile unavailable ({type(e).__name__}); eager mode"
        return self.compiled

    def _run_static(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled network sees one batch shape only (the first one): a shorter batch is padded with
        zeros and a longer one split, so that a ragged last batch never triggers a second compilation
        (static shapes compile to faster code than ``dynamic=True``)."""
        b = self._static_batch = self._static_batch or int(x.shape[0])
        if x.shape[0] == b:
            return self._fn(x)
        if x.shape[0] > b:
            return torch.cat([self._run_static(x[i:i + b]) for i in range(0, x.shape[0], b)])
        pad = x.new_zeros((b - x.shape[0],) + tuple(x.shape[1:])).contiguous(memory_format=torch.channels_last)
        return self._fn(torch.cat([x, pad]).contiguous(memory_format=torch.channels_last))[: x.shape[0]]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        run = self._run_static if self.compiled else self._fn
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return run(x)
        with torch.autocast(self.device.type, dtype=dtype):
            return run(x)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Preprocessed batch ``[B, C, H, W]`` -> embeddings ``[B, d]`` float32, L2-normalised."""
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                out = self._forward(x)
            except Exception as e:
                if not self.compiled:
                    raise
                # compilation happens lazily on the first call: any failure there falls back to eager
                first = (str(e).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {first}); continuing in eager mode",
                              RuntimeWarning, stacklevel=2)
                self._fn, self.compiled = self.net, False
                self.compile_note = f"compile failed ({type(e).__name__}); eager mode"
                out = self._forward(x)
            out = out.float()
            if self.precision != "fp32":  # normalise again in fp32 (the net's own normalisation may run in bf16)
                out = F.normalize(out, dim=1)
            return out.cpu().numpy()


def should_compile(compile: Union[bool, str], n_images: int, device_type: str = "cpu") -> bool:
    """``compile`` is ``True``, ``False`` or ``"auto"`` (= on CUDA, for at least :data:`COMPILE_MIN_IMAGES`
    images; never on the CPU, where the rewritten eager network is as fast)."""
    if isinstance(compile, str):
        if compile != "auto":
            raise SiamsearchError(f"compile must be True, False or 'auto', got {compile!r}")
        return device_type == "cuda" and n_images >= COMPILE_MIN_IMAGES
    return bool(compile)


# --------------------------------------------------------------------------- the embedding loop


@dataclass(frozen=True)
class EmbeddedBatch:
    """One batch from :func:`stream_embeddings`.

    Attributes:
        positions: ``[b]`` int64 positions of the embedded items in the input.
        embeddings: ``[b, d]`` float32, L2-normalised.
        failures: ``(position, reason)`` for items of this batch that could not be read.
    """

    positions: np.ndarray
    embeddings: np.ndarray
    failures: list
    digests: Optional[list] = None


class Digested:
    """What a ``load`` function may return instead of an image: the image and the digest of the exact bytes
    it was decoded from; :class:`EmbeddedBatch` then carries the digests of its embedded items."""

    __slots__ = ("image", "digest")

    def __init__(self, image, digest: str):
        self.image, self.digest = image, digest


class Items(Dataset):
    """Item ``i`` is ``(i, transform(load(i)), digest or None)``, or ``(i, reason, None)`` when it cannot be
    read: the one place an item is loaded and preprocessed for embedding, with its failure reasons (the
    embedding loop here and the Ray engine's decoding task both use it)."""

    def __init__(self, n: int, load: Callable, transform: Callable):
        self.n, self.load, self.transform = int(n), load, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        try:
            item = self.load(i)
            if isinstance(item, Digested):
                return i, self.transform(item.image), item.digest
            return i, self.transform(item), None
        except UnreadableImage as e:
            return i, e.reason, None
        except Exception as e:  # a decoder bug on one file must not stop a long run
            return i, f"cannot preprocess ({type(e).__name__}: {e})", None


def _collate(items):
    ok = [(i, x, h) for i, x, h in items if isinstance(x, torch.Tensor)]
    failures = [(i, x) for i, x, _ in items if not isinstance(x, torch.Tensor)]
    positions = torch.tensor([i for i, _, _ in ok], dtype=torch.int64)
    batch = torch.stack([x for _, x, _ in ok]) if ok else None
    digests = [h for _, _, h in ok] if ok and ok[0][2] is not None else None
    return positions, batch, failures, digests


def _batch_at(items: "Items", lo: int, size: int):
    """:func:`_collate` of items ``lo .. lo + size - 1`` (fewer at the end)."""
    return _collate([items[i] for i in range(lo, min(len(items), lo + size))])


def _decode_worker_init(worker_id: int) -> None:
    """Decoding workers run at lower CPU priority: on a machine with few cores they fill the time the
    model's threads leave idle instead of pre-empting them in the middle of a parallel region."""
    torch.set_num_threads(1)  # a worker decodes one image at a time; no intra-op threads to fight the model's
    try:
        os.nice(5)
    except (AttributeError, OSError):  # not POSIX, or not permitted: keep the default priority
        pass


class _EmbeddedBatches(Dataset):
    """Item ``b`` is batch ``b`` decoded *and embedded*: ``(positions [k] int64, embeddings [k, dim] float32,
    failures, digests)``, for workers that each run the model on their own batches (see :func:`stream_embeddings`)."""

    def __init__(self, items: Items, forward: Callable, batch_size: int, dim: int):
        self.items, self.forward, self.batch_size, self.dim = items, forward, int(batch_size), int(dim)

    def __len__(self) -> int:
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int):
        positions, batch, failures, digests = _batch_at(self.items, b * self.batch_size, self.batch_size)
        emb = self.forward(batch) if batch is not None else np.zeros((0, self.dim), np.float32)
        # numpy, not a tensor: a tensor crosses to the main process as a shared-memory file descriptor, a
        # socket handshake with this worker per batch (~0.3 s of the main process's CPU per 22,000 images)
        return positions.numpy(), emb, failures, digests


def _as_is(item):
    """The DataLoader's collate step for :class:`_EmbeddedBatches`: none (embeddings stay numpy arrays, sent
    through the pipe, instead of tensors sent as shared-memory file descriptors)."""
    return item


def _embed_worker_init(worker_id: int) -> None:
    """An embedding worker runs the model on one thread: one process per core, each decoding and embedding."""
    torch.set_num_threads(1)


def can_embed_in_workers() -> bool:
    """Whether this platform starts worker processes by ``fork`` (they inherit the loaded model as it is;
    with ``spawn`` it would have to be pickled and prepared again in every worker)."""
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def stream_embeddings(forward: Callable[[torch.Tensor], np.ndarray], n: int, load: Callable, transform: Callable,
                      dim: int, batch_size: int = 64, workers: int = 0, pin_memory: bool = False,
                      progress: bool = False, embed_workers: int = 0) -> Iterator[EmbeddedBatch]:
    """Embed items ``0..n-1`` in input order, in batches: the one embedding loop of siamsearch.

    Unreadable items never raise: they are reported in each batch's ``failures`` with
    their reason. Memory is bounded by the batch size (and ``workers`` prefetched batches).

    Args:
        forward: preprocessed batch ``[b, C, H, W]`` -> embeddings ``[b, dim]`` float32
            (an :class:`InferenceRunner`).
        n: number of items.
        load: ``i -> image`` (PIL image or array), or a :class:`Digested` image, whose digests then come
            back in each batch's ``digests`` (aligned with ``positions``); raises :class:`UnreadableImage`
            for a bad item.
            Must be picklable when ``workers > 0``.
        transform: ``image -> [C, H, W]`` tensor.
        dim: the embedding length (for empty batches).
        batch_size: items per forward pass.
        workers: DataLoader worker processes decoding in parallel (0: decode in this process).
        pin_memory: pin batches (CUDA).
        progress: a tqdm bar on stderr.
        embed_workers: if > 0 (CPU only, platforms with ``fork``; ``workers`` is then ignored), that many
            forked worker processes each decode *and embed* whole batches with the model on one thread,
            and this process only collects them in order. On 2 cores with small images this beats decoding
            here and running the model on two threads (20,000 48-px PNGs, smallcnn 64 px: 2,100-2,350 ->
            2,600-3,150 images/s): both cores work all the time, and no OpenMP barrier waits for a core
            that is busy decoding.
    """
    if batch_size < 1:
        raise SiamsearchError(f"batch size must be at least 1, got {batch_size}")
    items = Items(n, load, transform)
    if embed_workers > 0:
        loader = DataLoader(_EmbeddedBatches(items, forward, batch_size, dim), batch_size=None, shuffle=False,
                            num_workers=embed_workers, persistent_workers=False, prefetch_factor=2,
                            collate_fn=_as_is, worker_init_fn=_embed_worker_init, multiprocessing_context="fork")
    elif workers > 0 or pin_memory:
        loader = DataLoader(
            items, batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=_collate, pin_memory=pin_memory, persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None, worker_init_fn=_decode_worker_init if workers > 0 else None,
        )
    else:  # in this process: the batches a single-process DataLoader would make, without its set-up per call
        # (a served search embeds one image per request; the DataLoader's iterator cost ~8 % of that)
        loader = (_batch_at(items, lo, batch_size) for lo in range(0, n, batch_size))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="embedding", unit="img", leave=False)
    try:
        for positions, batch, failures, digests in loader:
            if embed_workers > 0:
                emb = batch  # embedded by the worker
            else:
                emb = forward(batch) if batch is not None else np.zeros((0, dim), np.float32)
            if bar is not None:
                bar.update(len(positions) + len(failures))
            yield EmbeddedBatch(np.asarray(positions), emb, list(failures), digests)
    finally:
        if bar is not None:
            bar.close()
