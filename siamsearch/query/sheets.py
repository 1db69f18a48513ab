"""Contact sheets: a picture of an answer (``query --sheet``, ``verify --sheet``).

:func:`query_sheet` draws each query beside its ``k`` nearest gallery images, with
rank, label and distance under each, and the verdict (the predicted identity,
``unknown`` in open-set mode, right/wrong when the query's folder names its
identity). :func:`verify_sheet` draws verified pairs with their distance, the
threshold and the decision.

Text is drawn with fonts that exist on the machine (:func:`text_fonts`: DejaVu Sans,
shipped with matplotlib, covers Latin, Greek, Cyrillic, Hebrew, Arabic and more; CJK
fonts are added when installed). A character no available font has is shown as
``?`` (:func:`drawable`) instead of an empty box and a warning per glyph; the exact
names stay in the JSON and CSV outputs.
"""
from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..core.errors import SiamsearchError

PathLike = Union[str, os.PathLike]

#: Queries drawn on one sheet at most (the first ones; the rest are counted in the title).
MAX_QUERIES = 12
#: Pairs drawn on one verify sheet at most.
MAX_PAIRS = 24
#: Fonts tried after DejaVu Sans, for scripts it lacks (used when installed).
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
                  "Arial Unicode MS", "Liberation Sans")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@functools.lru_cache(maxsize=1)
def text_fonts() -> tuple[tuple[str, ...], frozenset]:
    """``(font families to draw text with, code points they cover)``: DejaVu Sans first, then any
    of :data:`FALLBACK_FONTS` found on this machine."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    families, covered = [], set()
    for name in ("DejaVu Sans",) + FALLBACK_FONTS:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
            covered |= set(FT2Font(path).get_charmap())
        except (ValueError, RuntimeError, OSError):
            continue
        families.append(name)
    return tuple(families), frozenset(covered)


def drawable(text: str) -> str:
    """``text`` with every character that no available font can draw replaced by ``?``."""
    _, covered = text_fonts()
    if not covered:
        return str(text)
    return "".join(c if ord(c) in covered or c in "\n\t " else "?" for c in str(text))


def _short(s: str, n: int = 22) -> str:
    s = str(s)
    return s if len(s) <= n else "..." + s[-(n - 3):]


def _image(path: str) -> Optional[np.ndarray]:
    from ..core.images import read_image

    try:
        return np.asarray(read_image(path).convert("RGB"))
    except (SiamsearchError, OSError, ValueError):
        return None


def _cell(ax, path: Optional[str], caption: str, colour: str = "black") -> None:
    ax.axis("off")
    img = _image(path) if path else None
    if img is not None:
        ax.imshow(img)
    else:
        ax.text(0.5, 0.5, "not readable", ha="center", va="center", fontsize=7, color="grey")
    ax.set_title(drawable(caption), fontsize=7, color=colour, loc="center", wrap=False)


def _save(fig, out: PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    out.write_bytes(buf.getvalue())
    return out


def _figure(rows: int, cols: int, cell_w: float = 1.9, cell_h: float = 2.3):
    plt = _plt()
    families, _ = text_fonts()
    with plt.rc_context({"font.family": list(families) or ["sans-serif"]}):
        fig, axes = plt.subplots(rows, cols, figsize=(cell_w * cols, cell_h * rows), squeeze=False,
                                 layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08, hspace=0.06)
    return plt, families, fig, axes


def _verdict(answer, report) -> tuple[str, str]:
    """The verdict line of one query and its colour (green right, red wrong, black unlabelled)."""
    line = f"-> {answer.prediction if answer.prediction is not None else 'no label'}"
    if answer.error is not None:
        return f"not read: {answer.error}", "grey"
    if answer.expected is None:
        return line, "black"
    right_answer = answer.expected if (answer.expected in report.gallery_labels or not report.open_set) else "unknown"
    ok = answer.prediction == right_answer
    return f"{line} ({'right' if ok else 'wrong'}; is {answer.expected})", "green" if ok else "red"


def query_sheet(report, out: PathLike) -> Path:
    """Draw the answers of :func:`~siamsearch.query.identification.identify` into a PNG.

    One row per query (the first :data:`MAX_QUERIES`): the query, then its neighbours with
    ``rank label`` and ``d=distance`` (marked ``> t`` beyond the open-set threshold).

    Args:
        report: an :class:`~siamsearch.query.identification.IdentificationReport`.
        out: the PNG to write.

    Returns:
        The path written.
    """
    answers = list(report.answers)[:MAX_QUERIES]
    if not answers:
        raise SiamsearchError("nothing to draw: no query was answered")
    cols = 1 + max(1, max(len(a.neighbors) for a in answers))
    plt, families, fig, axes = _figure(len(answers), cols)
    with plt.rc_context({"font.family": list(families) or ["sans-serif"]}):
        for row, a in zip(axes, answers):
            verdict, colour = _verdict(a, report)
            _cell(row[0], a.query, f"query {_short(Path(a.query).name)}\n{verdict}", colour)
            for ax, n in zip(row[1:], a.neighbors):
                beyond = report.open_set and report.threshold is not None and n.distance > report.threshold
                _cell(ax, n.path, f"{n.rank}. {_short(n.label if n.label is not None else '-', 18)}\n"
                                  f"d={n.distance:.3f}{' > t' if beyond else ''}", "grey" if beyond else "black")
            for ax in row[1 + len(a.neighbors):]:
                ax.axis("off")
        mode = (f"open set: unknown when nearest d > {report.threshold:.3f}" if report.open_set
                else "closed set: the nearest neighbour's label")
        more = f"; first {len(answers)} of {len(report.answers)} queries" if len(report.answers) > len(answers) else ""
        fig.suptitle(drawable(f"{mode}{more}"), fontsize=9)
    return _save(fig, out)


def verify_sheet(pairs: Sequence[tuple], threshold: float, source: str, out: PathLike) -> Path:
    """Draw verified pairs into a PNG: both images, the distance against the threshold and the decision.

    Args:
        pairs: ``(path_a, path_b, distance or None, is_same or None, expected or None)`` per pair
            (the first :data:`MAX_PAIRS` are drawn).
        threshold: the distance threshold used (same iff distance <= threshold).
        source: where the threshold came from (one line).
        out: the PNG to write.
    """
    pairs = list(pairs)[:MAX_PAIRS]
    if not pairs:
        raise SiamsearchError("nothing to draw: no pair")
    per_row = 2 if len(pairs) == 1 else 4  # pairs per row, two cells each
    rows = -(-len(pairs) // per_row)
    plt, families, fig, axes = _figure(rows, 2 * per_row)
    with plt.rc_context({"font.family": list(families) or ["sans-serif"]}):
        for ax in axes.ravel():
            ax.axis("off")
        for k, (a, b, d, same, expected) in enumerate(pairs):
            ax_a, ax_b = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
            if d is None:
                verdict, colour = "not scored", "grey"
            else:
                verdict = f"{'SAME' if same else 'DIFFERENT'}: d={d:.3f} {'<=' if same else '>'} {threshold:.3f}"
                colour = "black" if expected is None else ("green" if bool(expected) == bool(same) else "red")
                if expected is not None:
                    verdict += f" ({'right' if bool(expected) == bool(same) else 'wrong'})"
            _cell(ax_a, a, f"{_short(Path(a).name, 18)}\n{verdict}", colour)
            _cell(ax_b, b, f"{_short(Path(b).name, 18)}\n", colour)
        fig.suptitle(drawable(f"same iff distance <= {threshold:.4f} (threshold from {source})"), fontsize=9)
    return _save(fig, out)
