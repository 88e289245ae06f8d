"""``streamvgan train``: the one process that fine-tunes the shared model when the service runs
as several replicas (``serve --model-source topic``).

Training data comes from the input topic itself, read with a consumer group of its own
(``GROUP-trainer``): the trainer sees every partition, keeps its own per-stream normalisers and
replay buffers exactly as a replica would, and needs no extra topic or protocol. (The
alternative, replicas publishing sampled windows, would add a topic, a format and a sampling
policy to keep in step with the engine; reading the input costs one more consumer of it.)

Every fine-tune publishes the new weights to the model topic (chunked, checksummed; see
:mod:`streamvgan.service.model_topic`), and replicas swap them in. At start the trainer loads
the newest published version, so versions keep increasing across trainer restarts.

Exactly one publisher: if several trainers run, only the one that holds partition 0 of the
input topic in the trainer group publishes; the others train as hot standbys. A crashed
trainer's partitions (partition 0 included) move to a standby at the next rebalance.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

from kafka import TopicPartition

from streamvgan.engine import StreamEngine
from streamvgan.errors import InvalidInputError
from streamvgan.service import clients
from streamvgan.service.engines import new_engine
from streamvgan.service.metrics import MetricsServer, ServiceMetrics
from streamvgan.service.model_topic import ModelFollower, model_topic, publish
from streamvgan.service.wire import decode_event

log = logging.getLogger(__name__)


class TrainerRole:
    """Consumes the input topic, fine-tunes, publishes versioned weights.

    Parameters
    ----------
    settings
        The service :class:`~streamvgan.service.settings.Settings` (same flags as ``serve``).
    engine
        An engine to train (default: built from the settings).
    registry
        Prometheus registry for this role's metrics.
    """

    def __init__(
        self, settings: Any, engine: StreamEngine | None = None, registry: Any = None
    ) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else new_engine(settings)
        self.metrics = ServiceMetrics(registry)
        self.topic = model_topic(settings.group_id, settings.input_topic)
        self.published: list[int] = []
        self._stop = threading.Event()
        self._assigned: set[TopicPartition] = set()
        self.metrics_port: int | None = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def is_publisher(self) -> bool:
        return TopicPartition(self.settings.input_topic, 0) in self._assigned

    def run(self) -> int:
        s = self.settings
        security = s.kafka_security()
        clients.ensure_topics(s.bootstrap_servers, [self.topic], partitions=1, security=security)
        # resume from the newest published version so versions only grow
        follower = ModelFollower(
            self.engine,
            self.topic,
            lambda: clients.make_consumer(
                s.bootstrap_servers, client_id=f"{s.client_id}-trainer-init", security=security
            ),
        )
        follower.catch_up()
        follower.stop()
        self.metrics.model_version.set(self.engine.model_version)
        producer = clients.make_producer(
            s.bootstrap_servers, client_id=f"{s.client_id}-trainer", security=security
        )
        consumer = clients.make_consumer(
            s.bootstrap_servers,
            group_id=f"{s.group_id}-trainer",
            client_id=f"{s.client_id}-trainer",
            session_timeout_ms=s.session_timeout_ms,
            max_poll_records=s.poll_max_records,
            auto_offset_reset=s.auto_offset_reset,
            security=security,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
        server = None
        if s.metrics_port >= 0:
            server = MetricsServer(
                self.metrics.registry, lambda: bool(self._assigned), s.metrics_host, s.metrics_port
            ).start()
            self.metrics_port = server.port
        consumer.subscribe([s.input_topic])
        log.info(
            "training on %s as group %s-trainer; publishing to %s",
            s.input_topic,
            s.group_id,
            self.topic,
        )
        last_commit = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.poll_max_records)
                self._assigned = set(consumer.assignment())
                events = []
                for records in batch.values():
                    for record in records:
                        # the replicas dead-letter a bad record; the trainer just skips it
                        with contextlib.suppress(InvalidInputError):
                            events.append(decode_event(record.value, record.key))
                if events:
                    self.engine.process(events)
                    self.metrics.consumed.labels(topic=s.input_topic).inc(len(events))
                report = self.engine.fine_tune()
                if report is not None:
                    self.metrics.observe_fit(report)
                    if self.is_publisher:
                        publish(producer, self.topic, self.engine.export_weights(), report.version)
                        self.published.append(report.version)
                        self.metrics.model_version.set(report.version)
                    else:
                        log.info(
                            "model_version=%d trained; not publishing"
                            " (standby: partition 0 is elsewhere)",
                            report.version,
                        )
                if time.monotonic() - last_commit >= s.commit_interval_s:
                    consumer.commit()
                    last_commit = time.monotonic()
            consumer.commit()
            return 0
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=10)
            if server is not None:
                server.stop()


def run_trainer(settings: Any) -> int:
    """Entry point of ``streamvgan train``: stops cleanly on SIGTERM/SIGINT."""
    role = TrainerRole(settings)

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping the trainer", signum)
        role.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return role.run()
