"""CPU per record sent with kafka-python: the service's producer against the same producer with
kafka-python's default partitioner.

Usage: python benchmarks/bench_producer_send.py [--records 20000] [--repeats 7] [--streams 1000]
                                                [--bootstrap-servers HOST:PORT]

Both producers come from ``streamvgan.service.clients.make_producer`` (the service's settings:
``acks=all``, ``linger_ms=5``); one keeps the service's ``KeyedPartitioner``, the other is given
``kafka.partitioner.DefaultPartitioner()``. Each repeat sends ``--records`` score-sized records
keyed by ``--streams`` stream ids round robin to a 3-partition topic with each producer in
turn, then flushes; the figure is this process's CPU time per record (the producer's sender
thread included), median (min-max) over repeats. Without ``--bootstrap-servers`` it starts the
embedded broker.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from kafka.partitioner.default import DefaultPartitioner

from streamvgan.service import clients
from streamvgan.tools.broker import bootstrap_or_embedded

VALUE = (
    b'{"stream":"host-1/cpu","ts":1234567890123,"score":0.123456,"raw":0.5,"components":'
    b'{"surprise":0.1,"reconstruction":0.2,"critic":0.0,"jump":0.3,"level":0.1},'
    b'"model_version":3,"warm":true,"anomaly":false,"schema_version":2}'
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--bootstrap-servers", default=None)
    args = parser.parse_args()
    with bootstrap_or_embedded(args.bootstrap_servers) as bootstrap:
        topic = f"send-{uuid.uuid4().hex[:6]}"
        clients.ensure_topics(bootstrap, [topic], partitions=3)
        keys = [f"host-{i}/cpu".encode() for i in range(args.streams)]
        producers = {
            "service's (KeyedPartitioner)": clients.make_producer(bootstrap),
            "kafka-python's DefaultPartitioner": clients.make_producer(
                bootstrap, partitioner=DefaultPartitioner()
            ),
        }
        for producer in producers.values():  # connected, metadata known
            for i in range(3000):
                producer.send(topic, key=keys[i % len(keys)], value=VALUE)
            producer.flush()
        us: dict[str, list[float]] = {name: [] for name in producers}
        for _ in range(args.repeats):
            for name, producer in producers.items():
                start = time.process_time()
                for i in range(args.records):
                    producer.send(topic, key=keys[i % len(keys)], value=VALUE)
                producer.flush()
                us[name].append((time.process_time() - start) / args.records * 1e6)
        for producer in producers.values():
            producer.close()
    print(f"| producer ({args.streams:,} keys, {len(VALUE)}-byte records) | CPU us per record |")
    print("|---|---:|")
    for name, values in us.items():
        print(f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")


if __name__ == "__main__":
    main()
