"""`siamsearch query`: who or what in a gallery is this image? Top-k neighbours and a prediction."""
from __future__ import annotations

import click

from ..core.errors import SiamsearchError
from .options import (batch_size_option, calibration_option, checkpoint_option, device_option, json_option,
                      workers_option)
from .precision import precision_option

#: How the text output names where the open-set threshold came from (``threshold_source``).
_SOURCES = {"explicit": "--threshold (explicit)"}


@click.command(context_settings={"show_default": True})
@click.argument("queries", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--index", "index", required=True, type=click.Path(exists=True, file_okay=False),
              help="Gallery folder written by `siamsearch index build` (index/NAME).")
@click.option("-k", "k", type=click.IntRange(1), default=5, help="Neighbours per query.")
@click.option("--open-set", is_flag=True,
              help="Answer 'unknown' when the nearest match is farther than the threshold (--threshold, "
                   "--calibration or the model's calibration).")
@click.option("--threshold", type=click.FloatRange(0, 2), default=None,
              help="Open-set distance threshold (implies --open-set) [default: the model's calibration].")
@calibration_option
@checkpoint_option(required=False, help="The gallery's checkpoint, when it moved since the build [default: the path the gallery "
                   "recorded]; its fingerprint must match.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Also write query,prediction,rank,path,label,distance,error rows to this CSV.")
@click.option("--sheet", default=None, type=click.Path(dir_okay=False),
              help="Also draw the answers into this PNG: each query beside its neighbours, with labels, distances "
                   "and the verdict.")
@batch_size_option(help="Query images per forward pass.")
@workers_option()
@device_option
@precision_option
@json_option("Print JSON: {answers: [{query, prediction, neighbors: [{rank, path, label, distance}]}], summary, "
             "settings}.")
def query(queries, index, k, open_set, threshold, calibration, model, out, sheet, batch_size, workers, device,
          as_json):
    """Find the k nearest gallery images of each query image (files or folders).

    \b
    The prediction is the label of the nearest neighbour. With --open-set,
    --threshold or --calibration (each implies the open set; --calibration is
    always checked) it is "unknown" when that neighbour is farther than the
    threshold: same rule as `verify` (a match iff distance <= threshold). A
    query folder of identity folders (QUERIES/bob/...) is scored: the last line
    counts correct answers.

    \b
    Examples:
      siamsearch query photo.jpg --index index/people
      siamsearch query new_photos/ --index index/people -k 3 --open-set --json
      siamsearch query photo.jpg --index index/people --model moved/model.pt --out results.csv
      siamsearch query new_photos/ --index index/people -k 4 --sheet matches.png
    """
    from ..query.identification import identify, write_results_csv

    report = identify(index, queries, k=k, open_set=open_set, threshold=threshold, model=model,
                      calibration=calibration, batch_size=batch_size, workers=workers, device=device,
                      progress=not as_json)
    if out is not None:
        write_results_csv(report, out)
    if sheet is not None and report.summary()["answered"]:
        from ..query.sheets import query_sheet

        query_sheet(report, sheet)
    if as_json:
        click.echo(report.to_json())
    else:
        if report.open_set:
            click.echo(f"open set: unknown when the nearest distance > {report.threshold:.4f} "
                       f"(threshold from {_SOURCES.get(report.threshold_source, report.threshold_source)})")
        for a in report.answers:
            if a.error is not None:
                continue
            near = a.neighbors[0].distance if a.neighbors else float("nan")
            answer = "(a match without a label)" if a.prediction is None else a.prediction  # unlabelled gallery
            click.echo(f"{a.query}  ->  {answer}  (nearest {near:.4f})")
            for n in a.neighbors:
                click.echo(f"  {n.rank:>3}  {n.distance:.4f}  {n.label if n.label is not None else '-':<16}  {n.path}")
        if len(report.answers) > 1 or report.summary()["labelled"]:
            click.echo(report.summary_line())
        if out is not None:
            click.echo(f"wrote {out}")
        if sheet is not None and report.summary()["answered"]:
            click.echo(f"drew {sheet}")
    for a in report.answers:
        if a.error is not None:
            click.secho(f"warning: {a.query}: not queried: {a.error}", fg="yellow", err=True)
    if report.summary()["answered"] == 0:
        raise SiamsearchError(f"none of the {len(report.answers)} query images could be read (see the warnings "
                              "above)")
