"""Unit behaviour of StreamEngine: batching, determinism, validation, eviction, scale, swaps."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from streamvgan.engine import BackgroundFineTuner, EngineConfig, Event, StreamEngine
from streamvgan.errors import InvalidInputError

TINY = EngineConfig(init="random", warmup_events=150, first_fit_steps=10, fit_steps=3, fit_every=100).with_model(
    hidden_size=8
)


def sine_events(stream: str, n: int, start: int = 0, scale: float = 1.0, offset: float = 0.0):
    return [
        Event(stream, {"value": offset + scale * math.sin(t / 3) + 0.05 * scale * math.cos(t * 1.7)}, ts=t)
        for t in range(start, start + n)
    ]


def feed(engine: StreamEngine, events, fit: bool = True):
    out = []
    for event in events:
        out.extend(engine.process([event]))
        if fit:
            engine.fine_tune()
    return out


def test_batched_step_equals_one_stream_at_a_time():
    a, b = sine_events("a", 250), sine_events("b", 250, scale=50, offset=7)
    batched = StreamEngine(TINY, seed=3)
    single_a, single_b = StreamEngine(TINY, seed=3), StreamEngine(TINY, seed=3)
    got_a, got_b = [], []
    for i in range(0, 250, 5):  # polls of 10 events: 5 per stream, interleaved
        chunk = [e for pair in zip(a[i : i + 5], b[i : i + 5]) for e in pair]
        res = batched.process(chunk)
        got_a += [r.score for r in res if r.stream == "a"]
        got_b += [r.score for r in res if r.stream == "b"]
    ref_a = [r.score for e in a for r in single_a.process([e])]
    ref_b = [r.score for e in b for r in single_b.process([e])]
    assert batched.events_seen == 500 and batched.n_streams == 2
    # no fit happened in this test (fine_tune not called), so the cold path must agree exactly:
    # every event's score, then the forecasts and a score of the state both end in
    assert len(got_a) == len(got_b) == 250
    np.testing.assert_allclose(got_a, ref_a)
    np.testing.assert_allclose(got_b, ref_b)
    assert len(set(np.round(got_a, 6))) > 10  # real scores, not one constant on both sides
    np.testing.assert_allclose(batched.forecast(["a"])[0].mean, single_a.forecast(["a"])[0].mean)
    np.testing.assert_allclose(batched.forecast(["b"])[0].mean, single_b.forecast(["b"])[0].mean)
    np.testing.assert_allclose(
        batched.score(a[-1:])[0].score, single_a.score(a[-1:])[0].score
    )


@pytest.mark.slow
def test_batched_warm_step_matches_sequential_after_fit():
    engine = StreamEngine(TINY, seed=1)
    feed(engine, sine_events("a", 200) + sine_events("b", 200, offset=3))
    assert engine.model_version >= 1
    twin = StreamEngine.from_bytes(engine.to_bytes())
    evs = [e for pair in zip(sine_events("a", 20, start=200), sine_events("b", 20, start=200, offset=3)) for e in pair]
    batched = engine.process(evs)
    seq = [twin.process([e])[0] for e in evs]
    np.testing.assert_allclose([s.score for s in batched], [s.score for s in seq], atol=1e-6)
    np.testing.assert_allclose(
        [s.components["surprise"] for s in batched], [s.components["surprise"] for s in seq], rtol=1e-5
    )


@pytest.mark.slow
def test_same_seed_same_scores_different_seed_different_weights():
    runs = []
    for seed in (5, 5, 6):
        engine = StreamEngine(TINY, seed=seed)
        runs.append([s.score for s in feed(engine, sine_events("a", 300))])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_scores(tmp_path):
    engine = StreamEngine(TINY, seed=2)
    feed(engine, sine_events("a", 220) + sine_events("b", 220, scale=1e6))
    engine.save(tmp_path / "ckpt")
    restored = StreamEngine.load(tmp_path / "ckpt")
    assert restored.model_version == engine.model_version and restored.n_streams == 2
    later = sine_events("a", 150, start=220) + sine_events("b", 150, start=220, scale=1e6)
    expected = [s.score for s in feed(engine, later)]
    got = [s.score for s in feed(restored, later)]
    assert got == expected
    assert restored.model_version == engine.model_version >= 2  # a fine-tune ran after loading too


@pytest.mark.parametrize(
    "event, words",
    [
        (Event("a", {"value": float("nan")}), ["'value'", "nan"]),
        (Event("a", {"value": float("inf")}), ["'value'", "inf"]),
        (Event("a", {"value": None}), ["'value'", "None"]),
        (Event("a", {"value": "3.2"}), ["'value'", "'3.2'"]),
        (Event("a", {"value": True}), ["'value'", "True"]),
        (Event("a", {"value": 1.0, "extra": 2.0}), ["extra"]),
        (Event("a", {"other": 1.0}), ["missing", "value"]),
        (Event("a", {}), ["non-empty"]),
        (Event("", {"value": 1.0}), ["stream"]),
    ],
)
@pytest.mark.slow
def test_bad_input_raises_clear_error_and_changes_nothing(event, words):
    engine = StreamEngine(TINY, seed=0)
    feed(engine, sine_events("a", 200))
    before = engine.to_bytes()
    good = Event("a", {"value": 0.5})
    with pytest.raises(InvalidInputError) as info:
        engine.process([good, event])  # the good event before it must not be applied either
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)
    assert engine.to_bytes() == before


def test_least_recently_seen_streams_are_evicted():
    engine = StreamEngine(EngineConfig(max_streams=3), seed=0)
    for name in ["a", "b", "c"]:
        engine.process([Event(name, {"value": 1.0})])
    engine.process([Event("a", {"value": 1.0})])  # a is now most recent; b is the oldest
    engine.process([Event("d", {"value": 1.0})])
    assert sorted(engine.streams()) == ["a", "c", "d"]
    assert engine.evictions == 1
    with pytest.raises(InvalidInputError, match="unknown stream 'b'"):
        engine.forecast(["b"])


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e9])
@pytest.mark.slow
def test_normaliser_is_scale_free(scale):
    """Scores and forecasts (in units of the stream) do not depend on the stream's scale."""
    ref = StreamEngine(TINY, seed=4)
    scaled = StreamEngine(TINY, seed=4)
    s_ref = [s.score for s in feed(ref, sine_events("a", 260))]
    s_scaled = [s.score for s in feed(scaled, sine_events("a", 260, scale=scale))]
    np.testing.assert_allclose(s_scaled, s_ref, atol=1e-3)
    np.testing.assert_allclose(
        scaled.forecast(["a"])[0].mean / scale, ref.forecast(["a"])[0].mean, rtol=1e-3, atol=1e-3
    )


