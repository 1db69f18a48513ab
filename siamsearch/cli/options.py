"""Options shared by several commands, each declared once.

Every helper returns a click decorator, so a command reads as a list of what it
accepts::

    @click.command()
    @checkpoint_option()
    @batch_size_option(default=128)
    @device_option
    @json_option("Print the result as JSON.")
    def cmd(model, batch_size, device, as_json): ...

This module imports click and :mod:`siamsearch.core.choices` only, so that
``--help`` stays free of torch and the other heavy libraries.
"""
from __future__ import annotations

from typing import Callable, Optional

import click

from ..core.choices import DEVICES, FORMATS

Decorator = Callable[[Callable], Callable]

#: ``--device auto|cpu|cuda``.
device_option: Decorator = click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True,
    help="auto: CUDA when a GPU is visible, else the CPU.")

#: ``--progress/--no-progress``.
progress_option: Decorator = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")

#: ``--strict`` for the commands that skip unreadable files.
strict_option: Decorator = click.option(
    "--strict", is_flag=True, help="Fail (exit 2, nothing published) if any file cannot be read.")

#: ``--format``: the dataset layout.
format_option: Decorator = click.option(
    "--format", "format_", type=click.Choice(FORMATS), default="auto", show_default=True,
    help="Dataset layout (auto detects identity folders, IDX, Omniglot, CelebA).")

#: ``--calibration FILE``: a record to use instead of the model's own.
calibration_option: Decorator = click.option(
    "--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Calibration record to use instead of the model's own (.json from `calibrate --out`).")


def json_option(help: str = "Print the result as JSON.") -> Decorator:
    """``--json`` (parameter ``as_json``): machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def seed_option(help: Optional[str] = None) -> Decorator:
    """``--seed S`` (default 0): what it seeds is said in ``help``."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def batch_size_option(default: Optional[int] = 64, minimum: int = 1,
                      help: str = "Images per forward pass.") -> Decorator:
    """``--batch-size N`` (``None`` default: the library chooses, said in ``help``)."""
    return click.option("--batch-size", type=click.IntRange(minimum), default=default,
                        show_default=default is not None, help=help)


def workers_option(default: Optional[int] = 0, help: str = "Image-decoding worker processes.") -> Decorator:
    """``--workers N`` (``None`` default: the library chooses, said in ``help``)."""
    return click.option("--workers", type=click.IntRange(0), default=default, show_default=default is not None,
                        help=help)


def split_option(help: str = "Dataset split [default: test for IDX and CelebA, everything otherwise].") -> Decorator:
    """``--split NAME`` where the format has splits (IDX, CelebA)."""
    return click.option("--split", default=None, help=help)


def checkpoint_option(required: bool = True, help: str = "Checkpoint written by `siamsearch train`.") -> Decorator:
    """``--model FILE``: an existing checkpoint."""
    return click.option("--model", "model", required=required, default=None,
                        type=click.Path(exists=True, dir_okay=False), help=help)
