"""Kafka client construction in one place: consumer, producer and admin settings that work
against Apache Kafka and against the embedded Tansu broker alike.

Group settings: the broker holds a JoinGroup for about half the session timeout before it
answers (Tansu waits that long on every join), so the session timeout is kept at 6 s (the
lowest Apache Kafka accepts by default, ``group.min.session.timeout.ms``) with a heartbeat
every 2 s, and the eager range assignor is used: the cooperative protocol needs a second
rebalance that Tansu makes slow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamvgan.errors import BrokerError

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 6000


def group_settings(session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS) -> dict[str, Any]:
    """kafka-python consumer-group settings that join quickly (see the module docstring)."""
    return {
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(1, session_timeout_ms // 3),
        "partition_assignment_strategy": [RangePartitionAssignor],
    }


def make_consumer(
    bootstrap_servers: str,
    *,
    group_id: str | None = None,
    client_id: str = "streamvgan",
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
    max_poll_interval_ms: int = 300_000,
    max_poll_records: int = 500,
    auto_offset_reset: str = "earliest",
    security: Mapping[str, Any] | None = None,
    **extra: Any,
) -> KafkaConsumer:
    """A consumer with manual commits; group settings only when ``group_id`` is given."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": auto_offset_reset,
        "max_poll_records": max_poll_records,
        # A fetch waits at most this long for data: kafka-python's 500 ms default shows up
        # directly in the end-to-end latency tail when the input is quiet.
        "fetch_max_wait_ms": 100,
        **dict(security or {}),
    }
    if group_id is not None:
        config.update(group_settings(session_timeout_ms))
        config["max_poll_interval_ms"] = max_poll_interval_ms
    config.update(extra)
    try:
        return KafkaConsumer(**config)
    except KafkaError as exc:
        raise BrokerError(
            f"cannot connect a Kafka consumer to {bootstrap_servers}: {exc!r}. Check "
            "--bootstrap-servers and the security settings."
        ) from exc


def make_producer(
    bootstrap_servers: str,
    *,
    client_id: str = "streamvgan",
    linger_ms: int = 5,
    security: Mapping[str, Any] | None = None,
    **extra: Any,
) -> KafkaProducer:
    """A producer that waits for all in-sync replicas (``acks=all``), as at-least-once needs."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "client_id": client_id,
        "acks": "all",
        "linger_ms": linger_ms,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        **dict(security or {}),
    }
    config.update(extra)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise BrokerError(
            f"cannot connect a Kafka producer to {bootstrap_servers}: {exc!r}. Check "
            "--bootstrap-servers and the security settings."
        ) from exc


def make_admin(
    bootstrap_servers: str, *, client_id: str = "streamvgan",
    security: Mapping[str, Any] | None = None,
) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers.split(","), client_id=client_id,
            **dict(security or {}),
        )
    except KafkaError as exc:
        raise BrokerError(
            f"cannot connect a Kafka admin client to {bootstrap_servers}: {exc!r}"
        ) from exc


def partition_count(admin: KafkaAdminClient, topic: str) -> int | None:
    """Partitions of ``topic``, or None if it does not exist."""
    if topic not in set(admin.list_topics()):
        return None
    described = admin.describe_topics([topic])
    return len(described[0]["partitions"]) if described else None


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int | None = None,
    like: str | None = None,
    security: Mapping[str, Any] | None = None,
    config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create those of ``topics`` that do not exist yet; return the names created.

    The partition count is ``partitions``, else that of topic ``like``, else 1. Replication
    is the broker's default (``-1``).
    """
    admin = make_admin(bootstrap_servers, security=security)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return []
        n = partitions or (partition_count(admin, like) if like else None) or 1
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, num_partitions=n, replication_factor=-1,
                                              topic_configs=dict(config or {}))])
                created.append(topic)
            except TopicAlreadyExistsError:  # another replica was faster
                pass
        if created:
            log.info("created topics %s with %d partition(s)", created, n)
        return created
    except KafkaError as exc:
        raise BrokerError(
            f"could not create topics {list(topics)} on {bootstrap_servers}: {exc!r}. Create "
            "them yourself and pass --no-create-topics."
        ) from exc
    finally:
        admin.close()
