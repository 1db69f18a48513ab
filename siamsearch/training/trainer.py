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
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from .._version import __version__
from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.config import ModelConfig
from ..core.distance import pair_distances
from ..core.embedder import resolve_device
from ..core.files import PathLike
from ..core.inference import InferenceRunner, stream_embeddings
from ..core.errors import SiamsearchError
from ..core.model import EmbeddingNet
from ..core.preprocess import build_transform, denormalize, seed_augmentation
from ..core.presets import preset_config_fields, preset_values, resolve_preset
from ..data import ImageDataset, guess_channels_and_size, open_dataset
from ..data.base import collate_skip_none
from ..data.samplers import MPerClassBatchSampler, sample_pairs
from ..data.splits import split_by_identity
from ..metrics.identification import precision_at_1
from ..metrics.verification import roc_auc
from . import selection
from .losses import LOSSES, check_mining, make_loss
from .schedule import Plan, lr_factor, plan_run
from .tblog import PROJECTOR_IMAGES, TensorBoardLog



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


def _seed_everything(seed: int) -> None:
    seed_augmentation(seed)  # python `random` and torch, which the transforms draw from
    np.random.seed(seed % (2**32))


def _versions() -> dict:
    import torchvision

    return {
        "siamsearch": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }


def _validate(net: EmbeddingNet, ds: ImageDataset, device: torch.device, seed: int, n_pairs: int,
              batch_size: int) -> dict:
    """Embed the validation images; ROC-AUC on seeded pairs and precision@1 (leave-one-out)."""
    emb, ids = _embed(net, ds, device, batch_size)
    a, b, is_same = sample_pairs(ids, n_pairs, seed=seed)
    dist = pair_distances(emb[a], emb[b])
    record = {"val_auc": float(roc_auc(dist, is_same)), "val_precision_at_1": float(precision_at_1(emb, ids))}
    if is_same.any() and (~is_same).any():
        record["val_genuine_distance"] = float(dist[is_same].mean())
        record["val_impostor_distance"] = float(dist[~is_same].mean())
    return record


