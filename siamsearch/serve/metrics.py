"""Prometheus metrics of one server process (its own registry, so several apps can live in one process).

``siamsearch_requests_total{endpoint,method,status}``, ``siamsearch_request_seconds{endpoint}``,
``siamsearch_stage_seconds{stage}`` (decode, embed, search, write), ``siamsearch_gallery_images{gallery}``,
``siamsearch_busy_rejections_total``. With ``--workers N`` each worker process reports its own counts.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The counters and histograms of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("siamsearch_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=r)
        self.latency = Histogram("siamsearch_request_seconds", "Request latency (seconds)", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("siamsearch_stage_seconds", "Time per processing stage (seconds)", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.gallery_images = Gauge("siamsearch_gallery_images", "Live images per gallery", ["gallery"], registry=r)
        self.busy = Counter("siamsearch_busy_rejections", "Requests refused with 503 because the inference pool "
                                                          "was full", registry=r)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time a block into ``siamsearch_stage_seconds{stage=...}``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - t0)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
