"""How long a record waits for a consumer that is already waiting on an empty partition.

Usage: python benchmarks/bench_fetch_wait.py [--fetch-max-wait-ms 500,100,5] [--records 30]
                                             [--bootstrap-servers HOST:PORT]

For each ``fetch_max_wait_ms``: a kafka-python consumer polls an empty one-partition topic; 5 to
83 ms after each poll began, another thread produces one record stamped with its send time
(``linger_ms=0``, flushed); the latency is the time the poll returned it minus that stamp.
A broker that answers a waiting fetch as soon as a record arrives (Apache Kafka) gives a few
milliseconds whatever the setting; one that answers when the wait runs out gives latencies
that follow the setting. Without ``--bootstrap-servers`` it starts the embedded broker.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer

from streamvgan.service import clients
from streamvgan.tools.broker import bootstrap_or_embedded


def latencies_ms(bootstrap: str, fetch_max_wait_ms: int, n: int) -> list[float]:
    topic = f"fetch-wait-{uuid.uuid4().hex[:6]}"
    clients.ensure_topics(bootstrap, [topic], partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        fetch_max_wait_ms=fetch_max_wait_ms,
        auto_offset_reset="earliest",
    )
    try:
        producer.send(topic, b"0").get(timeout=30)
        while not consumer.poll(1000):  # joined, assigned, and the first record read
            pass
        out: list[float] = []
        for i in range(n):
            delay_s = 0.005 + 0.013 * (i % 7)

            def send_later(delay_s: float = delay_s) -> None:
                time.sleep(delay_s)
                producer.send(topic, str(time.time()).encode())
                producer.flush()

            threading.Thread(target=send_later).start()
            got: dict = {}
            while not got:
                got = consumer.poll(timeout_ms=5000)
            now = time.time()
            out.extend((now - float(r.value)) * 1000 for rs in got.values() for r in rs)
        return out
    finally:
        consumer.close()
        producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch-max-wait-ms", default="500,100,5")
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--bootstrap-servers", default=None)
    args = parser.parse_args()
    with bootstrap_or_embedded(args.bootstrap_servers) as bootstrap:
        print("| fetch_max_wait_ms | records | latency median ms | max ms |")
        print("|---:|---:|---:|---:|")
        for wait in (int(w) for w in args.fetch_max_wait_ms.split(",")):
            lat = latencies_ms(bootstrap, wait, args.records)
            print(f"| {wait} | {len(lat)} | {statistics.median(lat):.1f} | {max(lat):.1f} |")


if __name__ == "__main__":
    main()
