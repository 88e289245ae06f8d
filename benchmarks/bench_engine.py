"""Throughput of the engine and the River adapter, next to River's HalfSpaceTrees, in one run.

Usage: python benchmarks/bench_engine.py [--repeats 5] [--seconds 2] [--threads 1]

Prints a markdown table: events per second (median over repeats) of
* ``VAEGANDetector.score_one`` + ``learn_one`` on one stream (the River way),
* River's ``HalfSpaceTrees`` behind a ``MinMaxScaler`` doing the same,
* ``StreamEngine.process`` fed one poll at a time with 1, 100 and 10,000 streams (one event per
  stream per poll), with fitted weights (the model path, not the cold-start fallback),
and the bytes of state per stream. Fine-tuning is excluded from the timings (it runs beside
scoring in the service); its cost per fine-tune is reported separately.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import numpy as np
import torch
from river import anomaly, compose, preprocessing

import streamvgan
from streamvgan.engine import EngineConfig, Event, StreamEngine


def _value(t: int, stream: int = 0) -> float:
    return math.sin(t / 7 + stream) + 0.1 * math.cos(t * 1.3 + stream)


def trained_weights(seed: int = 0) -> tuple[bytes, int, float]:
    engine = StreamEngine(EngineConfig(warmup_events=300), seed=seed)
    for t in range(300):
        engine.process([Event("s", {"value": _value(t)})])
    start = time.perf_counter()
    report = engine.fine_tune()
    assert report is not None
    return engine.export_weights(), engine.model_version, time.perf_counter() - start


def bench_river(model, seconds: float) -> float:
    t, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            x = {"value": _value(t)}
            model.score_one(x)
            model.learn_one(x)
            t += 1
    return t / (time.perf_counter() - start)


def bench_engine(n_streams: int, weights: bytes, version: int, seconds: float) -> float:
    engine = StreamEngine(EngineConfig(max_streams=max(n_streams, 1), fit_every=10**9), seed=0)
    engine.import_weights(weights, version)
    names = [f"host-{i}/cpu" for i in range(n_streams)]
    t = 0
    engine.process([Event(n, {"value": _value(t, i)}) for i, n in enumerate(names)])  # register
    events, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or events == 0:
        t += 1
        engine.process([Event(n, {"value": _value(t, i)}) for i, n in enumerate(names)])
        events += n_streams
    return events / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    weights, version, fit_s = trained_weights()
    detector = streamvgan.VAEGANDetector(seed=0, warmup_events=300, fit_every=10**9)
    for t in range(300):
        detector.learn_one({"value": _value(t)})
    assert detector.model_version == 1
    hst = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=0))
    for t in range(300):
        hst.learn_one({"value": _value(t)})

    rows: dict[str, list[float]] = {
        "VAEGANDetector score_one+learn_one, 1 stream": [],
        "River HalfSpaceTrees (MinMaxScaler) score_one+learn_one, 1 stream": [],
        "StreamEngine.process, 1 stream": [],
        "StreamEngine.process, 100 streams": [],
        "StreamEngine.process, 10,000 streams": [],
    }
    for _ in range(args.repeats):
        values = [
            bench_river(detector, args.seconds),
            bench_river(hst, args.seconds),
            bench_engine(1, weights, version, args.seconds),
            bench_engine(100, weights, version, args.seconds),
            bench_engine(10_000, weights, version, args.seconds),
        ]
        for key, value in zip(rows, values):
            rows[key].append(value)

    engine = StreamEngine(EngineConfig(), seed=0)
    hst_rate = statistics.median(rows["River HalfSpaceTrees (MinMaxScaler) score_one+learn_one, 1 stream"])
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"numpy {np.__version__}; median of {args.repeats} runs of {args.seconds:.0f} s each\n")
    print("| what | events/s (median) | min | max | vs HalfSpaceTrees |")
    print("|---|---:|---:|---:|---:|")
    for key, values in rows.items():
        med = statistics.median(values)
        print(f"| {key} | {med:,.0f} | {min(values):,.0f} | {max(values):,.0f} | {med / hst_rate:.2f}x |")
    print(f"\nstate per univariate stream: {engine.state_bytes_per_stream():,} bytes (arrays)")
    print(f"one first fit (300 optimiser steps, batch 32, window 64): {fit_s:.1f} s")


if __name__ == "__main__":
    main()
