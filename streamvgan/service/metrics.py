"""Prometheus metrics of the service and the small HTTP server that exposes them.

Names follow ``streamvgan_<subsystem>_<name>_<unit>`` with base units, counters end in
``_total``, and no label ever carries a stream id (their number is unbounded). Every metric is
registered on the ``registry`` passed in, so tests use a fresh
``prometheus_client.CollectorRegistry`` and read values with ``get_sample_value``.

The HTTP server answers ``/metrics`` (Prometheus text format), ``/healthz`` (200 while the
process runs) and ``/readyz`` (200 once partitions are assigned and a model is loaded,
503 before), the probes a Kubernetes deployment points at.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from streamvgan.engine.types import CAUSES
from streamvgan.errors import ConfigurationError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
FINETUNE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    """All metrics of ``streamvgan serve``, registered on one registry.

    Parameters
    ----------
    registry
        Where the metrics are registered; a fresh ``CollectorRegistry`` by default, so two
        applications in one process (tests, the demo) never collide.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> from streamvgan.service.metrics import ServiceMetrics
    >>> registry = CollectorRegistry()
    >>> m = ServiceMetrics(registry)
    >>> m.consumed.labels(topic="events").inc(3)
    >>> registry.get_sample_value("streamvgan_consumer_records_consumed_total", {"topic": "events"})
    3.0

    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.consumed = Counter(
            "streamvgan_consumer_records_consumed",
            "Records read from the input topic.",
            ["topic"],
            registry=r,
        )
        self.produced = Counter(
            "streamvgan_producer_records_produced",
            "Records acknowledged by the broker.",
            ["topic"],
            registry=r,
        )
        self.producer_replacements = Counter(
            "streamvgan_producer_replacements",
            "Producers replaced after a broker outage or restart (their unacknowledged "
            "records were sent again).",
            registry=r,
        )
        self.dead_lettered = Counter(
            "streamvgan_consumer_records_dead_lettered",
            "Input records sent to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "streamvgan_pipeline_latency_seconds",
            "From the poll that returned a record to the broker's acknowledgement of its outputs.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamvgan_pipeline_batch_size_records",
            "Records per poll (one engine step).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.streams = Gauge("streamvgan_engine_streams", "Streams held in memory.", registry=r)
        self.model_version = Gauge(
            "streamvgan_model_version", "Version of the weights now scoring.", registry=r
        )
        self.finetune_steps = Counter(
            "streamvgan_finetune_steps", "Optimiser steps of fine-tuning.", registry=r
        )
        self.finetune_duration = Histogram(
            "streamvgan_finetune_duration_seconds",
            "Wall time of one fine-tune.",
            buckets=FINETUNE_BUCKETS,
            registry=r,
        )
        self.finetune_loss = Gauge(
            "streamvgan_finetune_loss",
            "Losses of the latest fine-tune, by component.",
            ["component"],
            registry=r,
        )
        self.finetune_last_success = Gauge(
            "streamvgan_finetune_last_success_timestamp_seconds",
            "Unix time of the latest successful fine-tune.",
            registry=r,
        )
        self.checkpoint_last_success = Gauge(
            "streamvgan_checkpoint_last_success_timestamp_seconds",
            "Unix time of the latest checkpoint written.",
            registry=r,
        )
        self.lag = Gauge(
            "streamvgan_consumer_lag_records",
            "Records behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.scores = Histogram(
            "streamvgan_scores_anomaly_score",
            "Anomaly scores of scored events.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.anomalies = Counter(
            "streamvgan_scores_anomalies",
            "Scored events at or above the alert threshold.",
            registry=r,
        )
        self.anomaly_causes = Counter(
            "streamvgan_scores_anomaly_causes",
            "Scored events at or above the alert threshold, by the signal that drove the score.",
            ["signal"],
            registry=r,
        )
        for signal in CAUSES:  # every series from the start, at 0: rate() sees the first alert
            self.anomaly_causes.labels(signal=signal)
        self.ready = Gauge(
            "streamvgan_service_ready",
            "1 when partitions are assigned and a model is loaded.",
            registry=r,
        )
        self.state_written = Counter(
            "streamvgan_state_changelog_records_written",
            "Stream states written to the changelog topic.",
            registry=r,
        )
        self.state_restored = Counter(
            "streamvgan_state_restored_streams",
            "Stream states restored from the changelog when partitions were assigned.",
            registry=r,
        )
        self.state_rejected = Counter(
            "streamvgan_state_rejected_records",
            "Changelog records rejected as corrupt (those streams started cold).",
            registry=r,
        )
        self.already_applied = Counter(
            "streamvgan_state_events_already_applied",
            "Input events skipped because the stream state restored from the changelog already "
            "held them (written before a crash kept their offsets from being committed).",
            registry=r,
        )
        self.restore_duration = Histogram(
            "streamvgan_state_restore_duration_seconds",
            "Wall time of one changelog restore.",
            buckets=FINETUNE_BUCKETS,
            registry=r,
        )
        self.model_rejected = Counter(
            "streamvgan_model_rejected_versions",
            "Model-topic records or versions rejected (bad headers, checksum, load), by reason.",
            ["reason"],
            registry=r,
        )
        self.checkpoint_fallbacks = Counter(
            "streamvgan_checkpoint_load_fallbacks",
            "Checkpoints (or a LATEST pointer) skipped at start as unusable, for an older one.",
            registry=r,
        )
        self.checkpoint_skipped = Counter(
            "streamvgan_checkpoint_skipped_unchanged",
            "Checkpoints not written because the engine had not changed since the last one.",
            registry=r,
        )
        # the engine keeps these totals itself: read at scrape time, never copied
        self.engine_totals = _EngineTotals()
        r.register(self.engine_totals)

    def follow_engine(self, engine: Any) -> None:
        """Expose ``engine``'s cumulative evictions and stream resets (read at each scrape)."""
        self.engine_totals.engine = engine

    def observe_fit(self, report: Any) -> None:
        """Record one fine-tune's :class:`~streamvgan.engine.FitReport` (serve and train)."""
        self.finetune_steps.inc(report.steps)
        self.finetune_duration.observe(report.duration_s)
        for component, loss in report.losses.items():
            self.finetune_loss.labels(component=component).set(loss)
        self.finetune_last_success.set(time.time())


class _EngineTotals(Collector):
    """Counters whose value is the engine's own running total, read when scraped (a shadow
    counter advanced from the total would need a call after every batch and could lag)."""

    def __init__(self) -> None:
        self.engine: Any = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        engine = self.engine
        yield CounterMetricFamily(
            "streamvgan_engine_evictions",
            "Streams evicted as least recently seen.",
            value=engine.evictions if engine is not None else 0,
        )
        yield CounterMetricFamily(
            "streamvgan_engine_streams_reset",
            "Streams whose state turned non-finite (NaN or inf) and was reset to a new stream's.",
            value=engine.streams_reset if engine is not None else 0,
        )


class MetricsServer:
    """HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread.

    Parameters
    ----------
    registry
        The registry served at ``/metrics``.
    ready
        Called on each ``/readyz`` request; True answers 200, False 503.
    host, port
        Where to listen; port 0 lets the OS choose (read it back from :attr:`port`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        host: str = "0.0.0.0",
        port: int = 8000,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        handler = _make_handler(self.registry, self.ready)
        server_class = _IPv6Server if ":" in self.host else ThreadingHTTPServer
        try:
            self._server = server_class((self.host, self.port), handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}. Choose "
                "another --metrics-host/--metrics-port (port 0: any free one, -1: off)"
            ) from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamvgan-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _make_handler(
    registry: CollectorRegistry, ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(registry), content_type)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ok = bool(ready())
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found; try /metrics, /healthz or /readyz\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            # format is http.server's %-format string: prefixing it keeps the formatting lazy
            log.debug("metrics http: " + format, *args)  # noqa: G003

    return Handler