@pytest.mark.slow
def test_constant_stream_then_change_is_flagged(one_torch_thread):
    engine = StreamEngine(TINY, seed=0)
    scores = [s.score for s in feed(engine, [Event("c", {"value": 42.0}) for _ in range(300)])]
    # A fine-tune shifts the (tiny) error level of a constant stream, which the calibration
    # sees as a mild rise; it must never reach an alert. Seeds 0-7 (one thread): highest score
    # 0.0-0.9993; seed 0 gives 0.696, but seeds 1, 7 and 4 reach 0.957, 0.963 and 0.9993 for a
    # few events after the second fine-tune (surprise steps up, the calibration reads it as an
    # anomaly). That is an engine defect (reported), not a bound to loosen, so the bound stays.
    assert all(math.isfinite(s) for s in scores) and max(scores[50:]) < 0.95
    jump = engine.process([Event("c", {"value": 42.5})])[0]
    assert jump.score > 0.99  # seeds 0-7: 1.0
    fc = engine.forecast(["c"])[0]
    # seeds 0-7: 0.232-0.236 (half the step: the blend leans on the last value)
    assert np.all(np.isfinite(fc.mean)) and abs(fc.mean[0, 0] - 42.25) < 0.5


@pytest.mark.slow
def test_level_shift_is_followed(one_torch_thread):
    engine = StreamEngine(TINY, seed=0)
    feed(engine, sine_events("s", 300))
    feed(engine, sine_events("s", 1500, start=300, offset=100.0))
    assert abs(engine.forecast(["s"])[0].mean[0, 0] - 100.0) < 3.0  # seeds 0-7: 0.28-0.40


@pytest.mark.slow
def test_multivariate_channels_and_joint(one_torch_thread):
    evs = [Event("m", {"cpu": math.sin(t / 4), "mem": 50 + 5 * math.cos(t / 9)}) for t in range(260)]
    for config in (TINY, EngineConfig(init="random", field_mode="joint", warmup_events=150, first_fit_steps=5).with_model(n_features=2, hidden_size=8)):
        engine = StreamEngine(config, seed=0)
        feed(engine, evs)
        assert engine.model_version >= 1
        fc = engine.forecast(["m"])[0]
        assert fc.fields == ["cpu", "mem"] and fc.mean.shape == (12, 2)
        assert 40 < fc.mean[0, 1] < 60  # seeds 0-7: 45.66-45.68 in both modes
        assert engine.generate("m", 7, 4).shape == (4, 7, 2)
        spike = engine.process([Event("m", {"cpu": 0.0, "mem": 500.0})])[0]
        assert spike.score > 0.99


def test_joint_mode_rejects_wrong_field_count():
    engine = StreamEngine(EngineConfig(init="random", field_mode="joint").with_model(n_features=2), seed=0)
    with pytest.raises(InvalidInputError, match="joint mode expects 2 fields"):
        engine.process([Event("m", {"cpu": 1.0})])


