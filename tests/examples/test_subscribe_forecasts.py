"""examples/subscribe_forecasts.py: alerts on upward threshold crossings of real score records
(written with the service's own wire classes), carrying the stream's latest forecast."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from streamvgan.engine.types import Forecast
from streamvgan.service.clients import ensure_topics
from streamvgan.service.wire import ForecastMessage, ScoreMessage

# stream -> scores in time order; threshold 0.99, re-armed below 0.9
SCORES = {
    "host-a/cpu": [0.1, 0.5, 0.995, 0.999, 0.95, 0.992, 0.3, 0.991, 0.2],  # alerts at t=2, t=7
    "host-b/cpu": [0.2, 0.98, 0.989, 0.4],  # never reaches 0.99
    "host-c/mem": [0.99, 0.99, 0.1],  # exactly the threshold counts: alert at t=0
}
EXPECTED = [("host-a/cpu", 2), ("host-a/cpu", 7), ("host-c/mem", 0)]


def _forecast(stream: str, level: float) -> ForecastMessage:
    mean = np.full((3, 1), level)
    fc = Forecast(stream=stream, fields=["value"], mean=mean,
                  quantiles={0.1: mean - 1, 0.5: mean, 0.9: mean + 1}, model_version=2, warm=True)
    return ForecastMessage.from_forecast(fc, ts=0)


@pytest.mark.kafka
def test_alerts_fire_once_per_crossing_with_the_latest_forecast(examples, kafka):
    module = examples.load("subscribe_forecasts")
    base = kafka.topic("alerts-in")
    ensure_topics(kafka.bootstrap_servers, [f"{base}.scores", f"{base}.forecasts"], partitions=1)
    forecasts = [_forecast("host-a/cpu", 40.0), _forecast("host-a/cpu", 42.0),
                 _forecast("host-c/mem", 7.0)]
    kafka.produce(f"{base}.forecasts", [(f.stream.encode(), f.to_bytes()) for f in forecasts])
    scores = [
        ScoreMessage(stream=stream, ts=t, score=s, raw=s, components={"surprise": s},
                     model_version=2, warm=True, anomaly=s >= 0.99)
        for stream, values in SCORES.items() for t, s in enumerate(values)
    ]
    kafka.produce(f"{base}.scores", [(m.stream.encode(), m.to_bytes()) for m in scores])

    result = module.subscribe(kafka.bootstrap_servers, base, threshold=0.99, rearm_below=0.9,
                              group_id=kafka.group("alerts"), max_records=len(scores) + 3,
                              timeout_s=30)
    assert result["scores"] == len(scores) and result["forecasts"] == 3
    assert result["streams"] == 3
    alerts = sorted(result["alerts"], key=lambda a: (a.stream, a.ts))
    assert [(a.stream, a.ts) for a in alerts] == EXPECTED
    assert [a.score for a in alerts] == [0.995, 0.991, 0.99]
    # each alert carries the stream's latest forecast: mean and the 0.1/0.9 bands
    assert alerts[0].forecast["value"]["mean"] == [42.0, 42.0, 42.0]
    assert alerts[0].forecast["value"]["0.9"] == [43.0, 43.0, 43.0]
    assert alerts[2].forecast["value"]["0.1"] == [6.0, 6.0, 6.0]


def test_alerter_hysteresis_and_warm_filter(examples):
    module = examples.load("subscribe_forecasts")
    assert doctest.testmod(module).failed == 0
    alerter = module.ScoreAlerter(threshold=0.9, require_warm=True)
    cold = {"stream": "s", "ts": 1, "score": 0.99, "model_version": 0, "warm": False}
    warm = dict(cold, ts=2, warm=True)
    assert alerter.on_score(cold) is None
    alert = alerter.on_score(warm)
    assert alert is not None and alert.ts == 2 and alert.forecast is None
    # rearm_below defaults to the threshold: any score below it re-arms
    assert alerter.on_score(dict(warm, ts=3, score=0.89)) is None
    assert alerter.on_score(dict(warm, ts=4, score=0.9)) is not None
