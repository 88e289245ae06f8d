"""BackgroundFineTuner: fine-tunes an engine in a daemon thread whenever a fit is due, so
scoring never waits for training; the new weights are swapped in between two batches.

A fine-tune is a burst of optimiser steps (40 by default, ~3 s of one core here) that shares
the CPU and the interpreter lock with the scoring loop. :class:`Pacer` spreads it out: after
each step the thread rests in proportion to the step's time, so training takes at most
``share`` of the thread's wall time while a fit runs. The fit computes the same weights
(same steps, same draws); it only takes longer to arrive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from streamvgan.engine.training import FitReport

log = logging.getLogger(__name__)


class FineTunable(Protocol):
    """What the tuner needs of an engine (:class:`~streamvgan.engine.StreamEngine` is one)."""

    @property
    def model_version(self) -> int: ...

    def fine_tune(
        self,
        steps: int | None = None,
        force: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitReport | None: ...


class Pacer:
    """Rests between optimiser steps so that they take at most ``share`` of the wall time:
    after a step that took ``t`` seconds, the rest is ``t * (1 - share) / share`` (share 1:
    none). :meth:`start` at the beginning of a fit, :meth:`rest_s` before every step.

    >>> clock = iter([0.0, 0.1, 0.6]).__next__
    >>> pacer = Pacer(0.25, clock)
    >>> pacer.start()  # t = 0.0: the fit begins
    >>> round(pacer.rest_s(), 3)  # before step 1, at 0.1 s: what came before took 0.1 s
    0.3
    >>> round(pacer.rest_s(), 3)  # before step 2, at 0.6 s: step 1 ran from 0.4 s, 0.2 s
    0.6
    """

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share={share!r}: must be in (0, 1] (1: no rest between steps)")
        self.share = share
        self._clock = clock
        self._step_started: float | None = None

    def start(self) -> None:
        self._step_started = self._clock()

    def rest_s(self) -> float:
        """Seconds to rest before the next step: in proportion to the step that just ended
        (the time since the previous call, less the rest given then), 0 at the first."""
        now = self._clock()
        if self._step_started is None or self.share >= 1:
            self._step_started = now
            return 0.0
        busy = max(0.0, now - self._step_started)
        rest = busy * (1 - self.share) / self.share
        self._step_started = now + rest  # the next step starts after the rest
        return rest


class BackgroundFineTuner:
    """Fine-tunes ``engine`` in a daemon thread whenever it is due, so scoring never waits for
    training; the new weights are swapped in between two batches.

    Parameters
    ----------
    engine
        The engine to train and update.
    on_fit
        Called with each :class:`FitReport` (from the training thread).
    interval_s
        How often the thread checks whether a fine-tune is due.
    share
        The largest share of the thread's wall time that optimiser steps take while a fit
        runs (see :class:`Pacer`); 1: back to back. The first fit (the end of the cold start,
        before which scores come from the fallback signals) is never paced.

    Examples
    --------
    >>> import math, time
    >>> from streamvgan.engine import StreamEngine, EngineConfig, Event
    >>> engine = StreamEngine(EngineConfig(warmup_events=100, first_fit_steps=5), seed=0)
    >>> with BackgroundFineTuner(engine, interval_s=0.01) as tuner:
    ...     for t in range(200):
    ...         _ = engine.process([Event("s", {"value": math.sin(t / 3)})])
    ...     deadline = time.monotonic() + 30
    ...     while engine.model_version == 0 and time.monotonic() < deadline:
    ...         time.sleep(0.01)
    >>> engine.model_version >= 1
    True
    """

    def __init__(
        self,
        engine: FineTunable,
        on_fit: Callable[[FitReport], None] | None = None,
        interval_s: float = 1.0,
        share: float = 1.0,
    ) -> None:
        self.engine = engine
        self.on_fit = on_fit
        self.interval_s = interval_s
        self.pacer = Pacer(share)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> BackgroundFineTuner:
        self._thread = threading.Thread(target=self._run, name="streamvgan-finetune", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                paced = self.engine.model_version > 0 and self.pacer.share < 1
                self.pacer.start()
                report = self.engine.fine_tune(
                    should_stop=self._between_steps if paced else self._stop.is_set
                )
            except Exception as exc:  # keep scoring alive; the error is logged and kept
                log.exception("fine-tune failed; scoring continues with the current weights")
                self.error = exc
                report = None
            if report is not None and self.on_fit is not None:
                self.on_fit(report)
            if report is None:
                self._stop.wait(self.interval_s)

    def _between_steps(self) -> bool:
        """Before each optimiser step: rest as the pacer says (a stop ends the rest), then
        say whether to stop."""
        rest = self.pacer.rest_s()
        if rest > 0:
            self._stop.wait(rest)
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("fine-tune thread still running after %.1fs; leaving it", timeout)

    def __enter__(self) -> BackgroundFineTuner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
