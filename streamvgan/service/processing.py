"""What the service does with one poll: decode -> engine -> output records.

A :class:`Processor` turns the records of a poll into a :class:`BatchResult`: the output
records to send (scores, forecasts, continuations, dead letters), the next offsets of each
partition, and the streams whose state changed. It does no I/O: the loop
(:mod:`streamvgan.service.app`) sends the outputs, waits for the broker and hands the offsets
to the commit order (:mod:`streamvgan.service.state`), so a processor is tested with plain
lists of records and no broker.

Two processors share the decoding, validation, dead letters and the forecast/continuation
schedule: :class:`ScoringProcessor` (the service, with the engine) and
:class:`PassThroughProcessor` (the benchmark's model-free baseline, outputs of the same number
and size filled from the input values), so ``streamvgan bench`` compares the model's cost
behind exactly the same loop.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamvgan.engine import Event, ForecastColumns, StreamEngine
from streamvgan.engine.types import CAUSES
from streamvgan.errors import InvalidInputError
from streamvgan.service.kafka_api import InputRecord, TopicPartition
from streamvgan.service.wire import (
    ContinuationMessage,
    DeadLetter,
    DecodeError,
    decode_event,
    encode_forecasts,
    encode_scores,
)

if TYPE_CHECKING:
    from streamvgan.engine.batching import ScoreColumns

log = logging.getLogger(__name__)

Records = Mapping[TopicPartition, Sequence[InputRecord]]


@dataclass(frozen=True)
class OutputTopics:
    """Where a processor's outputs go."""

    scores: str
    forecasts: str
    continuations: str
    dlq: str


