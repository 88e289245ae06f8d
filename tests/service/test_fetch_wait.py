"""``fetch_max_wait_ms`` reaches the consumer of either Kafka client library."""

from __future__ import annotations

import types
from typing import Any

import pytest

from streamvgan.service import confluent
from streamvgan.service.app import make_clients
from streamvgan.service.settings import Settings


def _consumer(settings: Settings) -> Any:
    return make_clients(settings).consumer(
        group_id="g-fetch-wait",
        client_id="fetch-wait",
        session_timeout_ms=6000,
        max_poll_interval_ms=300_000,
        max_poll_records=10,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )


def test_the_setting_reaches_kafka_python(bootstrap_servers: str) -> None:
    settings = Settings(bootstrap_servers=bootstrap_servers, fetch_max_wait_ms=7)
    consumer = _consumer(settings)
    try:
        assert consumer.consumer.config["fetch_max_wait_ms"] == 7
    finally:
        consumer.consumer.close()


def test_the_setting_reaches_librdkafka(bootstrap_servers: str, monkeypatch) -> None:
    ck = pytest.importorskip(
        "confluent_kafka", reason="pip install 'streamvgan[confluent]' (the dev extra has it)"
    )
    seen: list[dict] = []

    def consumer(config: dict) -> Any:  # the real consumer, its configuration kept
        seen.append(dict(config))
        return ck.Consumer(config)

    spy = types.SimpleNamespace(Consumer=consumer, KafkaException=ck.KafkaException)
    monkeypatch.setattr(confluent, "_ck", lambda: spy)
    settings = Settings(
        bootstrap_servers=bootstrap_servers, fetch_max_wait_ms=7, kafka_client="confluent-kafka"
    )
    made = _consumer(settings)
    try:
        assert seen and seen[0]["fetch.wait.max.ms"] == 7
    finally:
        made.consumer.close()


def test_the_default_and_the_bound() -> None:
    assert Settings().fetch_max_wait_ms == 100
    with pytest.raises(ValueError, match="fetch_max_wait_ms"):
        Settings(fetch_max_wait_ms=-1)
