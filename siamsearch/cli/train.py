"""`siamsearch train`: learn an embedding model from a labelled image dataset."""
from __future__ import annotations

import json

import click

from ..core.choices import AUGMENTATIONS, BACKBONES, EMBED_FROM, LOSSES, MINING, PRESET_NAMES, RESIZE
from .options import (batch_size_option, device_option, format_option, json_option, seed_option, split_option,
                      workers_option)


def _parse_crop(text):
    """``"0.5"`` -> ``(0.5,)``; ``"0.1,0.2,0.9,0.8"`` -> a box; ``None`` stays None."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a fraction such as 0.5 or a box such as 0.2,0.2,0.8,0.8",
                                 param_hint="--crop") from None


@click.command(context_settings={"show_default": True})
@click.option("--data", "data", required=True, multiple=True, type=click.Path(exists=True),
              help="Dataset: identity folders, an MNIST/Fashion-MNIST IDX folder, Omniglot zip(s)/folder(s) "
                   "or a CelebA root. Repeat for several Omniglot roots.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write (best epoch).")
@format_option
@split_option("Dataset split where the format has one (IDX: train|test|all; CelebA: train|valid|test|all).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Recipe in one word; every option below left unset comes from it [default: guessed from the "
                   "images: colour -> products, grey -> characters]. faces: photo augmentation, CosFace, centre "
                   "crop 0.5 (LFW-style frames); products: the same without the crop; characters: triplets, "
                   "small affine augmentation, no flips.")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help="contrastive: every pair of the batch; triplet: see --mining; arcface/cosface: margin softmax "
                   "over every training identity [default: from the preset].")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="Network body; smallcnn is fast on CPU [default: smallcnn].")
@click.option("--weights", default=None, help="Backbone init for torchvision backbones: a local state dict file, or 'imagenet' (downloads).")
@click.option("--input-size", type=click.IntRange(8, 1024), default=None, help="Square input size in pixels [default: 32 for small images, else 64].")
@click.option("--crop", default=None,
              help="Crop before the resize: a centre fraction (0.5 keeps the centre half of each side) or a box "
                   "LEFT,TOP,RIGHT,BOTTOM in fractions of the width and height; 1 for none [default: faces 0.5, else none].")
@click.option("--resize", type=click.Choice(RESIZE), default=None,
              help="short_side: resize the short side and centre-crop (aspect kept); squash: resize both sides "
                   "[default: short_side].")
@click.option("--augmentation", type=click.Choice(AUGMENTATIONS), default=None,
              help="affine: small rotation/shift/shear (characters); photo: random resized crop, brightness, "
                   "contrast, colour, grey [default: from the preset].")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Input channels [default: 1 unless the images are in colour].")
@click.option("--embedding-dim", type=click.IntRange(2, 4096), default=None, help="Embedding length d [default: 128].")
@click.option("--embed-from", type=click.Choice(EMBED_FROM), default=None,
              help="head: the embedding is the projection head's output (d = --embedding-dim). backbone: the "
                   "backbone's pooled features (smallcnn 1024-d), the head serving the loss only; generalises "
                   "better to unseen identities when training has few identities (under ~50) [default: head].")
@click.option("--hflip/--no-hflip", default=None, help="Horizontal flips as augmentation [default: photos yes, characters no].")
@click.option("--augment/--no-augment", default=True, help="Training augmentation (--augmentation) on or off.")
@click.option("--singletons/--no-singletons", default=None,
              help="Identities with a single image take part, as augmented copies [default: photos yes, characters no].")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="[default: with --max-minutes, until the budget is spent; else 10 epochs of 500 to 20,000 steps in all]")
@batch_size_option(default=None, minimum=2, help="Images per training batch [default: photos 128, characters 64].")
@click.option("--m-per-class", type=click.IntRange(2), default=None, help="Images per identity in a batch [default: photos 2, characters 4].")
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None, help="Batches per epoch [default: one pass over the images].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="AdamW learning rate, warm-up then cosine [default: photos 2e-3, characters 1e-3].")
@click.option("--margin", type=float, default=None, help="Loss margin [default: contrastive 1.0, triplet 0.2, arcface 0.3 rad, cosface 0.35].")
@click.option("--mining", type=click.Choice(MINING), default=None,
              help="Triplet mining: hard = hardest positive and negative per anchor; all = every active triplet "
                   "of the batch (try it when training has few identities and distances come out tiny) [default: hard].")
@seed_option("Seeds splits, samplers, augmentation and init.")
@device_option
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=0.2, help="Share of identities held out for validation.")
@click.option("--val-data", type=click.Path(exists=True), default=None,
              help="Validate on this separate labelled folder/dataset instead (then all of --data trains); "
                   "use it when the data has few identities.")
@workers_option(help="DataLoader worker processes.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that wrote OUT.last.")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="Wall-clock budget: training runs until it is spent and the LR schedule ends with it "
                   "(with --epochs too: whichever ends first).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Write TensorBoard logs (loss, LR, validation AUC/P@1/distances, an embedding-projector sample) "
                   "there; view with: tensorboard --logdir DIR (needs the tensorboard extra).")
@json_option()
def train(data, out, format_, split, preset, loss, backbone, weights, input_size, crop, resize, augmentation, channels,
          embedding_dim, embed_from, hflip, augment, singletons, epochs, batch_size, m_per_class, steps_per_epoch, lr,
          margin, mining, seed, device, val_fraction, val_data, workers, resume, max_minutes, log_dir, as_json):
    """Train an embedding model on a labelled dataset and write a checkpoint.

    Identities are split into class-disjoint train/validation parts; every
    epoch is validated (ROC-AUC, precision@1) and the best epoch is kept.

    \b
    Example:
      siamsearch train --data faces/ --out model.pt --preset faces --max-minutes 30
    """
    from ..training.trainer import train as run_train

    result = run_train(
        list(data) if len(data) > 1 else data[0], out, format=format_, split=split, preset=preset, loss=loss,
        backbone=backbone, weights=weights, input_size=input_size, crop=_parse_crop(crop), resize=resize,
        augmentation=augmentation, in_channels=int(channels) if channels else None, embedding_dim=embedding_dim,
        embed_from=embed_from, hflip=hflip, augment=augment, singletons=singletons, epochs=epochs,
        batch_size=batch_size, m_per_class=m_per_class, steps_per_epoch=steps_per_epoch, lr=lr, margin=margin,
        mining=mining, seed=seed, device=device, val_fraction=val_fraction, val_data=val_data, workers=workers, resume=resume,
        max_minutes=max_minutes, log_dir=log_dir, progress=not as_json,
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
