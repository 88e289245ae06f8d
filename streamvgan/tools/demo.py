"""``streamvgan demo``: the whole product on a real data set, on one machine, in about a minute.

1. Starts the embedded Tansu broker (unless ``--bootstrap-servers`` is given).
2. Replays River's bundled SP500Stocks data set (daily returns of ten stocks, 2013-2018,
   1,257 trading days; no download) as one stream per ticker, with a few anomalies injected
   at known positions: spikes in three tickers and a level shift in a fourth. Three malformed
   records are mixed in to show the dead-letter topic at work.
3. Runs the :class:`~streamvgan.service.app.Application` on it in a thread, showing progress
   (a bar on a terminal, a log line every few seconds otherwise), until every valid event has
   its score record.
4. Prints a summary (events, streams, dead letters, throughput, and for each injected anomaly
   on how many days of its window the score passed the alert threshold and whether it is among
   the top 1% of its stream's scores) and writes a PNG of four streams with the same flagged
   days and windows, the last forecast's band and the last set of sampled continuations.
5. Stops everything it started.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import logging
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamvgan._optional import require
from streamvgan.progress import Progress

log = logging.getLogger(__name__)

TOP_FRACTION = 0.01  # an injected anomaly counts as found if it is in its stream's top 1%
#: Days after an injection that are judged with it (and shaded with it in the PNG): the step
#: back out of a spike or a shift is part of the anomaly, and the score reacts within a day.
JUDGE_AFTER = 2


@dataclass(frozen=True)
class Injection:
    """An anomaly written into the data: ``kind`` at day index ``start`` for ``length`` days."""

    stream: str
    start: int
    length: int
    kind: str
    magnitude: float


#: Where the anomalies go, as (ticker, position as a fraction of the replayed days, days,
#: kind, size in standard deviations). All lie well after the first fit and after the score
#: calibration has a history (on the full data set: days 691, 855, 1005 and 1094).
INJECTIONS = (
    ("AAPL", 0.55, 1, "spike", 8.0),
    ("MSFT", 0.68, 1, "spike", -8.0),
    ("JPM", 0.80, 1, "spike", 8.0),
    ("XOM", 0.87, 40, "level_shift", 4.0),
)


def load_sp500() -> tuple[list[str], dict[str, np.ndarray]]:
    """Dates and per-ticker daily returns (percent) of River's bundled SP500Stocks."""
    from river.datasets import SP500Stocks

    path = SP500Stocks().path
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    tickers = [c for c in rows[0] if c not in ("date", "next_day_return")]
    dates = [row["date"] for row in rows]
    series = {t: np.array([float(row[t]) for row in rows]) for t in tickers}
    return dates, series


