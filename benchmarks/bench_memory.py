"""Memory per stream of the service, and checkpoint time and size, at many streams.

Usage: python benchmarks/bench_memory.py [--ids 1000000] [--max-streams 1000000]
       [--checkpoint-streams 100000] [--batch 1000]

Row 1: ``--ids`` distinct stream ids, one event each, go through the service's own record
handler (``Application._handle``: decode, one batched ``StreamEngine.process`` per poll, score
messages, the per-stream maps the service keeps for ``*_every`` counts and for the changelog)
with ``--max-streams`` streams kept. Outputs go to a producer that drops them, and the changelog
maps are switched on without a broker: this measures memory, not Kafka. RSS (``VmRSS``) is
read before the first record and after the last; the difference divided by the streams held
is the cost of one stream, arrays and Python bookkeeping together (issue 11's target: at most
4 KiB). With ``--ids`` above ``--max-streams`` it also shows the maps stay bounded.

Row 2: checkpoint (``service.checkpoints.save_checkpoint``) time and size at
``--checkpoint-streams`` streams, and the time to load it back.
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry

from streamvgan.engine import EngineConfig, StreamEngine
from streamvgan.service import checkpoints
from streamvgan.service.app import Application
from streamvgan.service.settings import Settings
from streamvgan.service.wire import encode_event


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class _Dropped:
    def add_errback(self, callback: Any) -> _Dropped:
        return self


class _DropProducer:
    """Takes ``send`` and ``flush`` and keeps nothing (the memory of Kafka is not measured)."""

    def send(self, *args: Any, **kwargs: Any) -> _Dropped:
        return _Dropped()

    def flush(self) -> None:
        pass


def memory_row(ids: int, max_streams: int, batch: int, seed: int) -> dict[str, float]:
    settings = Settings(input_topic="bench-in", metrics_port=-1, max_streams=max_streams,
                        forecast_every=0, continuation_every=0, engine_params={
                            "warmup_events": 10**12})
    app = Application(settings, registry=CollectorRegistry())
    app._changelog = object()  # type: ignore[assignment]  # keep the changelog maps, no broker
    producer = _DropProducer()
    rng = np.random.default_rng(seed)
    tp = TopicPartition("bench-in", 0)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    for first in range(0, ids, batch):
        records = [
            ConsumerRecord("bench-in", k % 4, -1, k, 0, 0, None,
                           encode_event(f"host-{k:07d}/cpu", 1_700_000_000_000 + k,
                                        float(rng.normal())), [], None, -1, -1, -1)
            for k in range(first, min(first + batch, ids))
        ]
        app._handle({tp: records}, producer)
    seconds = time.perf_counter() - start
    app._dirty.clear()  # what the next commit does after writing the changelog
    gc.collect()
    after = rss_bytes()
    held = app.engine.n_streams
    return {
        "ids": ids, "max_streams": max_streams, "held": held, "seconds": seconds,
        "rss_before": before, "rss_after": after, "per_stream": (after - before) / held,
        "arrays_per_stream": app.engine.state_bytes_per_stream(),
        "counts": len(app._counts), "stream_partition": len(app._stream_partition),
        "capacity": app.engine.state.capacity,
    }


def checkpoint_row(n_streams: int, batch: int, seed: int) -> dict[str, float]:
    from streamvgan.engine import Event

    config = EngineConfig.from_params(max_streams=n_streams, warmup_events=10**12)
    engine = StreamEngine(config, seed=seed)
    rng = np.random.default_rng(seed)
    for first in range(0, n_streams, batch):
        engine.process([Event(f"host-{k:07d}/cpu", {"value": float(rng.normal())})
                        for k in range(first, min(first + batch, n_streams))])
    root = Path(tempfile.mkdtemp(prefix="streamvgan-bench-ckpt-"))
    try:
        start = time.perf_counter()
        path = checkpoints.save_checkpoint(engine, root)
        save_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in path.iterdir())
        start = time.perf_counter()
        loaded = checkpoints.load_checkpoint(root)
        load_s = time.perf_counter() - start
        assert loaded is not None and loaded.n_streams == n_streams
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"streams": n_streams, "save_s": save_s, "load_s": load_s, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--max-streams", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-streams", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy "
          f"{np.__version__}, {args.threads} threads")
    if args.ids > 0:  # --ids 0: the checkpoint row only
        _print_memory_row(memory_row(args.ids, args.max_streams, args.batch, args.seed))
    gc.collect()
    if args.checkpoint_streams > 0:
        _print_checkpoint_row(checkpoint_row(args.checkpoint_streams, args.batch, args.seed))


def _print_memory_row(m: dict[str, float]) -> None:
    print()
    print("| distinct ids | --max-streams | streams held | service maps (counts, partitions) "
          "| RSS before | RSS after | RSS per stream | of which state arrays | time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {m['ids']:,} | {m['max_streams']:,} | {m['held']:,} | {m['counts']:,}, "
          f"{m['stream_partition']:,} | {m['rss_before'] / 2**20:,.0f} MiB | "
          f"{m['rss_after'] / 2**20:,.0f} MiB | {m['per_stream']:,.0f} B "
          f"({m['per_stream'] / 1024:.2f} KiB) | {m['arrays_per_stream']:,} B | "
          f"{m['seconds']:.0f} s |")


def _print_checkpoint_row(c: dict[str, float]) -> None:
    print()
    print("| streams | checkpoint write | size | load |")
    print("|---:|---:|---:|---:|")
    print(f"| {c['streams']:,} | {c['save_s']:.2f} s | {c['bytes'] / 1e6:,.0f} MB "
          f"({c['bytes'] / c['streams']:,.0f} B per stream) | {c['load_s']:.2f} s |")


if __name__ == "__main__":
    main()
