"""Writes this directory's files with the engine of commit 18a5b45 (see README)."""

import io
import json
import math
import sys
from pathlib import Path

import torch

from streamvgan.engine import EngineConfig, Event, StreamEngine


def events(a: int, b: int) -> list[Event]:
    return [
        e
        for t in range(a, b)
        for e in (
            Event("sine", {"value": 10 + 3 * math.sin(t / 4)}, t),
            Event("host/cpu", {"user": 40 + 5 * math.sin(t / 7), "system": 5 + math.cos(t / 5)}, t),
        )
    ]


def main(out: Path) -> None:
    cfg = EngineConfig(
        warmup_events=60, first_fit_steps=3, fit_steps=2, fit_every=40, replay_size=64
    ).with_model(hidden_size=8, critic_channels=4)
    engine = StreamEngine(cfg, seed=5)
    for t in range(0, 100, 5):
        engine.process(events(t, t + 5))
        engine.fine_tune()
    v2 = engine.to_bytes()
    record = engine.export_stream("host/cpu")
    # version 1 of the format: the index as three lists of Python objects
    payload = torch.load(io.BytesIO(v2), weights_only=True)
    payload.update(json.loads(payload.pop("index")), format_version=1)
    buf = io.BytesIO()
    torch.save(payload, buf)
    nxt = events(100, 110)
    expect = {
        "scores": [s.score for s in engine.process(nxt)],
        "raw": [s.raw for s in engine.score(events(110, 111))],
    }
    fresh = StreamEngine(cfg, seed=5)
    fresh.import_weights(engine.export_weights(), engine.model_version)
    fresh.import_stream("host/cpu", record)
    cpu = [e for e in nxt if e.stream == "host/cpu"]
    expect["record_scores"] = [s.score for s in fresh.process(cpu)]
    (out / "engine_v2.pt").write_bytes(v2)
    (out / "engine_v1.pt").write_bytes(buf.getvalue())
    (out / "stream_host_cpu.svgs").write_bytes(record)
    (out / "expected.json").write_text(json.dumps(expect))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
