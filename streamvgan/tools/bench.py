"""``streamvgan bench``: what the model costs on top of Kafka I/O.

For each number of streams (1, 1,000 and 10,000 by default), against one local broker:

(a) a pass-through: the service's own loop (:class:`~streamvgan.service.app.Application`)
    with the model-free :class:`~streamvgan.service.processing.PassThroughProcessor`, which
    decodes and validates each record exactly as the service does and produces the same
    number and size of output records (a score per event, a forecast and a continuation per
    stream when due) filled from the input values; it keeps no state, so it writes no
    changelog and no checkpoint;
(b) the service (the same :class:`~streamvgan.service.app.Application`) with a fitted model.

Each runs two phases on its own input topic. *Throughput*: ``--events`` events are loaded
first, then consumed as fast as possible; events/s is the number of score records over the
span of their timestamps (so the first poll's own processing time is not counted: use enough
events for many polls). *Latency*: events are then produced at a steady rate (a
fraction of the service's throughput, the same for both) for ``--latency-s`` seconds;
end-to-end latency is the output record's timestamp minus the input record's send time
(carried in ``ts``), both taken on this machine, so it spans produce, broker, consume, model
and produce again. The paced load comes from a process of its own, as a service's producers
are elsewhere: in the benchmark's own process its Python would share the interpreter lock
with the service's threads.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamvgan.progress import Progress

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this Kafka instead of starting the embedded broker",
    )
    parser.add_argument(
        "--streams", default="1,1000,10000", help="comma-separated numbers of streams"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=20000,
        help="events of the throughput phase (at least 3 per stream)",
    )
    parser.add_argument(
        "--latency-s", type=float, default=10.0, help="seconds of the paced latency phase"
    )
    parser.add_argument(
        "--latency-load",
        type=float,
        default=0.5,
        help="paced rate as a fraction of the service's measured throughput",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="paced rate in events/s (default: --latency-load x the service's throughput)",
    )
    parser.add_argument(
        "--kafka-clients",
        default="kafka-python",
        help="comma-separated client libraries, each measured at every number of streams in "
        "the same run: kafka-python, confluent-kafka",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each row (service, then pass-through, each time); with more than one, "
        "each cell is the median (min-max), the ratio the median of the runs' ratios",
    )
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input topic")
    parser.add_argument(
        "--poll-max-records", type=int, default=500, help="records per poll for both contestants"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and model")
    parser.add_argument(
        "--engine-param",
        dest="engine_params",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="EngineConfig parameter for the service",
    )
    parser.add_argument(
        "--setting",
        dest="settings",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="service setting (a Settings field, e.g. state_changelog=false)",
    )


@dataclass
class Result:
    """One contestant at one number of streams."""

    events_per_s: float
    p50_ms: float
    p99_ms: float
    paced_rate: float
    n_latency: int


KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")


def main(args: argparse.Namespace) -> int:
    from streamvgan.errors import ConfigurationError
    from streamvgan.service.settings import _parse_engine_param
    from streamvgan.tools.broker import bootstrap_or_embedded

    counts = [int(x) for x in str(args.streams).split(",") if x.strip()]
    args.clients = [x.strip() for x in str(args.kafka_clients).split(",") if x.strip()]
    for client in args.clients:
        if client not in KAFKA_CLIENTS:
            raise ConfigurationError(
                f"--kafka-clients {client!r}: use one or more of {', '.join(KAFKA_CLIENTS)}"
            )
    if args.repeats < 1:
        raise ConfigurationError(f"--repeats {args.repeats}: use 1 or more")
    engine_params = dict(_parse_engine_param(p) for p in args.engine_params or [])
    args.extra_settings = dict(_parse_engine_param(p) for p in args.settings or [])
    _check_settings(args.extra_settings, args)
    with bootstrap_or_embedded(args.bootstrap_servers) as servers:
        rows = run_bench(servers, counts, args, engine_params)
    print(format_table(rows), flush=True)
    return 0


def _fixed_settings(
    bootstrap_servers: str, topic: str, args: argparse.Namespace, engine_params: dict[str, Any]
) -> dict[str, Any]:
    """The settings the benchmark sets itself for both contestants (`--setting` may not)."""
    return dict(
        bootstrap_servers=bootstrap_servers,
        input_topic=topic,
        group_id=topic,
        metrics_port=-1,
        poll_max_records=args.poll_max_records,
        seed=args.seed,
        engine_params=engine_params,
    )


def _check_settings(extra: dict[str, Any], args: argparse.Namespace) -> None:
    from streamvgan.errors import ConfigurationError
    from streamvgan.service.settings import Settings

    known = set(Settings.model_fields)
    fixed = set(_fixed_settings("", "", args, {})) | {"kafka_client"}
    for key in extra:
        if key not in known or key in fixed:
            raise ConfigurationError(
                f"--setting {key}: not a setting the benchmark lets you change; use a field of "
                f"streamvgan.service.settings.Settings other than {', '.join(sorted(fixed))}"
            )


#: streams, events, pass-through and service (one Result per repeat each), client
Row = tuple[int, int, list[Result], list[Result], str]


def run_bench(
    bootstrap_servers: str,
    counts: Sequence[int],
    args: argparse.Namespace,
    engine_params: dict[str, Any],
) -> list[Row]:
    rows: list[Row] = []
    for n_streams in counts:
        for client in getattr(args, "clients", ["kafka-python"]):
            n_events = max(args.events, 3 * n_streams)
            runs: tuple[list[Result], list[Result]] = ([], [])
            for repeat in range(getattr(args, "repeats", 1)):
                log.info(
                    "bench: %d streams, %d events, %s, run %d", n_streams, n_events, client, repeat
                )
                passthrough, service = _run_pair(
                    bootstrap_servers, n_streams, n_events, args, engine_params, client
                )
                runs[0].append(passthrough)
                runs[1].append(service)
            rows.append((n_streams, n_events, runs[0], runs[1], client))
    return rows


def _run_pair(
    bootstrap_servers: str,
    n_streams: int,
    n_events: int,
    args: argparse.Namespace,
    engine_params: dict[str, Any],
    client: str,
) -> tuple[Result, Result]:
    """The service, then the pass-through at the service's paced rate: one row's run."""
    common = (bootstrap_servers, n_streams, n_events, args, engine_params)
    service = _run_contestant("service", *common, rate=args.latency_rate, client=client)
    passthrough = _run_contestant("passthrough", *common, rate=service.paced_rate, client=client)
    log.info(
        "bench %d streams, %s: pass-through %.0f ev/s, service %.0f ev/s",
        n_streams,
        client,
        passthrough.events_per_s,
        service.events_per_s,
    )
    return passthrough, service


def format_table(rows: Sequence[Row]) -> str:
    """One line per row; over several runs each cell is the median (min-max) of the runs and
    the ratio is the median of the runs' own ratios (each from one run's pair)."""
    lines = [
        "| streams | events | pass-through events/s | service events/s | ratio b/a "
        "| paced load events/s | pass-through p50 / p99 ms | service p50 / p99 ms | client |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n_streams, n_events, a, b, client in rows:
        ratios = [
            y.events_per_s / x.events_per_s if x.events_per_s else float("nan")
            for x, y in zip(a, b)
        ]
        lines.append(
            f"| {n_streams:,} | {n_events:,} | {_cell([x.events_per_s for x in a], ',.0f')} "
            f"| {_cell([y.events_per_s for y in b], ',.0f')} | {statistics.median(ratios):.2f} "
            f"| {_cell([y.paced_rate for y in b], ',.0f')} "
            f"| {_cell([x.p50_ms for x in a], '.0f')} / {_cell([x.p99_ms for x in a], '.0f')} "
            f"| {_cell([y.p50_ms for y in b], '.0f')} / {_cell([y.p99_ms for y in b], '.0f')} "
            f"| {client} |"
        )
    return "\n".join(lines)


def _cell(values: Sequence[float], spec: str) -> str:
    """One value as it is; several as their median (min-max)."""
    if len(values) == 1:
        return format(values[0], spec)
    low, high = format(min(values), spec), format(max(values), spec)
    return f"{format(statistics.median(values), spec)} ({low}-{high})"


# -- one contestant ---------------------------------------------------------------------------


def _events(
    n_streams: int, start: int, n: int, rng: np.random.Generator
) -> list[tuple[str, float]]:
    i = np.arange(start, start + n)
    values = np.sin((i // n_streams) / 7.0) + 0.1 * rng.standard_normal(n)  # a sine per stream
    return [(f"host-{k % n_streams}/cpu", float(v)) for k, v in zip(i, values)]


def _produce(
    producer: Any, topic: str, events: list[tuple[str, float]], rate: float | None
) -> None:
    from streamvgan.service.wire import encode_event

    start = time.monotonic()
    for k, (stream, value) in enumerate(events):
        if rate:
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.send(
            topic, key=stream.encode(), value=encode_event(stream, int(time.time() * 1000), value)
        )
    producer.flush()


def _produce_paced(bootstrap_servers: str, topic: str, events: list, rate: float) -> None:
    """The paced load, in a process of its own (see :func:`_produce_elsewhere`)."""
    from streamvgan.service import clients

    producer = clients.make_producer(bootstrap_servers, client_id="streamvgan-bench-load")
    try:
        _produce(producer, topic, events, rate=rate)
    finally:
        producer.close()


def _produce_elsewhere(
    bootstrap_servers: str, topic: str, events: list[tuple[str, float]], rate: float
) -> None:
    """Produce ``events`` at ``rate`` from another process, as a service's producers are:
    in this one, the load generator's Python would take turns with the service's threads
    for the interpreter lock, and the latency measured would be partly the load
    generator's."""
    ctx = multiprocessing.get_context("spawn")  # no copy of this process's torch state
    child = ctx.Process(
        target=_produce_paced, args=(bootstrap_servers, topic, events, rate), daemon=True
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(
            f"the paced load generator stopped with exit code {child.exitcode}; its error is "
            "in the output above"
        )


def _run_contestant(
    kind: str,
    bootstrap_servers: str,
    n_streams: int,
    n_events: int,
    args: argparse.Namespace,
    engine_params: dict[str, Any],
    rate: float | None,
    client: str = "kafka-python",
) -> Result:
    from prometheus_client import CollectorRegistry

    from streamvgan.service import clients
    from streamvgan.service.app import Application
    from streamvgan.service.settings import Settings

    rng = np.random.default_rng(args.seed)
    topic = f"bench-{kind}-{n_streams}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        **_fixed_settings(bootstrap_servers, topic, args, engine_params),
        **getattr(args, "extra_settings", {}),
        kafka_client=client,
    )
    clients.ensure_topics(bootstrap_servers, [topic], partitions=args.partitions)
    producer = clients.make_producer(bootstrap_servers, client_id="streamvgan-bench")
    _produce(producer, topic, _events(n_streams, 0, n_events, rng), rate=None)
    reader = _ScoreReader(bootstrap_servers, settings.scores_topic)
    if kind == "service":
        runner = Application(
            settings, engine=_fitted_engine(settings, args.seed), registry=CollectorRegistry()
        )
    else:  # the same loop, with the model-free processor
        runner = Application(
            settings, processor=_passthrough(settings, args.seed), registry=CollectorRegistry()
        )
    runner.start()
    try:
        label = f"bench {n_streams:,} streams, {kind}, {client}"
        # the score records are read once the application has handled the events, not while
        # it runs: a reader in this process would take turns with the loop for the
        # interpreter lock (a fifth of the samples in a profile of the throughput phase)
        # and slow what it measures; the figures come from the records' timestamps anyway
        timeout_s = max(120.0, n_events / 200)
        _wait_handled(runner, n_events, timeout_s)
        thr = reader.read(n_events, timeout_s=timeout_s, desc=f"{label}, throughput phase")
        span_s = max(1e-3, (max(t for t, _ in thr) - min(t for t, _ in thr)) / 1000)
        events_per_s = len(thr) / span_s
        paced = rate or args.latency_load * events_per_s
        n_lat = max(50, int(paced * args.latency_s))
        _produce_elsewhere(
            bootstrap_servers, topic, _events(n_streams, n_events, n_lat, rng), paced
        )
        timeout_s = max(60.0, 3 * args.latency_s)
        _wait_handled(runner, n_events + n_lat, timeout_s)
        lat = reader.read(n_lat, timeout_s=timeout_s, desc=f"{label}, latency phase")
    finally:
        runner.stop()
        runner.join(60)
        reader.close()
        producer.close()
    latencies = np.array([created - sent for created, sent in lat], dtype=float)
    return Result(
        events_per_s=events_per_s,
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        paced_rate=paced,
        n_latency=len(latencies),
    )


