"""The changelog and model topics against the real broker: state follows its partition, the
newest valid model reaches a replica, corrupt records are rejected without harm."""

from __future__ import annotations

import math

import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.service.changelog import StateChangelog
from streamvgan.service.clients import make_consumer, make_producer
from streamvgan.service.model_topic import ModelFollower, publish

pytestmark = pytest.mark.kafka

TINY = EngineConfig(init="random", warmup_events=150, first_fit_steps=10, fit_steps=3, fit_every=100).with_model(hidden_size=8)


def _events(stream: str, n: int, start: int = 0, offset: float = 0.0) -> list[Event]:
    return [Event(stream, {"value": offset + math.sin(t / 3)}) for t in range(start, start + n)]


def _trained() -> StreamEngine:
    engine = StreamEngine(TINY, seed=0)
    for batch in zip(_events("a", 200), _events("b", 200, offset=5), _events("c", 200, offset=-5)):
        engine.process(list(batch))
        engine.fine_tune()
    return engine


def test_changelog_restores_the_partitions_streams_last_state(kafka):
    topic = kafka.topic("changelog", partitions=2)
    engine = _trained()
    producer = make_producer(kafka.bootstrap_servers)
    log = StateChangelog(topic, lambda: make_consumer(kafka.bootstrap_servers))
    log.write(producer, engine, {"a": 0, "b": 0, "c": 1})
    producer.flush()
    engine.process(_events("a", 5, start=200))  # a changes again: its newer state must win
    log.write(producer, engine, {"a": 0})
    producer.send(topic, key=b"b", value=b"SVGS\x00\x00\x00\x02{}corrupt", partition=0)
    producer.flush()
    producer.close()
    assert log.records_written == 4 and log.bytes_written < 4 * 6000

    rejected = []
    replica = StreamEngine(TINY, seed=0)
    replica.import_weights(engine.export_weights(), version=engine.model_version)
    report = StateChangelog(topic, lambda: make_consumer(kafka.bootstrap_servers),
                            on_rejected=lambda: rejected.append(1)).restore(replica, [0])
    assert report.restored == 1 and report.rejected == 1 and rejected == [1]
    assert replica.streams() == ["a"]  # b was corrupt (cold), c lives on partition 1
    nxt = _events("a", 20, start=205)
    assert [s.score for s in replica.process(nxt)] == pytest.approx([s.score for s in engine.process(nxt)], abs=1e-6)


def test_newest_valid_model_version_reaches_a_replica_and_corrupt_ones_are_rejected(kafka):
    topic = kafka.topic("model")
    trainer = _trained()
    producer = make_producer(kafka.bootstrap_servers)
    blob1 = trainer.export_weights()
    publish(producer, topic, blob1, version=1, chunk_bytes=10_000)
    trainer.fine_tune(force=True)
    blob2 = trainer.export_weights()
    chunks = publish(producer, topic, blob2, version=2, chunk_bytes=10_000)
    assert chunks == math.ceil(len(blob2) / 10_000) > 1

    replica = StreamEngine(TINY, seed=0)
    installed, rejected = [], []
    follower = ModelFollower(replica, topic, lambda: make_consumer(kafka.bootstrap_servers),
                             on_installed=installed.append, on_rejected=rejected.append)
    try:
        assert follower.catch_up() == 2
        assert replica.export_weights() != blob1
        # version 3 arrives with one chunk altered after its checksum was taken: rejected
        import hashlib

        from streamvgan.service import model_topic as mt

        digest = hashlib.sha256(blob2).hexdigest().encode()
        parts = [blob2[i : i + 10_000] for i in range(0, len(blob2), 10_000)]
        parts[1] = parts[1][:-1] + bytes([parts[1][-1] ^ 0xFF])
        for i, part in enumerate(parts):
            producer.send(topic, key=f"model/{i}".encode(), value=part, partition=0, headers=[
                (mt.H_VERSION, b"3"), (mt.H_INDEX, str(i).encode()),
                (mt.H_COUNT, str(len(parts)).encode()), (mt.H_SHA, digest)])
        producer.send(topic, key=b"model/0", value=b"x", partition=0)  # no headers at all
        producer.flush()
        follower.catch_up()
        assert replica.model_version == 2 and installed == [2]
        assert sorted(rejected) == ["checksum", "headers"]
    finally:
        follower.stop()
        producer.close()
