"""The trainer: a dataset of (image, identity) in, a self-describing checkpoint out.

``train(data=..., out=...)`` splits the identities into class-disjoint train
and validation parts (seeded), trains an :class:`EmbeddingNet` with the chosen
loss, validates every epoch on the held-out identities (verification ROC-AUC
on seeded pairs and leave-one-out precision@1) and keeps the best epoch in
``out``. The last epoch's full state (optimizer included) is kept beside it in
``out + ".last"`` until the run completes, so an interrupted run continues
with ``resume=True``.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from .._version import __version__
from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.config import ModelConfig
from ..data import ImageDataset, guess_channels_and_size, open_dataset
from ..data.base import collate_skip_none
from ..data.samplers import MPerClassBatchSampler, sample_pairs
from ..data.splits import split_by_identity
from ..core.distance import pair_distances
from ..core.embedder import resolve_device
from ..core.inference import InferenceRunner, stream_embeddings
from ..core.errors import SiamsearchError
from .losses import LOSSES, check_mining, make_loss
from ..metrics.identification import precision_at_1
from ..metrics.verification import roc_auc
from ..core.model import EmbeddingNet
from ..core.preprocess import build_transform, seed_augmentation
from ..core.files import PathLike


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        path: the checkpoint holding the best epoch.
        fingerprint: that checkpoint's model fingerprint.
        best_epoch: 1-based epoch kept in ``path``.
        history: one dict per epoch: ``epoch, loss, val_auc, val_precision_at_1,
            val_genuine_distance, val_impostor_distance, seconds, lr`` (the two
            distances are means over the validation pairs; an impostor mean far
            below 1 with a triplet loss sitting at its margin is the collapse
            that ``mining="all"`` avoids).
        seconds: wall time of the whole run.
    """

    path: str
    fingerprint: str
    best_epoch: int
    history: list
    seconds: float

    @property
    def best(self) -> dict:
        return self.history[self.best_epoch - 1]


def lr_factor(fraction: float, warmup: float) -> float:
    """Learning-rate multiplier at ``fraction`` (0..1) of a run: linear warm-up, then cosine to 0."""
    if fraction < warmup:
        return max(fraction / warmup, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * (fraction - warmup) / max(1e-9, 1.0 - warmup)))


def _seed_everything(seed: int) -> None:
    seed_augmentation(seed)  # python `random` and torch, which the transforms draw from
    np.random.seed(seed % (2**32))


def _versions() -> dict:
    import torchvision

    return {
        "siamsearch": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }


def _validate(net: EmbeddingNet, ds: ImageDataset, device: torch.device, seed: int, n_pairs: int, batch_size: int) -> dict:
    """Embed the validation images; ROC-AUC on seeded pairs and precision@1 (leave-one-out)."""
    net.eval()
    runner = InferenceRunner(net, device, precision="fp32", channels_last=False)  # checkpoint choice: fp32
    embs, ids = [], []
    for batch in stream_embeddings(runner, len(ds), ds.load, ds.transform, net.output_dim,
                                   batch_size=max(batch_size, 128)):
        embs.append(batch.embeddings)
        ids.append(ds.identities[batch.positions])
    if not sum(len(e) for e in embs):
        raise SiamsearchError("no validation image could be read; run `siamsearch data check` on the dataset")
    emb, ids = np.concatenate(embs), np.concatenate(ids)
    a, b, is_same = sample_pairs(ids, n_pairs, seed=seed)
    dist = pair_distances(emb[a], emb[b])
    record = {"val_auc": float(roc_auc(dist, is_same)), "val_precision_at_1": float(precision_at_1(emb, ids))}
    if is_same.any() and (~is_same).any():
        record["val_genuine_distance"] = float(dist[is_same].mean())
        record["val_impostor_distance"] = float(dist[~is_same].mean())
    return record


