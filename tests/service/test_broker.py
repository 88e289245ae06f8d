"""The embedded broker: starts on a free port, answers Kafka requests, stops by pid, and fails
with a clear BrokerError; consumer-group joins against it stay fast."""

from __future__ import annotations

import os
import time

import pytest

from streamvgan.errors import BrokerError
from streamvgan.tools.broker import EmbeddedBroker, free_port, kafka_api_ready


@pytest.mark.kafka
def test_session_broker_answers_kafka_requests(kafka_broker):
    host, port = kafka_broker.bootstrap_servers.split(":")
    assert host == "127.0.0.1"
    assert kafka_api_ready(host, int(port))
    assert kafka_broker.running and kafka_broker.pid is not None


@pytest.mark.kafka
def test_start_and_stop_by_pid():
    with EmbeddedBroker() as broker:
        pid = broker.pid
        host, port = broker.bootstrap_servers.split(":")
        assert kafka_api_ready(host, int(port))
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not kafka_api_ready(host, int(port), timeout=0.2)
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap_servers
    broker.stop()  # twice is fine


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(BrokerError, match="could not execute"):
        EmbeddedBroker(binary=str(tmp_path / "no-such-tansu")).start()


def test_binary_that_exits_is_a_clear_error(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"exited at start with code 3(.|\n)*already in use"):
        EmbeddedBroker(binary=str(fake), startup_timeout_s=5).start()


def test_nothing_listening_is_not_ready():
    assert not kafka_api_ready("127.0.0.1", free_port(), timeout=0.2)


@pytest.mark.kafka
def test_consumers_join_with_the_short_session_timeout(kafka):
    """With a 6 s session timeout Tansu answers a JoinGroup after ~3 s on an idle machine
    (23 s with kafka-python's defaults); every group in the suite relies on these settings.
    Checked on the consumer's configuration, not by timing the join (9.1 s once on a busy
    CI machine): the join itself only has to happen within a generous bound."""
    from streamvgan.service.clients import DEFAULT_SESSION_TIMEOUT_MS, make_consumer

    topic = kafka.topic("join")
    consumer = make_consumer(kafka.bootstrap_servers, group_id=kafka.group("join"))
    try:
        assert consumer.config["session_timeout_ms"] == DEFAULT_SESSION_TIMEOUT_MS == 6000
        assert consumer.config["heartbeat_interval_ms"] == 2000
        start = time.monotonic()
        consumer.subscribe([topic])
        while not consumer.assignment() and time.monotonic() - start < 60:
            consumer.poll(timeout_ms=100)
        assert consumer.assignment(), "the consumer never joined its group"
    finally:
        consumer.close()
