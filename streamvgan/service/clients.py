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
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.future import Future
from kafka.net.sasl.oauth import AbstractTokenProvider
from kafka.partitioner.default import DefaultPartitioner, murmur2

from streamvgan.errors import BrokerError, ConfigurationError

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 6000
#: How long one attempt to reach the brokers may take before it counts as failed (kafka-python
#: waits 30 s by default); start-up retries with backoff (see :func:`retry`).
BOOTSTRAP_TIMEOUT_MS = 10_000

T = TypeVar("T")


class Stopped(Exception):
    """Raised by :func:`retry` and :func:`wait_for_topic` when the stop event is set."""


class FileTokenProvider(AbstractTokenProvider):
    """OAUTHBEARER tokens read from a file at every (re-)authentication.

    The service holds no OAuth client credentials: an identity-provider sidecar (or a
    Kubernetes projected service-account token) keeps the file fresh, and each new connection
    reads the current token. An empty or unreadable file is an error naming the path.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def token(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the OAUTHBEARER token file {self.path!r}: {exc.strerror}"
            ) from None
        if not token:
            raise ConfigurationError(f"the OAUTHBEARER token file {self.path!r} is empty")
        return token

    def __repr__(self) -> str:  # never the token
        return f"FileTokenProvider({self.path!r})"


def retry(
    action: Callable[[], T],
    what: str,
    stop: threading.Event,
    give_up_after_s: float = 0.0,
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
) -> T:
    """Call ``action`` until it stops raising :class:`BrokerError`, waiting 0.5 s, 1 s, 2 s ...
    (at most ``max_delay_s``) between tries; raise :class:`Stopped` once ``stop`` is set, and
    the last error once ``give_up_after_s`` (0: never) has passed."""
    start = time.monotonic()
    delay = first_delay_s
    while True:
        if stop.is_set():
            raise Stopped(what)
        try:
            return action()
        except BrokerError as exc:
            waited = time.monotonic() - start
            if give_up_after_s and waited >= give_up_after_s:
                raise BrokerError(
                    f"{what}: gave up after {waited:.0f} s of retries (broker_retry_s="
                    f"{give_up_after_s:g}; 0 retries forever). Last error: {exc}"
                ) from exc
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            if stop.wait(delay):
                raise Stopped(what) from None
            delay = min(2 * delay, max_delay_s)


def wait_for_topic(
    bootstrap_servers: str,
    topic: str,
    stop: threading.Event,
    *,
    create_partitions: int = 0,
    security: Mapping[str, Any] | None = None,
    log_every_s: float = 10.0,
) -> int:
    """The partition count of ``topic``, once it exists: created with ``create_partitions``
    when that is > 0, else waited for (checked every second) until someone creates it.

    Waiting rather than subscribing at once matters: a consumer's metadata request makes a
    broker with auto-creation (Tansu, Kafka's default) create the topic with ITS default
    partition count, which the output and changelog topics, created earlier, would not match.
    """
    if create_partitions > 0:
        ensure_topics(bootstrap_servers, [topic], partitions=create_partitions, security=security)
    last_log = 0.0
    while True:
        n = _partition_count_of(bootstrap_servers, topic, security)
        if n:
            return n
        now = time.monotonic()
        if now - last_log >= log_every_s:
            log.warning(
                "waiting for the input topic %r to exist on %s: create it, or pass "
                "--partitions N to let serve create it",
                topic,
                bootstrap_servers,
            )
            last_log = now
        if stop.wait(1.0):
            raise Stopped(f"waiting for topic {topic!r}")


def _partition_count_of(
    bootstrap_servers: str, topic: str, security: Mapping[str, Any] | None
) -> int | None:
    """``topic``'s partition count (None if it does not exist), from a short-lived admin."""
    admin = make_admin(bootstrap_servers, security=security)
    try:
        return partition_count(admin, topic)
    except KafkaError as exc:
        raise BrokerError(f"cannot describe topic {topic!r}: {exc!r}") from exc
    finally:
        admin.close()


def check_copartitioned(
    bootstrap_servers: str,
    input_topic: str,
    input_partitions: int,
    changelog: str,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Raise :class:`ConfigurationError` naming both counts and the fix when the changelog
    topic has another partition count than the input topic (state of input partition p lives
    in changelog partition p)."""
    n = _partition_count_of(bootstrap_servers, changelog, security)
    if n is not None and n != input_partitions:
        raise ConfigurationError(layout_error(input_topic, input_partitions, changelog, n))


def layout_error(input_topic: str, input_partitions: int, changelog: str, n: int) -> str:
    return (
        f"the state changelog topic {changelog!r} has {n} partition(s) but the input topic "
        f"{input_topic!r} has {input_partitions}; they must match, because the state of input "
        f"partition p is kept in changelog partition p. Fix: delete {changelog!r} (serve "
        f"recreates it with {input_partitions} partitions; stream state restarts cold unless "
        "a checkpoint holds it), or run with --no-state-changelog"
    )


def group_coordinator_known(consumer: Any) -> bool:
    """True while ``consumer`` is connected to its group coordinator (False during a broker
    outage). Reads kafka-python's coordinator, which has no public accessor for this; any
    surprise there counts as connected rather than failing the readiness probe."""
    coordinator = getattr(consumer, "_coordinator", None)
    try:
        return coordinator is None or not coordinator.coordinator_unknown()
    except Exception:
        return True


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
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        # Never create the input topic by subscribing: it would get the broker's default
        # partition count, not the one the changelog was laid out for (see wait_for_topic).
        "allow_auto_create_topics": False,
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


class KeyedPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, as the Java client and
    librdkafka's ``murmur2_random``: a stream keeps its partition whichever client wrote it),
    with each key's hash remembered. The service sends every record keyed by its stream, a
    few records per event over a bounded set of streams, and the pure-Python hash and the
    per-record sorting of the partition list were about a fifth of ``KafkaProducer.send``'s
    time (cProfile). A record without a key takes the default's path (a random partition).

    >>> from kafka.partitioner.default import DefaultPartitioner
    >>> class Cluster:  # the two calls a partitioner makes of the producer's metadata
    ...     def topics(self): return {"t"}
    ...     def partitions_for_topic(self, topic): return {0, 1, 2}
    ...     def available_partitions_for_topic(self, topic): return {0, 1, 2}
    >>> keys = [f"host-{i}".encode() for i in range(50)]
    >>> mine = [KeyedPartitioner().partition("t", k, k, None, None, Cluster()) for k in keys]
    >>> mine == [DefaultPartitioner().partition("t", k, k, None, None, Cluster()) for k in keys]
    True
    """

    #: keys whose hash is remembered (about 13 MB for 100,000 keys of 14 bytes); beyond that
    #: the memory starts again
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}
        self._ordered: dict[str, tuple[set[int], list[int]]] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        known = self._ordered.get(topic)
        if known is None or known[0] != partitions:  # new topic, or its partitions changed
            known = self._ordered[topic] = (partitions, sorted(partitions))
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self.MAX_KEYS:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        return known[1][h % len(known[1])]


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
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "partitioner": KeyedPartitioner(),
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
    bootstrap_servers: str,
    *,
    client_id: str = "streamvgan",
    security: Mapping[str, Any] | None = None,
) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers.split(","),
            client_id=client_id,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
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
                admin.create_topics(
                    [
                        NewTopic(
                            topic,
                            num_partitions=n,
                            replication_factor=-1,
                            topic_configs=dict(config or {}),
                        )
                    ]
                )
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


