"""Files written before the engine was split into modules (issue 12) still load and continue
exactly: an engine checkpoint in format versions 2 and 1 and a stream record, written by the
engine of commit 18a5b45 (the generating script is in tests/engine/data/format_18a5b45/README),
with the scores that engine gave next."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streamvgan.engine import Event, StreamEngine

DATA = Path(__file__).with_name("data") / "format_18a5b45"


def _events(a: int, b: int) -> list[Event]:
    return [
        e
        for t in range(a, b)
        for e in (
            Event("sine", {"value": 10 + 3 * math.sin(t / 4)}, t),
            Event("host/cpu", {"user": 40 + 5 * math.sin(t / 7), "system": 5 + math.cos(t / 5)}, t),
        )
    ]


@pytest.mark.parametrize("name", ["engine_v2.pt", "engine_v1.pt"])
def test_an_old_checkpoint_loads_and_continues_as_the_old_engine_did(name):
    expected = json.loads((DATA / "expected.json").read_text())
    engine = StreamEngine.from_bytes((DATA / name).read_bytes())
    assert engine.model_version == 2 and engine.streams() == ["sine", "host/cpu"]
    assert engine.fields("host/cpu") == ["system", "user"]
    scores = [s.score for s in engine.process(_events(100, 110))]
    assert scores == pytest.approx(expected["scores"], abs=1e-9)
    raw = [s.raw for s in engine.score(_events(110, 111))]
    assert raw == pytest.approx(expected["raw"], abs=1e-9)


def test_an_old_stream_record_imports_and_continues_as_the_old_engine_did():
    expected = json.loads((DATA / "expected.json").read_text())
    source = StreamEngine.from_bytes((DATA / "engine_v2.pt").read_bytes())
    engine = StreamEngine(source.config, seed=5)
    engine.import_weights(source.export_weights(), source.model_version)
    engine.import_stream("host/cpu", (DATA / "stream_host_cpu.svgs").read_bytes())
    events = [e for e in _events(100, 110) if e.stream == "host/cpu"]
    scores = [s.score for s in engine.process(events)]
    assert scores == pytest.approx(expected["record_scores"], abs=1e-9)
    # and the record written now is byte for byte the old one's layout
    again = StreamEngine(source.config, seed=5)
    again.import_weights(source.export_weights(), source.model_version)
    again.import_stream("host/cpu", (DATA / "stream_host_cpu.svgs").read_bytes())
    assert again.export_stream("host/cpu") == (DATA / "stream_host_cpu.svgs").read_bytes()
