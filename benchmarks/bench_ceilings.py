"""What bounds the service's events/s on this machine, apart from each other (issue 13):

* **processing**: the CPU time per event of the service's processor (decode, validate, the
  engine, forecasts, continuations, encode: :class:`ScoringProcessor`) and of the benchmark's
  model-free :class:`PassThroughProcessor`, on records held in memory, no Kafka at all;
* **client and broker**: a bare loop through the embedded broker per client library that
  consumes records of an event's size and sends two outputs per record (a score's and a
  forecast's size), flushing after each poll as the service does, with no decoding and no
  processing: the most a client library and this broker can move.

Usage: python benchmarks/bench_ceilings.py [--streams 1000] [--events 100000] [--repeats 3]

Prints markdown tables (medians over repeats, min-max in brackets). The service's events/s
cannot exceed ``1e6 / (processing us per event)`` on one core, whatever the client.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from streamvgan.service import clients
from streamvgan.service.kafka_api import TopicPartition
from streamvgan.service.processing import OutputTopics, ScoringProcessor
from streamvgan.service.settings import Settings
from streamvgan.service.wire import encode_event
from streamvgan.tools.bench import _cell, _fitted_engine, _passthrough
from streamvgan.tools.broker import EmbeddedBroker

POLL = 500  # records per poll (the service's poll_max_records default)


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list = field(default_factory=list)
    timestamp: int = 0


class _Polls:
    """Polls of ``POLL`` event records cycling over ``n_streams`` streams, made ahead."""

    def __init__(self, n_streams: int) -> None:
        self.n_streams, self.offset = n_streams, 0

    def make(self, count: int) -> list[dict]:
        polls = []
        for _ in range(count):
            records = []
            for _ in range(POLL):
                k, off = self.offset % self.n_streams, self.offset
                stream = f"host-{k}/cpu"
                value = encode_event(stream, 1_700_000_000_000 + off, float(np.sin(off / 7)))
                records.append(_Record("events", 0, off, stream.encode(), value))
                self.offset += 1
            polls.append({TopicPartition("events", 0): records})
        return polls


def processing_us_per_event(kind: str, n_streams: int, polls: int = 60) -> float:
    """CPU microseconds per event of one processor over ``polls`` polls (after a warm-up that
    registers every stream)."""
    s = Settings(input_topic="events")
    if kind == "service":
        topics = OutputTopics(s.scores_topic, s.forecasts_topic, s.continuations_topic, s.dlq_topic)
        proc = ScoringProcessor(
            _fitted_engine(s, 0),
            topics,
            forecast_every=s.forecast_every,
            continuation_every=s.continuation_every,
            continuation_samples=s.continuation_samples,
            alert_threshold=s.alert_threshold,
        )
    else:
        proc = _passthrough(s, 0)
    source = _Polls(n_streams)
    for poll in source.make(max(3, 2 * n_streams // POLL)):
        proc.process(poll)
    timed = source.make(polls)
    # as in the service, whose objects alive after start-up are frozen (the engine does it
    # when its first network is built), so collections walk only what the polls make; here
    # also what earlier repeats left, which would otherwise slow each repeat more
    gc.collect()
    gc.freeze()
    start = time.process_time()
    for poll in timed:
        proc.process(poll)
    elapsed = time.process_time() - start
    gc.unfreeze()
    return elapsed / (polls * POLL) * 1e6


def _preload(bootstrap: str, topic: str, n: int, n_streams: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        stream = f"host-{i % n_streams}/cpu"
        producer.produce(topic, key=stream.encode(), value=encode_event(stream, i, 0.5))
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush()


SCORE_BYTES, FORECAST_BYTES = 250, 700  # about a score's and a forecast's record


def _bare_confluent(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Consumer, Producer

    group = f"bare-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([topic])
    score, forecast = b"s" * SCORE_BYTES, b"f" * FORECAST_BYTES
    done, start = 0, None
    try:
        while done < n:
            messages = consumer.consume(POLL, timeout=1.0)
            if not messages:
                continue
            start = start or time.perf_counter()
            for m in messages:
                producer.produce(f"{topic}.a", key=m.key(), value=score)
                producer.produce(f"{topic}.b", key=m.key(), value=forecast)
            producer.flush()
            done += len(messages)
    finally:
        consumer.close()
    return done / (time.perf_counter() - (start or time.perf_counter()))


def _bare_kafka_python(bootstrap: str, topic: str, n: int) -> float:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=POLL,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    score, forecast = b"s" * SCORE_BYTES, b"f" * FORECAST_BYTES
    done, start = 0, None
    try:
        while done < n:
            polled = consumer.poll(timeout_ms=1000)
            count = sum(len(records) for records in polled.values())
            if not count:
                continue
            start = start or time.perf_counter()
            for records in polled.values():
                for r in records:
                    producer.send(f"{topic}.a", key=r.key, value=score)
                    producer.send(f"{topic}.b", key=r.key, value=forecast)
            producer.flush()
            done += count
    finally:
        consumer.close()
        producer.close()
    return done / (time.perf_counter() - (start or time.perf_counter()))


def bare_loop_events_per_s(bootstrap: str, client: str, n: int, n_streams: int) -> float:
    """Records per second (wall) through the bare loop of ``client``, from the first poll."""
    topic = f"bare-{uuid.uuid4().hex[:6]}"
    clients.ensure_topics(bootstrap, [topic, f"{topic}.a", f"{topic}.b"], partitions=3)
    _preload(bootstrap, topic, n, n_streams)
    loop = _bare_confluent if client == "confluent-kafka" else _bare_kafka_python
    return loop(bootstrap, topic, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100_000, help="per bare-loop run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {args.streams:,} "
        f"streams, polls of {POLL}; median of {args.repeats} (min-max)\n"
    )
    us = {kind: [] for kind in ("service", "pass-through")}
    for _ in range(args.repeats):
        for kind in us:
            us[kind].append(processing_us_per_event(kind, args.streams))
            print(f"{kind}: {us[kind][-1]:.1f} us per event", file=sys.stderr, flush=True)
    print("| processor (no Kafka) | CPU us per event | events/s of one core at most |")
    print("|---|---:|---:|")
    for kind, values in us.items():
        print(f"| {kind} | {_cell(values, '.1f')} | {_cell([1e6 / v for v in values], ',.0f')} |")
    rates: dict[str, list[float]] = {"kafka-python": [], "confluent-kafka": []}
    with EmbeddedBroker() as broker:
        for _ in range(args.repeats):
            for client in rates:
                rates[client].append(
                    bare_loop_events_per_s(
                        broker.bootstrap_servers, client, args.events, args.streams
                    )
                )
    print("\n| bare loop through the embedded broker (no processing) | records/s, 2 outputs each |")
    print("|---|---:|")
    for client, values in rates.items():
        print(f"| {client} | {_cell(values, ',.0f')} |")


if __name__ == "__main__":
    main()