def train(
    data: Union[PathLike, list, ImageDataset],
    out: PathLike,
    *,
    format: str = "auto",
    split: Optional[str] = None,
    loss: str = "triplet",
    backbone: str = "smallcnn",
    input_size: Optional[int] = None,
    in_channels: Optional[int] = None,
    embedding_dim: int = 128,
    embed_from: str = "head",
    hflip: bool = False,
    weights: Optional[str] = None,
    epochs: int = 10,
    batch_size: int = 64,
    m_per_class: int = 4,
    steps_per_epoch: Optional[int] = None,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    margin: Optional[float] = None,
    mining: str = "hard",
    augment: bool = True,
    seed: int = 0,
    device: str = "auto",
    val_fraction: float = 0.2,
    val_pairs: int = 4000,
    val_max_images: int = 4000,
    workers: int = 0,
    resume: bool = False,
    max_minutes: Optional[float] = None,
    progress: bool = True,
) -> TrainResult:
    """Train an embedding model and write the best epoch to ``out``.

    Args:
        data: a dataset path (identity folders, MNIST/Fashion-MNIST IDX folder,
            Omniglot zips/folders, CelebA root), a list of paths, or an
            :class:`ImageDataset`.
        out: checkpoint file to write (the best epoch by validation ROC-AUC).
        format, split: passed to :func:`siamsearch.data.open_dataset`.
        loss: ``"contrastive"`` (every pair of the batch), ``"triplet"`` (batch-all or batch-hard by
            ``mining``) or ``"arcface"`` (margin softmax on identity ids); all see the same M-per-class
            batches through the one loss interface ``loss(embeddings, identities)``.
        backbone, input_size, in_channels, embedding_dim, embed_from, hflip: the
            :class:`ModelConfig` (``embed_from="backbone"``: embed with the
            backbone's features, the head serving the loss only); ``input_size``/``in_channels`` default to a
            guess from the images (32 px for small images, else 64; grey unless colour).
        weights: backbone init for torchvision backbones (local state dict path or "imagenet").
        epochs, batch_size, lr, weight_decay, margin: optimisation (AdamW, cosine
            schedule with one warm-up epoch); ``margin=None`` keeps the loss's default.
        m_per_class: images per identity in each batch.
        mining: triplet mining, ``"hard"`` (batch-hard, default) or ``"all"``
            (batch-all; see :class:`siamsearch.training.losses.TripletLoss`).
        steps_per_epoch: batches per epoch (default: one pass over the training images).
        augment: small random affine (and flips when ``hflip``) during training.
        seed: seeds the split, the samplers, augmentation and initialisation;
            the same seed gives the same model on CPU.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (mixed precision on CUDA).
        val_fraction: share of identities held out for validation (0 disables it;
            then the last epoch is kept).
        val_pairs, val_max_images: size of the per-epoch validation.
        workers: DataLoader worker processes.
        resume: continue the interrupted run whose state is in ``out + ".last"``.
        max_minutes: a wall-clock budget: the learning-rate schedule follows the
            clock instead of the step count, and training stops (after
            validating the epoch in progress) when the budget is spent;
            ``epochs`` is then an upper bound. Runs are not bit-reproducible
            under a budget (how far they get depends on the machine).

    Returns:
        :class:`TrainResult`.
    """
    t_start = time.time()
    out = Path(out)
    last_path = Path(str(out) + ".last")
    if loss not in LOSSES:
        raise SiamsearchError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    check_mining(mining)  # here too: the other losses ignore it, a typo still gets an error
    if epochs < 1 or batch_size < 2:
        raise SiamsearchError("epochs must be >= 1 and batch_size >= 2")
    if m_per_class < 2 or batch_size < 2 * m_per_class:
        raise SiamsearchError(
            f"batch_size ({batch_size}) must hold at least two identities of m_per_class ({m_per_class}) images"
        )
    dev = resolve_device(device)
    _seed_everything(seed)

    ds = data if isinstance(data, ImageDataset) else open_dataset(data, format=format, split=split)
    if ds.num_identities < 2 or len(ds) < 4:
        raise SiamsearchError(f"{data}: need at least 2 identities and 4 images to train; found {ds.num_identities} and {len(ds)}")
    if val_fraction > 0:
        train_idx, val_idx = split_by_identity(ds.identities, val_fraction, seed)
    else:
        train_idx, val_idx = np.arange(len(ds)), np.zeros(0, dtype=np.int64)
    train_ds = ds.subset(train_idx, reindex=True)
    val_ds = ds.subset(val_idx, reindex=True) if len(val_idx) else None
    if val_ds is not None and len(val_ds) > val_max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(val_ds), val_max_images, replace=False))
        val_ds = val_ds.subset(keep, reindex=True)

    guess_c, guess_s = guess_channels_and_size(ds, seed)
    config = ModelConfig.for_channels(
        in_channels or guess_c, backbone=backbone, input_size=input_size or guess_s,
        embedding_dim=embedding_dim, hflip=hflip, embed_from=embed_from,
    )
    hyper = dict(
        loss=loss, backbone=backbone, epochs=epochs, batch_size=batch_size, m_per_class=m_per_class,
        steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=weight_decay, margin=margin, augment=augment,
        mining=mining if loss == "triplet" else None,
        seed=seed, val_fraction=val_fraction, val_pairs=val_pairs, weights=weights, max_minutes=max_minutes,
    )
    card = {
        "data": {"source": str(data) if not isinstance(data, ImageDataset) else str(ds.root or ds.format),
                 "format": ds.format, "digest": ds.digest(), "images": len(ds), "identities": ds.num_identities},
        "train_identities": [train_ds.identity_names[i] for i in range(train_ds.num_identities)],
        "val_identities": [val_ds.identity_names[i] for i in range(val_ds.num_identities)] if val_ds else [],
        "hyperparameters": hyper,
        "versions": _versions(),
        "device": str(dev),
        # the precision that made the weights (fp16 autocast with loss scaling on CUDA) and the one validation used
        "precision": {"train": "fp16-autocast" if dev.type == "cuda" else "fp32", "validation": "fp32"},
    }

    net = EmbeddingNet(config, weights=weights).to(dev)
    criterion = make_loss(loss, train_ds.num_identities, config.embedding_dim, margin, mining).to(dev)
    params = list(net.parameters()) + list(criterion.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    train_tf = build_transform(config, train=True, augment=augment)
    eval_tf = build_transform(config, train=False)
    # few identities (e.g. 8 Fashion-MNIST classes): more images per identity, same batch size
    usable = int((np.bincount(train_ds.identities) >= 2).sum())
    per_batch = max(2, min(batch_size // m_per_class, usable))
    m_eff = max(m_per_class, batch_size // per_batch)
    sampler = MPerClassBatchSampler(train_ds.identities, m=m_eff, batch_size=per_batch * m_eff, seed=seed,
                                    num_batches=steps_per_epoch)
    steps = len(sampler)
    total_steps = max(1, steps * epochs)
    budget_s = None if max_minutes is None else 60.0 * float(max_minutes)
    # "before": seconds spent by an interrupted run (resume); "reserve": the last validation's duration,
    # kept free at the end so that the final epoch's validation also fits in the budget
    clock = {"start": time.time(), "before": 0.0, "reserve": 0.0}

    def elapsed() -> float:
        return clock["before"] + time.time() - clock["start"]

    def fraction(step: int) -> float:
        """Share of the run done: by steps, or by the clock under a time budget."""
        return min(1.0, elapsed() / budget_s) if budget_s else step / total_steps

    warm = min(0.2, 1.0 / epochs)  # warm up over one epoch (at most a fifth of the run)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(fraction(step), warm))
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")

    history: list = []
    best_epoch, best_score, start_epoch = 0, -1.0, 0
    if resume:
        if not last_path.exists():
            if out.exists():
                raise SiamsearchError(f"{out} is a finished run (no {last_path.name} to resume); train again without --resume")
            raise SiamsearchError(f"nothing to resume: {last_path} does not exist; train without --resume")
        ck = load_checkpoint(last_path)
        if ck.card.get("hyperparameters") != json.loads(json.dumps(hyper)) or ck.card["data"]["digest"] != card["data"]["digest"]:
            raise SiamsearchError(
                f"{last_path} was started with other data or options; resume with the same options, or train afresh without --resume"
            )
        config = ck.config
        net.load_state_dict(ck.state_dict)
        criterion.load_state_dict(ck.head_state)
        optimizer.load_state_dict(ck.resume["optimizer"])
        scheduler.load_state_dict(ck.resume["scheduler"])
        history = ck.card["history"]
        clock["before"] = float(sum(h["seconds"] for h in history))
        start_epoch = int(ck.resume["epoch"])
        best_epoch, best_score = int(ck.card["best_epoch"]), float(ck.resume["best_score"])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_epoch * steps, desc="training", unit="step", dynamic_ncols=True)
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        _seed_everything(seed * 1000 + epoch)
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_ds.with_transform(train_tf), batch_sampler=sampler, num_workers=workers,
                            collate_fn=collate_skip_none, generator=g, pin_memory=dev.type == "cuda")
        net.train()
        criterion.train()
        losses = []
        for batch in loader:
            if budget_s and elapsed() + clock["reserve"] >= budget_s:
                break
            if batch is None:
                continue
            with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
                x, y = batch
                value = criterion(net.project(x.to(dev, non_blocking=True)), y.to(dev))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(float(value.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.4f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                  "lr": float(scheduler.get_last_lr()[0])}
        if val_ds is not None:
            t_val = time.time()
            record.update(_validate(net, val_ds.with_transform(eval_tf), dev, seed, val_pairs, batch_size))
            clock["reserve"] = time.time() - t_val
        record["seconds"] = round(time.time() - t0, 2)
        history.append(record)
        score = record.get("val_auc", float(epoch))
        card.update(history=history)
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            card.update(best_epoch=best_epoch)
            save_checkpoint(out, config, net.state_dict(), card, head_state=criterion.state_dict())
        card.update(best_epoch=best_epoch)
        save_checkpoint(last_path, config, net.state_dict(), card, head_state=criterion.state_dict(),
                        resume={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "epoch": epoch + 1, "best_score": best_score})
        if bar is not None:
            msg = f"epoch {epoch + 1}/{epochs} loss {record['loss']:.4f}"
            if "val_auc" in record:
                msg += f" val AUC {record['val_auc']:.4f} P@1 {record['val_precision_at_1']:.4f}"
            if "val_impostor_distance" in record:
                msg += f" d(same/diff) {record['val_genuine_distance']:.2f}/{record['val_impostor_distance']:.2f}"
            bar.write(msg)
        if budget_s and elapsed() + clock["reserve"] >= budget_s:
            if bar is not None:
                bar.write(f"time budget of {max_minutes:g} min used up after epoch {epoch + 1}")
            break
    if bar is not None:
        bar.close()
    # final card with the full history, written into the best checkpoint
    best = load_checkpoint(out)
    card.update(history=history, best_epoch=best_epoch, train_seconds=round(time.time() - t_start, 1))
    fp = save_checkpoint(out, best.config, best.state_dict, card, head_state=best.head_state)
    last_path.unlink(missing_ok=True)
    return TrainResult(path=str(out), fingerprint=fp, best_epoch=best_epoch, history=history, seconds=time.time() - t_start)
