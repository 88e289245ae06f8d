"""The service: a consumer-group loop that scores every event of the input topic.

One iteration: poll up to ``poll_max_records`` records -> decode and validate each (a bad one
goes to the dead-letter topic, never stops the loop) -> ONE batched ``engine.process`` call for
all events of the poll -> send a score per event, forecasts and continuations per stream ->
``flush`` (the broker acknowledged every output) -> remember the next offsets. Offsets are
committed every ``commit_interval_s`` and when partitions are revoked, always after the
outputs of those records were acknowledged: a crash re-reads at most the uncommitted tail,
so every valid event gets a score record at least once.

Fine-tuning runs beside the loop in :class:`~streamvgan.engine.BackgroundFineTuner`, which
swaps new weights in between two batches. Checkpoints (engine state, atomically) are written
every ``checkpoint_interval_s`` right after a commit, and at shutdown; the newest is loaded at
start. The structure follows Quix Streams' ``Application``: built from one frozen
:class:`~streamvgan.service.settings.Settings`, Kafka clients in ``clients.py``, logs carrying
``partition="topic[3]" offset="42"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from kafka import AsyncConsumerRebalanceListener, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from streamvgan.engine import (
    BackgroundFineTuner,
    EngineConfig,
    Event,
    FitReport,
    Score,
    StreamEngine,
)
from streamvgan.errors import (
    BrokerError,
    ConfigurationError,
    InvalidInputError,
    StreamVGANError,
)
from streamvgan.service import checkpoints, clients
from streamvgan.service.changelog import StateChangelog, changelog_topic
from streamvgan.service.metrics import MetricsServer, ServiceMetrics
from streamvgan.service.model_topic import ModelFollower, model_topic
from streamvgan.service.settings import Settings
from streamvgan.service.wire import (
    ContinuationMessage,
    DeadLetter,
    DecodeError,
    ForecastMessage,
    ScoreMessage,
    decode_event,
)

log = logging.getLogger(__name__)


class ProduceError(StreamVGANError, RuntimeError):
    """The broker did not acknowledge some outputs; offsets were not committed."""


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
    ) -> None:
        # `metrics_server`: one already answering /healthz for `registry` (``streamvgan
        # serve`` starts it before torch and the model load); run() then uses it and stops it
        self._metrics_server = metrics_server
        self.settings = settings
        if settings.torch_threads > 0:
            # Process-wide: spinning intra-op threads slow these small networks down.
            torch.set_num_threads(settings.torch_threads)
        self.metrics = ServiceMetrics(registry)
        self._checkpointed_revision: int | None = None  # engine.revision of the last checkpoint
        self.engine = engine if engine is not None else self._load_or_build_engine()
        self.stats = Stats()
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: dict[TopicPartition, int] = {}  # next offset, acknowledged, not committed
        self._lock = threading.Lock()
        self._assigned: set[TopicPartition] = set()
        self._counts: dict[str, int] = defaultdict(int)  # events per stream, for *_every
        self._send_errors: list[BaseException] = []
        self._dlq_logged = 0
        self._dlq_log_window = 0.0
        self._dlq_in_batch = 0
        self._consumer: Any = None
        self._producer: clients.ResendingProducer | None = None
        self._phase = "created"  # created -> starting -> running -> stopping
        self._run_thread: threading.Thread | None = None
        self._input_partitions = 0
        self._coordinator_ok = True  # the group coordinator is reachable (checked each second)
        self._poll_ok = True  # the last poll did not raise (a connection reset, a timeout)
        self._tuner: BackgroundFineTuner | None = None
        # scale-out: stream -> input partition, streams changed since the last commit,
        # partitions whose changelog must be restored before their records are processed
        self._stream_partition: dict[str, int] = {}
        self._dirty: dict[str, int] = {}
        self._to_restore: set[int] = set()
        self._changelog: StateChangelog | None = None
        self._follower: ModelFollower | None = None
        # every map above keyed by stream forgets evicted streams: bounded by --max-streams
        self.engine.add_eviction_listener(self._forget_stream)
        self.exit_code: int | None = None
        self.metrics.model_version.set(self.engine.model_version)
        self.metrics.streams.set(self.engine.n_streams)

    # -- engine -------------------------------------------------------------------------------

    def _load_or_build_engine(self) -> StreamEngine:
        s = self.settings
        config = EngineConfig.from_params(**s.engine_config_params())
        if s.checkpoint_dir:
            # the architecture from the checkpoint, every other setting from `config`
            engine = checkpoints.load_checkpoint(
                s.checkpoint_dir,
                device=s.device,
                on_fallback=lambda path, exc: self.metrics.checkpoint_fallbacks.inc(),
                settings=config,
            )
            if engine is not None:
                self._checkpointed_revision = engine.revision  # as on disk: nothing to rewrite
                return engine
            log.info("no checkpoint in %s yet: starting a fresh model", s.checkpoint_dir)
        else:
            log.warning("no --checkpoint-dir: the model and stream state are lost on restart")
        return StreamEngine(config, seed=s.seed, device=s.device)

    def _on_fit(self, report: FitReport) -> None:
        m = self.metrics
        m.finetune_steps.inc(report.steps)
        m.finetune_duration.observe(report.duration_s)
        for component, loss in report.losses.items():
            m.finetune_loss.labels(component=component).set(loss)
        m.finetune_last_success.set(time.time())
        m.model_version.set(report.version)
        # Called on the trainer's thread: resting here spaces fits out, which bounds the CPU
        # share training takes from scoring when events arrive faster than fits finish.
        if self.settings.fine_tune_pause_s > 0:
            self._stop.wait(self.settings.fine_tune_pause_s)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while partitions are assigned and a model is loaded (what /readyz answers)."""
        if not self._assigned or self.engine is None or self._stop.is_set():
            return False
        producer = self._producer
        if producer is not None and not producer.healthy:
            return False
        return self._coordinator_ok and self._poll_ok

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
        thread = getattr(self._tuner, "_thread", None)
        return thread is not None and thread.is_alive()

    def join(self, timeout: float | None = None) -> int | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.exit_code

    def run(self) -> int:
        """Consume until stopped; returns 0 after a clean shutdown (also when stopped during
        start-up), 1 after a fatal error, 2 for settings that cannot work."""
        s = self.settings
        server = None
        tuner = None
        self._run_thread = threading.current_thread()
        try:
            self._phase = "starting"  # inside the try: a signal from here on is handled
            if self._metrics_server is not None:
                server = self._metrics_server
                self.metrics_port = server.port
            elif s.metrics_port >= 0:
                # First of all: /healthz answers (and /readyz says 503) while the broker is
                # still unreachable, so an orchestrator sees a live process that waits.
                server = MetricsServer(
                    self.metrics.registry, lambda: self.ready, s.metrics_host, s.metrics_port
                ).start()
                self.metrics_port = server.port
            s.check_files()
            consumer, producer = self._connect()
            if s.model_source == "local":
                tuner = self._tuner = BackgroundFineTuner(
                    self.engine, on_fit=self._on_fit, interval_s=s.fine_tune_interval_s
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
                self._loop(consumer, producer)
            except clients.Stopped as exc:
                # Stopped during a broker outage: the records of the batch in hand were not
                # committed, so a restart reads them again; nothing is lost.
                log.warning(
                    "stopped while the broker was unreachable (%s); their input "
                    "records are not committed and will be read again",
                    exc,
                )
            else:
                self._commit(consumer)
            self._phase = "stopping"
            self._checkpoint()
            self.exit_code = 0
        except (clients.Stopped, _Interrupted) as exc:
            self._phase = "stopping"  # (first in each handler: no second interruption)
            log.info("stopped during start-up (%s); nothing was consumed", exc)
            self.exit_code = 0
        except ConfigurationError as exc:
            self._phase = "stopping"
            log.error("%s", exc)
            self.exit_code = 2
        except BrokerError as exc:
            self._phase = "stopping"
            log.error("%s", exc)
            self.exit_code = 1
        except Exception:
            self._phase = "stopping"
            log.exception(
                "fatal error: stopping; outputs not acknowledged are not committed "
                "and will be re-read after a restart"
            )
            self.exit_code = 1
        finally:
            self._phase = "stopping"
            self._stop.set()
            self._started.set()
            if tuner is not None:
                # A fine-tune in progress cannot be interrupted; its result is not needed
                # (the checkpoint is written), so wait briefly and let the caller exit.
                tuner.stop(timeout=5.0)
            if self._follower is not None:
                self._follower.stop()
            if self._consumer is not None:
                try:
                    # leaves the group; briefly when the coordinator is gone (broker outage)
                    self._consumer.close(
                        autocommit=False, timeout_ms=5000 if self._coordinator_ok else 1000
                    )
                except Exception:
                    log.exception("error while closing the consumer")
            if self._producer is not None:
                try:
                    self._producer.close(timeout=10)
                except Exception:
                    log.exception("error while closing the producer")
            if server is not None:
                server.stop()
            self.metrics.ready.set(0)
            log.info(
                "stopped: consumed=%d scored=%d dead_lettered=%d commits=%d checkpoints=%d",
                self.stats.consumed,
                self.stats.scored,
                self.stats.dead_lettered,
                self.stats.commits,
                self.stats.checkpoints,
            )
        return self.exit_code

    def _connect(self) -> tuple[Any, clients.ResendingProducer]:
        """Topics, producer, consumer and scale-out, each retried with backoff while the broker
        is unreachable (for ``broker_retry_s``, 0: for ever) and given up when stopped."""
        s = self.settings
        security = s.kafka_security()

        def retry(action: Any, what: str) -> Any:
            return clients.retry(action, what, self._stop, s.broker_retry_s)

        retry(
            lambda: clients.tls_preflight(s.bootstrap_servers, security),
            f"TLS handshake with {s.bootstrap_servers}",
        )
        # The input topic first: every topic serve creates takes its partition count.
        partitions = retry(
            lambda: clients.wait_for_topic(
                s.bootstrap_servers,
                s.input_topic,
                self._stop,
                create_partitions=s.partitions if s.create_topics else 0,
                security=security,
            ),
            f"looking up the input topic {s.input_topic!r}",
        )
        self._input_partitions = partitions
        if s.create_topics:
            retry(
                lambda: clients.ensure_topics(
                    s.bootstrap_servers,
                    [s.scores_topic, s.forecasts_topic, s.continuations_topic, s.dlq_topic],
                    partitions=partitions,
                    security=security,
                ),
                "creating the output topics",
            )

        def make_producer() -> Any:
            # max_block_ms: a send waits at most 5 s for metadata during an outage (the
            # ResendingProducer retries it) instead of blocking the loop for kafka-python's 60 s
            return clients.make_producer(
                s.bootstrap_servers, client_id=s.client_id, security=security, max_block_ms=5000
            )

        producer = self._producer = clients.ResendingProducer(
            lambda: retry(make_producer, f"connecting a producer to {s.bootstrap_servers}"),
            self._stop,
            on_replaced=self.metrics.producer_replacements.inc,
        )
        consumer = self._consumer = retry(
            lambda: clients.make_consumer(
                s.bootstrap_servers,
                group_id=s.group_id,
                client_id=s.client_id,
                session_timeout_ms=s.session_timeout_ms,
                max_poll_interval_ms=s.max_poll_interval_ms,
                max_poll_records=s.poll_max_records,
                auto_offset_reset=s.auto_offset_reset,
                security=security,
            ),
            f"connecting a consumer to {s.bootstrap_servers}",
        )
        retry(lambda: self._start_scale_out(security), "restoring the scale-out topics")
        consumer.subscribe([s.input_topic], listener=_Rebalance(self))
        return consumer, producer

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, consumer: Any, producer: Any) -> None:
        s = self.settings
        now = time.monotonic()
        last_commit = last_checkpoint = last_lag = now
        failures = 0  # polls in a row that raised a retriable error
        while not self._stop.is_set():
            try:
                records = consumer.poll(
                    timeout_ms=s.poll_timeout_ms, max_records=s.poll_max_records
                )
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                failures += 1
                self._poll_failed(exc, failures)
                continue
            if failures:
                log.warning("polling again after %d failed polls", failures)
                failures = 0
                self._poll_ok = True
                self._assigned_changed()
            if records:
                self._handle(records, producer)
            now = time.monotonic()
            if now - last_lag >= 1.0:
                ok = clients.group_coordinator_known(consumer)
                if ok != self._coordinator_ok:
                    log.warning(
                        "group coordinator %s",
                        "reachable again"
                        if ok
                        else "unreachable: not ready until the broker is back",
                    )
                    self._coordinator_ok = ok
                    self._assigned_changed()
                self._update_lag(consumer)
                self._after_batch_housekeeping()
                last_lag = now
            if s.checkpoint_dir and now - last_checkpoint >= s.checkpoint_interval_s:
                self._commit(consumer)
                self._checkpoint()
                last_commit = last_checkpoint = time.monotonic()
            elif now - last_commit >= s.commit_interval_s:
                self._commit(consumer)
                last_commit = now

    def _poll_failed(self, exc: KafkaError, failures: int) -> None:
        """A poll raised a retriable error: kafka-python gives up on a connection reset while
        connecting (a proxy or load balancer in front of the broker, a broker restarting) with
        ``KafkaConnectionError``, or on a timeout. Nothing of a batch is lost (offsets are
        committed only after the outputs are acknowledged), so: not ready, back off (0.5 s,
        doubling to 5 s; a stop ends the wait), poll again."""
        delay = min(0.5 * 2 ** min(failures - 1, 4), 5.0)
        if failures == 1:
            log.warning(
                "poll failed (%r): not ready; polling again every %.1f-5 s until the broker "
                "answers",
                exc,
                delay,
            )
        else:
            log.debug("poll failed again (%d in a row): %r", failures, exc)
        self._poll_ok = False
        self._assigned_changed()
        self._stop.wait(delay)

    def _handle(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], producer: Any
    ) -> None:
        s, m = self.settings, self.metrics
        self._restore_assigned()
        polled_at = time.monotonic()
        events: list[Event] = []
        sources: list[ConsumerRecord] = []
        next_offsets: dict[TopicPartition, int] = {}
        n_records = 0
        self._send_errors = []
        for tp, batch in records.items():
            for record in batch:
                try:
                    event = decode_event(record.value, record.key)
                except DecodeError as exc:
                    self._dead_letter(producer, record, exc.reason, exc.message)
                except Exception as exc:  # a bug in decoding must not block the partition
                    log.exception(
                        'decoder failed partition="%s[%d]" offset="%d"',
                        record.topic,
                        record.partition,
                        record.offset,
                    )
                    self._dead_letter(
                        producer,
                        record,
                        "internal_error",
                        f"decoding raised {type(exc).__name__}: {exc}",
                    )
                else:
                    events.append(event)
                    sources.append(record)
            n_records += len(batch)
            if batch:
                next_offsets[tp] = batch[-1].offset + 1
            m.consumed.labels(topic=tp.topic).inc(len(batch))
        m.batch_size.observe(n_records)
        scored = self._score(events, sources, producer)
        sent: defaultdict[str, int] = defaultdict(int)  # records sent per topic
        last_ts: dict[str, Any] = {}
        if self._changelog is not None:
            live = {event.stream for event, _ in scored}  # not streams the engine refused
            for event, record in zip(events, sources):
                if event.stream in live:
                    self._dirty[event.stream] = record.partition
                    self._stream_partition[event.stream] = record.partition
        for event, score in scored:
            msg = ScoreMessage.from_score(score, event.ts, s.alert_threshold)
            producer.send(
                s.scores_topic, key=event.stream.encode("utf-8"), value=msg.to_bytes()
            ).add_errback(self._send_errors.append)
            m.scores.observe(msg.score)
            if msg.anomaly:
                m.anomalies.inc()
            last_ts[event.stream] = event.ts
        sent[s.scores_topic] += len(scored)
        forecast_streams, continuation_streams = self._due_streams([e for e, _ in scored])
        if forecast_streams:
            for fc in self.engine.forecast(forecast_streams):
                fc_msg = ForecastMessage.from_forecast(fc, last_ts[fc.stream])
                producer.send(
                    s.forecasts_topic, key=fc.stream.encode("utf-8"), value=fc_msg.to_bytes()
                ).add_errback(self._send_errors.append)
            sent[s.forecasts_topic] += len(forecast_streams)
        for stream in continuation_streams:
            samples = self.engine.generate(
                stream, self.engine.config.horizon, s.continuation_samples
            )
            cont_msg = ContinuationMessage.from_array(
                stream,
                last_ts[stream],
                self.engine.fields(stream),
                samples,
                self.engine.model_version,
            )
            producer.send(
                s.continuations_topic, key=stream.encode("utf-8"), value=cont_msg.to_bytes()
            ).add_errback(self._send_errors.append)
        sent[s.continuations_topic] += len(continuation_streams)
        producer.flush()
        if self._send_errors:
            raise ProduceError(
                f"{len(self._send_errors)} output records were not acknowledged "
                f"(first: {self._send_errors[0]!r}); offsets stay uncommitted"
            )
        acked = time.monotonic()
        latency = acked - polled_at
        for _ in range(n_records):
            m.latency.observe(latency)
        for topic, n in sent.items():
            if n:
                m.produced.labels(topic=topic).inc(n)
        if self._dlq_in_batch:
            m.produced.labels(topic=s.dlq_topic).inc(self._dlq_in_batch)
            self._dlq_in_batch = 0
        with self._lock:
            self._pending.update(next_offsets)
        st = self.stats
        st.consumed += n_records
        st.scored += len(scored)
        st.forecasts += len(forecast_streams)
        st.continuations += len(continuation_streams)
        st.batches += 1
        m.streams.set(self.engine.n_streams)
        m.model_version.set(self.engine.model_version)
        if log.isEnabledFor(logging.DEBUG):
            for tp, offset in next_offsets.items():
                log.debug(
                    'batch partition="%s[%d]" offset="%d" records=%d events=%d %.1fms',
                    tp.topic,
                    tp.partition,
                    offset - 1,
                    n_records,
                    len(scored),
                    1000 * latency,
                )

    def _score(
        self, events: list[Event], sources: list[ConsumerRecord], producer: Any
    ) -> list[tuple[Event, Score]]:
        """One batched engine step; events the engine rejects go to the dead-letter topic."""
        if not events:
            return []
        try:
            return list(zip(events, self.engine.process(events)))
        except InvalidInputError as exc:
            log.info("engine rejected a batch (%s); scoring its events one by one", exc)
        except Exception:
            log.exception("engine failed on a batch; scoring its events one by one")
        # Rare path: the engine validates a whole batch before changing any state, so the
        # events can be retried one at a time in order and only the bad ones dead-lettered.
        scored = []
        for event, record in zip(events, sources):
            try:
                scored.append((event, self.engine.process([event])[0]))
            except Exception as exc:
                if not isinstance(exc, InvalidInputError):
                    log.exception(
                        'engine error partition="%s[%d]" offset="%d"',
                        record.topic,
                        record.partition,
                        record.offset,
                    )
                self._dead_letter(producer, record, "engine_error", str(exc))
        return scored

    def _due_streams(self, events: list[Event]) -> tuple[list[str], list[str]]:
        """Streams whose event count crossed a multiple of forecast_every / continuation_every
        in this batch (at most one of each per stream per batch, made after its last event)."""
        s = self.settings
        fe, ce = s.forecast_every, s.continuation_every
        before: dict[str, int] = {}
        counts = self._counts
        for event in events:
            stream = event.stream
            if stream not in before:
                before[stream] = counts[stream]
            counts[stream] += 1
        forecast, continuation = [], []
        for stream, n0 in before.items():
            n1 = counts[stream]
            if fe and n1 // fe > n0 // fe:
                forecast.append(stream)
            if ce and n1 // ce > n0 // ce:
                continuation.append(stream)
        return forecast, continuation

    def _dead_letter(
        self, producer: Any, record: ConsumerRecord, reason: str, message: str
    ) -> None:
        s = self.settings
        letter = DeadLetter(
            reason=reason,
            message=message,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original_headers=tuple(record.headers or ()),
        )
        # Kafka refuses a record with neither key nor value (a keyless tombstone): send an
        # empty value; and a record the producer refuses (too large with the headers) goes
        # without its value, so that a bad record can never stop the partition
        value = record.value if record.value is not None or record.key is not None else b""
        try:
            future = producer.send(
                s.dlq_topic, key=record.key, value=value, headers=letter.headers()
            )
        except Exception as exc:
            log.warning(
                'the producer refused the dead letter of partition="%s[%d]" '
                'offset="%d"; sending it without its value',
                record.topic,
                record.partition,
                record.offset,
                exc_info=True,
            )
            letter = dataclasses.replace(
                letter,
                message=f"{message} (original value of "
                f"{len(value or b'')} bytes not kept: {exc!r})",
            )
            future = producer.send(s.dlq_topic, key=record.key, value=b"", headers=letter.headers())
        future.add_errback(self._send_errors.append)
        self.metrics.dead_lettered.labels(topic=record.topic, reason=reason).inc()
        self.stats.dead_lettered += 1
        self._dlq_in_batch += 1
        now = time.monotonic()
        if now - self._dlq_log_window > 10.0:
            if self._dlq_logged > 10:
                log.warning(
                    "... %d more dead-lettered records in the last 10 s", self._dlq_logged - 10
                )
            self._dlq_log_window, self._dlq_logged = now, 0
        self._dlq_logged += 1
        if self._dlq_logged <= 10:
            log.warning(
                'dead-lettered partition="%s[%d]" offset="%d" reason=%s: %s',
                record.topic,
                record.partition,
                record.offset,
                reason,
                message,
            )

    # -- offsets, lag, checkpoints ------------------------------------------------------------

    def _take_pending(
        self, partitions: Sequence[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        with self._lock:
            if partitions is None:
                taken, self._pending = self._pending, {}
            else:
                taken = {tp: self._pending.pop(tp) for tp in partitions if tp in self._pending}
        return {tp: OffsetAndMetadata(off, "", -1) for tp, off in taken.items()}

    def _commit(self, consumer: Any) -> None:
        self._write_changelog()
        offsets = self._take_pending()
        if not offsets:
            return
        try:
            consumer.commit(offsets, timeout_ms=10_000)  # bounded: the broker may be down
        except Exception as exc:
            # A failed commit only means a restart re-reads these records (at-least-once).
            log.warning(
                "offset commit failed (%r); the records will be re-read after a restart", exc
            )
            with self._lock:
                for tp, om in offsets.items():
                    self._pending.setdefault(tp, om.offset)
            return
        self.stats.commits += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "committed %s",
                {f"{tp.topic}[{tp.partition}]": om.offset for tp, om in offsets.items()},
            )

    # -- scale-out: changelog and model topic -------------------------------------------------

    def _start_scale_out(self, security: Mapping[str, Any]) -> None:
        s = self.settings

        def reader() -> Any:
            return clients.make_consumer(
                s.bootstrap_servers,
                client_id=f"{s.client_id}-restore",
                security=security,
                max_partition_fetch_bytes=8 * 1024 * 1024,
            )

        if s.state_changelog:
            topic = changelog_topic(s.group_id, s.input_topic)
            if s.create_topics:
                clients.ensure_topics(
                    s.bootstrap_servers,
                    [topic],
                    partitions=self._input_partitions or None,
                    like=s.input_topic,
                    security=security,
                    config={"cleanup.policy": "compact"},
                )
            if self._input_partitions:
                clients.check_copartitioned(
                    s.bootstrap_servers,
                    s.input_topic,
                    self._input_partitions,
                    topic,
                    security=security,
                )
            self._changelog = StateChangelog(
                topic, reader, on_rejected=lambda: self.metrics.state_rejected.inc()
            )
        if s.model_source == "topic":
            topic = model_topic(s.group_id, s.input_topic)
            if s.create_topics:
                clients.ensure_topics(
                    s.bootstrap_servers,
                    [topic],
                    partitions=1,
                    security=security,
                    config={"cleanup.policy": "compact"},
                )
            self._follower = ModelFollower(
                self.engine,
                topic,
                reader,
                on_installed=self.metrics.model_version.set,
                on_rejected=lambda reason: self.metrics.model_rejected.labels(reason=reason).inc(),
            )
            version = self._follower.catch_up()  # the newest model before the first record
            self.metrics.model_version.set(version)
            log.info("model_version=%d loaded from %s; following it", version, topic)
            self._follower.start()

    def _restore_assigned(self) -> None:
        """Install the changelog state of newly assigned partitions (main thread, before any
        of their records is processed)."""
        if self._changelog is None or not self._to_restore:
            return
        with self._lock:
            partitions, self._to_restore = sorted(self._to_restore), set()
        report = self._changelog.restore(self.engine, partitions)
        self.metrics.state_restored.inc(report.restored)
        self.metrics.restore_duration.observe(report.seconds)

    def _write_changelog(self, partitions: set[int] | None = None) -> None:
        """Send the state of streams changed since the last commit (of ``partitions`` only, if
        given) and wait for the broker: the state is never behind the committed offsets."""
        if self._changelog is None or not self._dirty:
            return
        with self._lock:
            if partitions is None:
                dirty, self._dirty = self._dirty, {}
            else:
                dirty = {k: p for k, p in self._dirty.items() if p in partitions}
                for k in dirty:
                    del self._dirty[k]
        if not dirty:
            return
        assert self._producer is not None, "the changelog is written only while running"
        errors: list[BaseException] = []
        for future in self._changelog.write(self._producer, self.engine, dirty):
            future.add_errback(errors.append)
        self._producer.flush()
        if errors:
            with self._lock:
                for k, p in dirty.items():
                    self._dirty.setdefault(k, p)
            raise ProduceError(
                f"{len(errors)} changelog records were not acknowledged "
                f"(first: {errors[0]!r}); offsets stay uncommitted"
            )
        self.metrics.state_written.inc(len(dirty))

    def _drop_partitions(self, partitions: set[int]) -> None:
        """Forget the streams of partitions that moved to another replica."""
        gone = [st for st, p in self._stream_partition.items() if p in partitions]
        for stream in gone:
            self.engine.drop_stream(stream)
            del self._stream_partition[stream]
            self._counts.pop(stream, None)
        if gone:
            log.info(
                "dropped the state of %d streams of revoked partitions %s",
                len(gone),
                sorted(partitions),
            )

    def _update_lag(self, consumer: Any) -> None:
        for tp in list(self._assigned):
            try:
                high = consumer.highwater(tp)
                if high is None:
                    continue
                position = consumer.position(tp, timeout_ms=100)
            except Exception:  # revoked meanwhile, or no position yet
                continue
            if position is not None:
                self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(0, high - position)
                )

    def _after_batch_housekeeping(self) -> None:
        self.metrics.set_evictions(self.engine.evictions)
        self.metrics.set_streams_reset(self.engine.streams_reset)

    def _forget_stream(self, stream: str) -> None:
        """The engine evicted ``stream``: drop what the service keeps for it (called inside
        ``engine.process`` on the loop's thread)."""
        self._counts.pop(stream, None)
        self._stream_partition.pop(stream, None)
        with self._lock:
            self._dirty.pop(stream, None)

    def _checkpoint(self) -> None:
        s = self.settings
        if not s.checkpoint_dir:
            return
        revision = self.engine.revision  # read before saving: a change during the save counts
        if revision == self._checkpointed_revision:
            self.metrics.checkpoint_skipped.inc()
            log.debug("checkpoint skipped: nothing changed since the last one")
            return
        start = time.monotonic()
        info = {
            "written_at": time.time(),
            "input_topic": s.input_topic,
            "group_id": s.group_id,
            "events_seen": self.engine.events_seen,
            "model_version": self.engine.model_version,
            "streams": self.engine.n_streams,
        }
        try:
            path = checkpoints.save_checkpoint(self.engine, s.checkpoint_dir, info)
        except Exception:
            log.exception(
                "checkpoint to %s failed; the previous one stays current", s.checkpoint_dir
            )
            return
        self._checkpointed_revision = revision
        self.stats.checkpoints += 1
        self.metrics.checkpoint_last_success.set(time.time())
        log.info(
            "checkpoint %s written in %.2fs (model_version=%d, streams=%d)",
            path,
            time.monotonic() - start,
            self.engine.model_version,
            self.engine.n_streams,
        )

    # -- rebalance callbacks (run on the consumer's IO thread) --------------------------------

    def _assigned_changed(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)


