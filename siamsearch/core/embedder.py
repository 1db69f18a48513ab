"""A loaded model: images in, L2-normalised embeddings out.

:func:`load_model` reads a checkpoint and returns an :class:`Embedder`, the
object the indexer, the query layer, calibration and evaluation all use.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .config import ModelConfig
from .distance import pair_distances
from .errors import CheckpointError, SiamsearchError, UnreadableImage
from .fusion import optimize_for_inference
from .images import ImageLike, read_image_digest
from .inference import (Digested, EmbeddedBatch, InferenceRunner, can_embed_in_workers, should_compile,
                        stream_embeddings)
from .model import EmbeddingNet
from .preprocess import build_transform, decode_mode, decode_size


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SiamsearchError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SiamsearchError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


class _Pick:
    """``i -> items[i]`` (paths, PIL images or arrays; the transform reads them). Picklable, for
    decoding workers."""

    def __init__(self, items: Sequence):
        self.items = items

    def __call__(self, i: int):
        return self.items[i]


class DigestedFiles:
    """``i -> Digested(image of paths[i], SHA-256 of its bytes)``: one read per file, decoded as a path given to
    the transform would be (JPEGs at reduced scale down to ``min_size``). Picklable, for decoding workers."""

    def __init__(self, paths: Sequence, min_size: int, mode: str):
        self.paths, self.min_size, self.mode = paths, min_size, mode

    def __call__(self, i: int) -> Digested:
        return Digested(*read_image_digest(self.paths[i], self.min_size, self.mode))


def _is_single_image(x) -> bool:
    """A path, a PIL image, or an array ``[H, W]`` / ``[H, W, 1|3|4]`` is one image;
    a list or an array ``[N, H, W]`` / ``[N, H, W, C]`` is many."""
    if isinstance(x, (str, os.PathLike)) or hasattr(x, "mode"):
        return True
    if isinstance(x, np.ndarray):
        return x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4))
    return False


class Embedder:
    """A trained :class:`EmbeddingNet` with its config, card and calibration.

    Attributes:
        config: the :class:`ModelConfig` (architecture and preprocessing spec).
        fingerprint: 16 hex chars identifying the weights and config.
        card: the training card (dict).
        calibration: the stored calibration record, or ``None``.
        path: the checkpoint file it came from (``None`` when built in memory).
        device: where the network runs.
        precision: the resolved inference precision, ``fp32``, ``bf16`` or ``fp16``
            (see :mod:`siamsearch.core.inference`).
        transform: the eval preprocessing, ``image -> [C, S, S]`` tensor.
        dim: the embedding's length ``d`` (``config.embedding_dim``, or the
            backbone's feature size when ``config.embed_from == "backbone"``).
    """

    def __init__(self, checkpoint: Checkpoint, path: Optional[str] = None, device: Union[str, torch.device] = "auto",
                 precision: Optional[str] = None, compile: Union[bool, str] = "auto"):
        self.config: ModelConfig = checkpoint.config
        self.fingerprint: str = checkpoint.fingerprint
        self.card: dict = checkpoint.card
        self.calibration: Optional[dict] = checkpoint.calibration
        self.path = None if path is None else os.fspath(path)
        self.device = resolve_device(device)
        try:
            net = EmbeddingNet(self.config)
            net.load_state_dict(checkpoint.state_dict)
        except SiamsearchError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged config or weights: never a traceback
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{path or 'the checkpoint'}: its weights do not fit its own config ({first}); "
                                  "re-train it or copy it again") from None
        self.dim: int = int(net.output_dim)
        # Inference only: BatchNorm folded, exact 2x2 pooling, oneDNN conv+ReLU in bf16 (core/fusion.py), and
        # channels_last memory format (faster with oneDNN on CPU and tensor cores on CUDA).
        self.net = optimize_for_inference(net.eval()).to(self.device).to(memory_format=torch.channels_last)
        self.runner = InferenceRunner(self.net, self.device, precision)
        self.compile = compile
        should_compile(compile, 0)  # checks the value now
        self.transform = build_transform(self.config, train=False)

    @property
    def precision(self) -> str:
        """The resolved inference precision: ``fp32``, ``bf16`` or ``fp16``."""
        return self.runner.precision

    # --- embedding -------------------------------------------------------
    def embed_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Preprocessed batch ``[B, C, S, S]`` -> embeddings ``[B, d]`` float32, L2-normalised."""
        return self.runner(x)

    def embed(self, images: Union[ImageLike, Sequence[ImageLike]], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed images given as file paths, PIL images or arrays.

        Args:
            images: one image or a sequence of them.
            batch_size: images per forward pass.

        Returns:
            ``[N, d]`` float32, each row L2-normalised (``N = 1`` for a single image).

        Raises:
            UnreadableImage: when a given file cannot be decoded.
        """
        items = [images] if _is_single_image(images) else list(images)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for batch in self.embed_items(len(items), _Pick(items), batch_size=batch_size, progress=progress):
            if batch.failures:  # preprocess the first bad item again here, to raise its own error
                i, reason = batch.failures[0]
                self.transform(items[i])
                raise UnreadableImage(str(items[i]) if isinstance(items[i], (str, os.PathLike)) else f"image {i}",
                                      reason)
            out[batch.positions] = batch.embeddings
        return out

    def embed_items(self, n: int, load: Callable, batch_size: int = 64, workers: int = 0,
                    progress: bool = False, embed_workers: int = 0) -> Iterator[EmbeddedBatch]:
        """Stream embeddings of items ``0..n-1`` read by ``load(i) -> image`` (e.g. a dataset's ``load``).

        The same loop as :meth:`embed_files` (:func:`stream_embeddings`); unreadable items are
        reported in each batch's ``failures``. ``load`` must be picklable when ``workers > 0``.
        ``embed_workers``: see :func:`stream_embeddings`; ignored (0) off the CPU, where ``fork`` is
        missing, or for a compiled network.
        """
        if should_compile(self.compile, n, self.device.type):
            self.runner.compile()
        if self.device.type != "cpu" or self.runner.compiled or not can_embed_in_workers():
            embed_workers = 0
        yield from stream_embeddings(self.runner, n, load, self.transform, self.dim, batch_size=batch_size,
                                     workers=workers, pin_memory=self.device.type == "cuda", progress=progress,
                                     embed_workers=embed_workers)

    def embed_files(
        self, paths: Sequence, batch_size: int = 64, workers: int = 0, progress: bool = False,
        embed_workers: int = 0, digests: bool = False,
    ) -> Iterator[EmbeddedBatch]:
        """Stream embeddings of image files in input order, in batches.

        Unreadable files never raise: they are reported in each batch's
        ``failures`` with their reason. Memory is bounded by the batch size.

        Args:
            paths: image file paths.
            batch_size: images per forward pass.
            workers: DataLoader worker processes decoding images in parallel.
            embed_workers: worker processes that each decode and embed whole batches on one thread
                (CPU; see :func:`~siamsearch.core.inference.stream_embeddings`); ``workers`` is then ignored.
            digests: each batch also carries ``digests``, the hex SHA-256 of the bytes each embedded image
                was decoded from (aligned with ``positions``), hashed where the file is read (in the
                workers, when there are): the gallery's content hashes, with no second read of the file.
        """
        paths = list(paths)
        if digests:
            load: Callable = DigestedFiles(paths, decode_size(self.config), decode_mode(self.config))
        else:  # the transform decodes each path (JPEGs at reduced scale), as for a path given to embed()
            load = _Pick(paths)
        yield from self.embed_items(len(paths), load, batch_size=batch_size, workers=workers,
                                    progress=progress, embed_workers=embed_workers)

    def distance(self, a: ImageLike, b: ImageLike) -> float:
        """Euclidean distance in [0, 2] between the embeddings of two images."""
        e = self.embed([a, b])
        return float(pair_distances(e[:1], e[1:])[0])


def load_model(path: Union[str, os.PathLike], device: Union[str, torch.device] = "auto",
               precision: Optional[str] = None, compile: Union[bool, str] = "auto") -> Embedder:
    """Load a checkpoint written by :func:`siamsearch.train` (weights-only, verified).

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        precision: ``auto|fp32|bf16|fp16`` (see :mod:`siamsearch.core.inference`); default: the process
            default (``auto`` unless :func:`~siamsearch.core.inference.set_default_precision` or
            ``$SIAMSEARCH_PRECISION`` says otherwise).
        compile: ``torch.compile`` the network: ``True``, ``False`` or ``"auto"`` (only for jobs of
            at least :data:`~siamsearch.core.inference.COMPILE_MIN_IMAGES` images, on CUDA only).

    Returns:
        An :class:`Embedder`; ``embed(images) -> [N, d]`` float32 L2-normalised.
    """
    return Embedder(load_checkpoint(path), path=path, device=device, precision=precision, compile=compile)
