"""TensorBoard logging for long runs (``train(log_dir=...)``, CLI ``--log-dir``).

Writes scalars (``train/loss`` and ``train/lr`` every few steps; ``val/auc``,
``val/precision_at_1``, ``val/genuine_distance``, ``val/impostor_distance`` every epoch) and, at
the end, an embedding-projector sample of validation images with thumbnails. Open it with
``tensorboard --logdir DIR`` (the ``tensorboard`` extra: ``pip install "siamsearch[tensorboard]"``).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

from ..core.errors import SiamsearchError

PathLike = Union[str, os.PathLike]

#: Training scalars are written every this many steps.
EVERY_STEPS = 10
#: Validation images in the embedding-projector sample.
PROJECTOR_IMAGES = 300


class TensorBoardLog:
    """A thin wrapper over ``torch.utils.tensorboard.SummaryWriter``; ``None`` directory: logs nothing."""

    def __init__(self, log_dir: Optional[PathLike]):
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SiamsearchError("--log-dir needs the tensorboard package: pip install \"siamsearch[tensorboard]\" "
                                  "(or pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=os.fspath(log_dir))

    def step(self, step: int, loss: float, lr: float) -> None:
        """Training loss and learning rate at optimisation step ``step`` (every :data:`EVERY_STEPS`)."""
        if self.writer is not None and step % EVERY_STEPS == 0:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, step: int, record: dict) -> None:
        """One epoch's record (see :class:`siamsearch.training.trainer.TrainResult`)."""
        if self.writer is None:
            return
        self.writer.add_scalar("train/epoch_loss", record["loss"], step)
        for key in ("auc", "precision_at_1", "genuine_distance", "impostor_distance"):
            if f"val_{key}" in record:
                self.writer.add_scalar(f"val/{key}", record[f"val_{key}"], step)
        self.writer.flush()

    def projector(self, step: int, embeddings: np.ndarray, labels: list, thumbnails: torch.Tensor) -> None:
        """Embedding-projector sample: ``embeddings [N, d]``, one label per row, ``thumbnails [N, C, H, W]``
        in [0, 1]."""
        if self.writer is None or len(embeddings) == 0:
            return
        self.writer.add_embedding(torch.as_tensor(embeddings), metadata=[str(x) for x in labels],
                                  label_img=thumbnails, global_step=step, tag="validation")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
