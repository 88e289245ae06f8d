"""Replay a Numenta Anomaly Benchmark (NAB) file through a running streamvgan service and plot
the scores against NAB's labelled anomaly windows.

The file's rows become input events of one stream (``ts`` = NAB's timestamp string, unchanged,
so each score record can be matched back to its row). The script notes where the scores topic
ends, produces the events, reads the score records of that stream back until every row has
one, and writes a PNG: the series with the labelled windows shaded, and the scores with the
alert threshold and the points at or above it. NAB's labels come from
``<nab>/labels/combined_windows.json``; the NAB root is found from the file's path
(``<nab>/data/<category>/<file>.csv``) or given with ``--nab-root``.

With a service already consuming ``--topic``::

    python examples/replay_nab.py ../shared/datasets/nab/data/realKnownCause/nyc_taxi.csv \\
        --bootstrap-servers 127.0.0.1:9092 --topic events --out nyc_taxi.png

or let the script start an embedded broker and the service in this process::

    python examples/replay_nab.py FILE.csv --start-service

The service fits its model in the background once ``warmup_events`` (400) events have arrived;
an unpaced replay is mostly scored before that fit lands (by the cold-start scorer). Pace it
(``--rate 100``) or make the first fit cheaper (``--engine-param first_fit_steps=50``) to see the
fitted model at work.

``main()`` returns the numbers (tests/examples/test_replay_nab.py asserts on them).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamvgan.errors import ConfigurationError
from streamvgan.service import clients
from streamvgan.tools.replay import produce_events, read_csv_events

log = logging.getLogger("examples.replay_nab")


def find_nab_root(path: Path) -> Path:
    """The NAB checkout a data file belongs to: the folder above ``data/<category>/``."""
    for parent in path.resolve().parents:
        if (parent / "labels" / "combined_windows.json").is_file():
            return parent
    raise ConfigurationError(
        f"{path} is not inside a NAB checkout (no labels/combined_windows.json above it); "
        "pass --nab-root"
    )


def labelled_windows(path: Path, nab_root: Path) -> list[tuple[datetime, datetime]]:
    """NAB's anomaly windows of ``path`` (start, end), from combined_windows.json."""
    key = path.resolve().relative_to((nab_root / "data").resolve()).as_posix()
    windows = json.loads((nab_root / "labels" / "combined_windows.json").read_text())
    if key not in windows:
        raise ConfigurationError(f"{key} has no entry in {nab_root}/labels/combined_windows.json")
    return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in windows[key]]


def _scores_end_offsets(bootstrap_servers: str, topic: str) -> dict[Any, int]:
    """Where each partition of ``topic`` ends now (0 where it does not exist yet)."""
    from kafka import TopicPartition

    consumer = clients.make_consumer(bootstrap_servers, client_id="replay-nab-offsets")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return dict(consumer.end_offsets(tps)) if tps else {}
    finally:
        consumer.close()


def _read_scores(
    bootstrap_servers: str, topic: str, stream: str, wanted: set[str],
    start: Mapping[Any, int], timeout_s: float,
) -> dict[str, dict[str, Any]]:
    """Score records of ``stream`` after ``start``, by ``ts``, until every ``wanted`` ts has one
    (the latest record wins: at-least-once delivery may repeat a score)."""
    from kafka import TopicPartition

    consumer = clients.make_consumer(bootstrap_servers, client_id="replay-nab-scores")
    scores: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        parts: set[int] = set()
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp, 0))
        while time.monotonic() < deadline and not wanted <= scores.keys():
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    value = json.loads(record.value)
                    if value.get("stream") == stream:
                        scores[str(value["ts"])] = value
    finally:
        consumer.close()
    return scores


