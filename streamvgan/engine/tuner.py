"""BackgroundFineTuner: fine-tunes an engine in a daemon thread whenever a fit is due, so
scoring never waits for training; the new weights are swapped in between two batches."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from streamvgan.engine.training import FitReport

log = logging.getLogger(__name__)


class FineTunable(Protocol):
    """What the tuner needs of an engine (:class:`~streamvgan.engine.StreamEngine` is one)."""

    def fine_tune(
        self,
        steps: int | None = None,
        force: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitReport | None: ...


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
    ) -> None:
        self.engine = engine
        self.on_fit = on_fit
        self.interval_s = interval_s
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
                report = self.engine.fine_tune(should_stop=self._stop.is_set)
            except Exception as exc:  # keep scoring alive; the error is logged and kept
                log.exception("fine-tune failed; scoring continues with the current weights")
                self.error = exc
                report = None
            if report is not None and self.on_fit is not None:
                self.on_fit(report)
            if report is None:
                self._stop.wait(self.interval_s)

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
