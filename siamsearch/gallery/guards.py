"""Checks that keep a gallery from being emptied by mistake, and the truth after an interruption.

* :func:`check_not_empty`: ``index build`` of a folder without images fails at build time, not
  at the first query; :func:`check_some_readable`: nor of a folder whose images all fail to read.
* :func:`check_removal`: one build or update may drop at most :data:`MASS_REMOVAL_SHARE` of the
  gallery's images (an unmounted drive or an emptied folder looks exactly like "every file was
  deleted") unless ``allow_mass_removal``.
* :func:`interrupted_message`: what an interrupted build or update kept, counted, e.g.
  "nothing was kept".
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.errors import GalleryInterrupted, SiamsearchError

#: The largest share of a gallery one update may remove without ``allow_mass_removal``.
MASS_REMOVAL_SHARE = 0.5


def check_not_empty(source: Path, n_images: int) -> None:
    """Refuse to build a gallery from a folder with no images.

    Raises:
        SiamsearchError: ``n_images == 0``.
    """
    if n_images == 0:
        raise SiamsearchError(f"{source} holds no images (looked for common image extensions, recursively); "
                              "a gallery needs at least one. Check the folder (is the drive mounted?)")


def check_some_readable(source: Path, n_files: int, n_readable: int) -> None:
    """Refuse to publish a first build of which no image could be read.

    Raises:
        SiamsearchError: ``n_readable == 0``, naming how many files were tried and where the reasons are.
    """
    if n_readable == 0:
        raise SiamsearchError(f"none of the {n_files} image files of {source} could be read, so there is nothing "
                              "to index; nothing was published (see `siamsearch data check` for the reasons)")


def check_removal(folder: Path, source: Path, n_live: int, n_removed: int, allow_mass_removal: bool) -> None:
    """Refuse an update that would remove more than :data:`MASS_REMOVAL_SHARE` of ``n_live`` images.

    Args:
        folder: the gallery; source: its image folder.
        n_live: images in the gallery now; n_removed: how many the update would drop.
        allow_mass_removal: go ahead anyway.

    Raises:
        SiamsearchError: saying how many, and how to go ahead (``--allow-mass-removal``).
    """
    if allow_mass_removal or n_live == 0 or n_removed <= MASS_REMOVAL_SHARE * n_live:
        return
    raise SiamsearchError(
        f"{source} no longer holds {n_removed:,} of the {n_live:,} images of {folder} ({n_removed / n_live:.0%}); "
        f"removing more than {MASS_REMOVAL_SHARE:.0%} in one update is refused, because an unmounted drive or an "
        f"emptied folder looks the same. Nothing was changed. If the files really are gone, run "
        f"`siamsearch index update {folder} --allow-mass-removal`")


def interrupted_message(folder: Path, published_before: Optional[int], journal_rows: int) -> GalleryInterrupted:
    """The exception that says exactly what an interrupted build or update kept.

    Args:
        folder: the gallery folder.
        published_before: images of the gallery published before the run (``None``: there was none).
        journal_rows: embeddings of this run kept in the folder's journal for the next run.
    """
    gallery = ("no gallery was published" if published_before is None else
               f"the published gallery is unchanged ({published_before:,} images)")
    if journal_rows:
        kept = (f"{journal_rows:,} image(s) embedded before the interruption are kept in {folder} and reused by "
                f"the next `siamsearch index build/update`")
    else:
        kept = "no new embedding was kept"
    if published_before is None and not journal_rows:
        return GalleryInterrupted(f"Interrupted: nothing was kept ({gallery}).")
    return GalleryInterrupted(f"Interrupted: {gallery}; {kept}.")
