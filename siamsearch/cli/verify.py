"""`siamsearch verify`: same identity or not, for one pair or a CSV of pairs."""
from __future__ import annotations

import click

from ..core.errors import SiamsearchError
from .options import (batch_size_option, calibration_option, checkpoint_option, device_option, json_option,
                      workers_option)
from .precision import precision_option


def _source_line(result) -> str:
    from ..query.record import threshold_source_text

    return "--threshold (explicit)" if result.calibration is None else threshold_source_text(dict(result.calibration))


@click.command(context_settings={"show_default": True})
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@checkpoint_option()
@click.option("--threshold", type=click.FloatRange(0, 2), default=None,
              help="Distance threshold (same iff distance <= T) [default: the model's calibration].")
@calibration_option
@click.option("--pairs", "pairs_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with columns a,b[,is_same] (paths relative to the CSV's folder) to verify in batches.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="With --pairs: write per-pair results (a,b,distance,is_same,expected,error) to this CSV.")
@click.option("--sheet", default=None, type=click.Path(dir_okay=False),
              help="Also draw the pair(s) into this PNG with the distance, threshold and decision (first 24 pairs).")
@batch_size_option()
@workers_option()
@device_option
@precision_option
@json_option()
def verify(images, model, threshold, calibration, pairs_csv, out, sheet, batch_size, workers, device, as_json):
    """Are IMAGE_A and IMAGE_B the same identity? (or every pair of --pairs CSV)

    \b
    Prints same / different, the distance, the threshold and where it came
    from. The threshold is --threshold or the model's calibration (run
    `siamsearch calibrate` first); there is no built-in default.

    \b
    Examples:
      siamsearch verify a.png b.png --model model.pt
      siamsearch verify a.png b.png --model model.pt --threshold 0.8 --json
      siamsearch verify --pairs pairs.csv --model model.pt --out results.csv
      siamsearch verify a.png b.png --model model.pt --sheet pair.png
    """
    from ..core.embedder import load_model
    from ..query.verification import resolve_threshold, verify_pairs, write_pairs_csv

    if pairs_csv is None and len(images) != 2:
        raise click.UsageError("give two images (IMAGE_A IMAGE_B) or --pairs pairs.csv")
    if pairs_csv is not None and images:
        raise click.UsageError("give either two images or --pairs, not both")
    if out is not None and pairs_csv is None:
        raise click.UsageError("--out writes per-pair results of --pairs; use --json for one pair")
    net = load_model(model, device=device)
    resolve_threshold(net, threshold, calibration)  # fail before any image work when there is no threshold
    if pairs_csv is None:
        from ..query.verification import verify as run_verify

        result = run_verify(net, images[0], images[1], threshold=threshold, calibration=calibration)
        if sheet is not None:
            from ..query.sheets import verify_sheet

            verify_sheet([(images[0], images[1], result.distance, result.is_same, None)], result.threshold,
                         _source_line(result), sheet)
        if as_json:
            click.echo(result.to_json())
            return
        click.echo(f"{'SAME' if result.is_same else 'DIFFERENT'}: distance {result.distance:.4f} "
                   f"{'<=' if result.is_same else '>'} threshold {result.threshold:.4f}")
        click.echo(f"threshold from {_source_line(result)}")
        return
    report = verify_pairs(net, pairs_csv, threshold=threshold, calibration=calibration, batch_size=batch_size,
                          workers=workers, progress=not as_json)
    if out is not None:
        write_pairs_csv(report, out)
    if sheet is not None:
        from pathlib import Path

        from ..query.sheets import verify_sheet

        base = Path(pairs_csv).parent
        verify_sheet([(str(base / p.a), str(base / p.b), p.distance, p.is_same, p.expected) for p in report.pairs],
                     report.threshold, _source_line(report), sheet)
    if as_json:
        click.echo(report.to_json())
    else:
        n_same = sum(bool(p.is_same) for p in report.pairs)
        scored = len(report.pairs) - report.n_failed
        click.echo(f"{len(report.pairs)} pairs: {n_same} same, {scored - n_same} different, "
                   f"{report.n_failed} not scored (unreadable image)")
        click.echo(f"threshold {report.threshold:.4f} from {_source_line(report)}")
        m = report.metrics
        if m is not None:
            def rate(x, ci):
                return "n/a" if x is None else f"{x:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
            click.echo(f"on {m['n_scored']} labelled pairs ({m['n_genuine']} genuine / {m['n_impostor']} impostor):")
            click.echo(f"  accuracy {m['accuracy']:.4f}   FAR {rate(m['far'], m['far_ci95'])}   "
                       f"FRR {rate(m['frr'], m['frr_ci95'])}   AUC "
                       + ("n/a (needs both kinds)" if m["auc"] is None else f"{m['auc']:.4f}"))
        if out is not None:
            click.echo(f"wrote {out}")
    for p in report.pairs:
        if p.error is not None:
            click.secho(f"warning: line {p.line}: not scored: {p.error}", fg="yellow", err=True)
    if report.pairs and report.n_failed == len(report.pairs):
        raise SiamsearchError(f"none of the {len(report.pairs)} pairs of {pairs_csv} could be scored (every one "
                              "touches an unreadable or missing image; see the warnings above); check the paths, "
                              "which are relative to the CSV's folder")