@pytest.mark.slow
def test_background_fine_tuner_swaps_weights_while_scoring():
    engine = StreamEngine(TINY, seed=0)
    reports = []
    with BackgroundFineTuner(engine, on_fit=reports.append, interval_s=0.01):
        t = 0
        deadline = time.monotonic() + 60
        while engine.model_version < 2 and time.monotonic() < deadline:
            engine.process(sine_events("a", 10, start=t))
            t += 10
            time.sleep(0.002)
    assert engine.model_version >= 2
    assert [r.version for r in reports][:2] == [1, 2]
    assert reports[0].steps == TINY.first_fit_steps and reports[0].n_windows > 0
    assert math.isfinite(reports[0].losses["total"])
    # every stream's state was re-warmed with the new weights: scores stay finite and warm
    score = engine.process(sine_events("a", 1, start=t))[0]
    assert score.warm and score.model_version == engine.model_version


@pytest.mark.slow
def test_stream_state_export_import_continues_identically():
    engine = StreamEngine(TINY, seed=0)
    feed(engine, sine_events("a", 220) + sine_events("b", 220, offset=5))
    blob = engine.export_stream("a")
    other = StreamEngine(TINY, seed=0)
    other.import_weights(engine.export_weights(), version=engine.model_version)
    other.import_stream("a", blob)
    nxt = sine_events("a", 30, start=220)
    assert [s.score for s in feed(other, nxt, fit=False)] == pytest.approx(
        [s.score for s in feed(engine, nxt, fit=False)], abs=1e-6
    )
    assert engine.export_stream("nope") is None


def test_exporting_many_streams_at_once_gives_each_stream_its_own_bytes():
    """export_streams (one gather for a whole changelog commit) must write exactly what
    export_stream writes for each stream: the changelog's readers and the restore depend on
    it. Unknown streams give None in their place; a multivariate stream has two channels."""
    engine = StreamEngine(TINY, seed=0)
    for t in range(40):
        engine.process(
            [
                Event("a", {"value": math.sin(t / 3)}),
                Event("host", {"cpu": math.cos(t / 4), "mem": t % 5}),
                Event("b", {"value": 7.0 + t}),
            ]
        )
    names = ["b", "nope", "host", "a"]
    together = engine.export_streams(names)
    assert together == [engine.export_stream(s) for s in names]
    assert together[1] is None and len(set(together)) == 4
    assert engine.export_streams(["nope"]) == [None] and engine.export_streams([]) == []


def test_state_per_stream_is_small():
    # measured: 2,042 bytes by default; 4,442 with a 600-value season ring (600 float32 values)
    assert StreamEngine(EngineConfig(), seed=0).state_bytes_per_stream() < 2200
    assert StreamEngine(EngineConfig(season_window=600), seed=0).state_bytes_per_stream() < 4608


@pytest.mark.slow
def test_corrupt_or_foreign_stream_state_is_rejected_and_leaves_stream_cold():
    from streamvgan.errors import CheckpointError

    engine = StreamEngine(TINY, seed=0)
    feed(engine, sine_events("a", 220))
    blob = engine.export_stream("a")
    assert len(blob) < 6000  # compact: header + raw arrays
    other = StreamEngine(TINY, seed=0)
    for bad, why in [
        (blob[: len(blob) // 2], "checksum"),
        (b"garbage", "magic"),
        (blob[:8] + b"}" + blob[9:], "header"),
    ]:
        with pytest.raises(CheckpointError, match=why):
            other.import_stream("a", bad)
        assert "a" not in other.streams()
    with pytest.raises(CheckpointError, match="holds stream 'a'"):
        other.import_stream("b", blob)
    other.import_stream("a", blob)
    assert other.streams() == ["a"] and other.fields("a") == ["value"]
    assert other.drop_stream("a") and other.streams() == []


@pytest.mark.slow
def test_background_fine_tuner_stop_interrupts_a_long_fit():
    engine = StreamEngine(EngineConfig(init="random", warmup_events=100, first_fit_steps=100_000).with_model(hidden_size=8), seed=0)
    feed(engine, sine_events("a", 120), fit=False)
    # Record every answer of the stop flag the fit checks before each of its steps.
    answers: list[bool] = []
    fine_tune = engine.fine_tune

    def watched_fine_tune(**kwargs):
        stop = kwargs["should_stop"]

        def should_stop() -> bool:
            answers.append(stop())
            return answers[-1]

        return fine_tune(**{**kwargs, "should_stop": should_stop})

    engine.fine_tune = watched_fine_tune
    tuner = BackgroundFineTuner(engine, interval_s=0.01).start()
    deadline = time.monotonic() + 60
    while len(answers) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(answers) >= 20  # the first fit (100,000 steps) is running
    tuner.stop(timeout=60)
    # the thread ended, at the first step after the stop, long before the fit's 100,000 steps
    assert "streamvgan-finetune" not in {t.name for t in threading.enumerate()}
    assert answers[-1] is True and answers.count(True) == 1
    assert len(answers) < 100_000
    assert engine.model_version == 0  # the partial fit was discarded
