"""Waiting for something another process or thread does, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    timeout_s: float = 30.0,
    every_s: float = 0.2,
    on_poll: Callable[[], Any] | None = None,
) -> Any:
    """Call ``predicate`` until it returns something truthy and return that; ``on_poll``
    (if given) runs between calls instead of a sleep of ``every_s``. Raises AssertionError
    naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        if on_poll is not None:
            on_poll()
        else:
            time.sleep(every_s)
