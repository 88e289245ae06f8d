"""Progress of the long commands (``evaluate``, ``bench``, ``demo``): a tqdm bar when stderr is
a terminal, and a plain log line every ``interval_s`` seconds (and one at the end) when it is
not, so a CI log or a file gets a few dated lines instead of carriage-return noise.

>>> import logging
>>> with Progress(3, "files", unit="file", terminal=False) as bar:
...     for name in ["a", "b", "c"]:
...         bar.update(1, note=name)
>>> bar.done
3
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any, Self

__all__ = ["Progress", "on_terminal"]

log = logging.getLogger("streamvgan.progress")


def on_terminal() -> bool:
    """Whether stderr (where progress and logs go) is an interactive terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Progress:
    """Counts units of work towards ``total`` (``None`` if unknown).

    Parameters
    ----------
    total
        How many units the work has, or ``None`` when not known in advance.
    desc
        What is counted, shown before the count ("NAB files", "scored").
    unit
        The name of one unit ("file", "event").
    terminal
        Draw a tqdm bar (``True``) or write log lines (``False``); default: whether stderr is
        a terminal.
    interval_s
        Least seconds between two log lines when not on a terminal.
    logger
        Where the log lines go (default ``streamvgan.progress``).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        terminal: bool | None = None,
        interval_s: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.terminal = on_terminal() if terminal is None else terminal
        self.interval_s = interval_s
        self.logger = logger or log
        self.done = 0
        self.note = ""
        self._start = time.monotonic()
        self._last_log = self._start
        self._logged: tuple[int, str] | None = None  # (done, note) of the last log line
        self._bar: Any = None
        self._redirect: Any = None
        self._closed = False
        if self.terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # log records written while the bar is drawn go above it, not through it
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self._bar = tqdm(
                total=total, desc=desc, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more units are done; ``note`` (e.g. the last item's result) is shown beside
        the count."""
        self.set(self.done + n, note)

    def set(self, done: int, note: str | None = None) -> None:
        """``done`` units are done in all (for counts read from elsewhere, e.g. a topic)."""
        if note is not None:
            self.note = note
        step = done - self.done
        self.done = done
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(step)
            return
        now = time.monotonic()
        if now - self._last_log >= self.interval_s:
            self._last_log = now
            self._log()

    def _log(self) -> None:
        self._logged = (self.done, self.note)
        self.logger.info("%s", self.line())

    def line(self) -> str:
        """The state as one line: ``desc: done/total (pct) in Xs, N unit/s, ETA Ys; note``."""
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} ({self.done / self.total:.0%})"
        units = self.unit if self.unit.endswith("s") else self.unit + "s"  # "series" stays
        text += f" {units} in {elapsed:.0f} s, {rate:,.1f} {units}/s"
        if self.total and 0 < self.done < self.total and rate > 0:
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        return f"{text}; {self.note}" if self.note else text

    def close(self) -> None:
        """Finish the bar, or write the last log line."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)
        elif self._logged != (self.done, self.note):  # not already said by the last line
            self._log()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
