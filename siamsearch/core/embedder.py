"""A loaded model: images in, L2-normalised embeddings out.

:func:`load_model` reads a checkpoint and returns an :class:`Embedder`, the
object the indexer, the query layer, calibration and evaluation all use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .checkpoint import Checkpoint, load_checkpoint
from .config import ModelConfig
from .distance import pair_distances
from .errors import SiamsearchError, UnreadableImage
from .images import ImageLike, read_image
from .model import EmbeddingNet
from .preprocess import build_transform


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


@dataclass(frozen=True)
class EmbeddedBatch:
    """One batch from :meth:`Embedder.embed_files`.

    Attributes:
        positions: ``[b]`` int64 positions of the embedded files in the input list.
        embeddings: ``[b, d]`` float32, L2-normalised.
        failures: ``(position, reason)`` for files of this batch that could not be read.
    """

    positions: np.ndarray
    embeddings: np.ndarray
    failures: list


class _Files(Dataset):
    def __init__(self, paths: Sequence, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(read_image(self.paths[i]))
        except UnreadableImage as e:
            return i, e.reason
        except Exception as e:  # a decoder bug on one file must not stop a long run
            return i, f"cannot preprocess ({type(e).__name__}: {e})"


def _collate(items):
    ok = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    failures = [(i, x) for i, x in items if not isinstance(x, torch.Tensor)]
    positions = torch.tensor([i for i, _ in ok], dtype=torch.int64)
    batch = torch.stack([x for _, x in ok]) if ok else None
    return positions, batch, failures


def _is_single_image(x) -> bool:
    """A path, a PIL image, or an array ``[H, W]`` / ``[H, W, 1|3|4]`` is one image;
    a list or an array ``[N, H, W]`` / ``[N, H, W, C]`` is many."""
    if isinstance(x, (str, os.PathLike)) or hasattr(x, "mode"):
        return True
    if isinstance(x, np.ndarray):
        return x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4))
    return False


def _fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` in a ``Sequential`` into that conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in net.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()
    return net


def _decode_worker_init(worker_id: int) -> None:
    """Decoding workers run at lower CPU priority: on a machine with few cores they fill the time the
    model's threads leave idle instead of pre-empting them in the middle of a parallel region."""
    try:
        os.nice(5)
    except (AttributeError, OSError):  # not POSIX, or not permitted: keep the default priority
        pass


class Embedder:
    """A trained :class:`EmbeddingNet` with its config, card and calibration.

    Attributes:
        config: the :class:`ModelConfig` (architecture and preprocessing spec).
        fingerprint: 16 hex chars identifying the weights and config.
        card: the training card (dict).
        calibration: the stored calibration record, or ``None``.
        path: the checkpoint file it came from (``None`` when built in memory).
        device: where the network runs.
        transform: the eval preprocessing, ``image -> [C, S, S]`` tensor.
        dim: the embedding's length ``d`` (``config.embedding_dim``, or the
            backbone's feature size when ``config.embed_from == "backbone"``).
    """

    def __init__(self, checkpoint: Checkpoint, path: Optional[str] = None, device: Union[str, torch.device] = "auto"):
        self.config: ModelConfig = checkpoint.config
        self.fingerprint: str = checkpoint.fingerprint
        self.card: dict = checkpoint.card
        self.calibration: Optional[dict] = checkpoint.calibration
        self.path = None if path is None else os.fspath(path)
        self.device = resolve_device(device)
        net = EmbeddingNet(self.config)
        try:
            net.load_state_dict(checkpoint.state_dict)
        except RuntimeError as e:
            raise SiamsearchError(f"checkpoint weights do not fit its own config ({str(e).splitlines()[0]}); re-train") from None
        self.dim: int = int(net.output_dim)
        # Inference only: BatchNorm folded into the convolutions, channels_last memory format (faster with
        # oneDNN on CPU and tensor cores on CUDA); outputs equal the plain network's to ~1e-6.
        self.net = _fold_batchnorm(net.eval()).to(self.device).to(memory_format=torch.channels_last)
        self.transform = build_transform(self.config, train=False)

    # --- embedding -------------------------------------------------------
    def embed_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Preprocessed batch ``[B, C, S, S]`` -> embeddings ``[B, d]`` float32."""
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self.net(x)
            else:
                out = self.net(x)
            return out.float().cpu().numpy()

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
        rng = range(0, len(items), batch_size)
        if progress:
            from tqdm import tqdm

            rng = tqdm(rng, desc="embedding", unit="batch")
        for start in rng:
            chunk = items[start : start + batch_size]
            out[start : start + len(chunk)] = self.embed_tensor(torch.stack([self.transform(im) for im in chunk]))
        return out

    def embed_files(
        self, paths: Sequence, batch_size: int = 64, workers: int = 0, progress: bool = False
    ) -> Iterator[EmbeddedBatch]:
        """Stream embeddings of image files in input order, in batches.

        Unreadable files never raise: they are reported in each batch's
        ``failures`` with their reason. Memory is bounded by the batch size.

        Args:
            paths: image file paths.
            batch_size: images per forward pass.
            workers: DataLoader worker processes decoding images in parallel.
        """
        loader = DataLoader(
            _Files(list(paths), self.transform), batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=_collate, pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None, worker_init_fn=_decode_worker_init,
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc="embedding", unit="img")
        for positions, batch, failures in loader:
            emb = self.embed_tensor(batch) if batch is not None else np.zeros((0, self.dim), np.float32)
            if bar is not None:
                bar.update(len(positions) + len(failures))
            yield EmbeddedBatch(positions.numpy(), emb, list(failures))
        if bar is not None:
            bar.close()

    def distance(self, a: ImageLike, b: ImageLike) -> float:
        """Euclidean distance in [0, 2] between the embeddings of two images."""
        e = self.embed([a, b])
        return float(pair_distances(e[:1], e[1:])[0])


def load_model(path: Union[str, os.PathLike], device: Union[str, torch.device] = "auto") -> Embedder:
    """Load a checkpoint written by :func:`siamsearch.train` (weights-only, verified).

    Returns:
        An :class:`Embedder`; ``embed(images) -> [N, d]`` float32 L2-normalised.
    """
    return Embedder(load_checkpoint(path), path=path, device=device)
