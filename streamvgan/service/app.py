"""The service: a consumer-group loop that scores every event of the input topic.

One iteration: poll up to ``poll_max_records`` records -> the :class:`Processor
<streamvgan.service.processing.Processor>` turns them into output records (decode, ONE batched
``engine.process`` call, scores, forecasts, continuations, dead letters) -> send them ->
``flush`` (the broker acknowledged every output) -> hand the next offsets to the
:class:`~streamvgan.service.state.StateStore`, which commits them every ``commit_interval_s``
and on revocation, after the changelog: a crash re-reads at most the uncommitted tail, so
every valid event gets a score record at least once.

This module holds the lifecycle (connect with retries, signals, health, shutdown); what a
batch produces is in ``processing.py``, what is made durable and in which order in
``state.py``, and the Kafka clients come from a :class:`~streamvgan.service.kafka_api.
ClientFactory` (kafka-python by default). Fine-tuning runs beside the loop in
:class:`~streamvgan.engine.BackgroundFineTuner`. The structure follows Quix Streams'
``Application``: built from one frozen :class:`~streamvgan.service.settings.Settings`, logs
carrying ``partition="topic[3]" offset="42"``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from streamvgan.engine import BackgroundFineTuner, FitReport, StreamEngine
from streamvgan.errors import BrokerError, ConfigurationError
from streamvgan.service import clients
from streamvgan.service.engines import load_or_build_engine
from streamvgan.service.kafka_api import ClientFactory, Producer
from streamvgan.service.loop import ServiceLoop
from streamvgan.service.metrics import MetricsServer, ServiceMetrics
from streamvgan.service.processing import (
    BatchResult,
    OutputTopics,
    Processor,
    Records,
    ScoringProcessor,
)
from streamvgan.service.settings import Settings
from streamvgan.service.startup import Connection, connect
from streamvgan.service.state import ProduceError, StateStore

__all__ = ["Application", "ProduceError", "Stats"]

log = logging.getLogger(__name__)


def make_clients(settings: Settings) -> ClientFactory:
    """The client library ``settings.kafka_client`` names, for its cluster and security."""
    if settings.kafka_client == "confluent-kafka":
        from streamvgan.service.confluent import ConfluentClients

        return ConfluentClients(settings.bootstrap_servers, settings.kafka_security())
    from streamvgan.service.kafka_python import KafkaPythonClients

    return KafkaPythonClients(settings.bootstrap_servers, settings.kafka_security())


class _Interrupted(BaseException):
    """SIGTERM/SIGINT during start-up. A BaseException, so that no ``except Exception`` in a
    client library swallows it on the way out of a blocking connect or handshake."""


@dataclass
class Stats:
    """Running totals of one :class:`Application` (read them from any thread)."""

    consumed: int = 0
    scored: int = 0
    dead_lettered: int = 0
    forecasts: int = 0
    continuations: int = 0
    batches: int = 0
    commits: int = 0
    checkpoints: int = 0


class Application:
    """``streamvgan serve``: scores, forecasts and continuations for every input stream.

    Parameters
    ----------
    settings
        The validated configuration.
    engine
        The engine to serve with; by default loaded from the newest checkpoint in
        ``settings.checkpoint_dir``, or built fresh from ``settings``.
    registry
        Prometheus registry of the metrics; a fresh one by default.
    metrics_server
        One already answering /healthz for ``registry`` (``streamvgan serve`` starts it before
        torch and the model load); run() then uses it and stops it.
    clients
        The Kafka clients (default: kafka-python for ``settings``).
    processor
        What a batch becomes (default: a :class:`ScoringProcessor` over ``engine``); one
        without an ``engine`` attribute runs stateless (no fine-tuning, changelog, checkpoint).

    Call :meth:`run` (blocks until :meth:`stop`, a signal, or a fatal error; returns the exit
    code) or :meth:`start` to run it in a thread.

    Examples
    --------
    >>> from streamvgan.service.app import Application
    >>> from streamvgan.service.settings import Settings
    >>> app = Application(Settings(input_topic="events", metrics_port=-1))  # doctest: +SKIP
    >>> app.run()  # until SIGTERM                                          # doctest: +SKIP
    0

    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: StreamEngine | None = None,
        registry: CollectorRegistry | None = None,
        metrics_server: MetricsServer | None = None,
        clients: ClientFactory | None = None,
        processor: Processor | None = None,
    ) -> None:
        s = self.settings = settings
        self._metrics_server = metrics_server
        self._clients = clients
        if s.torch_threads > 0:
            # Process-wide: spinning intra-op threads slow these small networks down.
            torch.set_num_threads(s.torch_threads)
        self.metrics = m = ServiceMetrics(registry)
        revision = None
        if processor is None:
            if engine is None:
                engine, revision = load_or_build_engine(
                    s, on_fallback=lambda path, exc: m.checkpoint_fallbacks.inc()
                )
            processor = ScoringProcessor(
                engine,
                OutputTopics(s.scores_topic, s.forecasts_topic, s.continuations_topic, s.dlq_topic),
                forecast_every=s.forecast_every,
                continuation_every=s.continuation_every,
                continuation_samples=s.continuation_samples,
                alert_threshold=s.alert_threshold,
            )
        self.processor = processor
        self.engine: Any = getattr(processor, "engine", None)
        self.stats = Stats()
        if isinstance(processor, ScoringProcessor):
            processor.before_change = lambda streams: self.state.before_change(streams)
        self.state = StateStore(
            self.engine,
            m,
            checkpoint_dir=s.checkpoint_dir if self.engine is not None else None,
            checkpoint_info=self._checkpoint_info,
            checkpointed_revision=revision,
            on_forget=processor.forget,
            stats=self.stats,
        )
        if isinstance(processor, ScoringProcessor):
            processor.already_applied = self.state.already_applied  # filled by restores
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_thread: threading.Thread | None = None
        self._phase = "created"  # created -> starting -> running -> stopping
        self.loop = ServiceLoop(
            s, processor, self.state, m, self.stats, self._stop, self._readiness_changed
        )
        self._conn = Connection()
        self._tuner: BackgroundFineTuner | None = None
        self.exit_code: int | None = None
        if self.engine is not None:
            # every map keyed by stream forgets evicted streams: bounded by --max-streams
            self.engine.add_eviction_listener(self._forget_stream)
            m.follow_engine(self.engine)
            m.model_version.set(self.engine.model_version)
            m.streams.set(self.engine.n_streams)

    def _forget_stream(self, stream: str) -> None:
        self.processor.forget(stream)
        self.state.forget_stream(stream)

    def _checkpoint_info(self) -> dict[str, Any]:
        s, engine = self.settings, self.engine
        return {
            "written_at": time.time(),
            "input_topic": s.input_topic,
            "group_id": s.group_id,
            "events_seen": engine.events_seen,
            "model_version": engine.model_version,
            "streams": engine.n_streams,
        }

    def _on_fit(self, report: FitReport) -> None:
        self.metrics.observe_fit(report)
        self.metrics.model_version.set(report.version)
        # Called on the trainer's thread: resting here spaces fits out, which bounds the CPU
        # share training takes from scoring when events arrive faster than fits finish.
        if self.settings.fine_tune_pause_s > 0:
            self._stop.wait(self.settings.fine_tune_pause_s)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while partitions are assigned and the clients work (what /readyz answers)."""
        loop = self.loop
        if not loop.assigned or self._stop.is_set():
            return False
        for producer in (self._conn.producer, self._conn.changelog_producer):
            if producer is not None and not producer.healthy:
                return False
        return loop.coordinator_ok and loop.poll_ok

    def _readiness_changed(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand; safe from signal handlers and threads."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop gracefully (main thread only). During start-up
        (connecting, waiting for topics, a TLS or SASL handshake, a restore) they interrupt
        whatever the thread of :meth:`run` waits on, since nothing needs finishing then."""

        def handler(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            self.stop()
            if self._phase == "starting" and threading.current_thread() is self._run_thread:
                raise _Interrupted(f"received {name}")
            log.info("received %s: finishing the batch, then shutting down", name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def start(self) -> Application:
        """Run :meth:`run` in a background thread (for the demo and tests)."""
        self._thread = threading.Thread(target=self.run, name="streamvgan-app", daemon=True)
        self._thread.start()
        return self

    def wait_started(self, timeout: float = 30.0) -> bool:
        """Wait until the clients are connected and the loop polls."""
        return self._started.wait(timeout)

    @property
    def fine_tune_running(self) -> bool:
        """True while a fine-tune thread still runs (after :meth:`run` returned, a fit that
        was in progress at shutdown); the process should then exit with ``os._exit``."""
        thread = getattr(self._tuner, "_thread", None)  # the engine's tuner has no accessor
        return thread is not None and thread.is_alive()

    def join(self, timeout: float | None = None) -> int | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.exit_code

    def run(self) -> int:
        """Consume until stopped; returns 0 after a clean shutdown (also when stopped during
        start-up), 1 after a fatal error, 2 for settings that cannot work."""
        s = self.settings
        server = self._metrics_server
        self._run_thread = threading.current_thread()
        try:
            self._phase = "starting"  # inside the try: a signal from here on is handled
            if server is None and s.metrics_port >= 0:
                # First of all: /healthz answers (and /readyz says 503) while the broker is
                # still unreachable, so an orchestrator sees a live process that waits.
                server = MetricsServer(
                    self.metrics.registry, lambda: self.ready, s.metrics_host, s.metrics_port
                ).start()
            self.metrics_port = server.port if server is not None else None
            s.check_files()
            if self._clients is None:
                self._clients = make_clients(s)
            consumer, producer = connect(
                self._conn, s, self._clients, self._stop, self.state, self.metrics, self.loop
            )
            if s.model_source == "local" and self.engine is not None:
                self._tuner = BackgroundFineTuner(
                    self.engine,
                    on_fit=self._on_fit,
                    interval_s=s.fine_tune_interval_s,
                    share=s.fine_tune_share,
                ).start()
            log.info(
                "serving topic %s as group %s -> %s, %s, %s (dead letters: %s)",
                s.input_topic,
                s.group_id,
                s.scores_topic,
                s.forecasts_topic,
                s.continuations_topic,
                s.dlq_topic,
            )
            self._phase = "running"
            self._started.set()
            try:
                self.loop.run(consumer, producer)
            except clients.Stopped as exc:
                # Stopped during a broker outage: the records of the batch in hand were not
                # committed, so a restart reads them again; nothing is lost.
                log.warning(
                    "stopped while the broker was unreachable (%s); their input "
                    "records are not committed and will be read again",
                    exc,
                )
            else:
                self.state.commit(consumer)
            self._phase = "stopping"
            self.state.checkpoint()
            self.exit_code = 0
        except (clients.Stopped, _Interrupted) as exc:
            self._phase = "stopping"  # (first in each handler: no second interruption)
            log.info("stopped during start-up (%s); nothing was consumed", exc)
            self.exit_code = 0
        except (ConfigurationError, BrokerError) as exc:
            self._phase = "stopping"
            log.error("%s", exc)
            self.exit_code = 2 if isinstance(exc, ConfigurationError) else 1
        except Exception:
            self._phase = "stopping"
            log.exception(
                "fatal error: stopping; outputs not acknowledged are not committed "
                "and will be re-read after a restart"
            )
            self.exit_code = 1
        finally:
            self._phase = "stopping"
            self._shutdown(server)
        return self.exit_code

    def _shutdown(self, server: MetricsServer | None) -> None:
        self._stop.set()
        self._started.set()
        if self._tuner is not None:
            # A fine-tune in progress cannot be interrupted; its result is not needed
            # (the checkpoint is written), so wait briefly and let the caller exit.
            self._tuner.stop(timeout=5.0)
        conn = self._conn
        if conn.follower is not None:
            conn.follower.stop()
        if conn.consumer is not None:
            try:  # leaves the group; briefly when the coordinator is gone (broker outage)
                conn.consumer.close(timeout_ms=5000 if self.loop.coordinator_ok else 1000)
            except Exception:
                log.exception("error while closing the consumer")
        for producer in (conn.producer, conn.changelog_producer):
            if producer is not None:
                try:
                    producer.close(timeout=10)
                except Exception:
                    log.exception("error while closing a producer")
        if server is not None:
            server.stop()
        self.metrics.ready.set(0)
        st = self.stats
        log.info(
            "stopped: consumed=%d scored=%d dead_lettered=%d commits=%d checkpoints=%d",
            *(st.consumed, st.scored, st.dead_lettered, st.commits, st.checkpoints),
        )

    def _handle(self, records: Records, producer: Producer) -> BatchResult:
        """One poll through the loop's record handler (the entry point of the fuzz test,
        tests/service/test_fuzz.py, whose derandomised examples depend on its source)."""
        return self.loop.handle(records, producer)
