"""Broker outages while `serve` runs: the broker process is stopped and restarted on the same
port inside the test. The service stays up, /readyz says 503 while the broker is away, and
after the restart the producer's ``UnknownProducerIdError`` (the restarted broker forgot the
producer) is recovered by a new producer that resends what was not acknowledged.

The embedded Tansu broker keeps its data in memory only (its other storage engines are
Postgres and S3), so a restart loses every topic. The test restores the input log as a durable
broker would keep it (same records, same offsets, same single partition) before it produces new
ones; what it checks is the service's side: no exit, no lost record, readiness that tells the
truth.

The restore must happen before the service's clients reach the restarted broker: Tansu creates
any topic a metadata request names, with 4 partitions (it ignores the clients'
``allow_auto_topic_creation=False``), so a consumer that reconnects first re-creates the input
topic with 4 partitions. The restored records then spread over partitions 0-1 (by key hash) and
the service's committed offset 30 on partition 0 skips every record of "s0" there: on a loaded
machine the test failed with the scores of ts 30, 33, ... 87 missing (issue 11). So the service
reaches the broker through :class:`_Gate`, which lets only the restoring clients through until
the log is back, as a durable broker would have had it all along.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
from kafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from streamvgan.service import clients
from streamvgan.service.app import Application
from streamvgan.service.changelog import changelog_topic
from streamvgan.service.settings import Settings
from streamvgan.tools.broker import EmbeddedBroker, _recv_exactly, free_port
from waiting import wait_until

pytestmark = pytest.mark.kafka

WAIT_S = 120  # bound on every wait; a loaded 2-core machine needs tens of seconds at worst


@pytest.fixture
def broker():
    """A broker of this test alone (the session's one must not go away), restartable on the
    same port. Started and stopped from the test's main thread: the broker dies with the
    thread that started it (PR_SET_PDEATHSIG)."""
    b = EmbeddedBroker(port=free_port())
    b.start()
    try:
        yield b
    finally:
        b.stop()


RESTORER = "tests-restore"  # client id prefix the closed gate lets through


class _Gate:
    """A TCP forwarder in front of the broker, which advertises the gate's address, so every
    client connects through it. :meth:`down` refuses connections as a stopped broker does;
    :meth:`up` with ``only_restorers`` listens again but holds each new connection whose first
    request carries a client id not starting with :data:`RESTORER` until :meth:`up` without it,
    as a broker still loading its log would. (Dropping them instead resets connections in the
    middle of kafka-python's handshake, which a real restart does not do.)"""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.only_restorers = False
        self.held = 0  # connections held by only_restorers, for the failure message
        self.resetting = False  # reset(): new connections are reset after their first request
        self.resets = 0  # connections reset so, for the failure message
        self._live: set[socket.socket] = set()  # client sides of the forwarded connections
        self._live_lock = threading.Lock()
        self._opened = threading.Event()
        self._server: socket.socket | None = None
        self.up()

    def up(self, only_restorers: bool = False) -> None:
        self.resetting = False
        self.only_restorers = only_restorers
        if only_restorers:
            self._opened.clear()
        else:
            self._opened.set()
        if self._server is None:
            self._server = socket.create_server(("127.0.0.1", self.port))
            threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):  # shutdown wakes the thread blocked in accept
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None

    def reset(self) -> None:
        """Reset every forwarded connection, then accept new ones but reset each after its
        first request (kafka-python's ApiVersions handshake), as a proxy or load balancer in
        front of a restarting broker does, until :meth:`up`. Clients whose id starts with
        :data:`RESTORER` pass."""
        self.resetting = True
        with self._live_lock:
            live = list(self._live)
        for sock in live:
            _abort(sock)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                down, _ = server.accept()
            except OSError:  # down()
                return
            threading.Thread(target=self._forward, args=(down,), daemon=True).start()

    def _forward(self, down: socket.socket) -> None:
        up = None
        try:
            # request size, api key, api version, correlation id, client id length: every
            # request header version starts so (KIP-482 kept client_id a non-compact string)
            head = _recv_exactly(down, 14)
            n = int.from_bytes(head[12:14], "big", signed=True) if head else -1
            client_id = _recv_exactly(down, max(n, 0))
            if head is None or client_id is None:
                return
            if self.resetting and not client_id.startswith(RESTORER.encode()):
                self.resets += 1
                _abort(down)
                return
            with self._live_lock:
                self._live.add(down)
            if self.only_restorers and not client_id.startswith(RESTORER.encode()):
                self.held += 1
                if not self._opened.wait(WAIT_S):
                    return
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            up.settimeout(None)
            up.sendall(head + client_id)
            back = threading.Thread(target=_pump, args=(up, down), daemon=True)
            back.start()
            _pump(down, up)
            back.join()
        except OSError:
            pass  # the broker is down or a side hung up: the client sees a closed connection
        finally:
            with self._live_lock:
                self._live.discard(down)
            down.close()
            if up is not None:
                up.close()


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), not an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pumps; their close() sends the RST


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    for sock in (src, dst):  # wakes the pump of the other direction
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def gated_broker():
    """Like :func:`broker`, behind a :class:`_Gate`; bootstrap through ``gate.port``."""
    gate = _Gate(free_port())
    b = EmbeddedBroker(port=gate.upstream_port, advertised=f"127.0.0.1:{gate.port}")
    b.start()
    try:
        yield b, gate
    finally:
        b.stop()
        gate.down()


