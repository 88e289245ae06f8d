"""Fixtures of the service tests: the Kafka client libraries every integration test runs on."""

from __future__ import annotations

import importlib.util

import pytest

#: ``--kafka-client`` values; confluent-kafka comes with the ``confluent`` extra (in ``dev``)
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")


def client_param(name: str) -> object:
    """``name`` as a pytest parameter, skipped with the reason when its library is absent."""
    if name == "confluent-kafka" and importlib.util.find_spec("confluent_kafka") is None:
        return pytest.param(name, marks=pytest.mark.skip(
            reason="confluent-kafka is not installed: pip install 'streamvgan[confluent]' "
                   "(the dev extra brings it) to run the tests on librdkafka"))
    return name


CLIENT_PARAMS = [client_param(name) for name in KAFKA_CLIENTS]


@pytest.fixture(params=CLIENT_PARAMS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """Each Kafka client library in turn (``Settings.kafka_client``)."""
    return request.param


@pytest.fixture(scope="module", params=CLIENT_PARAMS)
def module_kafka_client(request: pytest.FixtureRequest) -> str:
    """The same, for module-scoped fixtures (one run of the module's scenario per client)."""
    return request.param