@dataclass(slots=True)
class Output:
    """One record to send. A dead letter carries its :class:`DeadLetter`, so that the sender
    can send it without the original value if the producer refuses it (too large)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    letter: DeadLetter | None = None


@dataclass
class BatchResult:
    """The outcome of one poll: what to send, and what to remember once it is acknowledged."""

    outputs: list[Output] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    #: stream -> input partition, for every stream whose state this batch changed
    touched: dict[str, int] = field(default_factory=dict)
    consumed: Counter[str] = field(default_factory=Counter)  # records per input topic
    produced: Counter[str] = field(default_factory=Counter)  # outputs per output topic
    dead_lettered: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, reason)
    score_values: list[float] = field(default_factory=list)
    anomalies: int = 0
    anomaly_causes: Counter[str] = field(default_factory=Counter)  # anomalies by cause signal
    records: int = 0
    scored: int = 0
    forecasts: int = 0
    continuations: int = 0
    #: events skipped because the restored state of their stream already holds them
    already_applied: int = 0


class Processor(Protocol):
    """Turns the records of one poll into outputs; no I/O."""

    def process(self, records: Records) -> BatchResult: ...

    def forget(self, stream: str) -> None:
        """Drop what is kept for ``stream`` (evicted, or its partition moved away)."""
        ...


class DueSchedule:
    """Which streams are due a forecast and a continuation: each time a stream's event count,
    offset by its phase (:func:`phase`), crosses a multiple of ``forecast_every`` /
    ``continuation_every`` (0: never), at most one of each per stream per batch, made after
    its last event of the batch.

    The phase spreads streams that start together (every stream after a restart, a fleet of
    devices reporting at the same rate) over the cadence: without it, all of them came due in
    the same poll, and 1,000 continuations made one after another stalled the loop for ~3 s
    (docs/benchmarks.md)."""

    def __init__(self, forecast_every: int, continuation_every: int) -> None:
        self.forecast_every = forecast_every
        self.continuation_every = continuation_every
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.phases: dict[str, tuple[int, int]] = {}  # stream -> (forecast, continuation)

    def due(self, streams: Sequence[str]) -> tuple[list[str], list[str]]:
        fe, ce = self.forecast_every, self.continuation_every
        before: dict[str, int] = {}
        counts, phases = self.counts, self.phases
        for stream in streams:
            if stream not in before:
                before[stream] = counts[stream]
            counts[stream] += 1
        forecast, continuation = [], []
        for stream, n0 in before.items():
            n1 = counts[stream]
            offsets = phases.get(stream)
            if offsets is None:
                offsets = phases[stream] = (phase(stream, fe), phase(stream, ce))
            pf, pc = offsets
            if fe and (n1 + pf) // fe > (n0 + pf) // fe:
                forecast.append(stream)
            if ce and (n1 + pc) // ce > (n0 + pc) // ce:
                continuation.append(stream)
        return forecast, continuation

    def forget(self, stream: str) -> None:
        self.counts.pop(stream, None)
        self.phases.pop(stream, None)


def phase(stream: str, every: int) -> int:
    """A stream's offset in a cadence of ``every`` events, from its id (CRC-32: the same in
    every process and after a restart); 0 when ``every`` is 0 or 1.

    >>> phase("host-1/cpu", 100), phase("host-2/cpu", 100), phase("host-1/cpu", 1)
    (42, 6, 0)
    """
    if every <= 1:
        return 0
    return zlib.crc32(stream.encode("utf-8", "surrogatepass")) % every


class _DeadLetterLog:
    """Logs the first 10 dead letters of every 10 s and counts the rest, so that a flood of
    bad records cannot flood the log."""

    def __init__(self) -> None:
        self.logged = 0
        self.window = 0.0

    def __call__(self, record: InputRecord, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self.window > 10.0:
            if self.logged > 10:
                log.warning("... %d more dead-lettered records in the last 10 s", self.logged - 10)
            self.window, self.logged = now, 0
        self.logged += 1
        if self.logged <= 10:
            log.warning(
                'dead-lettered partition="%s[%d]" offset="%d" reason=%s: %s',
                record.topic,
                record.partition,
                record.offset,
                reason,
                message,
            )


class _Base:
    """Decoding, validation and dead letters, shared by both processors."""

    def __init__(self, topics: OutputTopics, schedule: DueSchedule) -> None:
        self.topics = topics
        self.schedule = schedule
        self._dlq_log = _DeadLetterLog()

    def forget(self, stream: str) -> None:
        self.schedule.forget(stream)

    def _decode(self, records: Records, result: BatchResult) -> tuple[list[Event], list[Any]]:
        events: list[Event] = []
        sources: list[Any] = []
        for tp, batch in records.items():
            for record in batch:
                try:
                    event = decode_event(record.value, record.key)
                except DecodeError as exc:
                    self._dead_letter(result, record, exc.reason, exc.message)
                except Exception as exc:  # a bug in decoding must not block the partition
                    log.exception(
                        'decoder failed partition="%s[%d]" offset="%d"',
                        record.topic,
                        record.partition,
                        record.offset,
                    )
                    self._dead_letter(
                        result,
                        record,
                        "internal_error",
                        f"decoding raised {type(exc).__name__}: {exc}",
                    )
                else:
                    events.append(event)
                    sources.append(record)
            result.records += len(batch)
            # poll returns only partitions that have records
            result.next_offsets[tp] = batch[-1].offset + 1
            result.consumed[tp[0]] += len(batch)
        return events, sources

    def _dead_letter(
        self, result: BatchResult, record: InputRecord, reason: str, message: str
    ) -> None:
        letter = DeadLetter(
            reason=reason,
            message=message,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original_headers=tuple(record.headers or ()),
        )
        # Kafka refuses a record with neither key nor value (a keyless tombstone): send an
        # empty value
        value = record.value if record.value is not None or record.key is not None else b""
        result.outputs.append(Output(self.topics.dlq, record.key, value, letter.headers(), letter))
        result.produced[self.topics.dlq] += 1
        result.dead_lettered[(record.topic, reason)] += 1
        self._dlq_log(record, reason, message)


class ScoringProcessor(_Base):
    """The service: one batched :meth:`StreamEngine.process` per poll, a score per event, a
    forecast and a continuation per stream when due.

    Parameters
    ----------
    engine
        The engine that scores.
    topics
        Output topics.
    forecast_every, continuation_every
        Events of a stream between two forecasts / continuations (0: none).
    continuation_samples
        Sampled paths per continuation.
    alert_threshold
        Scores at or above it are flagged ``anomaly``.
    before_change
        Called with the streams of each ``engine.process`` call just before it (the commit
        order exports states a commit in progress still needs, see ``state.py``).
    already_applied
        stream -> (input partition, offset): the restored state of the stream already holds
        its events of that partition below the offset (written by the changelog before a
        crash kept the offsets from being committed, see ``state.py``). Those events are
        skipped (counted as consumed, not scored), and an entry is dropped once an event of
        its stream reaches the offset. The application passes the state store's map.
    """

    def __init__(
        self,
        engine: StreamEngine,
        topics: OutputTopics,
        *,
        forecast_every: int,
        continuation_every: int,
        continuation_samples: int,
        alert_threshold: float,
        before_change: Callable[[list[str]], None] | None = None,
        already_applied: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(topics, DueSchedule(forecast_every, continuation_every))
        self.engine = engine
        self.before_change = before_change or (lambda streams: None)
        self.already_applied = {} if already_applied is None else already_applied
        self.continuation_samples = continuation_samples
        self.alert_threshold = alert_threshold

    def process(self, records: Records) -> BatchResult:
        result = BatchResult()
        events, sources = self._decode(records, result)
        if self.already_applied:  # only after a restore: no per-event cost otherwise
            events, sources = _skip_applied(self.already_applied, events, sources, result)
        scored = self._score(events, sources, result)
        topics, outputs, touched = self.topics, result.outputs, result.touched
        last_ts: dict[str, Any] = {}
        streams: list[str] = []
        for part, columns in scored:
            _score_outputs(columns, self.alert_threshold, topics.scores, result)
            for stream, ts, record in zip(columns.streams, columns.ts, part):
                last_ts[stream] = ts
                touched[stream] = record.partition
            streams += columns.streams
        forecast_streams, continuation_streams = self.schedule.due(streams)
        engine = self.engine
        if forecast_streams:
            forecasts = engine.forecast_columns(forecast_streams)
            for stream, value in zip(forecast_streams, encode_forecasts(forecasts, last_ts)):
                outputs.append(Output(topics.forecasts, stream.encode("utf-8"), value))
        due_samples = engine.generate_many(
            continuation_streams, engine.config.horizon, self.continuation_samples
        )
        for stream, samples in zip(continuation_streams, due_samples):
            cont_msg = ContinuationMessage.from_array(
                stream, last_ts[stream], engine.fields(stream), samples, engine.model_version
            )
            outputs.append(
                Output(topics.continuations, stream.encode("utf-8"), cont_msg.to_bytes())
            )
        result.forecasts = len(forecast_streams)
        result.continuations = len(continuation_streams)
        result.produced[topics.forecasts] += len(forecast_streams)
        result.produced[topics.continuations] += len(continuation_streams)
        return result

    def _score(
        self, events: list[Event], sources: list[Any], result: BatchResult
    ) -> list[tuple[list[Any], ScoreColumns]]:
        """One batched engine step: ``[(records, their score columns)]``, one pair; events the
        engine rejects become dead letters (then one pair per event scored)."""
        if not events:
            return []
        try:
            self.before_change([e.stream for e in events])
            return [(sources, self.engine.process_columns(events))]
        except InvalidInputError as exc:
            log.info("engine rejected a batch (%s); scoring its events one by one", exc)
        except Exception:
            log.exception("engine failed on a batch; scoring its events one by one")
        # Rare path: the engine validates a whole batch before changing any state, so the
        # events can be retried one at a time in order and only the bad ones dead-lettered.
        scored = []
        for event, record in zip(events, sources):
            try:
                self.before_change([event.stream])
                scored.append(([record], self.engine.process_columns([event])))
            except Exception as exc:
                if not isinstance(exc, InvalidInputError):
                    log.exception(
                        'engine error partition="%s[%d]" offset="%d"',
                        record.topic,
                        record.partition,
                        record.offset,
                    )
                self._dead_letter(result, record, "engine_error", str(exc))
        return scored


def _skip_applied(
    applied: dict[str, tuple[int, int]],
    events: list[Event],
    sources: list[Any],
    result: BatchResult,
) -> tuple[list[Event], list[Any]]:
    """``events`` and their records without those the restored state already holds (see
    ``already_applied`` of :class:`ScoringProcessor`); drops the entries their streams passed."""
    kept_events: list[Event] = []
    kept_sources: list[Any] = []
    for event, record in zip(events, sources):
        entry = applied.get(event.stream)
        if entry is not None and entry[0] == record.partition:
            if record.offset < entry[1]:
                result.already_applied += 1
                continue
            del applied[event.stream]  # its events from here on are new to its state
        kept_events.append(event)
        kept_sources.append(record)
    if result.already_applied:
        log.debug("skipped %d events already in restored states", result.already_applied)
    return kept_events, kept_sources


def _score_outputs(
    columns: ScoreColumns, threshold: float, topic: str, result: BatchResult
) -> None:
    """The score records of ``columns`` into ``result``, with the counts the metrics take."""
    outputs = result.outputs
    for stream, value in zip(columns.streams, encode_scores(columns, threshold)):
        outputs.append(Output(topic, stream.encode("utf-8"), value))
    result.score_values += columns.score.tolist()
    alerts = columns.score >= threshold
    n_alerts = int(np.count_nonzero(alerts))
    if n_alerts:
        result.anomalies += n_alerts
        for code in columns.cause[alerts].tolist():
            if code >= 0:
                result.anomaly_causes[CAUSES[code]] += 1
    result.scored += len(columns)
    result.produced[topic] += len(columns)


class PassThroughProcessor(_Base):
    """The benchmark's model-free baseline: the same decoding, validation, dead letters and
    schedule as :class:`ScoringProcessor`, and outputs with the same fields and number sizes,
    filled from the input values instead of a model (no state: ``touched`` stays empty)."""

    def __init__(
        self,
        topics: OutputTopics,
        *,
        forecast_every: int,
        continuation_every: int,
        continuation_samples: int,
        horizon: int,
        alert_threshold: float = 0.99,
        seed: int = 0,
    ) -> None:
        super().__init__(topics, DueSchedule(forecast_every, continuation_every))
        self.alert_threshold = alert_threshold
        self.continuation_samples = continuation_samples
        self.horizon = horizon
        self.rng = np.random.default_rng(seed)

    def process(self, records: Records) -> BatchResult:
        from streamvgan.engine.batching import ScoreColumns  # the engine's, without torch here

        result = BatchResult()
        events, _ = self._decode(records, result)
        topics, outputs, rng = self.topics, result.outputs, self.rng
        last: dict[str, tuple[Any, float]] = {}
        x = np.array([next(iter(e.values.values())) for e in events], dtype=np.float64)
        # score columns as the engine returns them (five components, a cause with its field),
        # so the records have the service's fields and sizes and take the same encoder
        n = len(events)
        columns = ScoreColumns(
            streams=[e.stream for e in events],
            ts=[e.ts for e in events],
            score=rng.random(n),
            raw=x * 0.5,
            components=x[:, None] * np.array([0.37, 0.11, 0.05, 0.02, 0.01]),
            warm=np.ones(n, dtype=bool),
            model_version=1,
            cause=np.zeros(n, dtype=np.int8),
            cause_field=np.zeros(n, dtype=np.int64),
            field_names={e.stream: tuple(e.values) for e in events},
        )
        _score_outputs(columns, self.alert_threshold, topics.scores, result)
        for event, value in zip(events, x.tolist()):
            last[event.stream] = (event.ts, value)
        forecast_streams, continuation_streams = self.schedule.due([e.stream for e in events])
        h, n_due = self.horizon, len(forecast_streams)
        # the engine's columns, filled from the values: each stream's mean around its last
        # value, its 0.1 / 0.5 / 0.9 quantiles at -1.28 / 0 / +1.28 from it
        base = np.array([last[stream][1] for stream in forecast_streams], dtype=np.float64)
        forecasts = ForecastColumns(
            streams=list(forecast_streams),
            fields=[["value"]] * n_due,
            rows=list(range(n_due + 1)),
            mean=base[:, None, None] + 0.01 * rng.standard_normal((n_due, h, 1)),
            spread=np.ones((n_due, h, 1)),
            z={0.1: -1.28, 0.5: 0.0, 0.9: 1.28},
            joint=False,
            model_version=1,
        )
        origins = {stream: ts for stream, (ts, _) in last.items()}
        for stream, value in zip(forecast_streams, encode_forecasts(forecasts, origins)):
            outputs.append(Output(topics.forecasts, stream.encode("utf-8"), value))
        for stream in continuation_streams:
            ts, x0 = last[stream]
            samples = x0 + rng.standard_normal((self.continuation_samples, h, 1))
            value = ContinuationMessage.from_array(stream, ts, ["value"], samples, 1).to_bytes()
            outputs.append(Output(topics.continuations, stream.encode("utf-8"), value))
        result.forecasts = len(forecast_streams)
        result.continuations = len(continuation_streams)
        result.produced[topics.forecasts] += len(forecast_streams)
        result.produced[topics.continuations] += len(continuation_streams)
        return result