def tls_preflight(
    bootstrap_servers: str, security: Mapping[str, Any], timeout_s: float = 5.0
) -> None:
    """For SSL and SASL_SSL: one TLS handshake with each bootstrap server, with the settings
    kafka-python will use. A certificate that does not verify is a configuration error, raised
    at once with the server, the CA file and the reason (kafka-python would only time out and
    retry); an unreachable server raises :class:`BrokerError`, which start-up retries."""
    import socket
    import ssl

    if security.get("security_protocol") not in ("SSL", "SASL_SSL"):
        return
    context = ssl.create_default_context(cafile=security.get("ssl_cafile") or None)
    context.check_hostname = bool(security.get("ssl_check_hostname", True))
    if security.get("ssl_certfile"):
        try:
            context.load_cert_chain(
                security["ssl_certfile"],
                security.get("ssl_keyfile"),
                password=security.get("ssl_password"),
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"cannot load the client certificate ssl_certfile={security['ssl_certfile']!r}"
                f" with ssl_keyfile={security.get('ssl_keyfile')!r}: {exc}. Check the files "
                "and ssl_password"
            ) from None
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot reach {server} for a TLS handshake: {exc}") from exc
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(
                f"the TLS certificate of {server} was not accepted: {exc.verify_message} "
                f"(ssl_cafile={security.get('ssl_cafile') or '(system CAs)'!r}, "
                f"ssl_check_hostname={context.check_hostname}). Give the CA that signed the "
                "broker's certificate in --ssl-cafile"
            ) from None
        except (ssl.SSLError, OSError) as exc:  # no TLS answer, or a broken one
            raise ConfigurationError(
                f"TLS handshake with {server} failed: {exc!r}. Is it a TLS listener "
                "(security_protocol=SSL/SASL_SSL needs one)?"
            ) from None
        finally:
            sock.close()


