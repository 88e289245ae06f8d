"""The kafka-python producer's partitioner: the default's partition for every key (murmur2, as
the Java client and librdkafka's ``murmur2_random``), with each key's hash remembered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from kafka.partitioner.default import DefaultPartitioner

from streamvgan.service import clients
from streamvgan.service.clients import KeyedPartitioner


class Cluster:
    """The calls a partitioner makes of the producer's metadata, over a mutable layout."""

    def __init__(self, layout: dict[str, set[int]]) -> None:
        self.layout = layout

    def topics(self) -> set[str]:
        return set(self.layout)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.layout[topic]) if topic in self.layout else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=30),
    n_partitions=st.integers(1, 64),
    gap=st.integers(0, 3),
)
def test_every_key_gets_the_default_partitioners_partition(keys, n_partitions, gap):
    # partition ids need not be 0..n-1 in the metadata: both index the sorted list
    cluster = Cluster({"t": {gap + 2 * i for i in range(n_partitions)}})
    keyed, default = KeyedPartitioner(), DefaultPartitioner()
    for key in keys + keys:  # the second time from the remembered hash
        assert keyed.partition("t", key, key, b"v", b"v", cluster) == default.partition(
            "t", key, key, b"v", b"v", cluster
        )


def test_a_topic_that_gains_partitions_and_a_full_memory_start_again(monkeypatch):
    cluster = Cluster({"t": {0, 1, 2}, "u": {0}})
    keyed, default = KeyedPartitioner(), DefaultPartitioner()
    keys = [f"host-{i}".encode() for i in range(40)]

    def same(keys: list[bytes] = keys) -> bool:
        return all(
            keyed.partition(t, k, k, None, None, cluster)
            == default.partition(t, k, k, None, None, cluster)
            for t in ("t", "u")
            for k in keys
        )

    assert same()
    cluster.layout["t"] = {0, 1, 2, 3, 4, 5, 6}  # partitions added to a live topic
    assert same()
    monkeypatch.setattr(KeyedPartitioner, "MAX_KEYS", 10)  # 40 new keys: it starts again
    assert same([f"sensor-{i}".encode() for i in range(40)]) and len(keyed._hashes) <= 10
    with pytest.raises(ValueError, match="Topic nope not found"):
        keyed.partition("nope", b"k", b"k", None, None, cluster)
    # no key: the default's random choice among the partitions
    assert keyed.partition("t", None, None, b"v", b"v", cluster) in cluster.layout["t"]


@pytest.mark.kafka
def test_the_producer_puts_each_stream_where_the_default_partitioner_does(bootstrap_servers):
    topic = "partitioner-check"
    clients.ensure_topics(bootstrap_servers, [topic], partitions=5)
    producer = clients.make_producer(bootstrap_servers)
    assert isinstance(producer.config["partitioner"], KeyedPartitioner)
    keys = [f"host-{i}/cpu".encode() for i in range(60)]
    metadata = [producer.send(topic, key=k, value=b"x").get(timeout=30) for k in keys]
    producer.close()
    expected = [
        sorted(range(5))[(clients.murmur2(k) & 0x7FFFFFFF) % 5]  # Java's, and kafka-python's
        for k in keys
    ]
    assert [m.partition for m in metadata] == expected
    assert len(set(expected)) == 5  # the keys spread over every partition
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )  # fmt: skip
    landed = {r.key: r.partition for r in consumer}
    consumer.close()
    assert landed == dict(zip(keys, expected))
