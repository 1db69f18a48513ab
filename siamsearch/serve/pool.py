"""A bounded inference pool: a fixed number of threads and a fixed number of waiting places.

When every thread is busy and the waiting places are taken, :meth:`InferencePool.run`
refuses at once with 503 and ``Retry-After`` instead of queueing without limit.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from .errors import ApiError

RETRY_AFTER_S = 1


class InferencePool:
    """``threads`` workers plus ``queue`` waiting places; beyond that, :class:`ApiError` 503.
    ``initializer`` runs once in each worker thread when it starts."""

    def __init__(self, threads: int, queue: int, on_reject: Callable[[], None] = lambda: None,
                 initializer: Optional[Callable[[], None]] = None):
        self.threads, self.capacity = int(threads), int(threads) + int(queue)
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="siamsearch-infer",
                                            initializer=initializer)
        self._on_reject = on_reject

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on a pool thread and return its result.

        Raises:
            ApiError: 503 ``busy`` with ``Retry-After`` when the pool and its queue are full.
        """
        if not self._slots.acquire(blocking=False):
            self._on_reject()
            raise ApiError(503, "busy", f"the server is at its limit of {self.capacity} concurrent inference "
                                        f"requests; retry after {RETRY_AFTER_S} s",
                           {"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
