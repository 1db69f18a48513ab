"""What a server serves and under which limits: :class:`ServeConfig`, and the API-key file.

API-key file (``--api-keys FILE``): one key per line, ``KEY read`` or ``KEY write``
(a write key may also read); blank lines and ``#`` comments are ignored. Keys are
sent in the ``X-API-Key`` header and compared in constant time.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..core.errors import SiamsearchError

#: Roles a key can have; ``write`` includes ``read``.
ROLES = ("read", "write")
#: Environment variable carrying the JSON config to worker processes (``--workers N``).
CONFIG_ENV = "SIAMSEARCH_SERVE_CONFIG"
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server.

    Attributes:
        model: checkpoint path (every gallery must have been built by it).
        indexes: gallery folders; each is served under its folder's name.
        host, port: where to listen.
        api_keys: path of the key file, or ``None`` (then only loopback hosts are allowed).
        max_upload_mb: request bodies above this many MiB are refused with 413.
        max_pixels: uploaded images with more pixels are refused with 413 before decoding.
        workers: uvicorn worker processes.
        inference_threads: threads that decode, embed and search in each process.
        queue: requests allowed to wait for an inference thread; beyond it 503 + Retry-After.
        device: ``auto``, ``cpu`` or ``cuda``.
        rate_limit: requests per second per client (API key, or address without keys); 0 = no limit.
    """

    model: str
    indexes: tuple
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Optional[str] = None
    max_upload_mb: float = 8.0
    max_pixels: int = 40_000_000
    workers: int = 1
    inference_threads: int = 2
    queue: int = 32
    device: str = "auto"
    rate_limit: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def torch_threads(self) -> int:
        """Intra-op threads for each inference thread: the cores shared out over ``workers x
        inference_threads`` callers (at least 1). Each request is one image, too small to split over
        threads; without this every inference thread ran torch on all cores, and the threads of concurrent
        requests took the cores from each other (2 cores, 2 inference threads: ~20 % fewer searches/s)."""
        return max(1, (os.cpu_count() or 1) // (self.workers * self.inference_threads))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> "ServeConfig":
        """Refuse impossible settings (the message names the option to change).

        Raises:
            SiamsearchError: no gallery, two galleries with one name, a non-loopback host without
                API keys, or a limit below 1.
        """
        if not self.indexes:
            raise SiamsearchError("give at least one gallery with --index index/NAME")
        names = [gallery_name(p) for p in self.indexes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SiamsearchError(f"two --index folders share the name {dup[0]!r}; a gallery is served under its "
                                  "folder's name, so rename one folder")
        if self.api_keys is None and not is_loopback(self.host):
            raise SiamsearchError(f"--host {self.host} is reachable from other machines, and without --api-keys "
                                  "anyone could enrol and remove images; give --api-keys FILE, or bind to 127.0.0.1")
        if self.max_upload_mb <= 0 or self.max_pixels < 1 or self.workers < 1 or self.inference_threads < 1 \
                or self.queue < 0 or self.rate_limit < 0:
            raise SiamsearchError("--max-upload-mb, --max-pixels, --workers and --inference-threads must be "
                                  "positive, --queue and --rate-limit at least 0")
        return self

    def to_env(self) -> str:
        """JSON for :data:`CONFIG_ENV` (read back with :meth:`from_env`)."""
        d = asdict(self)
        d["indexes"] = list(self.indexes)
        return json.dumps(d)

    @classmethod
    def from_env(cls, text: Optional[str] = None) -> "ServeConfig":
        text = os.environ.get(CONFIG_ENV) if text is None else text
        if not text:
            raise SiamsearchError(f"{CONFIG_ENV} is not set; start the server with `siamsearch serve`")
        d = json.loads(text)
        d["indexes"] = tuple(d["indexes"])
        return cls(**d)


def gallery_name(folder: os.PathLike | str) -> str:
    """The API name of a gallery: its folder's name (``index/shop`` -> ``shop``)."""
    return Path(os.path.abspath(os.fspath(folder))).name


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiKeys:
    """Keys and their roles; :meth:`role` compares in constant time against every key."""

    def __init__(self, keys: dict):
        self._keys = [(k.encode("utf-8"), r) for k, r in keys.items()]

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, path: os.PathLike | str) -> "ApiKeys":
        """Read a key file (``KEY read|write`` per line).

        Raises:
            SiamsearchError: missing file, a malformed line, an unknown role or a key shorter than 16 characters.
        """
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SiamsearchError(f"cannot read --api-keys {p} ({e.strerror}); give a file with lines "
                                  "'KEY read' or 'KEY write'") from None
        keys: dict = {}
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ROLES:
                raise SiamsearchError(f"{p}, line {n}: expected 'KEY read' or 'KEY write'")
            if len(parts[0]) < MIN_KEY_LENGTH:
                raise SiamsearchError(f"{p}, line {n}: keys must be at least {MIN_KEY_LENGTH} characters "
                                      "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
            keys[parts[0]] = parts[1]
        if not keys:
            raise SiamsearchError(f"{p} holds no keys; add lines 'KEY read' or 'KEY write'")
        return cls(keys)

    def role(self, key: Optional[str]) -> Optional[str]:
        """The role of ``key`` (``"read"``/``"write"``), or ``None``; every key is compared, in constant time."""
        if not key:
            return None
        given = key.encode("utf-8", "replace")
        found = None
        for k, r in self._keys:
            if hmac.compare_digest(k, given):
                found = r
        return found