def inject(series: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[Injection]]:
    """Copies of ``series`` with :data:`INJECTIONS` written in, scaled to each stream's std."""
    out = {k: v.copy() for k, v in series.items()}
    injections = []
    for stream, where, length, kind, size in INJECTIONS:
        n = len(out.get(stream, ()))
        start = int(where * n)
        length = min(length, max(1, n // 30))  # a shorter shift on a shorter replay
        if stream not in out or start + length > n:
            continue
        std = float(np.std(series[stream]))
        out[stream][start : start + length] += size * std
        injections.append(Injection(stream, start, length, kind, size))
    return out, injections


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this Kafka instead of starting the embedded broker",
    )
    parser.add_argument("--out", default="streamvgan-demo.png", help="where to write the PNG")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input topic")
    parser.add_argument(
        "--days",
        type=int,
        default=None,
        help="replay only the first N trading days (default: all 1,257)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=300.0,
        help="give up if scoring has not finished after this long",
    )
    parser.add_argument(
        "--engine-param",
        dest="engine_params",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="EngineConfig/ModelConfig parameter, repeatable "
        "(default: a lighter fine-tune schedule that suits ~12,000 events)",
    )


#: A fine-tune schedule that suits a short replay on two cores: the first fit after 400
#: events, then one every 2,000 events, with fewer optimiser steps than the defaults.
DEMO_ENGINE_PARAMS = {
    "warmup_events": 400,
    "first_fit_steps": 60,
    "fit_steps": 20,
    "fit_every": 2000,
}


def main(args: argparse.Namespace) -> int:
    from streamvgan.tools.broker import EmbeddedBroker

    require("matplotlib", extra="demo", purpose="the demo's plot")  # before a long replay
    if args.bootstrap_servers:
        return run_demo(args.bootstrap_servers, args)
    with EmbeddedBroker() as broker:
        return run_demo(broker.bootstrap_servers, args)


def run_demo(bootstrap_servers: str, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from streamvgan.service import clients
    from streamvgan.service.app import Application
    from streamvgan.service.settings import Settings, _parse_engine_param
    from streamvgan.service.wire import encode_event

    dates, clean = load_sp500()
    if args.days:
        dates = dates[: args.days]
        clean = {k: v[: args.days] for k, v in clean.items()}
    series, injections = inject(clean)
    tickers = list(series)
    run_id = uuid.uuid4().hex[:6]
    topic = f"streamvgan-demo-{run_id}"
    engine_params = dict(DEMO_ENGINE_PARAMS)
    for item in args.engine_params or []:
        key, value = _parse_engine_param(item)
        engine_params[key] = value
    checkpoint_dir = tempfile.mkdtemp(prefix="streamvgan-demo-")
    settings = Settings(
        bootstrap_servers=bootstrap_servers,
        input_topic=topic,
        group_id=f"{topic}-service",
        metrics_port=-1,
        poll_max_records=100,
        forecast_every=1,
        continuation_every=100,
        continuation_samples=8,
        checkpoint_dir=checkpoint_dir,
        checkpoint_interval_s=30.0,
        seed=args.seed,
        engine_params=engine_params,
    )
    clients.ensure_topics(
        bootstrap_servers,
        [
            topic,
            settings.scores_topic,
            settings.forecasts_topic,
            settings.continuations_topic,
            settings.dlq_topic,
        ],
        partitions=args.partitions,
    )

    # -- produce day by day, every ticker, plus three malformed records; the first
    # `warmup_days` go first, and the rest once the first fit is in (as after a warm-up)
    producer = clients.make_producer(bootstrap_servers, client_id="streamvgan-demo")
    bad_at = {
        len(dates) // 4: b'{"stream": "AAPL", "ts": "2014-01-01", "value": NaN}',
        len(dates) // 2: b"not json at all",
        3 * len(dates) // 4: b'{"ts": 1, "value": 1.0}',
    }

    def produce(days: range) -> int:
        n = 0
        for day in days:
            for ticker in tickers:
                producer.send(
                    topic,
                    key=ticker.encode(),
                    value=encode_event(ticker, dates[day], float(series[ticker][day])),
                )
                n += 1
            if day in bad_at:
                producer.send(topic, key=None, value=bad_at[day])
        producer.flush()
        return n

    # The first fit needs `warmup_events` events and one full training window per stream.
    from streamvgan.engine import EngineConfig

    config = EngineConfig.from_params(**settings.engine_config_params())
    warmup_days = min(len(dates), max(-(-config.warmup_events // len(tickers)), config.window) + 1)
    n_valid = len(dates) * len(tickers)
    app = Application(settings, registry=CollectorRegistry())
    collector = _Collector(bootstrap_servers, settings)
    app.start()
    try:
        n_sent = produce(range(warmup_days))
        log.info(
            "replayed the first %d days (%d events); waiting for the first fit", warmup_days, n_sent
        )
        waited = last_wait_log = time.monotonic()
        while app.engine.model_version < 1 and warmup_days < len(dates):
            collector.poll(0.5)
            if app.exit_code is not None or time.monotonic() - waited > args.timeout_s:
                log.error(
                    "no first fit within %.0f s (exit code %s)", args.timeout_s, app.exit_code
                )
                return 1
            if time.monotonic() - last_wait_log >= 5.0:
                log.info("waiting for the first fit (%.0f s so far)", time.monotonic() - waited)
                last_wait_log = time.monotonic()
        log.info(
            "first fit done after %.1f s; replaying the remaining %d days",
            time.monotonic() - waited,
            len(dates) - warmup_days,
        )
        start = time.monotonic()
        scored_before = collector.n_scores
        n_sent += produce(range(warmup_days, len(dates)))
        producer.close()
        log.info(
            "replayed %d events of %d streams (+%d malformed) into %s",
            n_sent,
            len(tickers),
            len(bad_at),
            topic,
        )
        with Progress(n_valid, "demo scoring", unit="event", interval_s=5.0) as progress:
            progress.set(collector.n_scores)
            while collector.n_scores < n_valid:
                collector.poll(0.5)
                progress.set(
                    collector.n_scores,
                    note=f"dead letters {app.stats.dead_lettered}, "
                    f"model version {app.engine.model_version}",
                )
                if app.exit_code is not None:
                    log.error("the service stopped early with exit code %s", app.exit_code)
                    return 1
                if time.monotonic() - start > args.timeout_s:
                    log.error("scoring did not finish within %.0f s", args.timeout_s)
                    return 1
        elapsed = time.monotonic() - start
        collector.drain(settings.forecasts_topic, settings.continuations_topic)
    finally:
        app.stop()
        app.join(60)
        collector.close()
        producer.close()
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

    found = _found(collector.scores, dates, injections, settings.alert_threshold)
    flagged_share = float(
        np.mean([sc >= settings.alert_threshold for v in collector.scores.values() for _, sc in v])
    )
    summary = {
        "events": n_valid,
        "streams": len(tickers),
        "dead_lettered": app.stats.dead_lettered,
        "throughput": (n_valid - scored_before) / elapsed,
        "elapsed": elapsed,
        "model_version": app.engine.model_version,
        "found": found,
        "flagged_share": flagged_share,
        "threshold": settings.alert_threshold,
        "injections": injections,
    }
    out = Path(args.out)
    plot(out, dates, series, collector, injections, settings.alert_threshold)
    _print_summary(summary, out)
    return 0


class _Collector:
    """Reads the output topics with ``assign()`` (no group) while the service runs."""

    def __init__(self, bootstrap_servers: str, settings: Any) -> None:
        from kafka import TopicPartition

        from streamvgan.service import clients

        self.settings = settings
        self.consumer = clients.make_consumer(bootstrap_servers, client_id="streamvgan-demo")
        self._tp = TopicPartition
        self.scores: dict[str, list[tuple[Any, float]]] = defaultdict(list)
        self.forecasts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.continuations: dict[str, dict[str, Any]] = {}
        self.n_scores = 0
        self._assign([settings.scores_topic])

    def _assign(self, topics: list[str]) -> None:
        parts = []
        for topic in topics:
            found = None
            for _ in range(50):  # metadata of a just-created topic can take a moment
                found = self.consumer.partitions_for_topic(topic)
                if found:
                    break
                time.sleep(0.1)
            for p in sorted(found or {0}):
                parts.append(self._tp(topic, p))
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)

    def poll(self, timeout_s: float) -> int:
        import json

        n = 0
        for tp, records in self.consumer.poll(timeout_ms=int(timeout_s * 1000)).items():
            for r in records:
                data = json.loads(r.value)
                if tp.topic == self.settings.scores_topic:
                    self.scores[data["stream"]].append((data["ts"], data["score"]))
                    self.n_scores += 1
                elif tp.topic == self.settings.forecasts_topic:
                    self.forecasts[data["stream"]].append(data)
                else:
                    self.continuations[data["stream"]] = data
                n += 1
        return n

    def drain(self, *topics: str) -> None:
        """Read ``topics`` from the start until a few empty polls in a row."""
        self._assign(list(topics))
        empty = 0
        while empty < 3:
            empty = empty + 1 if self.poll(0.5) == 0 else 0

    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True)
class Detection:
    """What the scores say about one injection over its judged window (the injected days and
    :data:`JUDGE_AFTER` more, all shaded in the PNG): the days flagged there (score >=
    threshold, the red points of the PNG), the days scored, and whether its highest score is
    among the top 1% of its stream's scores."""

    flagged_days: int
    scored_days: int
    top: bool

    @property
    def flagged(self) -> bool:
        return self.flagged_days > 0


def _found(
    scores: dict[str, list[tuple[Any, float]]],
    dates: list[str],
    injections: list[Injection],
    threshold: float,
) -> list[Detection]:
    """For each injection, from its scores on every day of its judged window (``start`` to
    ``start + length - 1 + JUDGE_AFTER``): how many days are flagged, and whether the highest
    is in the top 1% of its stream's scores."""
    index = {d: i for i, d in enumerate(dates)}
    found = []
    for inj in injections:
        by_day = {index[ts]: s for ts, s in scores.get(inj.stream, []) if ts in index}
        days = range(inj.start, inj.start + inj.length + JUDGE_AFTER)
        window = [by_day[d] for d in days if d in by_day]
        if not window:
            found.append(Detection(0, 0, False))
            continue
        best = max(window)
        higher = float(np.mean(np.array(list(by_day.values())) > best))  # ties count as top
        found.append(
            Detection(sum(s >= threshold for s in window), len(window), higher < TOP_FRACTION)
        )
    return found


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    found, injections = summary["found"], summary["injections"]
    lines = [
        "",
        "streamvgan demo: SP500Stocks through Kafka",
        f"  events scored      {summary['events']:,} from {summary['streams']} streams",
        f"  dead-lettered      {summary['dead_lettered']} malformed records",
        (
            f"  throughput         {summary['throughput']:,.0f} events/s "
            f"after the first fit ({summary['elapsed']:.1f} s, fine-tuning alongside)"
        ),
        f"  model version      {summary['model_version']}",
        (
            f"  injected anomalies {sum(f.flagged for f in found)}/{len(found)} flagged (score >= "
            f"{summary['threshold']} on an injected day or the {JUDGE_AFTER} after), "
            f"{sum(f.top for f in found)}/{len(found)} among the top {TOP_FRACTION:.0%} scores of "
            "their stream"
        ),
        f"  flagged overall    {summary['flagged_share']:.1%} of all events",
    ]
    for inj, det in zip(injections, found):
        judged = (
            f"flagged on {det.flagged_days} of {det.scored_days} days"
            if det.flagged
            else f"not flagged on any of {det.scored_days} days"
        )
        last = inj.start + inj.length - 1
        where = f"day {inj.start}" if inj.length == 1 else f"days {inj.start}-{last}"
        lines.append(
            f"    {inj.stream:5s} {where:14s} {inj.kind:11s} {inj.magnitude:+.0f} sd  "
            f"{judged}, "
            f"{'in' if det.top else 'not in'} top {TOP_FRACTION:.0%}"
        )
    lines.append(f"  plot               {out}")
    print("\n".join(lines), flush=True)


def plot(
    out: Path,
    dates: list[str],
    series: dict[str, np.ndarray],
    collector: _Collector,
    injections: list[Injection],
    threshold: float,
) -> None:
    """Four streams: the whole series with flagged days (red, the days the summary counts)
    and the judged window of each injection (left); the last 60 days with the final forecast's
    10-90% band and the last set of sampled synthetic continuations, labelled with the day
    they start from (right)."""
    matplotlib = require("matplotlib", extra="demo", purpose="the demo's plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = [inj.stream for inj in injections][:4] or list(series)[:4]
    index = {d: i for i, d in enumerate(dates)}
    fig, axes = plt.subplots(
        len(streams),
        2,
        figsize=(14, 2.9 * len(streams)),
        gridspec_kw={"width_ratios": [3, 1]},
        squeeze=False,
    )
    for row, stream in enumerate(streams):
        y = series[stream]
        ax = axes[row][0]
        ax.plot(np.arange(len(y)), y, lw=0.6, color="0.35")
        by_day = {index[ts]: s for ts, s in collector.scores.get(stream, []) if ts in index}
        flagged = [d for d, s in by_day.items() if s >= threshold]
        ax.scatter(
            flagged, y[flagged], s=14, color="crimson", zorder=3, label=f"score >= {threshold}"
        )
        for inj in injections:
            if inj.stream == stream:
                end = inj.start + inj.length
                ax.axvspan(
                    inj.start - 0.5,
                    end - 0.5,
                    color="orange",
                    alpha=0.3,
                    label=f"injected {inj.kind} ({inj.magnitude:+.0f} sd)",
                )
                ax.axvspan(
                    end - 0.5,
                    end + JUDGE_AFTER - 0.5,
                    color="orange",
                    alpha=0.12,
                    label=f"{JUDGE_AFTER} days after, judged with it",
                )
        ax.set_title(
            f"{stream}: daily return (%), flagged on {len(flagged)} days", fontsize=9, loc="left"
        )
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[row][1]
        tail = 60
        x0 = len(y) - tail
        ax.plot(np.arange(x0, len(y)), y[x0:], lw=0.9, color="0.2", label="observed")
        made = []
        forecasts = collector.forecasts.get(stream)
        if forecasts:
            fc = forecasts[-1]
            origin = index.get(fc["ts"], len(y) - 1)
            steps = np.arange(origin + 1, origin + 1 + fc["horizon"])
            q = fc["quantiles"]
            lo, hi = q.get("0.1", {}).get("value"), q.get("0.9", {}).get("value")
            if lo and hi:
                ax.fill_between(
                    steps, lo, hi, color="tab:blue", alpha=0.25, label="forecast 10-90%"
                )
            ax.plot(steps, fc["mean"]["value"], color="tab:blue", lw=1.2, label="forecast mean")
            made.append(f"forecast made at day {origin}")
        cont = collector.continuations.get(stream)
        if cont:
            # the service samples continuations every `continuation_every` events of a stream,
            # so the last set starts where that last happened, not at the end of the data
            origin = index.get(cont["ts"], len(y) - 1)
            steps = np.arange(origin + 1, origin + 1 + cont["horizon"])
            paths = cont["samples"]["value"]
            ax.axvline(origin + 0.5, color="tab:green", lw=0.6, ls=":")
            for k, path in enumerate(paths):
                ax.plot(
                    steps,
                    path,
                    color="tab:green",
                    lw=0.6,
                    alpha=0.6,
                    label="sampled continuations" if k == 0 else None,
                )
            made.append(
                f"{len(paths)} synthetic continuations sampled\nat day {origin}, "
                "this stream's last sampling"
            )
        ax.set_title("\n".join(["last 60 days", *made]), fontsize=8, loc="left")
        ax.legend(fontsize=6, loc="lower left", framealpha=0.6)
    fig.suptitle(
        f"streamvgan demo: red points scored >= {threshold}; continuations are "
        "synthetic paths sampled by the model, not forecasts",
        fontsize=10,
    )
    axes[-1][0].set_xlabel("trading day")
    axes[-1][1].set_xlabel("trading day")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
