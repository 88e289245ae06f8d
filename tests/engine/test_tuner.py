"""The fine-tuner's pacing: optimiser steps take at most ``share`` of the trainer thread's wall
time (rests in proportion to each step), the first fit is never paced, and a stop ends a
rest. Time is a fake clock here: no test waits or measures real time."""

from __future__ import annotations

import threading

import pytest

from streamvgan.engine import BackgroundFineTuner
from streamvgan.engine.training import FitReport
from streamvgan.engine.tuner import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingStop(threading.Event):
    """A stop event whose waits are recorded and pass on the fake clock, not in real time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock, self.waits = clock, []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        self.clock.now += timeout or 0.0
        return self.is_set()


class FakeEngine:
    """Fits of ``steps`` optimiser steps of ``step_s`` seconds each on the fake clock."""

    def __init__(self, clock: FakeClock, version: int, steps: int, step_s: float) -> None:
        self.clock, self.model_version, self.steps, self.step_s = clock, version, steps, step_s
        self.steps_run = 0

    def fine_tune(self, steps=None, force=False, should_stop=None):
        for _ in range(self.steps):
            if should_stop is not None and should_stop():
                return None
            self.clock.now += self.step_s
            self.steps_run += 1
        self.model_version += 1
        return FitReport(self.model_version, self.steps, self.steps * self.step_s)


def run_one_fit(share: float, version: int, steps: int = 4, step_s: float = 0.1):
    clock = FakeClock()
    engine = FakeEngine(clock, version, steps, step_s)
    tuner = BackgroundFineTuner(engine, share=share)
    tuner.pacer = Pacer(share, clock)
    tuner._stop = RecordingStop(clock)
    tuner.on_fit = lambda report: tuner._stop.set()  # one fit, then stop
    tuner._run()  # inline: the thread's body
    return engine, tuner._stop.waits, clock.now - 100.0


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_steps_take_at_most_their_share_of_the_wall_time(share):
    engine, waits, elapsed = run_one_fit(share, version=1)
    assert engine.steps_run == 4 and engine.model_version == 2  # the same fit, all its steps
    # a rest after each of steps 1-3 (the 4th ends the fit), each making step / (step + rest)
    # the share
    assert waits == pytest.approx([0.1 * (1 - share) / share] * 3)
    assert [0.1 / (0.1 + w) for w in waits] == pytest.approx([share] * 3)
    assert elapsed == pytest.approx(0.4 + sum(waits))


def test_share_one_and_the_first_fit_are_not_paced():
    for share, version in [(1.0, 1), (0.25, 0)]:
        engine, waits, elapsed = run_one_fit(share, version=version)
        assert engine.steps_run == 4
        assert waits == [] and elapsed == pytest.approx(0.4)


def test_a_stop_during_a_rest_ends_the_fit_unfinished():
    clock = FakeClock()
    engine = FakeEngine(clock, version=1, steps=40, step_s=0.1)
    tuner = BackgroundFineTuner(engine, share=0.25)
    tuner.pacer = Pacer(0.25, clock)
    stop = tuner._stop = RecordingStop(clock)

    def wait(timeout=None):  # the service stops during the second rest
        stop.waits.append(timeout)
        clock.now += timeout or 0.0
        if len(stop.waits) == 2:
            stop.set()
        return stop.is_set()

    stop.wait = wait
    tuner._run()
    assert engine.steps_run == 2 and engine.model_version == 1  # partial fit discarded


def test_pacer_rejects_a_share_outside_0_1():
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="must be in"):
            Pacer(share)
