"""Service checkpoints (issue 11, items 7 and 8): a ``StreamEngine.save`` directory loads; a
corrupt newest checkpoint falls back to the previous one kept beside it; no checkpoint is
rewritten when nothing changed; evicted streams leave the service's own maps."""

from __future__ import annotations

import json
import logging
import math

import pytest
from prometheus_client import CollectorRegistry

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.engine.signals import EXTREME_FLOOR
from streamvgan.errors import CheckpointError
from streamvgan.service import checkpoints
from streamvgan.service.app import Application
from streamvgan.service.settings import Settings

CONFIG = EngineConfig.from_params(init="random", hidden_size=8, latent_size=2, warmup_events=10**9)


def _engine(n_streams: int = 3, events: int = 5) -> StreamEngine:
    engine = StreamEngine(CONFIG, seed=0)
    for t in range(events):
        engine.process([Event(f"s{k}", {"value": math.sin(t + k)}) for k in range(n_streams)])
    return engine


def test_a_directory_written_by_stream_engine_save_loads_through_the_service(tmp_path):
    engine = _engine()
    engine.save(tmp_path)
    loaded = checkpoints.load_checkpoint(tmp_path)
    assert loaded is not None
    assert (loaded.n_streams, loaded.events_seen) == (3, 15)
    nxt = [Event("s1", {"value": 4.0})]
    assert loaded.process(nxt) == engine.process(nxt)  # the same state, the same score
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path


def _two_checkpoints(tmp_path):
    first = checkpoints.save_checkpoint(_engine(n_streams=2), tmp_path)
    second = checkpoints.save_checkpoint(_engine(n_streams=3), tmp_path)
    assert (tmp_path / "LATEST").read_text().strip() == second.name
    return first, second


