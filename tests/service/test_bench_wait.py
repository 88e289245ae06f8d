"""`streamvgan bench` reads the output records only after the application has handled the
events (a reader in the same process would slow what it measures): the wait it does first."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from streamvgan.tools.bench import _wait_handled


def _runner(consumed: int = 0, exit_code: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(stats=SimpleNamespace(consumed=consumed), exit_code=exit_code)


def test_waits_until_the_application_has_handled_the_events():
    runner = _runner()

    def handle() -> None:  # the loop's thread, in polls
        for _ in range(10):
            time.sleep(0.01)
            runner.stats.consumed += 100

    thread = threading.Thread(target=handle)
    thread.start()
    _wait_handled(runner, 1000, timeout_s=60.0)
    assert runner.stats.consumed == 1000  # not before the last poll
    thread.join()


def test_returns_when_the_application_stopped_or_the_time_is_up():
    stopped = _runner(consumed=10, exit_code=1)  # an error stopped it: nothing more comes
    _wait_handled(stopped, 1000, timeout_s=60.0)
    assert stopped.stats.consumed == 10
    stalled = _runner(consumed=10)
    start = time.monotonic()
    _wait_handled(stalled, 1000, timeout_s=0.2)
    assert time.monotonic() - start >= 0.2  # gave up at the timeout, not at once
