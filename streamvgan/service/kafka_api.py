"""The Kafka client interface the service is written against, so that the loop can run on
in-memory fakes in tests and another client library can be plugged in.

A :class:`ClientFactory` builds the three things the service needs: a group :class:`Consumer`,
a :class:`Producer` that keeps every record until the broker acknowledged it, and the admin
steps of start-up (topics, partition counts). The default is kafka-python
(:class:`streamvgan.service.kafka_python.KafkaPythonClients`). The shapes follow kafka-python's
(records with ``topic``, ``partition``, ``offset``, ``key``, ``value``, ``headers``; partitions
as ``(topic, partition)`` tuples), which is what the service used before this interface.

Rebalances are client-neutral: the consumer calls a :class:`RebalanceListener` on the thread
that polls, and commits the offsets its ``on_revoked`` returns before the partitions move.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from streamvgan.errors import BrokerError


class TopicPartition(NamedTuple):
    """A partition of a topic; equal to (and hashed like) kafka-python's ``TopicPartition``."""

    topic: str
    partition: int


class InputRecord(Protocol):
    """A consumed record (kafka-python's ``ConsumerRecord`` has these attributes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None


class TransientPollError(BrokerError):
    """A poll failed in a way that polling again can fix (a connection reset, a timeout)."""


class SendHandle(Protocol):
    def add_errback(self, fn: Callable[[BaseException], Any]) -> Any:
        """Call ``fn(exception)`` if the record is given up on (never for a success)."""
        ...


class Producer(Protocol):
    """Sends records; :meth:`flush` returns once each was acknowledged or given up on."""

    healthy: bool

    def send(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Any = None,
        partition: int | None = None,
    ) -> SendHandle: ...

    def flush(self) -> None: ...

    def settled(self) -> bool:
        """True when the broker answered every record sent so far (acknowledged or given up
        on), so that :meth:`flush` would not wait; never waits itself."""
        ...

    def close(self, timeout: float = 10) -> None: ...


class RebalanceListener(Protocol):
    """What the service does when the group moves partitions (called inside ``poll``)."""

    def on_revoked(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Partitions leave: return the offsets to commit before they move."""
        ...

    def on_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The offsets ``on_revoked`` returned were committed."""
        ...

    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        """Partitions were taken without a revocation: commit nothing for them."""
        ...


class Consumer(Protocol):
    """A consumer-group member with manual commits."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def poll(
        self, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[InputRecord]]:
        """Records by partition (only partitions with records); raises
        :class:`TransientPollError` for failures that polling again can fix."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_ms: int) -> None:
        """Commit the next offset to read of each partition (raises on failure)."""
        ...

    def lag(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Records behind the end, for those of ``partitions`` whose position is known."""
        ...

    def coordinator_known(self) -> bool: ...

    def close(self, timeout_ms: int) -> None:
        """Leave the group without committing."""
        ...


class ClientFactory(Protocol):
    """Builds the service's clients for one cluster (bootstrap servers and security)."""

    bootstrap_servers: str

    def preflight(self) -> None:
        """Checks before connecting (e.g. a TLS handshake); raises ConfigurationError for
        settings that cannot work and BrokerError while the broker is unreachable."""
        ...

    def wait_for_topic(self, topic: str, stop: threading.Event, create_partitions: int) -> int:
        """The partition count of ``topic`` once it exists (created when ``create_partitions``
        > 0)."""
        ...

    def ensure_topics(
        self,
        topics: Iterable[str],
        *,
        partitions: int | None = None,
        like: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> list[str]: ...

    def check_copartitioned(self, input_topic: str, input_partitions: int, topic: str) -> None:
        """Raise ConfigurationError when ``topic`` exists with another partition count."""
        ...

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
    ) -> Consumer: ...

    def producer(
        self,
        *,
        client_id: str,
        stop: threading.Event,
        retry: Callable[[Callable[[], Any], str], Any],
        on_replaced: Callable[[], None] | None = None,
    ) -> Producer:
        """A producer that survives broker restarts (``retry`` wraps each connection
        attempt)."""
        ...

    def reader(self, client_id: str) -> Any:
        """A group-less kafka-python-style consumer (``assign``, ``seek_to_beginning``,
        ``end_offsets``, ``poll``, ``position``) for the changelog restore and the model
        topic."""
        ...
