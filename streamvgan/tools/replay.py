"""``streamvgan replay``: produce a CSV file into a topic as input events, optionally paced.

Two layouts are read:

* NAB's ``timestamp,value`` (https://github.com/numenta/NAB ``data/``): one univariate stream
  (a column named ``value`` is taken as the series, other columns are ignored);
* a generic CSV with a timestamp column and one or more numeric value columns: one stream
  whose events carry ``values`` (all columns), or with ``split_columns`` one univariate stream
  per column named ``STREAM/COLUMN``.

The timestamp column is ``--timestamp-column`` or the first column named timestamp, ts, time,
date or datetime. ISO-8601 timestamps are sent as they are; numbers are taken as epoch seconds
(below 1e11) or epoch milliseconds. Files ending in ``.gz`` are read compressed. Rows with an
empty or non-numeric value are skipped (counted in the log).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from streamvgan.errors import InvalidInputError
from streamvgan.service.wire import _ISO_RE, encode_event

log = logging.getLogger(__name__)

TIMESTAMP_NAMES = ("timestamp", "ts", "time", "date", "datetime")


@dataclass(frozen=True)
class CsvEvent:
    """One event read from a CSV: the record key (stream id) and value (JSON bytes)."""

    stream: str
    ts: Any
    values: dict[str, float]

    def key(self) -> bytes:
        return self.stream.encode("utf-8")

    def value(self) -> bytes:
        if list(self.values) == ["value"]:
            return encode_event(self.stream, self.ts, self.values["value"])
        return encode_event(self.stream, self.ts, self.values)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed by the caller)


def convert_timestamp(text: str) -> Any:
    """The event ``ts`` for a CSV cell: ISO-8601 strings unchanged, numbers as epoch ms."""
    text = text.strip()
    if _ISO_RE.match(text):
        return text
    try:
        number = float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text).isoformat()
        except ValueError:
            raise InvalidInputError(
                f"timestamp {text!r} is neither ISO-8601 (2024-11-29T08:00:00Z) nor epoch "
                "seconds/milliseconds"
            ) from None
    if not math.isfinite(number) or number < 0:
        raise InvalidInputError(f"timestamp {text!r} is not a valid epoch time")
    return int(number * 1000) if number < 1e11 else int(number)


def read_csv_events(
    path: str | Path,
    stream: str | None = None,
    timestamp_column: str | None = None,
    value_columns: Sequence[str] | None = None,
    split_columns: bool = False,
) -> Iterator[CsvEvent]:
    """Events of a CSV file in row order (see the module docstring for the layouts).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "cpu.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("timestamp,value\\n2014-04-01 00:00:00,1.5\\n2014-04-01 00:05:00,2\\n")
    >>> [(e.stream, e.ts, e.values) for e in read_csv_events(path)]
    [('cpu', '2014-04-01 00:00:00', {'value': 1.5}), ('cpu', '2014-04-01 00:05:00', {'value': 2.0})]

    """
    path = Path(path)
    name = stream or path.name.split(".")[0]
    skipped = 0
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InvalidInputError(f"{path} is empty; expected a header row") from None
        ts_col = timestamp_column or next((h for h in header if h.lower() in TIMESTAMP_NAMES), None)
        if ts_col is None or ts_col not in header:
            raise InvalidInputError(
                f"{path}: no timestamp column among {header}; name one with --timestamp-column"
            )
        ts_index = header.index(ts_col)
        if value_columns:
            missing = [c for c in value_columns if c not in header]
            if missing:
                raise InvalidInputError(f"{path}: value columns {missing} not in header {header}")
            columns = list(value_columns)
        else:
            # NAB's layout (and its result files, which add score and label columns) has a
            # column named "value": that is the series; otherwise every other column is one.
            columns = ["value"] if "value" in header else [h for h in header if h != ts_col]
        if not columns:
            raise InvalidInputError(f"{path}: no value column besides {ts_col!r}")
        indices = [header.index(c) for c in columns]
        univariate = len(columns) == 1
        for row in reader:
            if not row:
                continue
            try:
                ts = convert_timestamp(row[ts_index])
                values = {c: float(row[i]) for c, i in zip(columns, indices)}
            except (ValueError, IndexError, InvalidInputError):
                skipped += 1
                continue
            if not all(math.isfinite(v) for v in values.values()):
                skipped += 1
                continue
            if split_columns and not univariate:
                for c, v in values.items():
                    yield CsvEvent(f"{name}/{c}", ts, {"value": v})
            elif univariate:
                yield CsvEvent(name, ts, {"value": next(iter(values.values()))})
            else:
                yield CsvEvent(name, ts, values)
    if skipped:
        log.warning(
            "%s: skipped %d rows with a missing or invalid timestamp or value", path, skipped
        )


def produce_events(
    producer: Any,
    topic: str,
    events: Iterable[CsvEvent],
    rate: float | None = None,
    progress_every_s: float = 5.0,
) -> int:
    """Send ``events`` to ``topic`` (``rate`` events per second, or as fast as possible)
    and wait until the broker acknowledged them all; returns the number sent."""
    start = last_log = time.monotonic()
    n = 0
    for event in events:
        if rate:
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.send(topic, key=event.key(), value=event.value())
        n += 1
        now = time.monotonic()
        if now - last_log >= progress_every_s:
            log.info("replayed %d events (%.0f/s)", n, n / (now - start))
            last_log = now
    producer.flush()
    return n
