"""A downstream consumer of streamvgan's outputs that raises alerts, as your own service would.

It subscribes to ``TOPIC.scores`` and ``TOPIC.forecasts`` (the topics ``streamvgan serve``
writes for input topic ``TOPIC``), keeps the latest forecast of every stream, and raises an
alert when a stream's anomaly score *crosses* a threshold upwards: one alert per excursion, not
one per record while the score stays high. The alert is re-armed once the score falls back below
``rearm_below``. Each alert is logged (a WARNING line) and returned, with the stream's latest
forecast band attached so a receiver sees what the model expected next.

Only kafka-python and ``json`` are used, to show the wire format as it is (see the README's
message schemas): a score record is
``{"schema_version": 1, "stream": ..., "ts": ..., "score": 0.97, "components": {...},
"model_version": 3, "warm": true, "anomaly": false, ...}``.

Run it next to a running service (``streamvgan demo`` prints the broker address)::

    python examples/subscribe_forecasts.py --bootstrap-servers 127.0.0.1:9092 --topic events

``subscribe()`` returns what it saw (tests/examples/test_subscribe_forecasts.py asserts on it).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("examples.subscribe_forecasts")


@dataclass(frozen=True)
class Alert:
    """A stream's score crossed the threshold."""

    stream: str
    ts: Any
    score: float
    model_version: int
    #: The stream's latest forecast when the alert was raised: ``{field: {"mean": [...],
    #: "0.1": [...], "0.9": [...]}}`` over the forecast horizon, or None if none was seen yet.
    forecast: dict[str, dict[str, list[float]]] | None = None


@dataclass
class ScoreAlerter:
    """Edge-triggered alerts on the score records of many streams.

    Parameters
    ----------
    threshold
        A score at or above it raises an alert, if the stream is armed.
    rearm_below
        The stream is armed again once its score falls below this (hysteresis, so a score
        hovering around the threshold does not flap). Defaults to ``threshold``.
    require_warm
        Ignore scores made before the model's first fit (``"warm": false``).

    Examples
    --------
    >>> alerter = ScoreAlerter(threshold=0.99, rearm_below=0.9)
    >>> [alerter.on_score({"stream": "a", "ts": t, "score": s, "model_version": 1}) is not None
    ...  for t, s in enumerate([0.5, 0.995, 0.999, 0.95, 0.991, 0.2, 0.993])]
    [False, True, False, False, False, False, True]

    """

    threshold: float = 0.99
    rearm_below: float | None = None
    require_warm: bool = False
    #: The latest forecast bands of every stream (see :meth:`on_forecast`).
    forecasts: dict[str, dict[str, dict[str, list[float]]]] = field(
        default_factory=dict, init=False, repr=False)
    _armed: dict[str, bool] = field(default_factory=dict, init=False, repr=False)

    def on_forecast(self, record: Mapping[str, Any]) -> None:
        """Remember the stream's latest forecast (mean and quantile bands per field)."""
        bands = {}
        for name in record["fields"]:
            bands[name] = {"mean": record["mean"][name]}
            for level, values in record["quantiles"].items():
                bands[name][level] = values[name]
        self.forecasts[record["stream"]] = bands

    def on_score(self, record: Mapping[str, Any]) -> Alert | None:
        """An :class:`Alert` when this score crosses the threshold, else None."""
        if self.require_warm and not record.get("warm", True):
            return None
        stream, score = record["stream"], float(record["score"])
        armed = self._armed.get(stream, True)
        rearm = self.threshold if self.rearm_below is None else self.rearm_below
        if score >= self.threshold and armed:
            self._armed[stream] = False
            alert = Alert(stream, record.get("ts"), score, int(record.get("model_version", 0)),
                          self.forecasts.get(stream))
            log.warning("ALERT stream=%s ts=%s score=%.4f model_version=%d", alert.stream,
                        alert.ts, alert.score, alert.model_version)
            return alert
        if score < rearm:
            self._armed[stream] = True
        return None


def subscribe(
    bootstrap_servers: str,
    topic: str,
    threshold: float = 0.99,
    rearm_below: float | None = None,
    group_id: str | None = "streamvgan-alerts",
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    timeout_s: float | None = None,
    require_warm: bool = False,
    consumer_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Consume ``TOPIC.scores`` and ``TOPIC.forecasts`` and raise alerts until a stop condition.

    Stops after ``max_records`` records, after ``idle_timeout_s`` without a record, after
    ``timeout_s`` in all, or on Ctrl-C. ``group_id=None`` reads every partition from the
    start without joining a consumer group. ``consumer_config`` passes extra kafka-python
    settings (SASL, TLS). Returns ``{"alerts": [Alert...], "scores": n, "forecasts": n,
    "streams": n}``.
    """
    from kafka import KafkaConsumer, TopicPartition

    scores_topic, forecasts_topic = f"{topic}.scores", f"{topic}.forecasts"
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "group_id": group_id,
        "client_id": "streamvgan-alerts",
        "auto_offset_reset": "earliest",
        # Commit what was handled every few seconds. An alert system that must not miss an
        # alert across restarts would commit after delivering each alert instead.
        "enable_auto_commit": group_id is not None,
        "value_deserializer": lambda v: json.loads(v) if v is not None else None,
        # A 6 s session with 2 s heartbeats joins a group quickly; valid on any Kafka.
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 2000,
        **dict(consumer_config or {}),
    }
    consumer = KafkaConsumer(**config)
    alerter = ScoreAlerter(threshold=threshold, rearm_below=rearm_below, require_warm=require_warm)
    alerts: list[Alert] = []
    n_scores = n_forecasts = 0
    streams: set[str] = set()
    try:
        if group_id is None:
            partitions = [TopicPartition(t, p) for t in (scores_topic, forecasts_topic)
                          for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.subscribe([scores_topic, forecasts_topic])
        start = last_record = time.monotonic()
        while True:
            now = time.monotonic()
            if max_records is not None and n_scores + n_forecasts >= max_records:
                break
            if timeout_s is not None and now - start >= timeout_s:
                break
            if idle_timeout_s is not None and now - last_record >= idle_timeout_s:
                break
            batches = consumer.poll(timeout_ms=200)
            # Forecasts first: an alert then carries the newest forecast of its poll.
            for tp in sorted(batches, key=lambda tp: tp.topic != forecasts_topic):
                for record in batches[tp]:
                    last_record = time.monotonic()
                    value = record.value
                    if not isinstance(value, dict) or "stream" not in value:
                        log.info("skipping a record that is not a streamvgan output: %r",
                                 record.value)
                        continue
                    streams.add(value["stream"])
                    if tp.topic == forecasts_topic:
                        n_forecasts += 1
                        alerter.on_forecast(value)
                    else:
                        n_scores += 1
                        alert = alerter.on_score(value)
                        if alert is not None:
                            alerts.append(alert)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    log.info("read %d scores and %d forecasts of %d streams; %d alerts", n_scores,
             n_forecasts, len(streams), len(alerts))
    return {"alerts": alerts, "scores": n_scores, "forecasts": n_forecasts,
            "streams": len(streams)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True, help="the service's INPUT topic")
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--rearm-below", type=float, default=None)
    parser.add_argument("--group-id", default="streamvgan-alerts")
    parser.add_argument("--timeout", type=float, default=None, help="stop after N seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = subscribe(args.bootstrap_servers, args.topic, threshold=args.threshold,
                       rearm_below=args.rearm_below, group_id=args.group_id,
                       timeout_s=args.timeout)
    for alert in result["alerts"]:
        print(json.dumps(asdict(alert)))
    return result


if __name__ == "__main__":
    main()