class _Rebalance(AsyncConsumerRebalanceListener):
    """Commits the acknowledged offsets of revoked partitions before they move.

    Async, because kafka-python runs listeners on its IO thread, where only the awaitable
    ``commit_async`` can wait for the broker's answer. Every batch is flushed before the next
    poll, so by the time a rebalance runs (inside poll) no output is in flight.
    """

    def __init__(self, app: Application) -> None:
        self.app = app

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        app = self.app
        numbers = {tp.partition for tp in revoked if tp.topic == app.settings.input_topic}
        try:
            app._write_changelog(numbers)
        except Exception as exc:  # state not written: do not commit past it
            log.warning("changelog write on revocation failed (%r); not committing", exc)
            app._take_pending(list(revoked))
            revoked_ok = False
        else:
            revoked_ok = True
        offsets = app._take_pending(list(revoked)) if revoked_ok else {}
        if offsets:
            try:
                await app._consumer.commit_async(offsets)
                app.stats.commits += 1
            except Exception as exc:
                log.warning("commit on revocation failed (%r); those records will be re-read", exc)
        for tp in revoked:
            app._assigned.discard(tp)
            with contextlib.suppress(KeyError):  # no lag was recorded for it yet
                app.metrics.lag.remove(tp.topic, str(tp.partition))
        if app._changelog is not None:
            app._drop_partitions(numbers)
        if revoked:
            log.info("partitions revoked: %s", _names(revoked))
        app._assigned_changed()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.app._assigned.update(assigned)
        with self.app._lock:
            self.app._to_restore.update(tp.partition for tp in assigned)
        log.info("partitions assigned: %s", _names(assigned))
        self.app._assigned_changed()

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Evicted from the group: the partitions already belong to someone else, so the
        # pending offsets must not be committed; their records will be scored again there.
        self.app._take_pending(list(lost))
        for tp in lost:
            self.app._assigned.discard(tp)
        numbers = {tp.partition for tp in lost}
        with self.app._lock:
            self.app._dirty = {k: p for k, p in self.app._dirty.items() if p not in numbers}
        if self.app._changelog is not None:
            self.app._drop_partitions(numbers)
        log.warning("partitions lost (evicted from the group): %s", _names(lost))
        self.app._assigned_changed()


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)) or "(none)"
