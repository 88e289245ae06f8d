"""Throughput of `streamvgan serve` with 1 and 2 replicas in one consumer group, same broker,
same pre-loaded input, weights from the model topic (no fine-tuning in the replicas).

Usage: python benchmarks/bench_replicas.py [--streams 1000] [--events 20000] [--partitions 4]

Without --bootstrap-servers it starts the embedded broker. events/s = score records / span of
their broker timestamps (first to last), so start-up and group joins are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import TopicPartition

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.tools.broker import bootstrap_or_embedded
from streamvgan.service.clients import ensure_topics, make_consumer, make_producer
from streamvgan.service.model_topic import model_topic, publish

ROOT = Path(__file__).resolve().parents[1]


def run(servers: str, n_replicas: int, streams: int, events: int, partitions: int, weights: bytes) -> float:
    topic, group = f"bench-in-{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:6]}"
    ensure_topics(servers, [topic, f"{topic}.scores"], partitions=partitions)
    ensure_topics(servers, [model_topic(group, topic)], partitions=1)
    producer = make_producer(servers)
    publish(producer, model_topic(group, topic), weights, version=1)
    names = [f"host-{i}/cpu" for i in range(streams)]
    for i in range(events):
        s = names[i % streams]
        producer.send(topic, key=s.encode(), value=json.dumps({"stream": s, "ts": i, "value": math.sin(i / 50)}).encode())
    producer.flush()
    producer.close()
    tmp = Path(tempfile.mkdtemp())
    config = tmp / "c.toml"
    config.write_text(
        f'bootstrap_servers = "{servers}"\ninput_topic = "{topic}"\ngroup_id = "{group}"\n'
        'model_source = "topic"\nmetrics_port = -1\npoll_max_records = 500\n'
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", "streamvgan.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        for _ in range(n_replicas)
    ]
    consumer = make_consumer(servers)
    tps = [TopicPartition(f"{topic}.scores", p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    stamps: list[int] = []
    deadline = time.monotonic() + 900
    try:
        while len(stamps) < events and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                stamps.extend(r.timestamp for r in recs)
    finally:
        consumer.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    return len(stamps) / max((max(stamps) - min(stamps)) / 1000.0, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers", default=None)
    args = parser.parse_args()
    with bootstrap_or_embedded(args.bootstrap_servers) as servers:
        engine = StreamEngine(EngineConfig(), seed=0)
        for t in range(300):
            engine.process([Event("s", {"value": math.sin(t / 7)})])
        engine.fine_tune(force=True, steps=20)
        weights = engine.export_weights()
        rows = [(n, run(servers, n, args.streams, args.events, args.partitions, weights)) for n in (1, 2)]
        print(f"{args.events:,} events, {args.streams:,} streams, {args.partitions} partitions, "
              f"{os.cpu_count()} CPU cores\n")
        print("| replicas | events/s | vs 1 replica |")
        print("|---:|---:|---:|")
        for n, rate in rows:
            print(f"| {n} | {rate:,.0f} | {rate / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
