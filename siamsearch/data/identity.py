"""What an identity is, for a folder of images: one rule for datasets, galleries and queries.

**Rule.** For an image at ``ROOT/<a>/<b>/.../<file>``, the identity is ``<a>``, the first
folder below the root: ``people/bob/2019/summer/x.jpg`` is ``bob``, like
``people/bob/x.jpg``. An image directly in ``ROOT`` has no identity (``None``).

:func:`siamsearch.data.open_folders` (``data check``, ``train``, ``calibrate``,
``evaluate``), the gallery indexer (``index build --labels from-folder``) and folder
queries (``query FOLDER``) all call :func:`identity_of`, so a file is the same identity
everywhere. :func:`loose_files_note` words the warning for files that fit no identity.
"""
from __future__ import annotations

from pathlib import PurePath, PurePosixPath
from typing import Optional, Sequence, Union

#: How many stray file names a warning lists before "and N more".
NAMES_SHOWN = 5


def identity_of(rel: Union[str, PurePath]) -> Optional[str]:
    """The identity of an image from its path relative to the root (``"bob/2019/x.jpg"`` -> ``"bob"``).

    Args:
        rel: the path below the root, as a string with ``/`` separators or a path object.

    Returns:
        The first folder name, or ``None`` for a file directly in the root.
    """
    if isinstance(rel, str) and not rel.startswith("/"):
        # what PurePosixPath(rel).parts gives for a relative path, without building one (scans call this
        # once per file): empty and "." components dropped
        parts = [p for p in rel.split("/") if p and p != "."]
    else:
        parts = list((PurePosixPath(rel) if isinstance(rel, str) else PurePath(rel)).parts)
    return parts[0] if len(parts) >= 2 else None


def loose_files_note(root: Union[str, PurePath], loose: Sequence[str], what: str) -> str:
    """A one-line warning naming the files directly in ``root`` that belong to no identity.

    Args:
        root: the folder.
        loose: the stray files' names (relative to ``root``).
        what: what happens to them, e.g. ``"they are ignored"``.
    """
    shown = ", ".join(map(str, loose[:NAMES_SHOWN]))
    more = f" and {len(loose) - NAMES_SHOWN} more" if len(loose) > NAMES_SHOWN else ""
    return (f"{root}: {len(loose)} image file(s) lie directly in the folder, outside any identity sub-folder "
            f"({shown}{more}); {what}. Put each identity's images in its own sub-folder "
            "(ROOT/<identity>/...)")
