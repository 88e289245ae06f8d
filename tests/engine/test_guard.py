"""The engine never lets a stream turn NaN: bounded inputs, and a reset for non-finite state.

Issue 11: 1e39 or 1e308 used to pass validation and leave that stream's scores and forecasts
NaN forever. Values beyond +-1e30 are now refused before any state changes; state that is
non-finite anyway (diverged weights, a corrupt restored state, simulated here by writing NaN
into the arrays) is reset to a new stream's and counted in ``streams_reset``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.engine.learn import STEP_ARRAYS
from streamvgan.engine.signals import EXTREME_FLOOR
from streamvgan.engine.values import MAX_ABS_VALUE, ValueRejected
from streamvgan.errors import InvalidInputError

TINY = EngineConfig(init="random", warmup_events=60, first_fit_steps=5, fit_steps=2, fit_every=10**9).with_model(
    hidden_size=8, latent_size=2
)


def _feed(engine: StreamEngine, streams: list[str], n: int, start: int = 0) -> list:
    scores = []
    for t in range(start, start + n):
        scores += engine.process([Event(s, {"value": math.sin(t / 3 + k)}) for k, s in
                                  enumerate(streams)])
    return scores


def _finite_state(engine: StreamEngine, stream: str) -> bool:
    slots = np.asarray(list(engine.state.streams[stream].values()))
    return not engine.state.nonfinite_rows(slots).any()


@pytest.mark.parametrize(
    "value", [1e39, -1e40, 1e308, 10**400, -(10**5000), float("nan")],
    ids=["1e39", "-1e40", "1e308", "401-digits", "-5001-digits", "nan"],
)
def test_values_beyond_the_range_are_refused_before_any_state_changes(value):
    engine = StreamEngine(TINY, seed=0)
    _feed(engine, ["a"], 20)
    before = engine.to_bytes()
    with pytest.raises(ValueRejected) as info:
        engine.process([Event("b", {"value": 1.0}), Event("a", {"value": value})])
    assert isinstance(info.value, InvalidInputError) and "'value'" in str(info.value)
    assert engine.to_bytes() == before  # the whole batch refused, nothing learned
    assert engine.n_streams == 1


def test_the_largest_accepted_values_keep_the_stream_finite_cold_and_warm():
    """A stream swinging between +-MAX_ABS_VALUE (the worst accepted input) stays finite
    through the first fit: the bound leaves headroom for the float32 state and the squares."""
    engine = StreamEngine(TINY, seed=0)
    for t in range(120):
        x = MAX_ABS_VALUE * (1 if t % 2 else -1) if t > 30 else math.sin(t)
        (score,) = engine.process([Event("a", {"value": x})])
        assert 0.0 <= score.score <= 1.0 and math.isfinite(score.raw)
        engine.fine_tune()
    assert engine.model_version == 1
    assert engine.streams_reset == 0 and _finite_state(engine, "a")
    forecast = engine.forecast(["a"])[0]
    assert np.isfinite(forecast.mean).all()
    assert all(np.isfinite(q).all() for q in forecast.quantiles.values())


@pytest.mark.parametrize("array", ["norm_var", "h", "cal_mean", "f_mean", "lvl_mean"])
def test_a_stream_whose_state_turned_nan_is_reset_and_counted(array):
    engine = StreamEngine(TINY, seed=0)
    _feed(engine, ["a", "b"], 80)
    engine.fine_tune()
    assert engine.model_version == 1
    slot = engine.state.streams["a"]["value"]
    engine.state.arrays[array][slot] = np.nan  # what a diverged step or bad restore leaves
    scores = _feed(engine, ["a", "b"], 1, start=80)
    assert all(0.0 <= s.score <= 1.0 for s in scores)  # a number, never NaN
    assert all(math.isfinite(s.raw) for s in scores)
    assert engine.streams_reset == 1  # "a" only
    assert _finite_state(engine, "a") and _finite_state(engine, "b")
    assert engine.state.n[slot] == 0  # starts again as a new stream
    later = _feed(engine, ["a", "b"], 30, start=81)
    assert all(0.0 <= s.score <= 1.0 for s in later)
    assert engine.streams_reset == 1  # it stays finite afterwards
    assert np.isfinite(engine.forecast(["a"])[0].mean).all()


def test_a_restored_non_finite_stream_state_is_reset_on_import_and_on_load(tmp_path):
    engine = StreamEngine(TINY, seed=0)
    _feed(engine, ["a", "b"], 30)
    engine.state.arrays["norm_mean"][engine.state.streams["a"]["value"]] = np.inf
    data = engine.export_stream("a")
    engine.save(tmp_path / "ck")

    other = StreamEngine(TINY, seed=0)
    other.import_stream("a", data)
    assert other.streams_reset == 1 and _finite_state(other, "a")

    loaded = StreamEngine.load(tmp_path / "ck")
    assert loaded.streams_reset == 1
    assert _finite_state(loaded, "a") and _finite_state(loaded, "b")
    assert loaded.state.n[loaded.state.streams["b"]["value"]] == 30  # the good one kept


def test_eviction_listeners_hear_every_evicted_stream():
    config = EngineConfig.from_params(init="random", hidden_size=8, latent_size=2, max_streams=3,
                                      warmup_events=10**9)
    engine = StreamEngine(config, seed=0)
    evicted: list[str] = []
    engine.add_eviction_listener(evicted.append)
    for k in range(10):
        engine.process([Event(f"s{k}", {"value": 1.0})])
    assert evicted == [f"s{k}" for k in range(7)]  # least recently seen first
    assert engine.evictions == 7 and sorted(engine.fields_of) == ["s7", "s8", "s9"]


EXTREMES = [0.0, 1e-30, -1e-30, 1e-20, 1.0, 1e10, 1e30, -1e30, 9.99e29, -5e29]


@pytest.mark.parametrize("field_mode", ["channels", "joint"])
def test_accepted_extremes_never_make_a_stream_non_finite(field_mode):
    """Every value within +-1e30 is accepted, so none may turn a stream's state non-finite.

    The fuzz test of the service found one (a stream near 1e-30 that jumped to 1e30: its level
    signal, 2e41 sd, overflowed the float32 ring of recent signals and the stream was reset).
    Each sequence here starts quiet, then alternates extremes; before the fix 3 of them reset.
    """
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.lists(st.sampled_from(EXTREMES), min_size=1, max_size=20)
    configs = {
        "channels": EngineConfig(init="random", warmup_events=10**9).with_model(hidden_size=8),
        "joint": EngineConfig(init="random", field_mode="joint", warmup_events=10**9).with_model(
            hidden_size=8, n_features=2
        ),
    }

    @settings(max_examples=15, deadline=None, derandomize=True, database=None)
    @given(base=st.sampled_from(EXTREMES), tail=values)
    def check(base, tail):
        engine = StreamEngine(configs[field_mode], seed=0)
        quiet = [base * (1 - 0.01 * (i % 3)) for i in range(40)]
        for v in quiet + tail:
            (score,) = engine.process([Event("s", {"a": v, "b": -v})])
            assert 0.0 <= score.score <= 1.0 and math.isfinite(score.raw)
        assert engine.streams_reset == 0
        (fc,) = engine.forecast(["s"])
        assert np.isfinite(fc.mean).all()

    check()


@pytest.mark.parametrize("base,jump", [(1e-30, 1e30), (0.0, 1e30), (1e-20, -1e30)])
def test_a_jump_across_the_whole_range_is_scored_not_reset(base, jump):
    engine = StreamEngine(EngineConfig(), seed=0)
    for i in range(40):
        engine.process([Event("s", {"value": base * (1 + 0.01 * (i % 3))})])
    (score,) = engine.process([Event("s", {"value": jump})])
    assert score.score >= EXTREME_FLOOR  # a new extreme, far beyond anything seen
    assert engine.streams_reset == 0 and engine.n_streams == 1
    assert math.isfinite(score.components["level"])


@pytest.mark.parametrize("array", STEP_ARRAYS)
@pytest.mark.parametrize("streams", [["a"], ["a", "b"]], ids=["one-value-path", "batched"])
def test_any_step_array_turned_nan_resets_the_stream(array, streams):
    """Both paths (one value per call in Python floats, and the batched one) check every array
    a step writes: NaN anywhere in the row resets the stream at its next event."""
    engine = StreamEngine(TINY, seed=0)
    _feed(engine, streams, 80)
    engine.fine_tune()
    assert engine.model_version == 1
    slot = engine.state.streams["a"]["value"]
    engine.state.arrays[array][slot] = np.nan
    scores = _feed(engine, streams, 1, start=80)
    assert all(0.0 <= s.score <= 1.0 for s in scores)
    assert engine.streams_reset == 1
    assert all(_finite_state(engine, s) for s in streams)
    assert engine.state.n[slot] == 0
