"""Throughput of the engine against its compute limit, and of the River adapter, in one run.

Usage: python benchmarks/bench_engine.py [--repeats 5] [--seconds 2] [--threads 1]
                                         [--sizes 1,100,10000] [--init pretrained|PATH]

Prints markdown tables, medians over repeats (every repeat measures every row in turn), in
events per second of this process's CPU time (see ``_rate``):

* for 1, 100 and 10,000 streams (one event per stream per poll, fitted weights: the model
  path, not the cold-start fallback): ``StreamEngine.process`` events/s, the *compute limit*
  (the bare network step on a batch of the same size, plus the critic where the engine scores
  with it (``critic_weight > 0``; not by default), the torch calls alone, on ready tensors)
  and their ratio; the polls are built before the clock starts (making
  events is the caller's cost, not the engine's), and cycled;
* the columnar ``StreamEngine.process_columns`` at the same sizes, where the engine has it;
* ``VAEGANDetector.score_one`` + ``learn_one`` on one stream (the River way), and River's
  ``HalfSpaceTrees`` behind a ``MinMaxScaler`` doing the same;
* the bytes of state per stream. Fine-tuning is excluded from the timings (it runs beside
  scoring in the service); its cost per fine-tune is reported separately.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from river import anomaly, compose, preprocessing

import streamvgan
from streamvgan.engine import EngineConfig, Event, StreamEngine


def _value(t: int, stream: int = 0) -> float:
    return math.sin(t / 7 + stream) + 0.1 * math.cos(t * 1.3 + stream)


def trained_weights(seed: int = 0, init: str = "pretrained") -> tuple[bytes, int, float]:
    # the shipped weights (init="pretrained", the default) fine-tuned on one stream: forced,
    # as a pretrained engine is not due for a fit after 300 events
    engine = StreamEngine(EngineConfig(warmup_events=300, init=init), seed=seed)
    for t in range(300):
        engine.process([Event("s", {"value": _value(t)})])
    start = time.perf_counter()
    report = engine.fine_tune(steps=300, force=True)
    assert report is not None
    return engine.export_weights(), engine.model_version, time.perf_counter() - start


def _rate(step: Callable[[], int], seconds: float) -> float:
    """Events per CPU second of ``step()`` (which returns the events it handled), run for
    ``seconds`` of CPU time. CPU time of this process, not wall time: on a machine shared with
    other jobs, time spent waiting for a core is not the engine's (with one torch thread, the
    two agree on an idle machine)."""
    events, start = 0, time.process_time()
    while time.process_time() - start < seconds or events == 0:
        events += step()
    return events / (time.process_time() - start)


def bench_river(model, seconds: float) -> float:
    t = 0

    def step() -> int:
        nonlocal t
        for _ in range(50):
            x = {"value": _value(t)}
            model.score_one(x)
            model.learn_one(x)
            t += 1
        return 50

    return _rate(step, seconds)


class EngineBench:
    """One engine with ``n`` streams registered and fitted weights, and polls made ahead."""

    def __init__(
        self, n: int, weights: bytes, version: int, polls: int = 4, init: str = "pretrained"
    ) -> None:
        self.n = n
        cfg = EngineConfig(max_streams=max(n, 1), fit_every=10**9, init=init)
        self.engine = StreamEngine(cfg, seed=0)
        self.engine.import_weights(weights, version)
        names = [f"host-{i}/cpu" for i in range(n)]
        self.polls = [
            [Event(name, {"value": _value(t, i)}) for i, name in enumerate(names)]
            for t in range(polls)
        ]
        self.engine.process(self.polls[0])  # register the streams
        self.k = 0

    def _next(self) -> list[Event]:
        self.k += 1
        return self.polls[self.k % len(self.polls)]

    def process(self, seconds: float) -> float:
        return _rate(lambda: len(self.engine.process(self._next())), seconds)

    def process_columns(self, seconds: float) -> float | None:
        if not hasattr(self.engine, "process_columns"):
            return None
        return _rate(lambda: len(self.engine.process_columns(self._next())), seconds)

    def limit(self, seconds: float, with_critic: bool | None = None) -> float:
        """The bare network step at batch ``n``, and the critic where the engine runs it when
        scoring (what the engine cannot beat); ``with_critic`` forces the critic in or out."""
        model = self.engine.model
        if with_critic is None:
            with_critic = getattr(self.engine.config, "critic_weight", 0.25) > 0
        critic = model.critic.frozen() if with_critic else None
        cfg = model.config
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((self.n, cfg.n_features), generator=gen)
        h = torch.randn((self.n, cfg.hidden_size), generator=gen)
        window = torch.randn((self.n, cfg.critic_window, cfg.n_features), generator=gen)

        def step() -> int:
            model.step(x, h)
            if critic is not None:
                with torch.no_grad():
                    critic(window)
            return self.n

        return _rate(step, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--sizes", default="1,100,10000", help="streams per poll, comma-separated")
    parser.add_argument(
        "--init",
        default="pretrained",
        help="first weights of every engine: 'pretrained' (shipped) or a `streamvgan pretrain` "
        "file (its network's size; the size sweep of docs/pretraining.md)",
    )
    args = parser.parse_args()
    sizes = tuple(int(x) for x in args.sizes.split(","))
    torch.set_num_threads(args.threads)

    weights, version, fit_s = trained_weights(init=args.init)
    detector = streamvgan.VAEGANDetector(seed=0, warmup_events=300, fit_every=10**9, init=args.init)
    for t in range(300):
        detector.learn_one({"value": _value(t)})
    assert detector.model_version == 1
    hst = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=0))
    for t in range(300):
        hst.learn_one({"value": _value(t)})
    benches = {n: EngineBench(n, weights, version, init=args.init) for n in sizes}

    rows: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        measured = {
            "river": bench_river(detector, args.seconds),
            "hst": bench_river(hst, args.seconds),
        }
        for n, bench in benches.items():
            measured[f"engine {n}"] = bench.process(args.seconds)
            measured[f"limit {n}"] = bench.limit(args.seconds)
            measured[f"critic limit {n}"] = bench.limit(args.seconds, with_critic=True)
            columns = bench.process_columns(args.seconds)
            if columns is not None:
                measured[f"columns {n}"] = columns
        for n in sizes:  # each ratio from one repeat, engine and limit measured back to back
            measured[f"ratio {n}"] = measured[f"engine {n}"] / measured[f"limit {n}"]
            measured[f"critic ratio {n}"] = measured[f"engine {n}"] / measured[f"critic limit {n}"]
            if f"columns {n}" in measured:
                measured[f"cratio {n}"] = measured[f"columns {n}"] / measured[f"limit {n}"]
        for key, value in measured.items():
            rows.setdefault(key, []).append(value)

    def med(key: str) -> float:
        return statistics.median(rows[key])

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, numpy {np.__version__}; events per CPU second, "
        f"median of {args.repeats} runs of {args.seconds:g} s each (min-max in brackets; a "
        "ratio is the median of the repeats' ratios)\n"
    )
    print(
        "| streams | engine events/s | compute limit events/s | engine / limit |"
        " process_columns events/s | columns / limit | step + critic events/s |"
        " engine / (step + critic) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        e, lim = rows[f"engine {n}"], rows[f"limit {n}"]
        cols = rows.get(f"columns {n}")
        col_text = (
            f"{statistics.median(cols):,.0f} ({min(cols):,.0f}-{max(cols):,.0f}) | "
            f"{med(f'cratio {n}'):.2f}"
            if cols
            else "n/a | n/a"
        )
        print(
            f"| {n:,} | {med(f'engine {n}'):,.0f} ({min(e):,.0f}-{max(e):,.0f}) | "
            f"{med(f'limit {n}'):,.0f} ({min(lim):,.0f}-{max(lim):,.0f}) | "
            f"{med(f'ratio {n}'):.2f} | {col_text} | {med(f'critic limit {n}'):,.0f} | "
            f"{med(f'critic ratio {n}'):.2f} |"
        )
    print("\n| one stream, score_one + learn_one | events/s | vs HalfSpaceTrees |")
    print("|---|---:|---:|")
    for key, label in (
        ("river", "VAEGANDetector (season_window=600, its default)"),
        ("hst", "River HalfSpaceTrees (MinMaxScaler)"),
    ):
        values = rows[key]
        print(
            f"| {label} | {med(key):,.0f} ({min(values):,.0f}-{max(values):,.0f}) | "
            f"{med(key) / med('hst'):.3f}x |"
        )
    engine = StreamEngine(EngineConfig(init=args.init), seed=0)
    print(f"\nstate per univariate stream: {engine.state_bytes_per_stream():,} bytes (arrays)")
    print(f"one fine-tune (300 optimiser steps, batch 32, window 64): {fit_s:.1f} s")


if __name__ == "__main__":
    main()