def plot(
    out: Path, title: str, timestamps: list[datetime], values: np.ndarray, scores: np.ndarray,
    windows: list[tuple[datetime, datetime]], threshold: float,
) -> Path:
    """The series and its scores, labelled windows shaded, points >= threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    for ax in (top, bottom):
        for start, end in windows:
            ax.axvspan(start, end, color="tab:red", alpha=0.15, lw=0)
    top.plot(timestamps, values, lw=0.7, color="black")
    top.set_title(f"{title}: NAB's labelled windows shaded")
    bottom.plot(timestamps, scores, lw=0.6, color="tab:blue")
    bottom.axhline(threshold, color="tab:orange", lw=0.8, ls="--")
    hits = np.flatnonzero(scores >= threshold)
    bottom.plot([timestamps[i] for i in hits], scores[hits], "v", color="tab:red", ms=4)
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("anomaly score")
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact ROC AUC (ties count one half); None when only one class is present."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main(
    path: str | Path,
    bootstrap_servers: str | None = None,
    topic: str | None = None,
    scores_topic: str | None = None,
    out: str | Path | None = None,
    nab_root: str | Path | None = None,
    stream: str | None = None,
    rate: float | None = None,
    limit: int | None = None,
    threshold: float = 0.99,
    timeout_s: float = 300.0,
    start_service: bool = False,
    engine_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Replay ``path`` into ``topic``, collect its scores, plot them; returns the summary.

    ``scores_topic`` defaults to ``TOPIC.scores``. With ``start_service`` an embedded broker
    (unless ``bootstrap_servers`` is given) and the service run in this process for the
    duration, with ``engine_params`` passed to its engine.
    """
    path = Path(path)
    root = Path(nab_root) if nab_root else find_nab_root(path)
    windows = labelled_windows(path, root)
    stream = stream or f"nab/{path.parent.name}/{path.stem}"
    events = list(read_csv_events(path, stream=stream))[:limit]
    if not events:
        raise ConfigurationError(f"{path} has no rows")
    out = Path(out) if out else Path(f"{path.stem}.scores.png")
    with ExitStack() as stack:
        if start_service:
            bootstrap_servers, topic = _start_service(stack, bootstrap_servers, topic,
                                                      engine_params or {})
        if not bootstrap_servers or not topic:
            raise ConfigurationError("give --bootstrap-servers and --topic, or --start-service")
        scores_topic = scores_topic or f"{topic}.scores"
        start = _scores_end_offsets(bootstrap_servers, scores_topic)
        producer = clients.make_producer(bootstrap_servers, client_id="replay-nab")
        try:
            began = time.monotonic()
            n = produce_events(producer, topic, events, rate=rate)
        finally:
            producer.close(timeout=10)
        log.info("replayed %d events of %s into %s", n, stream, topic)
        wanted = {str(e.ts) for e in events}
        got = _read_scores(bootstrap_servers, scores_topic, stream, wanted, start, timeout_s)
        elapsed = time.monotonic() - began
    missing = len(wanted - got.keys())
    if missing:
        log.warning("%d of %d events got no score within %.0f s", missing, len(wanted), timeout_s)
    rows = [e for e in events if str(e.ts) in got]
    timestamps = [datetime.fromisoformat(str(e.ts)) for e in rows]
    values = np.array([e.values["value"] for e in rows])
    scores = np.array([float(got[str(e.ts)]["score"]) for e in rows])
    in_window = np.array([any(a <= t <= b for a, b in windows) for t in timestamps], dtype=bool)
    flagged = scores >= threshold
    per_window = []
    for a, b in windows:
        inside = np.array([a <= t <= b for t in timestamps], dtype=bool)
        if inside.any():
            per_window.append({"start": a.isoformat(sep=" "), "end": b.isoformat(sep=" "),
                               "max_score": float(scores[inside].max()),
                               "detected": bool(flagged[inside].any())})
    png = plot(out, path.name, timestamps, values, scores, windows, threshold)
    result = {
        "stream": stream,
        "events": len(events),
        "scored": len(rows),
        "seconds": elapsed,
        "windows": per_window,
        "windows_detected": sum(w["detected"] for w in per_window),
        "flagged_in_windows": int(flagged[in_window].sum()),
        "flagged_outside_windows": int(flagged[~in_window].sum()),
        "roc_auc": _roc_auc(in_window, scores),
        "model_version": max((int(v["model_version"]) for v in got.values()), default=0),
        "png": str(png),
    }
    log.info("%s: %d/%d scored in %.1f s; %d of %d windows detected; %d flags outside "
             "windows; ROC AUC %s; plot %s", path.name, len(rows), len(events), elapsed,
             result["windows_detected"], len(per_window), result["flagged_outside_windows"],
             "n/a" if result["roc_auc"] is None else f"{result['roc_auc']:.3f}", png)
    return result


def _start_service(
    stack: ExitStack, bootstrap_servers: str | None, topic: str | None,
    engine_params: Mapping[str, Any],
) -> tuple[str, str]:
    """An embedded broker (if none is given) and the service, stopped when ``stack`` closes."""
    from prometheus_client import CollectorRegistry

    from streamvgan.service.app import Application
    from streamvgan.tools.broker import EmbeddedBroker
    from streamvgan.service.settings import Settings

    if bootstrap_servers is None:
        bootstrap_servers = stack.enter_context(EmbeddedBroker()).bootstrap_servers
    topic = topic or f"nab-{uuid.uuid4().hex[:8]}"
    clients.ensure_topics(bootstrap_servers, [topic], partitions=1)
    settings = Settings(bootstrap_servers=bootstrap_servers, input_topic=topic,
                        group_id=f"{topic}-service", metrics_port=-1, forecast_every=0,
                        continuation_every=0, engine_params=dict(engine_params))
    app = Application(settings, registry=CollectorRegistry()).start()

    def stop() -> None:
        app.stop()
        app.join(60)

    stack.callback(stop)
    if not app.wait_started(60):
        raise ConfigurationError("the service did not start within 60 s")
    return bootstrap_servers, topic


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a NAB data file, e.g. <nab>/data/realKnownCause/nyc_taxi.csv")
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--topic", default=None, help="the input topic the service consumes")
    parser.add_argument("--scores-topic", default=None, help="default: TOPIC.scores")
    parser.add_argument("--out", default=None, help="PNG path (default: FILE.scores.png)")
    parser.add_argument("--nab-root", default=None)
    parser.add_argument("--stream", default=None, help="stream id (default: nab/CATEGORY/FILE)")
    parser.add_argument("--rate", type=float, default=None, help="events per second")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N rows")
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--start-service", action="store_true",
                        help="run an embedded broker and the service in this process")
    parser.add_argument("--engine-param", action="append", default=[], metavar="KEY=VALUE",
                        help="engine parameter of the service started by --start-service")
    args = parser.parse_args()
    engine_params = {}
    for item in args.engine_param:
        key, _, value = item.partition("=")
        engine_params[key] = json.loads(value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = main(args.file, bootstrap_servers=args.bootstrap_servers, topic=args.topic,
                  scores_topic=args.scores_topic, out=args.out, nab_root=args.nab_root,
                  stream=args.stream, rate=args.rate, limit=args.limit,
                  threshold=args.threshold, timeout_s=args.timeout,
                  start_service=args.start_service, engine_params=engine_params)
    print(json.dumps(result, indent=2))
    if any(t.name == "streamvgan-finetune" and t.is_alive() for t in threading.enumerate()):
        # A fine-tune still running in a daemon thread would abort the interpreter's exit.
        from streamvgan.service.commands import exit_now

        exit_now(0)


if __name__ == "__main__":
    _cli()
