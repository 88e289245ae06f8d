"""The pretrained weights shipped in the package: they load offline, match their recorded
checksum and configuration, were made by the documented command, and still give the
forecasts recorded when they were shipped.

Re-record the forecasts after shipping new weights with
``python tests/pretrain/test_shipped_weights.py --record``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.nn.pretrained import load_pretrained, manifest_path, shipped_path

RECORDED = Path(__file__).with_name("shipped_forecast.json")
COMMAND = "streamvgan pretrain --out pretrained.pt --series 3000 --steps 4000 --seed 0"


def _forecast_of_a_fixed_series() -> list[float]:
    """A daily-cycle series with a trend and noise, 200 points, no fine-tune."""
    rng = np.random.default_rng(0)
    t = np.arange(200)
    y = 50 + 10 * np.sin(2 * np.pi * t / 24) + 0.05 * t + rng.normal(scale=0.5, size=200)
    engine = StreamEngine(
        EngineConfig(init="pretrained", fit_every=10**9, forecast_blend=False), seed=0
    )
    for v in y:
        engine.process([Event("s", {"value": float(v)})])
    return [float(v) for v in engine.forecast(["s"])[0].mean[:, 0]]


def test_the_shipped_weights_load_and_match_their_manifest() -> None:
    path = shipped_path()
    config, weights, manifest = load_pretrained(path)  # checks the SHA-256
    assert path.stat().st_size == manifest["bytes"] <= 1_000_000
    assert config.to_dict() == manifest["model_config"]
    assert config.forecast_relative
    assert manifest["command"].startswith(COMMAND), manifest["command"]
    assert json.loads(manifest_path(path).read_text())["sha256"] == manifest["sha256"]
    # better than the last value on held-out synthetic series, at every step ahead
    assert max(manifest["holdout_mse_ratio_to_last_by_step"]) < 1.0


def test_the_shipped_weights_reproduce_their_recorded_forecast() -> None:
    recorded = json.loads(RECORDED.read_text())
    assert recorded["sha256"] == load_pretrained(shipped_path())[2]["sha256"], (
        "the shipped weights changed: re-record with "
        "python tests/pretrain/test_shipped_weights.py --record"
    )
    # float32 network on one CPU thread: the same to ~1e-6 relative; 1e-4 leaves room for
    # another CPU's instruction set
    np.testing.assert_allclose(_forecast_of_a_fixed_series(), recorded["forecast"], rtol=1e-4)


def test_every_entry_point_starts_from_the_shipped_weights_by_default() -> None:
    """One setting, ``init``, with one default for the engine, the River adapters and the
    service (whose engine parameters go through the same ``EngineConfig.from_params``)."""
    from streamvgan.river import VAEGANDetector, VAEGANForecaster
    from streamvgan.service.settings import Settings

    _, stored, _ = load_pretrained(shipped_path())
    assert EngineConfig().init == EngineConfig.from_params().init == "pretrained"
    assert EngineConfig.from_params(**Settings().engine_config_params()).init == "pretrained"
    for engine in (
        StreamEngine(EngineConfig(), seed=0),
        VAEGANDetector().engine,
        VAEGANForecaster(horizon=6).engine,
    ):
        assert engine.model_version == 1  # the network serves from the first event
        served = engine.model.state_dict()
        assert all(np.array_equal(served[k].numpy(), v.numpy()) for k, v in stored.items())
    random = StreamEngine(EngineConfig(init="random"), seed=0)
    assert random.model_version == 0  # today's cold start, for ablations


if __name__ == "__main__" and "--record" in sys.argv:
    import torch

    torch.set_num_threads(1)
    RECORDED.write_text(
        json.dumps(
            {
                "sha256": load_pretrained(shipped_path())[2]["sha256"],
                "forecast": _forecast_of_a_fixed_series(),
            },
            indent=2,
        )
        + "\n"
    )
