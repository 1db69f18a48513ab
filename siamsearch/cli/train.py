"""`siamsearch train`: learn an embedding model from a labelled image dataset."""
from __future__ import annotations

import json

import click

from ..core.choices import BACKBONES, EMBED_FROM, LOSSES, MINING
from .options import (batch_size_option, device_option, format_option, json_option, seed_option, split_option,
                      workers_option)


@click.command(context_settings={"show_default": True})
@click.option("--data", "data", required=True, multiple=True, type=click.Path(exists=True),
              help="Dataset: identity folders, an MNIST/Fashion-MNIST IDX folder, Omniglot zip(s)/folder(s) "
                   "or a CelebA root. Repeat for several Omniglot roots.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write (best epoch).")
@format_option
@split_option("Dataset split where the format has one (IDX: train|test|all; CelebA: train|valid|test|all).")
@click.option("--loss", type=click.Choice(LOSSES), default="triplet",
              help="contrastive: every pair of the batch; triplet: see --mining; arcface: margin softmax over identities.")
@click.option("--backbone", type=click.Choice(BACKBONES), default="smallcnn", help="Network body; smallcnn is fast on CPU.")
@click.option("--weights", default=None, help="Backbone init for torchvision backbones: a local state dict file, or 'imagenet' (downloads).")
@click.option("--input-size", type=click.IntRange(8, 1024), default=None, help="Square input size in pixels [default: 32 for small images, else 64].")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Input channels [default: 1 unless the images are in colour].")
@click.option("--embedding-dim", type=click.IntRange(2, 4096), default=128, help="Embedding length d.")
@click.option("--embed-from", type=click.Choice(EMBED_FROM), default="head",
              help="head: the embedding is the projection head's output (d = --embedding-dim). backbone: the "
                   "backbone's pooled features (smallcnn 1024-d), the head serving the loss only; generalises "
                   "better to unseen identities when training has few identities (under ~50).")
@click.option("--hflip/--no-hflip", default=False, help="Horizontal flips as augmentation (faces, objects: yes; characters: no).")
@click.option("--augment/--no-augment", default=True, help="Small random affine augmentation while training.")
@click.option("--epochs", type=click.IntRange(1), default=10)
@batch_size_option(minimum=2, help="Images per training batch.")
@click.option("--m-per-class", type=click.IntRange(2), default=4, help="Images per identity in a batch.")
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None, help="Batches per epoch [default: one pass over the images].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, help="AdamW learning rate (cosine schedule).")
@click.option("--margin", type=float, default=None, help="Loss margin [default: contrastive 1.0, triplet 0.2, arcface 0.3 rad].")
@click.option("--mining", type=click.Choice(MINING), default="hard",
              help="Triplet mining: hard = hardest positive and negative per anchor; all = every active triplet "
                   "of the batch (try it when training has few identities and distances come out tiny).")
@seed_option("Seeds splits, samplers, augmentation and init.")
@device_option
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=0.2, help="Share of identities held out for validation.")
@workers_option(help="DataLoader worker processes.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that wrote OUT.last.")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="Wall-clock budget: the LR schedule follows the clock and training stops when it is spent "
                   "(--epochs becomes an upper bound).")
@json_option()
def train(data, out, format_, split, loss, backbone, weights, input_size, channels, embedding_dim, embed_from, hflip,
          augment, epochs, batch_size, m_per_class, steps_per_epoch, lr, margin, mining, seed, device, val_fraction,
          workers, resume, max_minutes, as_json):
    """Train an embedding model on a labelled dataset and write a checkpoint.

    Identities are split into class-disjoint train/validation parts; every
    epoch is validated (ROC-AUC, precision@1) and the best epoch is kept.

    \b
    Example:
      siamsearch train --data faces/ --out model.pt --epochs 20 --channels 3 --hflip
    """
    from ..training.trainer import train as run_train

    result = run_train(
        list(data) if len(data) > 1 else data[0], out, format=format_, split=split, loss=loss, backbone=backbone,
        weights=weights, input_size=input_size, in_channels=int(channels) if channels else None,
        embedding_dim=embedding_dim, embed_from=embed_from, hflip=hflip, augment=augment, epochs=epochs, batch_size=batch_size,
        m_per_class=m_per_class, steps_per_epoch=steps_per_epoch, lr=lr, margin=margin, mining=mining, seed=seed, device=device,
        val_fraction=val_fraction, workers=workers, resume=resume, max_minutes=max_minutes, progress=not as_json,
    )
    if as_json:
        click.echo(json.dumps({"path": result.path, "fingerprint": result.fingerprint, "best_epoch": result.best_epoch,
                               "seconds": round(result.seconds, 1), "history": result.history}, indent=2))
        return
    best = result.best
    line = f"wrote {result.path} (model {result.fingerprint}), best epoch {result.best_epoch}"
    if "val_auc" in best:
        line += f": val ROC-AUC {best['val_auc']:.4f}, precision@1 {best['val_precision_at_1']:.4f}"
    click.echo(line + f" [{result.seconds:.0f} s]")