#: Errors after which a fresh producer and a resend succeed: the broker restarted and forgot
#: this producer's id or sequence numbers, or it was unreachable until the delivery timeout.
_RECOVERABLE = (
    "UnknownProducerIdError",
    "OutOfOrderSequenceNumberError",
    "InvalidProducerEpochError",
    "ProducerFencedError",
)


def recoverable(exc: BaseException) -> bool:
    """True for send errors that a new producer and a resend can get past."""
    return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in _RECOVERABLE


def _fatal_error(producer: Any) -> BaseException | None:
    """The error that put kafka-python ``producer`` in its fatal state, which aborts every
    batch with it; None when healthy. Reads a private attribute (no public accessor)."""
    manager = getattr(producer, "_transaction_manager", None)
    try:
        if manager is not None and manager.has_fatal_error():
            return manager.last_error
    except Exception:  # a kafka-python without these: no producer-level failures seen
        pass
    return None


def _same_error(exc: BaseException, other: BaseException) -> bool:
    return exc is other or (type(exc) is type(other) and str(exc) == str(other))


class _Sent:
    """One record given to :class:`ResendingProducer`, kept until the broker acknowledged it."""

    __slots__ = ("kwargs", "future", "errbacks")

    def __init__(self, kwargs: dict[str, Any], future: Any) -> None:
        self.kwargs = kwargs
        self.future = future
        self.errbacks: list[Callable[[BaseException], Any]] = []

    def add_errback(self, fn: Callable[[BaseException], Any]) -> _Sent:
        """``fn(exception)`` once the record is given up on (never for recovered errors)."""
        self.errbacks.append(fn)
        return self


