"""`siamsearch data check` / `siamsearch data preview`: look at a dataset before training."""
from __future__ import annotations

import json
import sys

import click

from .options import checkpoint_option, format_option, json_option, seed_option, split_option, workers_option


@click.group("data")
def data() -> None:
    """Inspect a dataset the way the trainer reads it."""


_path_arg = click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
_split_opt = split_option("IDX: train|test|all [train]; CelebA: train|valid|test|all [train when partitioned].")
_model_opt = checkpoint_option(required=False,
                               help="Checkpoint whose preprocessing to apply [default: the trainer's default config].")


def _paths(paths: tuple):
    return list(paths) if len(paths) > 1 else paths[0]


@data.command("check")
@_path_arg
@format_option
@_split_opt
@_model_opt
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="The trainer's validation share of identities (checked for feasibility).")
@seed_option()
@workers_option(default=2, help="Decoding threads.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (unreadable files, duplicates, mixed modes).")
@json_option("Print the full report as JSON.")
def check(paths, format_, split, model, val_fraction, seed, workers, strict, as_json):
    """Check a dataset before training: counts, sizes and modes, unreadable files,
    duplicates within and across identities, and a verdict.

    Exit status: 0 ready to train, 1 training would fail (or, with --strict,
    any warning), 2 bad arguments or no dataset.

    \b
    Example:
      siamsearch data check faces/
      siamsearch data check ../shared/data/omniglot --json
    """
    from ..data.inspect import check_dataset, format_report

    report = check_dataset(_paths(paths), format=format_, split=split, model=model, val_fraction=val_fraction,
                           seed=seed, workers=workers, progress=not as_json)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    failed = not report["ready"] or (strict and any(p["severity"] == "warning" for p in report["problems"]))
    sys.exit(1 if failed else 0)


@data.command("preview")
@_path_arg
@format_option
@_split_opt
@_model_opt
@click.option("--pairs", "n_pairs", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Pairs (or triplets) to show.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Train preprocessing with augmentation, or eval preprocessing.")
@click.option("--triplets", is_flag=True,
              help="Show batch-hard triplets from one M-per-class batch (hardness by --model, else raw pixels).")
@click.option("--m-per-class", type=click.IntRange(2), default=4, show_default=True,
              help="Images per identity in the batch (--triplets).")
@seed_option()
@click.option("--out", type=click.Path(dir_okay=False), default="preview.png", show_default=True,
              help="PNG file to write.")
def preview(paths, format_, split, model, n_pairs, augment, triplets, m_per_class, seed, out):
    """Write a PNG grid of seeded positive/negative pairs as the trainer draws them,
    each captioned with its identities and is_same.

    \b
    Example:
      siamsearch data preview ../shared/data/fashion-mnist --pairs 16 --out pairs.png
      siamsearch data preview faces/ --triplets --model model.pt
    """
    from ..data.preview import preview_pairs

    path = preview_pairs(_paths(paths), out=out, format=format_, split=split, n_pairs=n_pairs, augment=augment,
                         seed=seed, model=model, triplets=triplets, m_per_class=m_per_class)
    click.echo(f"wrote {path}")
