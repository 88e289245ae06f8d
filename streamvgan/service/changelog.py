"""Per-stream state that follows its partition: a compacted changelog topic, as in Kafka Streams.

Each stream's state (GRU state, normaliser, replay buffer, score statistics) is written, keyed
by stream id, to the changelog partition with the same number as the input partition its
events come from (input and changelog are co-partitioned). The service writes the streams that
changed at every commit, *before* committing the input offsets, so the committed position
never runs ahead of the state. When a partition is assigned, its changelog partition is read
from the beginning, keeping the last record per key (the broker's compaction may not have run;
Tansu's does not), and the states are installed before any of its records are processed.

Records are the engine's pickle-free stream-state format (``StreamEngine.export_stream``);
a corrupt one is rejected with a log line and counted, and that stream starts cold.

Each record also carries, in the header :data:`HEADER_INPUT_OFFSET` (decimal ASCII), the next
offset of its input partition whose events were all applied and acknowledged when its state was
exported: the state holds exactly the stream's events below that offset. A kill -9 after the
records are acknowledged but before the offsets are committed makes a restart re-read events
the restored state already holds; :meth:`StateChangelog.restore` returns these offsets so the
service skips those events (:mod:`streamvgan.service.state`). Records written before the header
existed restore as before, with nothing skipped; the value format (:data:`SCHEMA_VERSION`) is
unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from streamvgan.errors import CheckpointError, ConfigurationError

log = logging.getLogger(__name__)

HEADER_SCHEMA = "streamvgan.state.schema"
SCHEMA_VERSION = b"1"
#: the next input offset whose events the record's state holds (all of them, no later one)
HEADER_INPUT_OFFSET = "streamvgan.state.input-offset"


def changelog_topic(group_id: str, input_topic: str) -> str:
    """The changelog's name, derived from the group and the input topic."""
    return f"{group_id}-{input_topic}-state-changelog"


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did: states installed and rejected, records read, seconds taken, and
    ``applied``: input partition -> {stream: the input offset its restored state holds every
    event below} for the restored states whose record carried it."""

    restored: int
    rejected: int
    records: int
    seconds: float
    applied: dict[int, dict[str, int]] = field(default_factory=dict)


class StateChangelog:
    """Writes and restores stream states through ``topic``.

    Parameters
    ----------
    topic
        The changelog topic (compacted, as many partitions as the input topic).
    make_consumer
        Builds a group-less consumer (``assign()`` only) for restores.
    on_rejected
        Called once per corrupt record found during a restore (e.g. a metric).
    idle_ms
        A restore stops after the end offsets are reached and a poll of this long returns
        nothing (Tansu's end offsets can be short, so they are not trusted alone).
    """

    def __init__(
        self,
        topic: str,
        make_consumer: Callable[[], Any],
        on_rejected: Callable[[], None] | None = None,
        idle_ms: int = 300,
    ) -> None:
        self.topic = topic
        self._make_consumer = make_consumer
        self._on_rejected = on_rejected or (lambda: None)
        self.idle_ms = idle_ms
        self.bytes_written = 0
        self.records_written = 0

    def write(
        self,
        producer: Any,
        engine: Any,
        dirty: dict[str, int],
        applied: Mapping[int, int] | None = None,
    ) -> list[Any]:
        """Send the state of every stream in ``dirty`` (stream -> input partition); return the
        send futures. The caller flushes the producer before committing offsets. ``applied``:
        see :meth:`send`."""
        return self.send(producer, self.export(engine, dirty), applied)

    @staticmethod
    def export(engine: Any, dirty: dict[str, int]) -> list[tuple[str, int, bytes | None]]:
        """``(stream, partition, state)`` of each stream in ``dirty``, as of now (None for a
        stream evicted since it changed: its record is a tombstone that frees the key)."""
        states = engine.export_streams(list(dirty))
        return [(stream, p, blob) for (stream, p), blob in zip(dirty.items(), states)]

    def send(
        self,
        producer: Any,
        states: list[tuple[str, int, bytes | None]],
        applied: Mapping[int, int] | None = None,
    ) -> list[Any]:
        """Send exported ``states`` (see :meth:`export`); return the send futures.

        ``applied``: input partition -> the next offset whose events the states hold, all of
        them and no later one (the caller exported them so); each record of such a partition
        carries it in :data:`HEADER_INPUT_OFFSET`."""
        plain = [(HEADER_SCHEMA, SCHEMA_VERSION)]
        headers: dict[int, list[tuple[str, bytes]]] = {}
        if applied:
            for p, offset in applied.items():
                headers[p] = [*plain, (HEADER_INPUT_OFFSET, str(offset).encode("ascii"))]
        futures = []
        for stream, partition, blob in states:
            if blob is not None:
                self.bytes_written += len(blob)
            futures.append(
                producer.send(
                    self.topic,
                    key=stream.encode("utf-8"),
                    value=blob,
                    partition=partition,
                    headers=headers.get(partition, plain),
                )
            )
            self.records_written += 1
        return futures

    def restore(
        self, engine: Any, partitions: Iterable[int], timeout_s: float = 60.0
    ) -> RestoreReport:
        """Install the last state per stream found in the changelog ``partitions``."""
        start = time.perf_counter()
        tps = [TopicPartition(self.topic, p) for p in sorted(set(partitions))]
        if not tps:
            return RestoreReport(0, 0, 0, 0.0)
        latest: dict[bytes, tuple[bytes | None, int, int | None]] = {}
        records = 0
        consumer = self._make_consumer()
        try:
            available = consumer.partitions_for_topic(self.topic) or set()
            if not available:  # deleted, or lost with a broker that keeps no data
                log.warning(
                    "state changelog topic %s does not exist: the streams of %s start cold",
                    self.topic,
                    tps,
                )
                return RestoreReport(0, 0, 0, time.perf_counter() - start)
            missing = sorted(tp.partition for tp in tps if tp.partition not in available)
            if missing:
                raise ConfigurationError(
                    f"input partition(s) {missing} were assigned, but the state changelog "
                    f"topic {self.topic!r} has {len(available)} partition(s) and the input "
                    f"topic at least {missing[-1] + 1}; they must match, because the state of "
                    f"input partition p is kept in changelog partition p. Fix: delete "
                    f"{self.topic!r} (serve recreates it like the input topic), or run with "
                    "--no-state-changelog"
                )
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=self.idle_ms)
                for recs in batch.values():
                    for record in recs:
                        if record.key is not None:
                            offset = _input_offset(record.headers, record.partition)
                            latest[record.key] = (record.value, record.partition, offset)
                            records += 1
                caught_up = all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
                if caught_up and not batch:
                    break
            else:
                log.warning(
                    "changelog restore of %s stopped after %.0fs before its end", tps, timeout_s
                )
        finally:
            consumer.close()
        restored = rejected = 0
        applied: dict[int, dict[str, int]] = {}
        for key, (value, partition, offset) in latest.items():
            stream = key.decode("utf-8", errors="replace")
            if value is None:  # tombstone
                engine.drop_stream(stream)
                continue
            try:
                engine.import_stream(stream, value)
                restored += 1
            except CheckpointError as exc:
                # starts cold: its events are applied again (nothing skipped), so it has them
                rejected += 1
                self._on_rejected()
                log.error("rejected changelog state of stream %r (%s); it starts cold", stream, exc)
                continue
            if offset is not None:
                applied.setdefault(partition, {})[stream] = offset
        report = RestoreReport(restored, rejected, records, time.perf_counter() - start, applied)
        log.info(
            "restored %d stream states (%d rejected) from %d changelog records of %s in %.2fs",
            restored,
            rejected,
            records,
            self.topic,
            report.seconds,
        )
        return report


def _input_offset(headers: Sequence[tuple[str, bytes]] | None, partition: int) -> int | None:
    """The :data:`HEADER_INPUT_OFFSET` of a record's headers; None without it (a record written
    before it existed) or when it is not a decimal offset (logged; nothing is skipped)."""
    for key, value in headers or ():
        if key == HEADER_INPUT_OFFSET:
            text = bytes(value or b"").decode("ascii", errors="replace")
            if text.isdigit():
                return int(text)
            log.warning(
                "changelog record of partition %d has %s=%r, not an offset; its stream's "
                "events are all applied again",
                partition,
                HEADER_INPUT_OFFSET,
                text,
            )
            return None
    return None
