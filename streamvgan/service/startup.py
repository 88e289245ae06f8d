"""Start-up: topics, producer, consumer and the scale-out topics, in the order that works.

Each step is retried with backoff while the broker is unreachable (for ``broker_retry_s``,
0: for ever) and given up when stopped (:func:`streamvgan.service.clients.retry`). The input
topic comes first: every topic serve creates takes its partition count.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from streamvgan.service import clients
from streamvgan.service.changelog import StateChangelog, changelog_topic
from streamvgan.service.kafka_api import ClientFactory, Consumer, Producer, RebalanceListener
from streamvgan.service.metrics import ServiceMetrics
from streamvgan.service.model_topic import ModelFollower, model_topic
from streamvgan.service.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class Connection:
    """What start-up made so far (filled step by step, so shutdown closes what exists)."""

    consumer: Consumer | None = None
    producer: Producer | None = None
    changelog_producer: Producer | None = None
    follower: ModelFollower | None = None
    input_partitions: int = 0


def connect(
    conn: Connection,
    settings: Any,
    kc: ClientFactory,
    stop: threading.Event,
    state: StateStore,
    metrics: ServiceMetrics,
    listener: RebalanceListener,
) -> tuple[Consumer, Producer]:
    """Connect the clients for ``settings`` through ``kc``, install the changelog and the model
    follower (when the state has an engine), subscribe with ``listener``."""
    s = settings

    def retry(action: Any, what: str) -> Any:
        return clients.retry(action, what, stop, s.broker_retry_s)

    retry(kc.preflight, f"TLS handshake with {s.bootstrap_servers}")
    partitions = conn.input_partitions = retry(
        lambda: kc.wait_for_topic(s.input_topic, stop, s.partitions if s.create_topics else 0),
        f"looking up the input topic {s.input_topic!r}",
    )
    if s.create_topics:
        outputs = [s.scores_topic, s.forecasts_topic, s.continuations_topic, s.dlq_topic]
        retry(
            lambda: kc.ensure_topics(outputs, partitions=partitions), "creating the output topics"
        )
    producer = conn.producer = kc.producer(
        client_id=s.client_id,
        stop=stop,
        retry=retry,
        on_replaced=metrics.producer_replacements.inc,
    )
    if s.state_changelog and state.engine is not None:
        # its own producer: the loop's flush of each batch's outputs never waits for the
        # changelog records in flight (see state.py)
        conn.changelog_producer = state.producer = kc.producer(
            client_id=f"{s.client_id}-changelog",
            stop=stop,
            retry=retry,
            on_replaced=metrics.producer_replacements.inc,
        )
    consumer = conn.consumer = retry(
        lambda: kc.consumer(
            group_id=s.group_id,
            client_id=s.client_id,
            session_timeout_ms=s.session_timeout_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=s.poll_max_records,
            auto_offset_reset=s.auto_offset_reset,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        ),
        f"connecting a consumer to {s.bootstrap_servers}",
    )
    if state.engine is not None:
        retry(lambda: _scale_out(conn, s, kc, state, metrics), "restoring the scale-out topics")
    consumer.subscribe([s.input_topic], listener)
    return consumer, producer


def _scale_out(
    conn: Connection, s: Any, kc: ClientFactory, state: StateStore, metrics: ServiceMetrics
) -> None:
    """The state changelog (co-partitioned with the input) and the model topic follower."""

    def reader() -> Any:
        return kc.reader(f"{s.client_id}-restore")

    if s.state_changelog:
        topic = changelog_topic(s.group_id, s.input_topic)
        if s.create_topics:
            kc.ensure_topics(
                [topic],
                partitions=conn.input_partitions or None,
                like=s.input_topic,
                config={"cleanup.policy": "compact"},
            )
        if conn.input_partitions:
            kc.check_copartitioned(s.input_topic, conn.input_partitions, topic)
        state.attach_changelog(
            StateChangelog(topic, reader, on_rejected=metrics.state_rejected.inc)
        )
    if s.model_source == "topic":
        topic = model_topic(s.group_id, s.input_topic)
        if s.create_topics:
            kc.ensure_topics([topic], partitions=1, config={"cleanup.policy": "compact"})
        follower = conn.follower = ModelFollower(
            state.engine,
            topic,
            reader,
            on_installed=metrics.model_version.set,
            on_rejected=lambda reason: metrics.model_rejected.labels(reason=reason).inc(),
        )
        version = follower.catch_up()  # the newest model before the first record
        metrics.model_version.set(version)
        log.info("model_version=%d loaded from %s; following it", version, topic)
        follower.start()
