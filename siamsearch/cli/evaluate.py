"""`siamsearch evaluate`: verification, identification and one-shot figures with a report."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..core.choices import PROTOCOLS
from .options import (batch_size_option, checkpoint_option, device_option, format_option, json_option,
                      seed_option, split_option)
from .precision import precision_option


class _CountOrFile(click.ParamType):
    """``--pairs``: a number of pairs to sample, or a pairs file (LFW pairs.txt or CSV a,b,is_same)."""

    name = "N|FILE"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).isdigit():
            n = int(value)
            if n < 20:
                self.fail(f"{n} pairs are too few (10-fold CV needs at least 20)", param, ctx)
            return n
        if not Path(value).is_file():
            self.fail(f"{value!r} is neither a number of pairs nor a pairs file", param, ctx)
        return str(value)


@click.command(context_settings={"show_default": True})
@checkpoint_option()
@click.option("--data", default=None, type=click.Path(exists=True),
              help="Labelled dataset (identity folders, IDX, Omniglot, CelebA) or Omniglot one-shot runs "
                   "(all_runs.zip or its folder).")
@format_option
@split_option()
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="all",
              help="What to measure; all = everything the data allows (a pairs file: verification).")
@click.option("--index", "index", default=None, type=click.Path(exists=True, file_okay=False),
              help="Gallery folder (index/NAME): compare exact search with its deployed index.")
@click.option("--pairs", type=_CountOrFile(), default=20000,
              help="Verification pairs to sample (half genuine), or a pairs file: LFW pairs.txt format or a CSV "
                   "a,b,is_same, scored by the standard protocol (10-fold accuracy +/- standard error).")
@click.option("--images", default=None, type=click.Path(exists=True, file_okay=False),
              help="With --pairs FILE: the folder its image names are relative to (LFW: the folder holding "
                   "NAME/NAME_0001.jpg) [default: the pairs file's folder].")
@click.option("--skip-missing", is_flag=True,
              help="With --pairs FILE: skip pairs whose images are missing or unreadable (counted in the report) "
                   "instead of stopping.")
@seed_option("Seeds pairs, subsets, splits, CV folds and bootstrap.")
@click.option("--limit", type=click.IntRange(2), default=None,
              help="Evaluate a seeded random subset of N images of --data (a pairs file is scored whole).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(0), default=1000,
              help="Bootstrap replicates for 95% confidence intervals (0: none).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for metrics.json, report.html, report.md and plots/ [default: runs/MODEL-DATA].")
@batch_size_option(default=128)
@device_option
@precision_option
@json_option("Print metrics.json to stdout instead of the table.")
def evaluate(model, data, format_, split, protocol, index, pairs, images, skip_missing, seed, limit, n_boot, out,
             batch_size, device, as_json):
    """Measure how reliably a model verifies and identifies, and write a report.

    \b
    Writes OUT/metrics.json (every figure with its 95% CI and the settings),
    OUT/report.html (self-contained: ROC, DET, distance histograms, CMC and
    image grids of the hardest mistakes), OUT/report.md and OUT/plots/*.png.

    \b
    Examples:
      siamsearch evaluate --model model.pt --data ../shared/data/fashion-mnist
      siamsearch evaluate --model omni.pt --data all_runs.zip --protocol oneshot
      siamsearch evaluate --model model.pt --index index/gallery
      siamsearch evaluate --model model.pt --pairs lfw/pairs.txt --images lfw/lfw-deepfunneled
    """
    from ..evaluation.evaluate import evaluate as run_evaluate, pairs_file_conflicts

    pairs_file = isinstance(pairs, str)
    if data is None and index is None and not pairs_file:
        raise click.UsageError("give --data (a dataset), --index (a gallery) or --pairs FILE (a pairs file) to evaluate on")
    if pairs_file:
        conflicts = pairs_file_conflicts(protocol, split, limit, format_)
        if conflicts:
            raise click.UsageError(f"with --pairs FILE: {'; '.join(conflicts)}")
    if out is None:
        source = Path(pairs if pairs_file else data if data is not None else index)
        out = str(Path("runs") / f"{Path(model).stem}-{source.stem or 'data'}")
    metrics = run_evaluate(model, data, format=format_, protocol=protocol, index=index, pairs=pairs, seed=seed,
                           out=out, split=split, limit=limit, n_boot=n_boot, batch_size=batch_size, device=device,
                           progress=not as_json, images=images, skip_missing=skip_missing)
    if pairs_file:
        from ..evaluation.pairs_protocol import summary_rows
    else:
        from ..evaluation.evaluate import summary_rows
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    rows = summary_rows(metrics)
    width = max((len(name) for name, _ in rows), default=10)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    for w in metrics["warnings"]:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    click.echo(f"wrote {out}/metrics.json and {out}/report.html")