def _embed(net: EmbeddingNet, ds: ImageDataset, device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [N, d], identities [N])`` of a dataset with its transform set, through the one
    embedding loop (fp32); unreadable images are skipped."""
    net.eval()
    runner = InferenceRunner(net, device, precision="fp32", channels_last=False)  # checkpoint choice: fp32
    embs, ids = [], []
    for batch in stream_embeddings(runner, len(ds), ds.load, ds.transform, net.output_dim,
                                   batch_size=max(batch_size, 128)):
        embs.append(batch.embeddings)
        ids.append(ds.identities[batch.positions])
    if not sum(len(e) for e in embs):
        raise SiamsearchError("no validation image could be read; run `siamsearch data check` on the dataset")
    return np.concatenate(embs), np.concatenate(ids)


def _open_split(data, format: str, split: Optional[str], val_fraction: float, val_max_images: int,
                seed: int, val_data: Optional[PathLike] = None) -> tuple:
    """``(ds, train_ds, val_ds or None)``: identity-disjoint, seeded; validation capped at ``val_max_images``.
    With ``val_data`` all of ``data`` trains and validation is that separate dataset."""
    ds = data if isinstance(data, ImageDataset) else open_dataset(data, format=format, split=split)
    if ds.num_identities < 2 or len(ds) < 4:
        raise SiamsearchError(f"{data}: need at least 2 identities and 4 images to train; found {ds.num_identities} and {len(ds)}")
    if val_fraction > 0 and val_data is None:
        train_idx, val_idx = split_by_identity(ds.identities, val_fraction, seed)
    else:
        train_idx, val_idx = np.arange(len(ds)), np.zeros(0, dtype=np.int64)
    train_ds = ds.subset(train_idx, reindex=True)
    val_ds = ds.subset(val_idx, reindex=True) if len(val_idx) else None
    if val_data is not None:
        val_ds = selection.open_validation(val_data, train_ds)
    note = selection.validation_warning(val_ds.num_identities, len(val_ds)) if val_ds is not None else None
    if note:
        warnings.warn(note, selection.TrainingWarning, stacklevel=3)
    if val_ds is not None and len(val_ds) > val_max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(val_ds), val_max_images, replace=False))
        val_ds = val_ds.subset(keep, reindex=True)
    return ds, train_ds, val_ds


def resolve_recipe(ds: ImageDataset, preset: Optional[str], seed: int, **given) -> tuple[dict, ModelConfig]:
    """The options a run uses: the preset's (given, or guessed from the images) with ``given``
    (those not ``None``) on top. Returns ``(values, config)``; ``values`` also holds ``preset`` and
    ``preset_source``. ``crop=1`` (the whole image) means no crop."""
    guess_c, guess_s = guess_channels_and_size(ds, seed)
    try:
        name, source = resolve_preset(preset, guess_c)
    except ValueError as e:
        raise SiamsearchError(str(e)) from None
    values = preset_values(name, guess_c, guess_s, **given)
    if values["crop"] is not None and tuple(np.atleast_1d(values["crop"]).tolist()) == (1.0,):
        values["crop"] = None
    values.update(preset=name, preset_source=source)
    if values["loss"] not in LOSSES:
        raise SiamsearchError(f"unknown loss {values['loss']!r}; choose one of {', '.join(LOSSES)}")
    check_mining(values["mining"])  # here too: the other losses ignore it, a typo still gets an error
    m, b = values["m_per_class"], values["batch_size"]
    if m < 2 or b < 2 * m:
        raise SiamsearchError(f"batch_size ({b}) must hold at least two identities of m_per_class ({m}) images")
    config = ModelConfig.for_channels(values["in_channels"], **preset_config_fields(values))
    return values, config


def _sampler(train_ds: ImageDataset, values: dict, seed: int, steps_per_epoch: Optional[int]) -> MPerClassBatchSampler:
    """M-per-class batches; identities with a single image take part (as ``m`` augmented copies)
    when ``values["singletons"]``."""
    min_samples = 1 if values["singletons"] else 2
    # few identities (e.g. 8 Fashion-MNIST classes): more images per identity, same batch size
    usable = int((np.bincount(train_ds.identities) >= min_samples).sum())
    per_batch = max(2, min(values["batch_size"] // values["m_per_class"], usable))
    m_eff = max(values["m_per_class"], values["batch_size"] // per_batch)
    return MPerClassBatchSampler(train_ds.identities, m=m_eff, batch_size=per_batch * m_eff, seed=seed,
                                 min_samples=min_samples, num_batches=steps_per_epoch)


def _epoch_line(record: dict, epochs: Optional[int]) -> str:
    msg = f"epoch {record['epoch']}/{epochs or '-'} loss {record['loss']:.4f}"
    if "val_auc" in record:
        msg += f" val AUC {record['val_auc']:.4f} P@1 {record['val_precision_at_1']:.4f}"
    if "val_impostor_distance" in record:
        msg += f" d(same/diff) {record['val_genuine_distance']:.2f}/{record['val_impostor_distance']:.2f}"
    return msg


def _log_projector(log: TensorBoardLog, step: int, net: EmbeddingNet, val_ds: Optional[ImageDataset],
                   eval_tf, config: ModelConfig, device: torch.device, seed: int) -> None:
    """A seeded sample of validation images, embedded by the final network, with thumbnails."""
    if log.writer is None or val_ds is None:
        return
    n = min(PROJECTOR_IMAGES, len(val_ds))
    keep = np.sort(np.random.default_rng(seed).choice(len(val_ds), n, replace=False))
    sample = val_ds.subset(keep, reindex=False)
    emb, ids = _embed(net, sample.with_transform(eval_tf), device, 128)
    if len(emb) != len(sample):  # an unreadable image: no thumbnail row to match
        return
    thumbs = torch.stack([denormalize(eval_tf(sample.load(i)), config) for i in range(len(sample))])
    log.projector(step, emb, [sample.identity_names[i] for i in ids], thumbs)


def train(
    data: Union[PathLike, list, ImageDataset],
    out: PathLike,
    *,
    format: str = "auto",
    split: Optional[str] = None,
    preset: Optional[str] = None,
    loss: Optional[str] = None,
    backbone: Optional[str] = None,
    input_size: Optional[int] = None,
    in_channels: Optional[int] = None,
    embedding_dim: Optional[int] = None,
    embed_from: Optional[str] = None,
    hflip: Optional[bool] = None,
    crop=None,
    resize: Optional[str] = None,
    augmentation: Optional[str] = None,
    weights: Optional[str] = None,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    m_per_class: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    margin: Optional[float] = None,
    mining: Optional[str] = None,
    singletons: Optional[bool] = None,
    augment: bool = True,
    seed: int = 0,
    device: str = "auto",
    val_fraction: float = 0.2,
    val_pairs: int = 4000,
    val_max_images: int = 4000,
    val_data: Optional[PathLike] = None,
    workers: int = 0,
    resume: bool = False,
    max_minutes: Optional[float] = None,
    log_dir: Optional[PathLike] = None,
    progress: bool = True,
) -> TrainResult:
    """Train an embedding model and write the best epoch to ``out``.

    Every option left ``None`` comes from the preset (:mod:`siamsearch.core.presets`): ``preset``
    ``"faces"``, ``"characters"`` or ``"products"``, or, when not given, the one guessed from the
    images (colour: products, grey: characters). The preset and every value used are recorded in
    the training card (``hyperparameters``).

    Args:
        data: a dataset path (identity folders, MNIST/Fashion-MNIST IDX folder,
            Omniglot zips/folders, CelebA root), a list of paths, or an
            :class:`ImageDataset`.
        out: checkpoint file to write (the best epoch by validation ROC-AUC).
        format, split: passed to :func:`siamsearch.data.open_dataset`.
        preset: one of :data:`siamsearch.core.presets.PRESET_NAMES`.
        loss: ``"contrastive"`` (every pair of the batch), ``"triplet"`` (batch-all or batch-hard by
            ``mining``), ``"arcface"`` or ``"cosface"`` (margin softmax over every training identity);
            all see the same M-per-class batches through the one interface ``loss(embeddings, identities)``.
        backbone, input_size, in_channels, embedding_dim, embed_from, hflip, crop, resize, augmentation:
            the :class:`ModelConfig` (the preprocessing spec; ``crop``: a centre fraction or a
            ``(left, top, right, bottom)`` box in fractions, ``1`` for none). ``input_size``/``in_channels``
            left open by the preset are guessed from the images (32 px for small images, else 64;
            grey unless colour).
        weights: backbone init for torchvision backbones (local state dict path or "imagenet").
        epochs, steps_per_epoch, max_minutes: the run's length (:mod:`siamsearch.training.schedule`):
            neither epochs nor a budget: 10 epochs of 500 to 20,000 steps in all; a budget alone:
            train until it is spent, the learning rate reaching zero at its end; both: whichever
            ends first, the learning rate following it. The run stops after validating the epoch in
            progress. Runs under a budget are not bit-reproducible (how far they get depends on the machine).
        batch_size, lr, weight_decay, margin: optimisation (AdamW, warm-up then cosine);
            ``margin`` None keeps the loss's default.
        m_per_class: images per identity in each batch.
        mining: triplet mining, ``"hard"`` (batch-hard) or ``"all"`` (batch-all; see
            :class:`siamsearch.training.losses.TripletLoss`).
        singletons: identities with one image take part (as ``m_per_class`` augmented copies).
        augment: ``config.augmentation`` (and flips when ``hflip``) during training.
        seed: seeds the split, the samplers, augmentation and initialisation;
            the same seed gives the same model on CPU.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (mixed precision on CUDA).
        val_fraction: share of identities held out for validation (0 disables it;
            then the last epoch is kept).
        val_pairs, val_max_images: size of the per-epoch validation.
        val_data: validate on this separate labelled dataset instead of holding identities out of
            ``data`` (then all of ``data`` trains). The kept epoch is chosen by
            :func:`siamsearch.training.selection.is_better` (AUC, ties broken by the distance gap); a
            :class:`~siamsearch.training.selection.TrainingWarning` says when validation is too small.
        workers: DataLoader worker processes.
        resume: continue the interrupted run whose state is in ``out + ".last"``.
        log_dir: write TensorBoard logs there (:mod:`siamsearch.training.tblog`).

    Returns:
        :class:`TrainResult`.
    """
    t_start = time.time()
    out = Path(out)
    last_path = Path(str(out) + ".last")
    if epochs is not None and epochs < 1:
        raise SiamsearchError("epochs must be >= 1")
    dev = resolve_device(device)
    _seed_everything(seed)
    ds, train_ds, val_ds = _open_split(data, format, split, val_fraction, val_max_images, seed, val_data)
    values, config = resolve_recipe(
        ds, preset, seed, loss=loss, backbone=backbone, input_size=input_size, in_channels=in_channels,
        embedding_dim=embedding_dim, embed_from=embed_from, hflip=hflip, crop=crop, resize=resize,
        augmentation=augmentation, batch_size=batch_size, m_per_class=m_per_class, lr=lr,
        weight_decay=weight_decay, margin=margin, mining=mining, singletons=singletons)
    sampler = _sampler(train_ds, values, seed, steps_per_epoch)
    plan = plan_run(len(sampler), epochs, steps_per_epoch, max_minutes)
    sampler.num_batches = plan.steps_per_epoch
    hyper = dict(values, crop=list(config.crop) if config.crop else None, epochs=plan.epochs,
                 steps_per_epoch=plan.steps_per_epoch, augment=augment, seed=seed, val_fraction=val_fraction,
                 val_data=None if val_data is None else str(val_data),
                 val_pairs=val_pairs, weights=weights, max_minutes=max_minutes)
    hyper["mining"] = values["mining"] if values["loss"] == "triplet" else None
    card = {
        "data": {"source": str(data) if not isinstance(data, ImageDataset) else str(ds.root or ds.format),
                 "format": ds.format, "digest": ds.digest(), "images": len(ds), "identities": ds.num_identities},
        "train_identities": [train_ds.identity_names[i] for i in range(train_ds.num_identities)],
        "val_identities": [val_ds.identity_names[i] for i in range(val_ds.num_identities)] if val_ds else [],
        "preset": values["preset"], "hyperparameters": hyper, "versions": _versions(), "device": str(dev),
        # the precision that made the weights (fp16 autocast with loss scaling on CUDA) and the one validation used
        "precision": {"train": "fp16-autocast" if dev.type == "cuda" else "fp32", "validation": "fp32"},
    }
    net = EmbeddingNet(config, weights=weights).to(dev)
    criterion = make_loss(values["loss"], train_ds.num_identities, config.embedding_dim, values["margin"],
                          values["mining"]).to(dev)
    optimizer = torch.optim.AdamW(list(net.parameters()) + list(criterion.parameters()), lr=values["lr"],
                                  weight_decay=values["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(plan.fraction(step), plan.warmup))
    state = _State(net=net, criterion=criterion, optimizer=optimizer, scheduler=scheduler, config=config,
                   card=card, plan=plan)
    if resume:
        _resume(state, out, last_path, hyper)
    eval_tf = build_transform(config, train=False)
    train_data = train_ds.with_transform(build_transform(config, train=True, augment=augment))
    log = TensorBoardLog(log_dir)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.total_steps, initial=state.start_epoch * plan.steps_per_epoch, desc="training",
                   unit="step", dynamic_ncols=True)
    try:
        _run_epochs(state, train_data, sampler, val_ds, eval_tf, dev, seed, val_pairs, workers, out, last_path,
                    log, bar, max_minutes)
        _log_projector(log, int(scheduler.last_epoch), net, val_ds, eval_tf, config, dev, seed)
    finally:
        log.close()
        if bar is not None:
            bar.close()
    # final card with the full history, written into the best checkpoint
    best = load_checkpoint(out)
    card.update(history=state.history, best_epoch=state.best_epoch, train_seconds=round(time.time() - t_start, 1))
    fp = save_checkpoint(out, best.config, best.state_dict, card, head_state=best.head_state)
    last_path.unlink(missing_ok=True)
    return TrainResult(path=str(out), fingerprint=fp, best_epoch=state.best_epoch, history=state.history,
                       seconds=time.time() - t_start)


@dataclass
class _State:
    """What an epoch changes: the model, optimiser and schedule, the card, the history and the best epoch."""

    net: EmbeddingNet
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    config: ModelConfig
    card: dict
    plan: Plan
    history: list = field(default_factory=list)
    start_epoch: int = 0
    best_epoch: int = 0
    best_score: float = -1.0


def _resume(state: _State, out: Path, last_path: Path, hyper: dict) -> None:
    if not last_path.exists():
        if out.exists():
            raise SiamsearchError(f"{out} is a finished run (no {last_path.name} to resume); train again without --resume")
        raise SiamsearchError(f"nothing to resume: {last_path} does not exist; train without --resume")
    ck = load_checkpoint(last_path)
    if ck.card.get("hyperparameters") != json.loads(json.dumps(hyper)) or ck.card["data"]["digest"] != state.card["data"]["digest"]:
        raise SiamsearchError(
            f"{last_path} was started with other data or options; resume with the same options, or train afresh without --resume"
        )
    state.config = ck.config
    state.net.load_state_dict(ck.state_dict)
    state.criterion.load_state_dict(ck.head_state)
    state.optimizer.load_state_dict(ck.resume["optimizer"])
    state.scheduler.load_state_dict(ck.resume["scheduler"])
    state.history = ck.card["history"]
    state.plan.before_s = float(sum(h["seconds"] for h in state.history))
    state.start_epoch = int(ck.resume["epoch"])
    state.best_epoch, state.best_score = int(ck.card["best_epoch"]), float(ck.resume["best_score"])


def _train_steps(state: _State, loader: DataLoader, dev: torch.device, scaler, log: TensorBoardLog, bar) -> list:
    """One epoch of optimisation steps (stops early when the budget is spent); the step losses."""
    net, criterion, optimizer, scheduler = state.net, state.criterion, state.optimizer, state.scheduler
    net.train()
    criterion.train()
    losses = []
    for batch in loader:
        if state.plan.out_of_time():
            break
        if batch is None:
            continue
        x, y = batch
        with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
            value = criterion(net.project(x.to(dev, non_blocking=True)), y.to(dev))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(float(value.detach()))
        log.step(int(scheduler.last_epoch), losses[-1], float(scheduler.get_last_lr()[0]))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return losses


def _run_epochs(state: _State, train_data: ImageDataset, sampler: MPerClassBatchSampler,
                val_ds: Optional[ImageDataset], eval_tf, dev: torch.device, seed: int, val_pairs: int,
                workers: int, out: Path, last_path: Path, log: TensorBoardLog, bar, max_minutes) -> None:
    """Train, validate and checkpoint epoch after epoch until the epochs or the budget run out."""
    plan, card = state.plan, state.card
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    epoch = state.start_epoch
    while plan.epochs is None or epoch < plan.epochs:
        t0 = time.time()
        _seed_everything(seed * 1000 + epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_data, batch_sampler=sampler, num_workers=workers, collate_fn=collate_skip_none,
                            generator=torch.Generator().manual_seed(seed * 1000 + epoch), pin_memory=dev.type == "cuda")
        losses = _train_steps(state, loader, dev, scaler, log, bar)
        epoch += 1
        record = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                  "lr": float(state.scheduler.get_last_lr()[0])}
        if val_ds is not None:
            t_val = time.time()
            record.update(_validate(state.net, val_ds.with_transform(eval_tf), dev, seed, val_pairs, sampler.batch_size))
            plan.reserve_s = time.time() - t_val
        record["seconds"] = round(time.time() - t0, 2)
        state.history.append(record)
        log.epoch(int(state.scheduler.last_epoch), record)
        card.update(history=state.history)
        score = record.get("val_auc", float(epoch))
        if selection.is_better(record, state.history[state.best_epoch - 1] if state.best_epoch else None):
            state.best_score, state.best_epoch = score, epoch
            card.update(best_epoch=epoch)
            save_checkpoint(out, state.config, state.net.state_dict(), card, head_state=state.criterion.state_dict())
        card.update(best_epoch=state.best_epoch)
        save_checkpoint(last_path, state.config, state.net.state_dict(), card, head_state=state.criterion.state_dict(),
                        resume={"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                                "epoch": epoch, "best_score": state.best_score})
        if bar is not None:
            bar.write(_epoch_line(record, plan.epochs))
        if plan.out_of_time() or not losses:
            if bar is not None and plan.out_of_time():
                bar.write(f"time budget of {max_minutes:g} min used up after epoch {epoch}")
            break
