"""`siamsearch evaluate`: verification, identification and one-shot figures with a report."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..data import FORMATS
from ..evaluation.evaluate import PROTOCOLS


@click.command(context_settings={"show_default": True})
@click.option("--model", "model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Checkpoint written by `siamsearch train`.")
@click.option("--data", default=None, type=click.Path(exists=True),
              help="Labelled dataset (identity folders, IDX, Omniglot, CelebA) or Omniglot one-shot runs "
                   "(all_runs.zip or its folder).")
@click.option("--format", "format_", type=click.Choice(FORMATS), default="auto", help="Dataset layout.")
@click.option("--split", default=None,
              help="Dataset split [default: test for IDX and CelebA, everything otherwise].")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="all",
              help="What to measure; all = everything the data allows.")
@click.option("--index", "index", default=None, type=click.Path(exists=True, file_okay=False),
              help="Gallery folder (index/NAME): compare exact search with its deployed index.")
@click.option("--pairs", type=click.IntRange(20), default=20000, help="Verification pairs (half genuine).")
@click.option("--seed", type=int, default=0, help="Seeds pairs, subsets, splits, CV folds and bootstrap.")
@click.option("--limit", type=click.IntRange(2), default=None, help="Evaluate a seeded random subset of N images.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(0), default=1000,
              help="Bootstrap replicates for 95% confidence intervals (0: none).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for metrics.json, report.html, report.md and plots/ [default: runs/MODEL-DATA].")
@click.option("--batch-size", type=click.IntRange(1), default=128, help="Images per forward pass.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout instead of the table.")
def evaluate(model, data, format_, split, protocol, index, pairs, seed, limit, n_boot, out, batch_size, device,
             as_json):
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
    """
    from ..evaluation.evaluate import evaluate as run_evaluate
    from ..evaluation.evaluate import summary_rows

    if data is None and index is None:
        raise click.UsageError("give --data (a dataset) or --index (a gallery) to evaluate on")
    if out is None:
        source = Path(data if data is not None else index)
        out = str(Path("runs") / f"{Path(model).stem}-{source.stem or 'data'}")
    metrics = run_evaluate(model, data, format=format_, protocol=protocol, index=index, pairs=pairs, seed=seed,
                           out=out, split=split, limit=limit, n_boot=n_boot, batch_size=batch_size, device=device,
                           progress=not as_json)
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
