"""The synthetic corpus: reproducible, finite, varied, and made without reading any file."""

from __future__ import annotations

import builtins
import io
import os

import numpy as np
import pytest

from streamvgan.errors import ConfigurationError
from streamvgan.pretrain.corpus import FAMILIES, CorpusConfig, SyntheticCorpus


def test_same_seed_same_series_other_seed_other_series() -> None:
    a = SyntheticCorpus(seed=7).take(5)
    b = SyntheticCorpus(seed=7).take(5)
    c = SyntheticCorpus(seed=8).take(5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.values, y.values)
        assert x.recipe == y.recipe
    assert any(len(x.values) != len(z.values) or not np.allclose(x.values, z.values)
               for x, z in zip(a, c))


def test_every_family_appears_finite_and_within_length() -> None:
    cfg = CorpusConfig(min_length=64, max_length=300)
    series = SyntheticCorpus(cfg, seed=1).take(200)
    assert {s.family for s in series} == set(FAMILIES)
    for s in series:
        assert 64 <= len(s.values) <= 300
        assert np.isfinite(s.values).all(), s.recipe
        assert np.std(s.values) > 0 or s.family == "intermittent", s.recipe
    # scales span orders of magnitude, as real metrics do
    spreads = np.log10([np.std(s.values) + 1e-12 for s in series if np.std(s.values) > 0])
    assert spreads.max() - spreads.min() > 4


def test_seasonal_series_record_a_period_that_fits_twice() -> None:
    series = [s for s in SyntheticCorpus(CorpusConfig(family_weights=(0, 0, 0, 1, 0, 0, 0),
                                                      seasonal_share=1.0), seed=3).take(10)]
    for s in series:
        assert s.period is not None
        assert s.period * 2 <= len(s.values)


def test_the_generator_opens_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of NAB, River's datasets or any evaluation file can enter the corpus."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the corpus generator opened a file: {args!r}")

    corpus = SyntheticCorpus(CorpusConfig(min_length=32, max_length=200), seed=2)
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(io, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    series = corpus.take(100)
    assert len(series) == 100


def test_bad_config_is_refused_with_the_value() -> None:
    with pytest.raises(ConfigurationError, match="min_length <= max_length, got 500 and 100"):
        CorpusConfig(min_length=500, max_length=100)
    with pytest.raises(ConfigurationError, match="one per family"):
        CorpusConfig(family_weights=(1.0,))
