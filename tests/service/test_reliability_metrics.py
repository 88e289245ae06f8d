"""The engine's reset counter reaches Prometheus: a stream whose state turned non-finite shows
up in ``streamvgan_engine_streams_reset_total`` (issue 11, item 2)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.service.app import Application
from streamvgan.service.settings import Settings


def test_streams_reset_is_exposed_as_a_counter():
    config = EngineConfig.from_params(init="random", hidden_size=8, latent_size=2, warmup_events=10**9)
    registry = CollectorRegistry()
    app = Application(Settings(input_topic="in", metrics_port=-1),
                      engine=StreamEngine(config, seed=0), registry=registry)
    for t in range(5):
        app.engine.process([Event("a", {"value": float(t)}), Event("b", {"value": 1.0})])
    # read from the engine at each scrape: nothing has to advance it after a batch
    assert registry.get_sample_value("streamvgan_engine_streams_reset_total") == 0
    for stream in ("a", "b"):
        app.engine.state.arrays["cal_var"][app.engine.state.streams[stream]["value"]] = np.nan
        scores = app.engine.process([Event(stream, {"value": 2.0})])
        assert 0.0 <= scores[0].score <= 1.0
    assert registry.get_sample_value("streamvgan_engine_streams_reset_total") == 2
