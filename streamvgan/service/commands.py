"""Subcommands of the service: ``serve`` and ``train`` (the tools ``demo``, ``broker``,
``replay`` and ``bench`` are in :mod:`streamvgan.tools.commands`).

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


def register(subparsers: Any) -> None:
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
