"""The embedded broker: starts on a free port, answers Kafka requests, stops by pid, and fails
with a clear BrokerError; consumer-group joins against it stay fast."""

from __future__ import annotations

import os
import time

import pytest

from streamvgan.errors import BrokerError
from streamvgan.service.broker import EmbeddedBroker, free_port, kafka_api_ready


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
def test_group_join_takes_about_three_seconds(kafka):
    """With a 6 s session timeout Tansu answers a JoinGroup after ~3 s (23 s with
    kafka-python's defaults); this guards the settings every group in the suite uses."""
    from streamvgan.service.clients import make_consumer

    topic = kafka.topic("join")
    consumer = make_consumer(kafka.bootstrap_servers, group_id=kafka.group("join"))
    try:
        start = time.monotonic()
        consumer.subscribe([topic])
        while not consumer.assignment() and time.monotonic() - start < 30:
            consumer.poll(timeout_ms=100)
        joined = time.monotonic() - start
    finally:
        consumer.close()
    assert joined < 6.0, f"group join took {joined:.1f}s"
