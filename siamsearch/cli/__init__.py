"""The `siamsearch` command line: a thin click layer over the library.

Each command lives in its own module of this package, parses its options and
calls one library function. Errors of type :class:`SiamsearchError` are
printed without a traceback and exit with status 2.
"""
from __future__ import annotations

import sys

import click

from .._version import __version__
from ..core.errors import SiamsearchError


def show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: a library warning becomes one line ``note: ...`` on stderr
    (no source path, no code line), the way the demo shows them."""
    text = " ".join(str(message).split())
    click.secho(f"note: {text}", fg="yellow", err=True)


class _Group(click.Group):
    """A click group that turns SiamsearchError into a clean message and exit 2, and warnings into notes."""

    def invoke(self, ctx: click.Context):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.showwarning = show_note
                return super().invoke(ctx)
        except SiamsearchError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:  # a GalleryInterrupted says exactly what was kept
            click.echo(str(e) or "Interrupted; work written so far is kept.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="siamsearch")
def main() -> None:
    """siamsearch: learn image embeddings, index galleries, verify and identify.

    \b
    Typical flow:
      siamsearch train --data faces/ --out model.pt          # learn an embedding
      siamsearch calibrate --model model.pt --data heldout/  # choose a threshold
      siamsearch index build gallery/ --model model.pt       # embed a folder
      siamsearch query photo.jpg --index index/gallery       # who is this?
      siamsearch verify a.jpg b.jpg --model model.pt         # same or different?
      siamsearch evaluate --model model.pt --data test/      # how reliable is it?
      siamsearch serve --model model.pt --index index/gallery  # REST API + web page

    Run `siamsearch COMMAND --help` for each command's options.
    """


def _register() -> None:
    # One line per command module; each module defines a click command or group.
    from . import calibrate, data, demo, evaluate, index, query, serve, train, verify

    for command in (train.train, evaluate.evaluate, data.data, calibrate.calibrate, verify.verify, query.query,
                    index.index, serve.serve, demo.demo):
        main.add_command(command)


_register()