def _truncate(path):
    data = (path / "engine.pt").read_bytes()
    (path / "engine.pt").write_bytes(data[: len(data) // 2])


def _flip_a_byte(path):
    data = bytearray((path / "engine.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "engine.pt").write_bytes(bytes(data))


def _bad_manifest(path):
    (path / "MANIFEST.json").write_text('{"sha256": ')


def _binary_latest(path):
    (path.parent / "LATEST").write_bytes(b"\xff\xfe\x00ckpt\x9c")


@pytest.mark.parametrize("corrupt", [_truncate, _flip_a_byte, _bad_manifest, _binary_latest])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, corrupt, caplog):
    _, second = _two_checkpoints(tmp_path)
    corrupt(second)
    skipped = []
    engine = checkpoints.load_checkpoint(tmp_path, on_fallback=lambda p, e: skipped.append(p))
    # the first checkpoint's; with only LATEST broken, the newest good directory (the second)
    expected = 3 if corrupt is _binary_latest else 2
    assert engine is not None and engine.n_streams == expected
    assert len(skipped) == 1  # reported once: the counter the service exposes
    assert "trying" in caplog.text  # and logged

    # the service counts it in a metric
    registry = CollectorRegistry()
    app = Application(Settings(input_topic="in", checkpoint_dir=str(tmp_path), metrics_port=-1),
                      registry=registry)
    assert app.engine.n_streams == expected
    assert registry.get_sample_value("streamvgan_checkpoint_load_fallbacks_total") == 1


@pytest.mark.parametrize("corrupt", [_truncate, _flip_a_byte, _bad_manifest])
def test_no_usable_checkpoint_is_one_clear_error_naming_each(tmp_path, corrupt):
    first, second = _two_checkpoints(tmp_path)
    corrupt(first)
    corrupt(second)
    with pytest.raises(CheckpointError) as info:
        checkpoints.load_checkpoint(tmp_path)
    message = str(info.value)
    assert first.name in message and second.name in message
    assert "move the directory away to start fresh" in message


def test_a_binary_latest_without_checkpoints_is_a_clear_error_not_a_unicode_error(tmp_path):
    (tmp_path / "LATEST").write_bytes(b"\x80\x81\xfe")
    with pytest.raises(CheckpointError, match=r"LATEST holds b'\\x80\\x81\\xfe'.*remove"):
        checkpoints.load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        checkpoints.latest_checkpoint(tmp_path)


def test_pruning_keeps_the_previous_complete_checkpoint_not_a_half_written_one(tmp_path):
    first, second = _two_checkpoints(tmp_path)
    (second / "MANIFEST.json").unlink()  # as a crash mid-save leaves it
    (tmp_path / "LATEST").write_text(first.name + "\n")
    third = checkpoints.save_checkpoint(_engine(n_streams=4), tmp_path)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == sorted([first.name, third.name])


def test_no_checkpoint_is_rewritten_when_nothing_changed(tmp_path):
    registry = CollectorRegistry()
    settings = Settings(input_topic="in", checkpoint_dir=str(tmp_path), metrics_port=-1)
    app = Application(settings, engine=_engine(), registry=registry)
    app.state.checkpoint()
    app.state.checkpoint()  # idle: nothing changed
    assert app.stats.checkpoints == 1
    assert registry.get_sample_value("streamvgan_checkpoint_skipped_unchanged_total") == 1
    app.engine.process([Event("s0", {"value": 0.5})])
    app.state.checkpoint()
    assert app.stats.checkpoints == 2
    info = json.loads((checkpoints.latest_checkpoint(tmp_path) / "service.json").read_text())
    assert info["events_seen"] == 16

    # a service started from that checkpoint does not rewrite it either
    again = Application(settings, registry=CollectorRegistry())
    again.state.checkpoint()
    assert again.stats.checkpoints == 0


@pytest.mark.slow
def test_evicted_streams_leave_the_service_maps(tmp_path):
    config = EngineConfig.from_params(init="random", hidden_size=8, latent_size=2, max_streams=100,
                                      warmup_events=10**9)
    app = Application(Settings(input_topic="in", metrics_port=-1),
                      engine=StreamEngine(config, seed=0), registry=CollectorRegistry())
    for k in range(1000):
        stream = f"id-{k}"
        app.engine.process([Event(stream, {"value": 1.0})])
        app.processor.schedule.counts[stream] += 1
        app.state.stream_partition[stream] = k % 4
        app.state.dirty[stream] = k % 4
    assert app.engine.n_streams == 100
    live = set(app.engine.streams())
    counts, state = app.processor.schedule.counts, app.state
    assert set(counts) == set(state.stream_partition) == set(state.dirty) == live


def test_a_format_1_checkpoint_still_loads():
    """Format 2 keeps the stream ids in one JSON string; format 1 (three lists) still loads."""
    import io

    import torch

    engine = _engine()
    payload = torch.load(io.BytesIO(engine.to_bytes()), weights_only=True)
    assert payload["format_version"] == 2
    index = json.loads(payload.pop("index"))
    payload.update(index, format_version=1)
    buf = io.BytesIO()
    torch.save(payload, buf)
    old = StreamEngine.from_bytes(buf.getvalue())
    assert old.streams() == engine.streams() == ["s0", "s1", "s2"]
    nxt = [Event("s2", {"value": -1.0})]
    assert old.process(nxt) == engine.process(nxt)


def test_a_restart_takes_the_architecture_from_the_checkpoint_and_the_rest_from_settings(
    tmp_path, caplog
):
    """docs/operations.md: only the architecture comes from the checkpoint. Before this, the
    whole saved EngineConfig won, so a changed alert_cooldown or --max-streams was ignored."""
    import numpy as np

    small = {"init": "random", "hidden_size": 8, "latent_size": 2, "warmup_events": 10**9}
    first = Settings(input_topic="in", checkpoint_dir=str(tmp_path), metrics_port=-1,
                     engine_params=small)
    app = Application(first, registry=CollectorRegistry())
    values = list(10 + np.random.default_rng(0).normal(size=300))
    for v in values:
        app.engine.process([Event("s", {"value": v})])
    app.state.checkpoint()

    incident = [40.0] * 6 + [10.0] * 30  # several anomalous points in a row, then calm

    def alerts(settings: Settings) -> np.ndarray:
        engine = Application(settings, registry=CollectorRegistry()).engine
        out = [engine.process([Event("s", {"value": v})])[0].score for v in incident]
        return np.array(out), engine

    before, same = alerts(first)
    changed = Settings(input_topic="in", checkpoint_dir=str(tmp_path), metrics_port=-1,
                       max_streams=50,
                       engine_params={**small, "hidden_size": 16, "alert_cooldown": 30})
    with caplog.at_level(logging.WARNING, logger="streamvgan.engine.checkpoint"):
        after, engine = alerts(changed)
    # the settings win: the cooldown is on and the stream table is smaller
    assert (engine.config.alert_cooldown, engine.config.max_streams) == (30, 50)
    assert same.config.alert_cooldown == 0
    # the same incident raised several alerts without the cooldown, and one with it
    assert before[0] == after[0] >= EXTREME_FLOOR
    assert (before >= engine.config.cooldown_threshold).sum() > 1
    assert (after >= engine.config.cooldown_threshold).sum() == 1
    assert after[1:].max() <= engine.config.cooldown_cap
    # the checkpoint's architecture wins, and the one log line says what differed and who won
    assert engine.config.model.hidden_size == 8 and engine.model.config.hidden_size == 8
    lines = [m for m in caplog.messages if "differs from the settings" in m]
    assert len(lines) == 1
    assert "model.hidden_size: checkpoint 8, settings 16 (the checkpoint wins)" in lines[0]
    assert "alert_cooldown: checkpoint 0, settings 30 (the settings win)" in lines[0]
    assert "max_streams: checkpoint 100000, settings 50 (the settings win)" in lines[0]
