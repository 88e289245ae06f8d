"""Scale-out figures against a local broker: changelog bytes per stream, restore time per
10,000 streams, and the time for a published model to reach a replica.

Usage: python benchmarks/bench_scaleout.py [--streams 10000] [--repeats 3] [--bootstrap-servers HOST:PORT]

Without --bootstrap-servers it starts the embedded broker (Tansu) on a free loopback port.
Prints a markdown table (medians over repeats).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import uuid

import torch

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.tools.broker import bootstrap_or_embedded
from streamvgan.service.changelog import StateChangelog
from streamvgan.service.clients import ensure_topics, make_consumer, make_producer
from streamvgan.service.model_topic import ModelFollower, publish


def build_engine(n_streams: int, events_per_stream: int) -> StreamEngine:
    engine = StreamEngine(EngineConfig(max_streams=n_streams, warmup_events=10**9), seed=0)
    names = [f"host-{i}/cpu" for i in range(n_streams)]
    for t in range(events_per_stream):
        engine.process([Event(n, {"value": math.sin(t / 5 + i)}) for i, n in enumerate(names)])
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--events-per-stream", type=int, default=300, help="fills the replay buffers")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap-servers", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with bootstrap_or_embedded(args.bootstrap_servers) as servers:
        engine = build_engine(args.streams, args.events_per_stream)
        engine.fine_tune(force=True, steps=5)  # a fitted model, so states carry a GRU state
        names = engine.streams()
        write_s, restore_s, model_s = [], [], []
        bytes_per_stream = 0.0
        for _ in range(args.repeats):
            topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
            ensure_topics(servers, [topic], partitions=args.partitions)
            producer = make_producer(servers, max_request_size=8 * 1024 * 1024)
            log = StateChangelog(topic, lambda: make_consumer(servers, max_partition_fetch_bytes=8 * 1024 * 1024))
            start = time.perf_counter()
            log.write(producer, engine, {n: i % args.partitions for i, n in enumerate(names)})
            producer.flush()
            write_s.append(time.perf_counter() - start)
            bytes_per_stream = log.bytes_written / len(names)
            replica = StreamEngine(engine.config, seed=0)
            replica.import_weights(engine.export_weights(), engine.model_version)
            report = log.restore(replica, range(args.partitions), timeout_s=600)
            assert report.restored == len(names), report
            restore_s.append(report.seconds)

            model = f"bench-model-{uuid.uuid4().hex[:8]}"
            ensure_topics(servers, [model], partitions=1)
            follower_engine = StreamEngine(engine.config, seed=0)
            follower = ModelFollower(follower_engine, model, lambda: make_consumer(servers), poll_ms=50)
            follower.catch_up(timeout_s=5)
            follower.start()
            start = time.perf_counter()
            publish(producer, model, engine.export_weights(), version=engine.model_version)
            while follower_engine.model_version != engine.model_version and time.perf_counter() - start < 60:
                time.sleep(0.005)
            model_s.append(time.perf_counter() - start)
            follower.stop()
            producer.close()

        per10k = 10_000 / len(names)
        print(f"{len(names):,} streams, {args.partitions} partitions, median of {args.repeats}\n")
        print("| measure | value |")
        print("|---|---:|")
        print(f"| changelog bytes per univariate stream | {bytes_per_stream:,.0f} |")
        print(f"| write all states to the changelog (produce + flush), per 10,000 streams | {statistics.median(write_s) * per10k:.2f} s |")
        print(f"| restore from the changelog (read + install), per 10,000 streams | {statistics.median(restore_s) * per10k:.2f} s |")
        print(f"| publish a model ({len(engine.export_weights()):,} bytes) until a follower has swapped it in | {statistics.median(model_s) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