def _wait_handled(runner: Any, events: int, timeout_s: float) -> None:
    """Wait until ``runner`` (an :class:`Application`) has handled ``events`` input records
    in all, for at most ``timeout_s`` (the reading that follows reports a shortfall)."""
    deadline = time.monotonic() + timeout_s
    while runner.stats.consumed < events and time.monotonic() < deadline:
        if runner.exit_code is not None:
            return  # it stopped (an error): the reader's timeout reports what is missing
        time.sleep(0.05)


def _passthrough(settings: Any, seed: int) -> Any:
    from streamvgan.service.processing import OutputTopics, PassThroughProcessor

    s = settings
    return PassThroughProcessor(
        OutputTopics(s.scores_topic, s.forecasts_topic, s.continuations_topic, s.dlq_topic),
        forecast_every=s.forecast_every,
        continuation_every=s.continuation_every,
        continuation_samples=s.continuation_samples,
        horizon=s.horizon,
        alert_threshold=s.alert_threshold,
        seed=seed,
    )


def _fitted_engine(settings: Any, seed: int) -> Any:
    """An engine past its first fit (model_version 1), as a service is after warm-up."""
    from streamvgan.engine import EngineConfig, Event, StreamEngine

    engine = StreamEngine(EngineConfig.from_params(**settings.engine_config_params()), seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(engine.config.window + 8):
        engine.process(
            [
                Event(f"warmup-{k}", {"value": float(np.sin(t / 7) + 0.1 * rng.normal())})
                for k in range(8)
            ]
        )
    engine.fine_tune(steps=5, force=True)
    return engine


class _ScoreReader:
    """Reads (output CreateTime ms, input send time ms) of score records with ``assign()``."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        from streamvgan.service import clients

        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.consumer = clients.make_consumer(bootstrap_servers, client_id="streamvgan-bench")
        self._assigned = False

    def _assign(self) -> None:
        from kafka import TopicPartition

        parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            return
        tps = [TopicPartition(self.topic, p) for p in parts]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self._assigned = True

    def read(self, n: int, timeout_s: float, desc: str = "score records") -> list[tuple[int, int]]:
        import json

        out: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout_s
        with Progress(n, desc, unit="score", interval_s=5.0) as progress:
            while len(out) < n and time.monotonic() < deadline:
                if not self._assigned:
                    self._assign()
                    if not self._assigned:
                        time.sleep(0.2)
                        continue
                for records in self.consumer.poll(timeout_ms=200).values():
                    for r in records:
                        out.append((r.timestamp, json.loads(r.value)["ts"]))
                progress.set(len(out))
        if len(out) < n:
            log.warning("read %d of %d score records before the timeout", len(out), n)
        return out

    def close(self) -> None:
        self.consumer.close()
