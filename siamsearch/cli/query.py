"""`siamsearch query`: who or what in a gallery is this image? Top-k neighbours and a prediction."""
from __future__ import annotations

import json

import click

from .options import (batch_size_option, calibration_option, checkpoint_option, device_option, json_option,
                      workers_option)
from .precision import precision_option


@click.command(context_settings={"show_default": True})
@click.argument("queries", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--index", "index", required=True, type=click.Path(exists=True, file_okay=False),
              help="Gallery folder written by `siamsearch index build` (index/NAME).")
@click.option("-k", "k", type=click.IntRange(1), default=5, help="Neighbours per query.")
@click.option("--open-set", is_flag=True,
              help="Answer 'unknown' when the nearest match is farther than the threshold (--threshold or the "
                   "model's calibration).")
@click.option("--threshold", type=click.FloatRange(0, 2), default=None,
              help="Open-set distance threshold (implies --open-set) [default: the model's calibration].")
@calibration_option
@checkpoint_option(required=False, help="The gallery's checkpoint, when it moved since the build [default: the path the gallery "
                   "recorded]; its fingerprint must match.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Also write query,prediction,rank,path,label,distance,error rows to this CSV.")
@batch_size_option(help="Query images per forward pass.")
@workers_option()
@device_option
@precision_option
@json_option("Print a JSON list: {query, prediction, neighbors: [{rank, path, label, distance}]} per query.")
def query(queries, index, k, open_set, threshold, calibration, model, out, batch_size, workers, device, as_json):
    """Find the k nearest gallery images of each query image (files or folders).

    \b
    The prediction is the label of the nearest neighbour. With --open-set (or
    --threshold) it is "unknown" when that neighbour is farther than the
    threshold: same rule as `verify` (a match iff distance <= threshold).

    \b
    Examples:
      siamsearch query photo.jpg --index index/people
      siamsearch query new_photos/ --index index/people -k 3 --open-set --json
      siamsearch query photo.jpg --index index/people --model moved/model.pt --out results.csv
    """
    from ..query.identification import identify, write_results_csv

    report = identify(index, queries, k=k, open_set=open_set, threshold=threshold, model=model,
                      calibration=calibration, batch_size=batch_size, workers=workers, device=device,
                      progress=not as_json)
    if out is not None:
        write_results_csv(report, out)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        if report.open_set:
            click.echo(f"open set: unknown when the nearest distance > {report.threshold:.4f} "
                       f"(threshold from {report.threshold_source})")
        for a in report.answers:
            if a.error is not None:
                continue
            near = a.neighbors[0].distance if a.neighbors else float("nan")
            click.echo(f"{a.query}  ->  {a.prediction}  (nearest {near:.4f})")
            for n in a.neighbors:
                click.echo(f"  {n.rank:>3}  {n.distance:.4f}  {n.label if n.label is not None else '-':<16}  {n.path}")
        if out is not None:
            click.echo(f"wrote {out}")
    for a in report.answers:
        if a.error is not None:
            click.secho(f"warning: {a.query}: not queried: {a.error}", fg="yellow", err=True)
