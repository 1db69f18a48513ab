"""The shared ``--precision`` option (sets the process default precision; no torch import at parse time)."""
from __future__ import annotations

import click

from ..core.choices import PRECISIONS as CHOICES  # torch-free, so ``--help`` does not load torch


def _apply(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value is not None and not ctx.resilient_parsing:
        from ..core.inference import set_default_precision

        set_default_precision(value)
    return value


def precision_option(f):
    """``--precision auto|fp32|bf16|fp16`` for commands that embed images."""
    return click.option(
        "--precision", type=click.Choice(CHOICES, case_sensitive=False), default="auto", show_default=True,
        expose_value=False, callback=_apply, is_eager=False, envvar="SIAMSEARCH_PRECISION", show_envvar=True,
        help="Inference precision: auto = bf16 where the CPU has native bf16 (bf16/fp16 on CUDA), else fp32. "
             "Galleries record it; bf16 and fp32 embeddings agree (cosine >= 0.999), so either can query the other.",
    )(f)