def _events(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    return [(f"s{i % 3}".encode(),
             json.dumps({"stream": f"s{i % 3}", "ts": i, "value": float(i % 7)}).encode())
            for i in range(start, stop)]


def _produce(servers: str, topic: str, records, client_id: str = "tests") -> None:
    producer = clients.make_producer(servers, client_id=client_id)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close(timeout=10)


def _read_scores(servers: str, topic: str, want: set[int]) -> set[int]:
    from kafka import TopicPartition

    consumer = clients.make_consumer(servers, client_id="tests-reader")
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + WAIT_S
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.2)  # serve creates it once it started
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + WAIT_S
        while not want <= seen and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                seen.update(json.loads(r.value)["ts"] for r in records)
    finally:
        consumer.close()
    return seen


def _layout(servers: str, topics: list[str]) -> dict[str, int | None]:
    admin = clients.make_admin(servers, client_id="tests-layout")
    try:
        return {t: clients.partition_count(admin, t) for t in topics}
    finally:
        admin.close()


def _status(port: int, path: str) -> int | None:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _wait(predicate, what: str):
    return wait_until(predicate, what, WAIT_S, 0.2)


def test_resending_producer_recovers_unknown_producer_id_after_a_restart(broker):
    servers = broker.bootstrap_servers
    clients.ensure_topics(servers, ["out"], partitions=1)
    stop = threading.Event()
    producer = clients.ResendingProducer(
        lambda: clients.retry(lambda: clients.make_producer(servers, max_block_ms=5000),
                              "producer", stop), stop)
    failed: list[BaseException] = []
    try:
        producer.send("out", value=b"before").add_errback(failed.append)
        producer.flush()  # the broker knows this producer id now
        broker.stop()
        for i in range(50):  # queued while the broker is down, none acknowledged
            producer.send("out", value=str(i).encode()).add_errback(failed.append)
        flusher = threading.Thread(target=producer.flush)
        flusher.start()
        broker.start()
        clients.ensure_topics(servers, ["out"], partitions=1)
        flusher.join(WAIT_S)
        assert not flusher.is_alive()
        assert producer.replacements >= 1 and producer.healthy and not failed
    finally:
        stop.set()
        producer.close(timeout=5)
    from kafka import TopicPartition

    consumer = clients.make_consumer(servers, client_id="tests-reader")
    got: set[bytes] = set()
    try:
        tp = TopicPartition("out", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + WAIT_S
        while len(got) < 50 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.update(r.value for r in records)
    finally:
        consumer.close()
    assert got >= {str(i).encode() for i in range(50)}  # all 50, duplicates allowed


def test_serve_survives_a_broker_restart(gated_broker, kafka_client):
    broker, gate = gated_broker
    servers = f"127.0.0.1:{gate.port}"
    topic = "outage-in"
    settings = Settings(
        bootstrap_servers=servers, input_topic=topic, group_id="outage", partitions=1,
        kafka_client=kafka_client,
        metrics_host="127.0.0.1", metrics_port=0, commit_interval_s=0.5,
        forecast_every=0, continuation_every=0, engine_params={"warmup_events": 10**9},
    )
    part_a, part_b = _events(0, 30), _events(30, 90)
    changelog = changelog_topic(settings.group_id, topic)
    topics = [topic, settings.scores_topic, changelog]
    registry = CollectorRegistry()
    app = Application(settings, registry=registry).start()
    try:
        assert app.wait_started(WAIT_S)
        port = app.metrics_port
        _produce(servers, topic, part_a)
        _wait(lambda: app.stats.scored >= len(part_a), "part A scored")
        _wait(lambda: _status(port, "/readyz") == 200, "ready")
        assert _read_scores(servers, settings.scores_topic, set(range(30))) >= set(range(30))

        gate.down()  # new connections refused, as by a stopped broker
        broker.stop()
        _wait(lambda: _status(port, "/readyz") == 503, "/readyz 503 while the broker is down")
        assert _status(port, "/healthz") == 200
        assert app.exit_code is None  # still running

        broker.start()
        gate.up(only_restorers=True)  # the service's clients wait until the log is back
        # the durable log a real broker would have kept: part A at offsets 0-29 again, and the
        # topics serve had created with the partition count of the input
        admin = clients.make_admin(servers, client_id=RESTORER)
        try:
            admin.create_topics([
                NewTopic(t, num_partitions=1, replication_factor=-1,
                         topic_configs={"cleanup.policy": "compact"} if t == changelog else {})
                for t in topics])  # the changelog's records are not restored: not checked here
        finally:
            admin.close()
        _produce(servers, topic, part_a, client_id=RESTORER)
        gate.up()
        _produce(servers, topic, part_b)
        want = set(range(30, 90))
        seen = _read_scores(servers, settings.scores_topic, want)
        assert want <= seen, (sorted(want - seen), _layout(servers, topics), gate.held)
        # nothing re-created a topic with the broker's default 4 partitions behind the restore
        assert _layout(servers, topics) == dict.fromkeys(topics, 1)
        _wait(lambda: _status(port, "/readyz") == 200, "ready again after the restart")
        assert app.exit_code is None
        if kafka_client == "kafka-python":
            # the producer that knew the old broker was replaced (UnknownProducerId or
            # OutOfOrderSequenceNumber from the restarted broker), not the process
            # (librdkafka reconnects and resends by itself)
            assert registry.get_sample_value("streamvgan_producer_replacements_total") >= 1
    finally:
        app.stop()
        code = app.join(60)
    assert code == 0


def test_sigterm_during_an_outage_exits_0_within_the_bound(broker, tmp_path, kafka_client):
    """`serve` as a process: scoring, then the broker goes away, then SIGTERM. It must exit 0
    within 10 s (issue 11, item 5) and must not commit what was not acknowledged."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    servers = broker.bootstrap_servers
    topic = "term-in"
    clients.ensure_topics(servers, [topic], partitions=1)
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamvgan.cli", "serve", "--bootstrap-servers", servers,
         "--input-topic", topic, "--group-id", "term", "--metrics-port", "-1",
         "--kafka-client", kafka_client,
         "--commit-interval-s", "0.5", "--engine-param", "warmup_events=1000000000"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
        stderr=open(log_path, "wb"),  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _produce(servers, topic, _events(0, 30))
        seen = _read_scores(servers, f"{topic}.scores", set(range(30)))
        assert seen >= set(range(30)), log_path.read_text()[-3000:]
        broker.stop()
        time.sleep(3.0)  # the service notices (coordinator lost) and keeps polling
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError("serve ignored SIGTERM during an outage for 10 s:\n"
                                 + log_path.read_text()[-3000:]) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 0, log_path.read_text()[-3000:]


def test_serve_survives_connections_reset_while_connecting(gated_broker, kafka_client):
    """Something between `serve` and the broker (a proxy, a load balancer, a restarting broker)
    resets its connections, the new ones too, partway through kafka-python's handshake, so
    ``consumer.poll`` raises ``KafkaConnectionError`` (issue 11, item 4). The service must log,
    say 503 on /readyz, keep polling and, once connections go through again, score every event,
    including those produced while it could not connect; it did exit 1 ("fatal error")."""
    broker, gate = gated_broker
    servers = f"127.0.0.1:{gate.port}"
    topic = "reset-in"
    settings = Settings(
        bootstrap_servers=servers, input_topic=topic, group_id="reset", partitions=1,
        kafka_client=kafka_client,
        # a poll of 3 s, not 200 ms: the coordinator lookup fails on a reset, kafka-python
        # then waits inside poll for a metadata refresh, and that refresh fails on the next
        # reset within the poll's timeout (as on a loaded machine), so poll raises
        poll_timeout_ms=3000, metrics_host="127.0.0.1", metrics_port=0, commit_interval_s=0.5,
        forecast_every=0, continuation_every=0, engine_params={"warmup_events": 10**9},
    )
    part_a, part_b = _events(0, 30), _events(30, 90)
    app = Application(settings, registry=CollectorRegistry()).start()
    try:
        assert app.wait_started(WAIT_S)
        port = app.metrics_port
        _produce(servers, topic, part_a)
        _wait(lambda: app.stats.scored >= len(part_a), "part A scored")
        _wait(lambda: _status(port, "/readyz") == 200, "ready")

        gate.reset()
        _wait(lambda: _status(port, "/readyz") == 503 or app.exit_code is not None,
              "/readyz 503 while connections are reset")
        assert app.exit_code is None, f"serve stopped (exit {app.exit_code}) on a reset"
        # produced meanwhile by a client the gate lets through: the log goes on without serve
        _produce(servers, topic, part_b, client_id=RESTORER)
        resets = gate.resets
        _wait(lambda: gate.resets >= resets + 3 or app.exit_code is not None,
              "serve to retry through the resets")  # it keeps trying, not once and gives up
        assert app.exit_code is None, f"serve stopped (exit {app.exit_code}) on a reset"
        assert _status(port, "/readyz") == 503 and _status(port, "/healthz") == 200

        gate.up()
        want = set(range(90))
        seen = _read_scores(servers, settings.scores_topic, want)
        assert want <= seen, (sorted(want - seen), gate.resets)
        _wait(lambda: _status(port, "/readyz") == 200, "ready again once connections go through")
        assert app.exit_code is None
    finally:
        app.stop()
        code = app.join(60)
    assert code == 0


class _CommitLog:
    """The consumer side of a commit: records what was committed (the group's position)."""

    def __init__(self) -> None:
        self.committed: dict = {}

    def commit(self, offsets, timeout_ms) -> None:
        self.committed.update(offsets)


def test_a_commit_waits_for_its_changelog_acks_through_an_outage(broker, kafka_client):
    """Issue 13: the periodic commit sends the changelog without waiting in the scoring loop.
    With the broker frozen (SIGSTOP) after the records were sent, no step commits however
    many pass: a crash then leaves the group's offsets where they were. Once the broker
    answers, a step commits, and the records it committed after are on the topic."""
    import os
    import signal

    from streamvgan.engine import EngineConfig, Event, StreamEngine
    from streamvgan.service.app import make_clients
    from streamvgan.service.changelog import StateChangelog
    from streamvgan.service.kafka_api import TopicPartition
    from streamvgan.service.metrics import ServiceMetrics
    from streamvgan.service.state import StateStore

    servers = broker.bootstrap_servers
    clients.ensure_topics(servers, ["cl"], partitions=1)
    engine = StreamEngine(EngineConfig.from_params(init="random", hidden_size=8, latent_size=2), seed=0)
    for t in range(5):
        engine.process([Event(s, {"value": t * (k + 1.0)}) for k, s in enumerate("ab")])
    stop = threading.Event()
    factory = make_clients(Settings(bootstrap_servers=servers, input_topic="in",
                                    kafka_client=kafka_client))
    producer = factory.producer(client_id="tests-changelog", stop=stop,
                                retry=lambda fn, what: clients.retry(fn, what, stop))
    state = StateStore(engine, ServiceMetrics(CollectorRegistry()))
    state.attach_changelog(StateChangelog("cl", lambda: None))
    state.producer = producer
    group = _CommitLog()
    tp = TopicPartition("in", 0)
    frozen = False
    try:
        producer.send("cl", key=b"warm-up", value=b"x", partition=0)
        producer.flush()  # connected, metadata known: the sends below do not block
        at_commit = {s: engine.export_stream(s) for s in "ab"}
        os.kill(broker.pid, signal.SIGSTOP)
        frozen = True
        state.acknowledged({tp: 5}, {"a": 0, "b": 0})
        state.begin_commit(group)
        for _ in range(20):
            state.advance(group)  # returns at once: never waits for the broker
            time.sleep(0.05)
        assert group.committed == {} and state.ticket is not None and not producer.settled()
        os.kill(broker.pid, signal.SIGCONT)
        frozen = False
        deadline = time.monotonic() + WAIT_S
        while not group.committed and time.monotonic() < deadline:
            state.advance(group)
            time.sleep(0.01)
        assert group.committed == {tp: 5} and state.ticket is None
    finally:
        if frozen:
            os.kill(broker.pid, signal.SIGCONT)
        stop.set()
        producer.close(timeout=5)
    from kafka import TopicPartition as KafkaTP

    consumer = clients.make_consumer(servers, client_id="tests-reader")
    got: dict[bytes, bytes] = {}
    try:
        consumer.assign([KafkaTP("cl", 0)])
        consumer.seek_to_beginning(KafkaTP("cl", 0))
        deadline = time.monotonic() + WAIT_S
        while len(got) < 3 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.update((r.key, r.value) for r in records)
    finally:
        consumer.close()
    assert got[b"a"] == at_commit["a"] and got[b"b"] == at_commit["b"]
