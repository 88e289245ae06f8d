"""Installing new weights re-warms every stream's network state from its replay buffer; the
re-warm runs outside the engine's lock (scoring goes on), and a stream that learns an event
meanwhile ends exactly as if the swap had waited for it."""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from streamvgan.engine import EngineConfig, Event, StreamEngine
from streamvgan.engine import network

STREAMS = ("a", "b", "c")


def _engine() -> StreamEngine:
    engine = StreamEngine(EngineConfig(fit_every=10**9), seed=4)
    for t in range(80):
        engine.process([Event(s, {"value": math.sin(t / (3 + k))}) for k, s in enumerate(STREAMS)])
    return engine


def _new_weights(engine: StreamEngine) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen)
            for k, v in engine.model.state_dict().items()}


def test_a_stream_that_moves_on_during_the_swap_is_rewarmed_with_the_new_weights(monkeypatch):
    moving, reference = _engine(), _engine()
    weights = _new_weights(moving)
    event = [Event("b", {"value": 4.0})]
    # the reference learns the event first, then swaps: every stream re-warmed at the swap
    reference.process(event)
    reference.install_weights(weights)

    original = network.warm_states
    lock_free: list[bool] = []

    def during_the_copy_rewarm(model, windows, device, chunk=4096):
        if not lock_free:  # the first call: every stream's copied buffer, outside the lock
            probe = threading.Thread(
                target=lambda: lock_free.append(moving._lock.acquire(timeout=10) and
                                                (moving._lock.release() or True)))
            probe.start()
            probe.join()
            moving.process(event)  # scoring goes on meanwhile: "b" learns an event
        return original(model, windows, device, chunk)

    monkeypatch.setattr(network, "warm_states", during_the_copy_rewarm)
    version = moving.install_weights(weights)
    assert lock_free == [True]  # another thread took the engine's lock during the re-warm
    assert version == reference.model_version
    slots = {s: int(moving.state.channels(s)[1][0]) for s in STREAMS}
    for name in ("h", "f_mean", "f_scale"):
        got, want = getattr(moving.state, name), getattr(reference.state, name)
        for stream, slot in slots.items():
            if stream == "b":  # re-warmed alone under the lock: batch of one, same maths
                np.testing.assert_allclose(got[slot], want[slot], rtol=1e-5, atol=1e-6)
            else:  # untouched: the state computed from the copy, bit for bit
                np.testing.assert_array_equal(got[slot], want[slot])
    # and the streams score alike from here on
    nxt = [Event(s, {"value": 0.5}) for s in STREAMS]
    np.testing.assert_allclose([x.score for x in moving.process(nxt)],
                               [x.score for x in reference.process(nxt)], atol=1e-6)


def test_a_swap_with_nothing_moving_equals_the_rewarm_of_every_stream():
    engine = _engine()
    weights = _new_weights(engine)
    engine.install_weights(weights)
    used = engine.state.used_slots()
    expect = (engine.state.h[used].copy(), engine.state.f_mean[used].copy())
    network.rewarm(engine.model, engine.state, used, engine.config.window, engine.device)
    np.testing.assert_array_equal(engine.state.h[used], expect[0])
    np.testing.assert_array_equal(engine.state.f_mean[used], expect[1])
