"""An optional :class:`~streamvgan.service.kafka_api.ClientFactory` on confluent-kafka
(librdkafka): ``serve --kafka-client confluent-kafka``, with ``pip install
'streamvgan[confluent]'``.

kafka-python, the default, is pure Python: its record batches, checksums and fetch parsing run
in the interpreter, beside the model. librdkafka does that in C threads, so the service's share
of the CPU goes to scoring. The group consumer and the producer are librdkafka's; the admin steps
of start-up and the group-less readers of the changelog restore and the model topic stay on
kafka-python (they run once, or off the hot path). The service's guarantees do not depend on the
library: the loop commits only after the outputs are acknowledged (:meth:`ConfluentProducer.
flush`), the rebalance listener runs inside ``consume`` on the loop's thread and commits the
offsets it returns synchronously before the partitions move, and dead letters carry the same
headers. Keys are partitioned with murmur2 like kafka-python and the Java client, so a stream
lands on the same partition whichever client wrote it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from streamvgan._optional import require
from streamvgan.errors import BrokerError, ConfigurationError
from streamvgan.service import clients
from streamvgan.service.kafka_api import (
    RebalanceListener,
    TopicPartition,
    TransientPollError,
)
from streamvgan.service.kafka_python import KafkaPythonClients

log = logging.getLogger(__name__)


def _ck() -> Any:
    return require(
        "confluent_kafka",
        extra="confluent",
        purpose="--kafka-client confluent-kafka",
        alternative="use --kafka-client kafka-python",
    )


def librdkafka_config(bootstrap_servers: str, security: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka's names for kafka-python ``security`` settings (those of
    :meth:`Settings.kafka_security <streamvgan.service.settings.Settings.kafka_security>`)."""
    names = {
        "security_protocol": "security.protocol",
        "sasl_mechanism": "sasl.mechanism",
        "sasl_plain_username": "sasl.username",
        "sasl_plain_password": "sasl.password",
        "ssl_cafile": "ssl.ca.location",
        "ssl_certfile": "ssl.certificate.location",
        "ssl_keyfile": "ssl.key.location",
        "ssl_password": "ssl.key.password",
    }
    # librdkafka's own log lines go to this logger (served during poll/consume)
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "logger": logging.getLogger("confluent_kafka.librdkafka"),
    }
    for key, value in security.items():
        if key in names:
            config[names[key]] = value
        elif key == "ssl_check_hostname":
            config["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif key == "sasl_oauth_token_provider":
            provider = value

            def oauth_cb(_: Any, provider: Any = provider) -> tuple[str, float]:
                # the file is re-read at each refresh; an hour is a refresh hint, the broker
                # decides validity
                return provider.token(), time.time() + 3600

            config["oauth_cb"] = oauth_cb
        else:
            raise ConfigurationError(
                f"the security setting {key}={value!r} has no confluent-kafka equivalent here; "
                "use --kafka-client kafka-python"
            )
    return config


class ConfluentClients(KafkaPythonClients):
    """confluent-kafka consumer and producer; admin steps and readers from kafka-python."""

    name = "confluent-kafka"

    def __init__(self, bootstrap_servers: str, security: Mapping[str, Any] | None = None) -> None:
        _ck()  # fails at once, naming the extra, when confluent-kafka is not installed
        super().__init__(bootstrap_servers, security)
        self.base = librdkafka_config(bootstrap_servers, self.security)

    def consumer(  # type: ignore[override]
        self,
        *,
        group_id: str,
        client_id: str,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
        max_poll_records: int,
        auto_offset_reset: str,
        fetch_max_wait_ms: int,
    ) -> ConfluentConsumer:
        config = {
            **self.base,
            "group.id": group_id,
            "client.id": client_id,
            "enable.auto.commit": False,
            "auto.offset.reset": auto_offset_reset,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(1, session_timeout_ms // 3),
            "max.poll.interval.ms": max_poll_interval_ms,
            # eager range assignment, as kafka-python's (clients.py says why)
            "partition.assignment.strategy": "range",
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "allow.auto.create.topics": False,
        }
        consumer = ConfluentConsumer(None)
        config["error_cb"] = consumer.on_error
        try:
            consumer.consumer = _ck().Consumer(config)
            return consumer
        except _ck().KafkaException as exc:
            raise BrokerError(f"cannot create a confluent-kafka consumer: {exc}") from exc

    def producer(  # type: ignore[override]
        self,
        *,
        client_id: str,
        stop: threading.Event,
        retry: Callable[[Callable[[], Any], str], Any],
        on_replaced: Callable[[], None] | None = None,
    ) -> ConfluentProducer:
        config = {
            **self.base,
            "client.id": client_id,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "message.max.bytes": 4 * 1024 * 1024,
            "partitioner": "murmur2_random",  # kafka-python's and Java's key -> partition
        }
        try:
            return ConfluentProducer(_ck().Producer(config), stop)
        except _ck().KafkaException as exc:
            raise BrokerError(f"cannot create a confluent-kafka producer: {exc}") from exc


class _Record:
    """A consumed message with kafka-python's attribute names."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "headers")

    def __init__(self, message: Any) -> None:
        self.topic = message.topic()
        self.partition = message.partition()
        self.offset = message.offset()
        self.key = message.key()
        self.value = message.value()
        self.headers = message.headers()


class ConfluentConsumer:
    """A confluent-kafka ``Consumer`` as a :class:`~streamvgan.service.kafka_api.Consumer`."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self._assigned: set[TopicPartition] = set()
        self.broker_down = False  # librdkafka reported the brokers unreachable

    def on_error(self, error: Any) -> None:
        """librdkafka's ``error_cb`` (served inside consume): a lost connection marks the
        broker down until a metadata request answers again (:meth:`coordinator_known`)."""
        ck = _ck()
        if error.code() in (ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._TRANSPORT):
            if not self.broker_down:
                log.warning("confluent-kafka consumer lost the broker: %s", error)
            self.broker_down = True
        else:
            log.warning("confluent-kafka consumer error: %s", error)

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        ck = _ck()

        def tps(partitions: Iterable[Any]) -> set[TopicPartition]:
            return {TopicPartition(p.topic, p.partition) for p in partitions}

        def on_assign(consumer: Any, partitions: list[Any]) -> None:
            self._assigned |= tps(partitions)
            listener.on_assigned(tps(partitions))

        def on_revoke(consumer: Any, partitions: list[Any]) -> None:
            self._assigned -= tps(partitions)
            offsets = listener.on_revoked(tps(partitions))
            if not offsets:
                return
            try:  # on the loop's thread, inside consume: a synchronous commit is allowed
                consumer.commit(
                    offsets=[ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=False,
                )
            except ck.KafkaException as exc:
                log.warning("commit on revocation failed (%s); those records will be re-read", exc)
            else:
                listener.on_committed(offsets)

        def on_lost(consumer: Any, partitions: list[Any]) -> None:
            self._assigned -= tps(partitions)
            listener.on_lost(tps(partitions))

        self.consumer.subscribe(
            list(topics), on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost
        )

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[TopicPartition, Sequence[Any]]:
        ck = _ck()
        try:
            # what is already fetched, at once; else wait for the first message only: consume()
            # waits for all of num_messages or the timeout (at 300 events/s and 500 records a
            # poll, the whole 200 ms, which then showed as the median end-to-end latency)
            messages = self.consumer.consume(num_messages=max_records, timeout=0)
            if not messages:
                first = self.consumer.poll(timeout_ms / 1000)
                if first is not None:
                    messages = [first]
                    if max_records > 1:
                        messages += self.consumer.consume(num_messages=max_records - 1, timeout=0)
        except ck.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if error is not None and getattr(error, "retriable", lambda: False)():
                raise TransientPollError(str(exc)) from exc
            raise BrokerError(f"confluent-kafka consume failed: {exc}") from exc
        out: dict[TopicPartition, list[_Record]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == ck.KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise BrokerError(f"confluent-kafka consumer failed: {error}")
                raise TransientPollError(str(error))
            record = _Record(message)
            tp = TopicPartition(record.topic, record.partition)
            batch = out.get(tp)
            if batch is None:
                out[tp] = [record]
            else:
                batch.append(record)
        return out

    def commit(self, offsets: Mapping[Any, int], timeout_ms: int) -> None:
        ck = _ck()
        self.consumer.commit(
            offsets=[ck.TopicPartition(tp[0], tp[1], o) for tp, o in offsets.items()],
            asynchronous=False,
        )

    def lag(self, partitions: Iterable[Any]) -> dict[Any, int]:
        ck = _ck()
        wanted = [ck.TopicPartition(tp[0], tp[1]) for tp in partitions]
        if not wanted:
            return {}
        out = {}
        try:
            positions = self.consumer.position(wanted)
        except ck.KafkaException:
            return {}
        for pos in positions:
            if pos.offset < 0:
                continue  # no position yet
            try:
                _, high = self.consumer.get_watermark_offsets(pos, timeout=0.1, cached=True)
            except ck.KafkaException:
                continue
            if high >= 0:
                out[TopicPartition(pos.topic, pos.partition)] = max(0, high - pos.offset)
        return out

    def coordinator_known(self) -> bool:
        """False from a lost connection until the broker answers a metadata request (librdkafka
        reconnects by itself and has no accessor for the coordinator; called once a second)."""
        if self.broker_down:
            try:
                self.consumer.list_topics(timeout=0.2)
            except _ck().KafkaException:
                return False
            self.broker_down = False
        return True

    def close(self, timeout_ms: int) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class _Delivery:
    """A record handed to :class:`ConfluentProducer` (``add_errback`` like kafka-python's)."""

    __slots__ = ("errbacks", "error", "done")

    def __init__(self) -> None:
        self.errbacks: list[Callable[[BaseException], Any]] = []
        self.error: BaseException | None = None
        self.done = False

    def add_errback(self, fn: Callable[[BaseException], Any]) -> _Delivery:
        if self.error is not None:
            fn(self.error)
        else:
            self.errbacks.append(fn)
        return self


class ConfluentProducer:
    """A confluent-kafka ``Producer`` as a :class:`~streamvgan.service.kafka_api.Producer`.

    librdkafka retries and reconnects by itself (through broker restarts, until
    ``delivery.timeout.ms``); a record it gives up on calls its errbacks. :meth:`flush` marks
    the producer unhealthy after ``stall_s`` without all acknowledgements, and gives up with
    :class:`~streamvgan.service.clients.Stopped` once ``stop`` is set while unhealthy (the
    records are not committed, so a restart reads them again).
    """

    def __init__(self, producer: Any, stop: threading.Event, stall_s: float = 5.0) -> None:
        self.producer = producer
        self._stop = stop
        self.stall_s = stall_s
        self.healthy = True
        self._in_flight = 0

    def send(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Any = None,
        partition: int | None = None,
    ) -> _Delivery:
        delivery = _Delivery()

        def on_delivery(error: Any, message: Any) -> None:
            self._in_flight -= 1
            delivery.done = True
            if error is not None:
                delivery.error = exc = BrokerError(f"record to {topic!r} not delivered: {error}")
                for fn in delivery.errbacks:
                    fn(exc)

        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                break
            except BufferError:  # the local queue is full: let librdkafka send some
                self.producer.poll(0.05)
        self._in_flight += 1
        return delivery

    def settled(self) -> bool:
        self.producer.poll(0)  # serve the delivery callbacks that arrived
        return self._in_flight == 0

    def flush(self) -> None:
        started = time.monotonic()
        while self.producer.flush(0.5) > 0 or self._in_flight > 0:
            waited = time.monotonic() - started
            if waited >= self.stall_s and self.healthy:
                log.warning("outputs not acknowledged for %.0f s: is the broker down?", waited)
                self.healthy = False
            if self._stop.is_set() and not self.healthy:
                raise clients.Stopped(f"{self._in_flight} records not acknowledged")
        self.healthy = True

    def close(self, timeout: float = 10) -> None:
        if self.producer is not None:
            self.producer.flush(timeout if self.healthy else 0)
            self.producer = None  # librdkafka's handle goes with the last reference
