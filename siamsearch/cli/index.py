"""`siamsearch index build | update | info`: a folder of images into a searchable gallery."""
from __future__ import annotations

import json

import click

from ..core.choices import LABEL_MODES
from .options import (batch_size_option, checkpoint_option, device_option, json_option, progress_option,
                      strict_option, workers_option)
from .precision import precision_option

_workers_auto = workers_option(None, "Image-decoding worker processes (0: all in this process) [default: by "
                                     "machine: one per spare CPU core, at most 4; on 2 cores, photos in 2, and 256+ "
                                     "small files in 2 processes that each decode and embed on one thread].")
_FACTORY_HELP = ("Faiss index: auto (exact Flat while fast enough, tuned IVF beyond), Flat, HNSW32, IVF, "
                 "IVF4096, or any Faiss factory string such as IVF4096,PQ32.")


def _check_factory(ctx, param, value: str) -> str:
    from ..core.errors import SiamsearchError
    from ..gallery.ann import resolve_factory

    try:
        resolve_factory(value, 1_000_000, 128)  # syntax check only; the real size decides at build time
    except SiamsearchError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _engine_options(f):
    """--engine and --address, shared by build and update."""
    f = click.option("--address", default=None,
                     help="Ray cluster to use with --engine ray: auto or HOST:PORT [default: start a local one].")(f)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
                        help="Who embeds: this process, or a Ray Data pipeline (writes Parquet shards; "
                             "pip install 'siamsearch[ray]').")(f)


def _echo_report(report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    for line in report.summary().splitlines():
        if line.startswith("warning:") or line.startswith("  "):
            click.secho(line, fg="yellow")
        else:
            click.echo(line)


@click.group()
def index() -> None:
    """Build, update and describe image galleries (gallery.h5 + faiss.index).

    \b
    Examples:
      siamsearch index build photos/ --model model.pt          # -> index/photos/
      siamsearch index update index/photos                     # new, changed, removed files
      siamsearch index info index/photos --json
    """


@index.command(context_settings={"show_default": True})
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@checkpoint_option()
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Gallery folder [default: index/<name of IMAGE_DIR>].")
@click.option("--factory", default="auto", callback=_check_factory, help=_FACTORY_HELP)
@batch_size_option()
@_workers_auto
@device_option
@precision_option
@click.option("--labels", type=click.Choice(LABEL_MODES), default=None,
              help="Label = the image's folder (relative to IMAGE_DIR), or no labels "
                   "[default: from-folder when every image sits in one of several subfolders].")
@strict_option
@click.option("--overwrite", is_flag=True, help="Replace a gallery at --out made from another folder or model.")
@json_option("Print the build report as JSON.")
@progress_option
@_engine_options
@click.option("--shard-size", type=click.IntRange(1), default=None,
              help="Images per Parquet shard; selects the sharded format (default with --engine ray: 100000).")
@click.option("--max-index-memory", default=None,
              help="Size budget of a sharded gallery's index, e.g. 8G: picks Flat, SQ8 or PQ codes.")
def build(image_dir, model, out, factory, batch_size, workers, device, labels, strict, overwrite, as_json,
          progress, engine, address, shard_size, max_index_memory):
    """Embed every image below IMAGE_DIR (recursively) and index it.

    Unreadable files are skipped and listed with their reason (exit 0);
    --strict makes any skip an error. Re-running a killed build resumes it.
    """
    from ..gallery import Gallery

    g = Gallery.build(image_dir, model, out=out, factory=factory, batch_size=batch_size, workers=workers,
                      device=device, labels=labels, strict=strict, progress=progress and not as_json,
                      overwrite=overwrite, engine=engine, address=address, shard_size=shard_size,
                      max_index_memory=max_index_memory)
    _echo_report(g.last_report, as_json)
    g.close()


@index.command(context_settings={"show_default": True})
@click.argument("gallery", type=click.Path(exists=True, file_okay=False))
@checkpoint_option(required=False, help="Checkpoint [default: the one recorded in the gallery]; must be the model that built it.")
@batch_size_option()
@_workers_auto
@device_option
@precision_option
@strict_option
@click.option("--allow-mass-removal", is_flag=True,
              help="Let this update remove more than half of the gallery's images (refused otherwise: an "
                   "unmounted or emptied folder looks like every file deleted).")
@json_option("Print the update report as JSON.")
@progress_option
@_engine_options
def update(gallery, model, batch_size, workers, device, strict, allow_mass_removal, as_json, progress, engine,
           address):
    """Re-scan the gallery's image folder: embed new and changed files, drop removed ones.

    Also repairs a gallery whose faiss.index is missing, damaged or stale
    (rebuilt from the stored embeddings) and finishes an interrupted run.
    """
    from ..gallery.gallery import update_gallery

    report = update_gallery(gallery, model=model, batch_size=batch_size, workers=workers, device=device,
                            strict=strict, progress=progress and not as_json, engine=engine, address=address,
                            allow_mass_removal=allow_mass_removal)
    _echo_report(report, as_json)


@index.command(context_settings={"show_default": True})
@click.argument("gallery", type=click.Path(exists=True, file_okay=False))
@json_option("Print everything as JSON.")
@click.option("--top", type=click.IntRange(0), default=10, help="Labels listed by count (text output).")
def info(gallery, as_json, top):
    """Size, dimension, model, index type and parameters, labels, skipped files, disk size, times."""
    from ..gallery import Gallery

    with Gallery.open(gallery) as g:
        d = g.info()
    if as_json:
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    ix = d["index"]
    params = ", ".join(f"{k}={v}" for k, v in ix["params"].items() if k != "requested")
    labels = d["labels"]
    click.echo(f"gallery      {d['folder']}  ({d['disk_bytes'] / 1e6:.1f} MB on disk)")
    click.echo(f"images       {d['size']} from {d['source_dir']}"
               + (f"  ({d['deleted_rows']} deleted rows awaiting compaction)" if d["deleted_rows"] else ""))
    click.echo(f"embeddings   {d['dim']}-d float32 embedded in {d['model']['precision']}, "
               f"model {d['model']['fingerprint']} ({d['model']['path']})")
    click.echo(f"index        {ix['factory']} (requested {ix['params'].get('requested', 'auto')}; "
               f"removal by {ix['removal']}{', ' + params if params else ''})")
    click.echo(f"labels       {labels['mode']}: {labels['count']} labels")
    for name, n in list(labels["per_label"].items())[:top]:
        click.echo(f"  {n:7d}  {name}")
    if len(labels["per_label"]) > top:
        click.echo(f"  ... {len(labels['per_label']) - top} more (--json lists all)")
    click.echo(f"skipped      {len(d['skipped'])} file(s)")
    for s in d["skipped"]:
        click.secho(f"  {s['path']}: {s['reason']}", fg="yellow")
    click.echo(f"created      {d['created']}   updated {d['updated']}   siamsearch {d['siamsearch_version']}")
    if d["interrupted_run_pending"]:
        click.secho("an interrupted build/update left work in progress; run `siamsearch index update` to finish it",
                    fg="yellow")
