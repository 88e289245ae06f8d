"""examples/replay_nab.py through a running service: every row of a NAB file gets a score,
the labelled window is found, the plot is written; and examples/subscribe_forecasts.py raises
exactly the alerts the real score records call for.

The service runs with the cold-start scorer only (warmup_events above the file's length), so
the outcome does not depend on when a background fine-tune lands; the model's own quality is
tested in tests/engine and tests/eval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamvgan.service.app import Application
from streamvgan.service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
NAB = REPO.parent / "shared" / "datasets" / "nab"
FILE = NAB / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv"

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not FILE.is_file(), reason=f"NAB data not found at {NAB}"),
]


@pytest.fixture
def service(kafka):
    settings = Settings(
        bootstrap_servers=kafka.bootstrap_servers, input_topic=kafka.topic("nab"),
        group_id=kafka.group("nab"), metrics_port=-1, forecast_every=500, continuation_every=0,
        warmup_events=100_000, poll_max_records=1000,
        engine_params={"init": "random"},  # the cold-start fallback the figures below were
        # measured with (the pretrained default serves the shipped network from event one)
    )
    app = Application(settings, registry=CollectorRegistry()).start()
    assert app.wait_started(60)
    yield app
    app.stop()
    assert app.join(60) == 0


def test_replay_scores_every_row_and_plots_the_windows(examples, kafka, service, tmp_path):
    module = examples.load("replay_nab")
    topic = service.settings.input_topic
    out = tmp_path / "jumpsup.png"
    result = module.main(FILE, bootstrap_servers=kafka.bootstrap_servers, topic=topic, out=out,
                         timeout_s=60)
    assert result["events"] == result["scored"] == 4032
    assert result["stream"] == "nab/artificialWithAnomaly/art_daily_jumpsup"
    (window,) = result["windows"]
    assert window["start"] == "2014-04-10 16:15:00" and window["detected"]
    assert window["max_score"] >= 0.99
    # measured (cold-start fallback, no fit in this short test; the service's default of no
    # season ring): 125 points at or above 0.99 inside the window, 70 outside. The point-wise
    # ROC AUC is only 0.520: the window is 402 rows long and the raised daily peak fills a part
    # of it, so most window rows look normal.
    assert result["flagged_in_windows"] >= 60
    assert 0 < result["flagged_outside_windows"] < result["flagged_in_windows"]
    assert result["roc_auc"] > 0.5
    assert result["model_version"] == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000

    # The alert consumer on the same outputs: one alert per upward crossing of 0.99.
    scores = [r.json() for r in kafka.read(f"{topic}.scores", 4032, timeout_s=30)]
    # forecasts: every 500 events of the stream, at most one per poll
    forecasts = kafka.read(f"{topic}.forecasts", 1, timeout_s=10, settle_s=1.0)
    assert len(scores) == 4032 and 1 <= len(forecasts) <= 8
    expected, armed = [], True
    for record in scores:
        if record["score"] >= 0.99 and armed:
            expected.append(record["ts"])
            armed = False
        elif record["score"] < 0.5:
            armed = True
    subscriber = examples.load("subscribe_forecasts")
    seen = subscriber.subscribe(kafka.bootstrap_servers, topic, threshold=0.99, rearm_below=0.5,
                                group_id=None, max_records=4032 + len(forecasts), timeout_s=30)
    assert seen["scores"] == 4032 and seen["forecasts"] == len(forecasts)
    assert [a.ts for a in seen["alerts"]] == expected
    assert 1 <= len(expected) < 40


def test_labels_and_root_are_found_from_the_path(examples):
    module = examples.load("replay_nab")
    root = module.find_nab_root(FILE)
    assert root.resolve() == NAB.resolve()
    (window,) = module.labelled_windows(FILE, root)
    assert window[0].isoformat(sep=" ") == "2014-04-10 16:15:00"
    labels, scores = np.array([True, False, False]), np.array([0.9, 0.1, 0.9])
    assert module._roc_auc(labels, scores) == 0.75  # one tie counts a half
