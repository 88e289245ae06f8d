"""Every streamvgan row of every benchmark starts its engine with its own defaults: an
ablation whose network differs from the shipped one (variational=False) says init="random"
(before, `--generators streamvgan_novar`, `--models streamvgan_novar` and the NAB
`streamvgan_novar` detector stopped with a ConfigurationError once the pretrained network
became the default)."""

from __future__ import annotations

import pytest

from streamvgan.eval import baselines, forecast, generation


def _rows(table: dict) -> list[str]:
    return [name for name in table if name.startswith("streamvgan")]


@pytest.mark.parametrize("name", _rows(forecast.FORECASTERS))
def test_every_forecast_row_builds(name):
    model = forecast.make_forecaster(name, season=12, horizon=12)
    assert model.engine.model_version >= 0  # the engine (and its network) builds


@pytest.mark.parametrize("name", _rows(generation.GENERATORS))
def test_every_generation_row_builds(name):
    factory, fixed = generation.GENERATORS[name]
    assert factory(seed=0, **fixed).engine.model_version >= 0


@pytest.mark.parametrize("name", _rows(baselines.DETECTORS))
def test_every_nab_row_builds(name):
    assert baselines.make_detector(name).engine.model_version >= 0


def test_the_variational_ablation_starts_from_random_weights():
    model = forecast.make_forecaster("streamvgan_novar", season=12, horizon=12)
    assert model.engine.config.init == "random" and model.engine.model_version == 0
