"""`siamsearch calibrate`: choose a verification threshold on held-out identities, store it with the model."""
from __future__ import annotations

import json
import warnings

import click

from ..core.choices import RULES
from .options import (batch_size_option, checkpoint_option, device_option, format_option, json_option,
                      seed_option, split_option)
from .precision import precision_option


@click.command(context_settings={"show_default": True})
@checkpoint_option()
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Labelled data with identities the model was not trained on (training identities listed in "
                   "the checkpoint are left out).")
@format_option
@split_option()
@click.option("--rule", type=click.Choice(RULES), default="far",
              help="far: largest threshold with FAR <= --target-far; eer: equal error rate; max-accuracy.")
@click.option("--target-far", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=1e-3,
              help="False accept rate to stay under (rule far).")
@click.option("--pairs", type=click.IntRange(2), default=20000, help="Pairs to draw, half genuine, half impostor.")
@seed_option("Seeds the pairs.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Where to store the record: a checkpoint of the same model or a .json file [default: --model].")
@click.option("--include-training-identities", is_flag=True,
              help="Also use identities the model was trained on (optimistic threshold).")
@batch_size_option(default=128)
@device_option
@precision_option
@click.option("--force", is_flag=True,
              help="Replace a stored calibration that its data supports with one they do not (refused otherwise).")
@json_option("Print the calibration record as JSON.")
def calibrate(model, data, format_, split, rule, target_far, pairs, seed, out, include_training_identities,
              batch_size, device, force, as_json):
    """Choose the distance threshold for `verify` and `query --open-set` from data.

    \b
    Draws seeded genuine/impostor pairs from held-out identities, computes the
    ROC and picks the threshold by --rule (same iff distance <= threshold). The
    record (threshold, achieved FAR/TAR with 95% CIs, AUC, EER, pair counts,
    data digest, model fingerprint, date) is stored in the model, or in --out.
    The record it replaces is kept in the new one's history and shown beside
    it; a record its data supports is only replaced by an unsupported one
    (too few impostor pairs or held-out identities) with --force.

    \b
    Examples:
      siamsearch calibrate --model model.pt --data heldout/
      siamsearch calibrate --model model.pt --data faces/ --rule eer --out model.calib.json
    """
    from ..query.record import CalibrationWarning, compare_lines, describe
    from ..evaluation.calibrate import calibrate as run_calibrate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # shown below from the record, once
        record = run_calibrate(model, data, format=format_, rule=rule, target_far=target_far, pairs=pairs, seed=seed,
                               out=out, split=split, include_training_identities=include_training_identities,
                               batch_size=batch_size, device=device, progress=not as_json,
                               force=force)
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        rows = describe(record)
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            click.echo(f"{name:<{width}}  {value}")
        click.echo(f"stored in {out or model}")
        if record.get("previous_records"):
            old = record["previous_records"][0]
            click.echo(f"replaced the calibration of {old.get('created', '?')} (kept in previous_records):")
            for line in compare_lines(old, record):
                click.echo(line)
    for w in record["warnings"]:
        click.secho(f"warning: {w}", fg="yellow", err=True)
