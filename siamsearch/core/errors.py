"""The package's own exception types.

Every user mistake (bad path, wrong file, mismatched model) raises a
:class:`SiamsearchError` whose message says what to do. The CLI prints such
errors without a traceback and exits with status 2.
"""
from __future__ import annotations


class SiamsearchError(Exception):
    """A user-facing error; its message says what went wrong and how to fix it."""


class UnreadableImage(SiamsearchError):
    """An image file that cannot be decoded.

    Attributes:
        path: the file (as given).
        reason: a short, stable reason (``"empty file"``, ``"not an image"``,
            ``"truncated"``, ``"decompression bomb"``, ...).
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CheckpointError(SiamsearchError):
    """A checkpoint that is corrupt, foreign, or carries pickled code."""


class FingerprintMismatch(SiamsearchError):
    """An artifact (gallery, calibration) made by another model than the one given."""


class GalleryError(SiamsearchError):
    """A gallery folder that is missing, damaged or inconsistent."""


def check_fingerprint(expected: str, got: str, made: str, what: str, fix: str) -> None:
    """The one check that an artifact and a model belong together.

    Raises :class:`FingerprintMismatch` unless ``got == expected``, with the message
    ``"{made} model {expected}, but {what} is model {got}; {fix}"``.

    Args:
        expected: the fingerprint the artifact (gallery, calibration record) records.
        got: the fingerprint of the model (or checkpoint) offered.
        made: how the artifact relates to its model, e.g. ``"index/shop was built with"``.
        what: names the offered model, e.g. ``"the given model"`` or a checkpoint's path.
        fix: what the user should do, ending the message.
    """
    if str(got) != str(expected):
        raise FingerprintMismatch(f"{made} model {expected}, but {what} is model {got}; {fix}")


class GalleryInterrupted(KeyboardInterrupt):
    """Ctrl-C during a gallery build or update; the message says exactly what was kept.

    A :class:`KeyboardInterrupt` (so it still stops the program); the CLI prints its message.
    """
