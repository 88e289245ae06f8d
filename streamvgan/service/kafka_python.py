"""The default :class:`~streamvgan.service.kafka_api.ClientFactory`: kafka-python.

Construction settings live in :mod:`streamvgan.service.clients`; this module adapts the
clients to the interface the loop is written against. kafka-python runs rebalance listeners on
its IO thread, where only the awaitable ``commit_async`` can wait for the broker, so the
adapter's listener is async and commits there what the service's listener returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kafka import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamvgan.service import clients
from streamvgan.service.kafka_api import (
    InputRecord,
    RebalanceListener,
    TransientPollError,
)

log = logging.getLogger(__name__)


class KafkaPythonClients:
    """kafka-python clients for ``bootstrap_servers`` with kafka-python ``security`` settings
    (:meth:`Settings.kafka_security <streamvgan.service.settings.Settings.kafka_security>`)."""

    name = "kafka-python"

    def __init__(self, bootstrap_servers: str, security: Mapping[str, Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = dict(security or {})

    def preflight(self) -> None:
        clients.tls_preflight(self.bootstrap_servers, self.security)

    def wait_for_topic(self, topic: str, stop: threading.Event, create_partitions: int) -> int:
        return clients.wait_for_topic(
            self.bootstrap_servers,
            topic,
            stop,
            create_partitions=create_partitions,
            security=self.security,
        )

    def ensure_topics(
        self,
        topics: Iterable[str],
        *,
        partitions: int | None = None,
        like: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> list[str]:
        return clients.ensure_topics(
            self.bootstrap_servers,
            topics,
            partitions=partitions,
            like=like,
            security=self.security,
            config=config,
        )

    def check_copartitioned(self, input_topic: str, input_partitions: int, topic: str) -> None:
        clients.check_copartitioned(
            self.bootstrap_servers, input_topic, input_partitions, topic, security=self.security
        )

    def consumer(
        self,
        *,
        group_id: str,
        client_id: str,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
        max_poll_records: int,
        auto_offset_reset: str,
        fetch_max_wait_ms: int,
    ) -> KafkaPythonConsumer:
        return KafkaPythonConsumer(
            clients.make_consumer(
                self.bootstrap_servers,
                group_id=group_id,
                client_id=client_id,
                session_timeout_ms=session_timeout_ms,
                max_poll_interval_ms=max_poll_interval_ms,
                max_poll_records=max_poll_records,
                auto_offset_reset=auto_offset_reset,
                security=self.security,
                fetch_max_wait_ms=fetch_max_wait_ms,
            )
        )

    def producer(
        self,
        *,
        client_id: str,
        stop: threading.Event,
        retry: Callable[[Callable[[], Any], str], Any],
        on_replaced: Callable[[], None] | None = None,
    ) -> clients.ResendingProducer:
        def make() -> Any:
            # max_block_ms: a send waits at most 5 s for metadata during an outage (the
            # ResendingProducer retries it) instead of blocking the loop for kafka-python's 60 s
            return clients.make_producer(
                self.bootstrap_servers,
                client_id=client_id,
                security=self.security,
                max_block_ms=5000,
            )

        return clients.ResendingProducer(
            lambda: retry(make, f"connecting a producer to {self.bootstrap_servers}"),
            stop,
            on_replaced=on_replaced,
        )

    def reader(self, client_id: str) -> Any:
        return clients.make_consumer(
            self.bootstrap_servers,
            client_id=client_id,
            security=self.security,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )


class KafkaPythonConsumer:
    """A ``KafkaConsumer`` as a :class:`~streamvgan.service.kafka_api.Consumer`."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self.consumer.subscribe(list(topics), listener=_Listener(self.consumer, listener))

    def poll(
        self, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[InputRecord]]:
        try:
            return self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            raise TransientPollError(repr(exc)) from exc

    def commit(self, offsets: Mapping[Any, int], timeout_ms: int) -> None:
        self.consumer.commit(_offsets(offsets), timeout_ms=timeout_ms)

    def lag(self, partitions: Iterable[Any]) -> dict[Any, int]:
        out = {}
        for tp in partitions:
            try:
                high = self.consumer.highwater(tp)
                if high is None:
                    continue
                position = self.consumer.position(tp, timeout_ms=100)
            except Exception:  # revoked meanwhile, or no position yet
                continue
            if position is not None:
                out[tp] = max(0, high - position)
        return out

    def coordinator_known(self) -> bool:
        return clients.group_coordinator_known(self.consumer)

    def close(self, timeout_ms: int) -> None:
        self.consumer.close(autocommit=False, timeout_ms=timeout_ms)


def _offsets(offsets: Mapping[Any, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {
        TopicPartition(tp[0], tp[1]): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()
    }


class _Listener(AsyncConsumerRebalanceListener):
    """Runs the service's listener on kafka-python's IO thread and commits what it returns."""

    def __init__(self, consumer: Any, listener: RebalanceListener) -> None:
        self.consumer = consumer
        self.listener = listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        offsets = self.listener.on_revoked(set(revoked))
        if offsets:
            try:
                await self.consumer.commit_async(_offsets(offsets))
            except Exception as exc:
                log.warning("commit on revocation failed (%r); those records will be re-read", exc)
            else:
                self.listener.on_committed(offsets)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.listener.on_assigned(set(assigned))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.listener.on_lost(set(lost))