class ResendingProducer:
    """A producer that survives broker restarts: it keeps every record until the broker
    acknowledged it, and :meth:`flush` replaces a producer that failed with a recoverable error
    (:func:`recoverable`, e.g. ``UnknownProducerIdError`` after the broker lost its state) by a
    new one and sends the unacknowledged records again (at least once: the caller commits
    offsets only after :meth:`flush` returned).

    Parameters
    ----------
    factory
        Builds a connected ``KafkaProducer`` (raises :class:`BrokerError` while unreachable).
    stop
        When set, a waiting :meth:`flush` gives up and raises :class:`Stopped`.
    stall_s
        A flush waiting longer than this marks the producer unhealthy (:attr:`healthy`).
    replace_after_s
        A flush waiting longer than this gives up on the producer: a new one resends what
        was not acknowledged (duplicates are possible, losses are not).
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        stop: threading.Event,
        stall_s: float = 5.0,
        replace_after_s: float = 15.0,
        on_replaced: Callable[[], None] | None = None,
    ) -> None:
        self._factory = factory
        self._on_replaced = on_replaced or (lambda: None)
        self._stop = stop
        self.stall_s = stall_s
        self.replace_after_s = replace_after_s
        self._producer = factory()
        self._unacked: list[_Sent] = []
        self._answered = 0  # records at the head of _unacked known to have their answer
        self.healthy = True
        self.replacements = 0

    def send(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Any = None,
        partition: int | None = None,
    ) -> _Sent:
        kwargs = {"key": key, "value": value, "headers": headers, "partition": partition}
        sent = _Sent({"topic": topic, **kwargs}, None)
        sent.future = self._send(sent.kwargs)
        self._unacked.append(sent)
        return sent

    def _send(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self._producer.send(**kwargs)
        except KafkaError as exc:  # e.g. no metadata within max_block_ms: retried by flush
            return Future().failure(exc)

    def settled(self) -> bool:
        """True when every record sent so far has its answer (acknowledged or failed: a
        :meth:`flush` then only resends or gives up, without waiting for the broker)."""
        unacked = self._unacked
        # answers come in order of sending, mostly: skip the answered prefix once
        while self._answered < len(unacked) and unacked[self._answered].future.is_done:
            self._answered += 1
        return self._answered == len(unacked)

    def flush(self) -> None:
        """Return once every record sent so far was acknowledged or given up on (its errbacks
        called); replaces the producer and resends as often as needed, until ``stop``."""
        while self._unacked:
            started = time.monotonic()
            stalled = False
            while not all(s.future.is_done for s in self._unacked):
                # A stop waits for a healthy flush (the batch in hand completes) but not
                # through an outage: unacknowledged records are not committed, so a restart
                # reads them again.
                if self._stop.is_set() and not self.healthy:
                    raise Stopped(f"{len(self._unacked)} records not acknowledged")
                try:
                    self._producer.flush(timeout=0.5)
                except KafkaError:  # KafkaTimeoutError: not all delivered within 0.5 s
                    waited = time.monotonic() - started
                    if waited >= self.stall_s and self.healthy:
                        log.warning(
                            "outputs not acknowledged for %.0f s: is the broker down?", waited
                        )
                        self.healthy = False
                    if waited >= self.replace_after_s:
                        # kafka-python may not reconnect to a restarted broker for minutes
                        # (delivery_timeout_ms, reconnect backoff): a new producer does
                        stalled = True
                        break
            pending, self._unacked, self._answered = self._unacked, [], 0
            # Records aborted because their producer entered a fatal state (e.g. a restarted
            # Tansu answering the epoch bump after OutOfOrderSequenceNumber with UnknownError)
            # failed through no fault of their own: a new producer sends them.
            dead = _fatal_error(self._producer)
            again = []
            for s in pending:
                if not s.future.is_done:
                    again.append(s)
                elif s.future.failed():
                    exc = s.future.exception
                    if recoverable(exc) or (dead is not None and _same_error(exc, dead)):
                        again.append(s)
                    else:
                        for fn in s.errbacks:
                            fn(exc)
            if not again:
                break
            self.healthy = False
            first = next((s.future.exception for s in again if s.future.is_done), None)
            log.warning(
                "%d outputs not acknowledged (%s): replacing the producer and sending them again",
                len(again),
                f"no answer for {self.replace_after_s:.0f} s" if stalled else repr(first),
            )
            self._replace()
            for s in again:
                s.future = self._send(s.kwargs)
                self._unacked.append(s)
        self.healthy = True

    def _replace(self) -> None:
        old, self._producer = self._producer, None
        try:
            old.close(timeout=0)
        except Exception as exc:  # it failed already; closing is best effort
            log.debug("closing the failed producer: %r", exc)
        self._producer = self._factory()  # the factory retries while the broker is down
        self.replacements += 1
        self._on_replaced()

    def close(self, timeout: float = 10) -> None:
        """Close the producer, waiting up to ``timeout`` for records in flight; not at all
        while the broker is unreachable (what is not acknowledged was not committed)."""
        if self._producer is not None:
            self._producer.close(timeout=timeout if self.healthy else 0)
