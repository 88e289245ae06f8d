"""The engine's per-poll work beside scoring: forecasts and changelog exports of many streams.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_poll_outputs.py [--streams 1000] [--repeats 7]

The service asks the engine for the forecasts of every stream due in a poll, and at each commit
for the state of every stream changed since the last one. Both were one call per stream; the
engine now does each for all the streams at once (``StreamEngine.forecast(streams)`` in one
pass over their channels, ``StreamEngine.export_streams``). Each row gives the CPU time of one
call for ``--streams`` streams, and of the same work as one call per stream (what the engine
did before), median over ``--repeats``, measured in the same process, and their ratio.
Outputs are equal (tests/engine/test_forecast_blend.py, tests/engine/test_engine.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from streamvgan.engine import EngineConfig, Event, StreamEngine


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    engine = StreamEngine(EngineConfig(init="pretrained"), seed=0)  # the network serves at once
    streams = [f"s{i}" for i in range(args.streams)]
    rng = np.random.default_rng(0)
    for _ in range(30):
        engine.process([Event(s, {"value": float(rng.normal())}) for s in streams])
    rows = [
        (
            "forecast",
            lambda: engine.forecast(streams),
            lambda: [engine.forecast([s]) for s in streams],
        ),
        (
            "changelog export",
            lambda: engine.export_streams(streams),
            lambda: [engine.export_stream(s) for s in streams],
        ),
    ]
    lines = [
        f"{args.streams} streams, CPU ms per call, median of {args.repeats}",
        "",
        "| what | all streams in one call | one call per stream | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, together, alone in rows:
        a, b = cpu_ms(together, args.repeats), cpu_ms(alone, args.repeats)
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.1f}x |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
