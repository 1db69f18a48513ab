"""Per-client request rate limit (``--rate-limit R``): a token bucket per API key, or per client address
when the server has no keys. Over the limit the answer is 429 with ``Retry-After``."""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

from .errors import ApiError

#: Buckets kept before the idle ones are dropped.
MAX_CLIENTS = 10_000


class RateLimiter:
    """``rate`` requests per second per client, bursts up to ``2 * rate`` (at least 1)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = max(1.0, 2.0 * self.rate)
        self._clock = clock
        self._buckets: dict = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Take one token for ``client``.

        Raises:
            ApiError: 429 ``rate_limited`` with ``Retry-After`` (whole seconds) when none is left.
        """
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise ApiError(429, "rate_limited", f"more than {self.rate:g} requests per second from this client "
                                                    f"(--rate-limit); retry after {wait} s", {"Retry-After": str(wait)})
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_CLIENTS:
                full = [c for c, (t, _) in self._buckets.items() if t >= self.burst - 1.0]
                for c in full:
                    del self._buckets[c]
