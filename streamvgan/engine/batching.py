"""Between events and the engine's arrays: the rounds of a batch, a round of events as channel
rows, and the scores back as columns (:class:`ScoreColumns`), from which per-event
:class:`Score` objects are built only when asked for."""

from __future__ import annotations

import gc
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamvgan.engine.signals import COMPONENTS, NO_CAUSE, ScoreBatch
from streamvgan.engine.state import StateTable
from streamvgan.engine.types import CAUSES, Cause, Event, Score
from streamvgan.engine.validate import univariate_batch, validate_batch

# ScoreColumns.scores() spells the components out (a dict literal per event is 4x faster
# than dict(zip(...))): they must be these, in this order
assert COMPONENTS == ("surprise", "reconstruction", "critic", "jump", "level")


@dataclass
class ScoreColumns:
    """The scores of a batch of events as columns, one row per event in the order given.

    ``score`` (N,) in [0, 1], ``raw`` (N,), ``components`` (N, 5) in the order of
    ``COMPONENTS``, ``warm`` (N,) bool; ``streams`` and ``ts`` as the events had them;
    ``cause`` (N,) int8, the index into ``CAUSES`` of what drove the score (-1: none yet), and
    ``cause_field`` (N,) the index of its field into the stream's ``field_names`` (-1: none);
    ``fields`` (N, W) each event's per-field scores in its stream's field order, NaN beyond
    its fields and for events of one field (None: no event of several fields was scored).
    See :class:`Score` for what each is; :meth:`scores` builds those objects.
    """

    streams: list[str]
    ts: list[Any]
    score: np.ndarray
    raw: np.ndarray
    components: np.ndarray
    warm: np.ndarray
    model_version: int
    cause: np.ndarray
    cause_field: np.ndarray
    #: stream -> its field names (the engine's table, read when the scores are built)
    field_names: Mapping[str, tuple[str, ...]]
    fields: np.ndarray | None = None

    @classmethod
    def zeros(
        cls,
        events: Sequence[Event],
        model_version: int,
        streams: list[str] | None = None,
        field_names: Mapping[str, tuple[str, ...]] | None = None,
    ) -> ScoreColumns:
        n = len(events)
        return cls(
            [e.stream for e in events] if streams is None else streams,
            [e.ts for e in events],
            np.zeros(n),
            np.zeros(n),
            np.zeros((n, len(COMPONENTS))),
            np.zeros(n, dtype=bool),
            model_version,
            np.full(n, NO_CAUSE, dtype=np.int8),
            np.full(n, -1, dtype=np.int64),
            {} if field_names is None else field_names,
        )

    def __len__(self) -> int:
        return len(self.streams)

    def fill(self, members: Sequence[int] | slice, b: ScoreBatch, starts: list[int] | None) -> None:
        """Write the scores of ``b`` for events ``members``; ``starts``: the first row of each
        event where events have several channels (the most anomalous is reported), else
        None (one row per event)."""
        # published scores are numbers in [0, 1] whatever happened in the state: NaN -> 0,
        # +inf -> 1; raw and components: NaN and infinities -> 0 (np.nan_to_num and np.clip
        # did the same with ten times the calls, which count at one event per call)
        if len(b.slots) == 1 and len(self.streams) == 1:  # one event: in Python floats
            x = b.score.item(0)
            self.score[0] = 0.0 if x != x else min(max(x, 0.0), 1.0)
            x = b.raw.item(0)
            self.raw[0] = x if math.isfinite(x) else 0.0
            self.components[0] = [x if math.isfinite(x) else 0.0 for x in b.comps[0].tolist()]
            self.warm[0] = b.warm
            self.cause[0], self.cause_field[0] = b.cause.item(0), b.cause_field.item(0)
            if b.field_scores.shape[1] > 1:  # joint mode, one event of several fields
                self._joint_fields([0], b)
            return
        score = np.minimum(np.maximum(np.where(np.isnan(b.score), 0.0, b.score), 0.0), 1.0)
        raw, comps, cause, cause_field = b.raw, b.comps, b.cause, b.cause_field
        if starts is not None and len(starts) != len(b.slots):
            bounds = [*starts, len(b.slots)]
            best = [a + int(np.argmax(score[a:c])) for a, c in zip(bounds[:-1], bounds[1:])]
            self._channel_fields(members, score, starts, np.diff(bounds))
            score, raw, comps, cause = score[best], raw[best], comps[best], cause[best]
            # one channel per field, in the stream's field order: the row is the field
            cause_field = np.where(cause != NO_CAUSE, np.subtract(best, starts), -1)
        elif b.field_scores.shape[1] > 1:
            self._joint_fields(members, b)
        self.score[members] = score
        self.raw[members] = np.where(np.isfinite(raw), raw, 0.0)
        self.components[members] = np.where(np.isfinite(comps), comps, 0.0)
        self.warm[members] = b.warm
        self.cause[members] = cause
        self.cause_field[members] = cause_field

    def _field_table(self, width: int) -> np.ndarray:
        """:attr:`fields`, made (all NaN) or widened to at least ``width`` columns."""
        table = self.fields
        if table is None:
            table = self.fields = np.full((len(self.streams), width), np.nan)
        elif table.shape[1] < width:
            pad = ((0, 0), (0, width - table.shape[1]))
            table = self.fields = np.pad(table, pad, constant_values=np.nan)
        return table

    def _channel_fields(
        self, members: Sequence[int] | slice, score: np.ndarray, starts: list[int], counts
    ) -> None:
        """Channels mode: each field's score is its channel's (``score`` (B,), one row per
        channel, already in [0, 1]), for the events of ``members`` with several channels;
        ``starts`` and ``counts`` (E,): each event's first row and number of rows."""
        if counts.max() < 2:
            return
        event = np.repeat(np.arange(len(starts)), counts)  # (B,) the event of each row
        column = np.arange(len(score)) - np.repeat(starts, counts)  # (B,) its field
        several = counts[event] > 1
        at = np.arange(len(self.streams))[members][event[several]]
        self._field_table(int(counts.max()))[at, column[several]] = score[several]

    def _joint_fields(self, members: Sequence[int] | slice, b: ScoreBatch) -> None:
        """Joint mode: the field scores of ``b`` (one row per event), in [0, 1] as the scores
        are; all 0 where the event's score is NaN (published 0), so that the event's score
        stays the largest of its fields'."""
        fs = np.minimum(np.maximum(np.where(np.isnan(b.field_scores), 0.0, b.field_scores), 0), 1)
        fs[np.isnan(b.score)] = 0.0
        self._field_table(fs.shape[1])[members, : fs.shape[1]] = fs

    def fields_of(self, i: int) -> dict[str, float] | None:
        """:attr:`Score.fields` of event ``i``: field -> score, None for one field."""
        return self.field_dicts(slice(i, i + 1))[0]

    def field_dicts(self, rows: slice = slice(None)) -> list[dict[str, float] | None]:
        """:attr:`Score.fields` of the events at ``rows``."""
        streams = self.streams[rows]
        if self.fields is None:
            return [None] * len(streams)
        names = self.field_names
        out: list[dict[str, float] | None] = []
        for stream, row in zip(streams, self.fields[rows].tolist()):
            fields = names.get(stream, ())
            # NaN in the first column: not scored (a stream unknown to score())
            out.append(dict(zip(fields, row)) if len(fields) > 1 and row[0] == row[0] else None)
        return out

    def cause_of(self, i: int) -> Cause | None:
        """The :class:`Cause` of event ``i``'s score (None while no signal is counted)."""
        return self._causes({})(self.streams[i], self.cause.item(i), self.cause_field.item(i))

    def _causes(
        self, known: dict[tuple[int, str | None], Cause]
    ) -> Callable[[str, int, int], Cause | None]:
        """A function (stream, cause code, field index) -> :class:`Cause`, sharing one object
        per distinct cause through ``known`` (there are few: signals times field names)."""
        names = self.field_names

        def cause_of(stream: str, code: int, column: int) -> Cause | None:
            if code == NO_CAUSE:
                return None
            fields = names.get(stream, ())
            field = fields[column] if 0 <= column < len(fields) else None
            found = known.get((code, field))
            if found is None:
                found = known[code, field] = Cause(CAUSES[code], field)
            return found

        return cause_of

    def scores(self) -> list[Score]:
        """One :class:`Score` per event (built without the dataclass constructor: the
        per-event cost matters at tens of thousands of events per poll)."""
        new, set_dict, version = object.__new__, object.__setattr__, self.model_version
        out: list[Score] = []
        # three acyclic objects per event: collections while building them find nothing to
        # free, but at 10,000 events they ran dozens of times, each walking the objects alive
        paused = gc.isenabled()
        gc.disable()
        try:
            self._build(out, new, set_dict, version)
        finally:
            if paused:
                gc.enable()
        return out

    def _build(self, out: list[Score], new, set_dict, version: int) -> None:
        cause_of = self._causes({})
        for stream, s, r, (a, b, c, d, e), w, t, k, f, fs in zip(
            self.streams,
            self.score.tolist(),
            self.raw.tolist(),
            self.components.tolist(),
            self.warm.tolist(),
            self.ts,
            self.cause.tolist(),
            self.cause_field.tolist(),
            self.field_dicts(),
        ):
            obj = new(Score)
            components = {"surprise": a, "reconstruction": b, "critic": c, "jump": d, "level": e}
            set_dict(obj, "__dict__", {
                "stream": stream, "score": s, "raw": r, "components": components,
                "model_version": version, "warm": w, "ts": t, "cause": cause_of(stream, k, f),
                "fields": fs,
            })  # fmt: skip
            out.append(obj)


@dataclass(frozen=True)
class Scored:
    """Scores from :meth:`StreamEngine.assess`, with the computation behind them: passed to
    :meth:`StreamEngine.process` with the same events before anything else changed the
    engine, it is learned from instead of computed again (River's score_one, learn_one)."""

    columns: ScoreColumns
    revision: int
    batch: ScoreBatch | None
    engine: object = field(default=None, repr=False, compare=False)

    @property
    def scores(self) -> list[Score]:
        return self.columns.scores()

    def batch_for(
        self, engine: object, revision: int, slots: np.ndarray, values: np.ndarray
    ) -> ScoreBatch | None:
        """The batch if it was computed by ``engine`` at ``revision`` for exactly these rows."""
        b = self.batch
        if b is None or self.engine is not engine or self.revision != revision:
            return None
        if b.slots.tobytes() != slots.tobytes() or b.values.tobytes() != values.tobytes():
            return None
        return b


def rounds(streams: Sequence[str]) -> list[list[int]]:
    """Indices of events (given by their streams) by round: the k-th event of every stream
    goes into round k."""
    ordinal: dict[str, int] = {}
    out: list[list[int]] = []
    for i, stream in enumerate(streams):
        k = ordinal.get(stream, 0)
        ordinal[stream] = k + 1
        if k == len(out):
            out.append([])
        out[k].append(i)
    return out


def channel_rows(
    events: Sequence[Event],
    members: Sequence[int],
    streams: Mapping[str, dict[str, int]],
    fields: Mapping[str, tuple[str, ...]],
    channels: bool,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The slots (B,) and values (B, F) of events ``members``, and the first row of each
    event: in channels mode one row per field, in joint mode one row per event."""
    slot_rows: list[int] = []
    value_rows: list[list[float]] = []
    starts: list[int] = []
    for i in members:
        event = events[i]
        stream_slots = streams[event.stream]
        starts.append(len(slot_rows))
        if channels:
            for key, slot in stream_slots.items():
                slot_rows.append(slot)
                value_rows.append([float(event.values[key])])
        else:
            slot_rows.append(stream_slots["*"])
            value_rows.append([float(event.values[k]) for k in fields[event.stream]])
    slots = np.asarray(slot_rows, dtype=np.int64)
    values = np.asarray(value_rows, dtype=np.float64).reshape(len(slot_rows), -1)
    return slots, values, starts


Members = slice | list[int]  # the events of one round: all of them, or their indices


@dataclass
class Admitted:
    """A validated batch whose streams are all registered: its streams, how many were new,
    and its rounds as channel rows (:meth:`rounds`)."""

    events: Sequence[Event]
    streams: list[str]
    new_streams: int
    state: StateTable
    channels: bool
    fast: tuple[np.ndarray, np.ndarray] | None  # slots (N,), values (N, 1): one row per event
    distinct: bool  # every stream once: one round

    def rounds(self) -> Iterator[tuple[Members, np.ndarray, np.ndarray, list[int] | None]]:
        """Each round's events, slots (B,), values (B, F) and, where events have several
        channels, each event's first row (else None)."""
        if not self.streams:
            return
        for members in [slice(None)] if self.distinct else rounds(self.streams):
            if self.fast is not None:
                slots, values = self.fast
                yield members, slots[members], values[members], None
            else:
                idx = range(len(self.events)) if isinstance(members, slice) else members
                st = self.state
                rows = channel_rows(self.events, idx, st.streams, st.fields, self.channels)
                yield members, *rows


def admit(events: Sequence[Event], st: StateTable, field_mode: str, n_features: int) -> Admitted:
    """Validate ``events`` (InvalidInputError naming the first bad one, nothing changed),
    register their new streams (evicting the least recently seen, never one of the batch)
    and mark all their streams most recently seen, in order of appearance. The common batch
    (known one-field streams, plain numbers) takes :func:`univariate_batch`'s fast path."""
    channels = field_mode == "channels"
    fast = univariate_batch(events, st.single_field) if channels else None
    new = 0
    if fast is None:
        seen = validate_batch(events, st.fields, field_mode, n_features, together=True)
        streams = [e.stream for e in events]
        for stream, fields in seen.items():  # new streams, in order of appearance
            if stream not in st:
                new += 1
                keys = list(fields) if channels else ["*"]
                st.add_stream(stream, keys, fields, protect=seen.keys())
        rows = None
    else:  # every stream is known, one channel each
        streams, _, values = fast
        seen = dict.fromkeys(streams, ())
        slots = np.array(list(map(st.single_slot.__getitem__, streams)), dtype=np.int64)
        rows = (slots, values[:, None])
    deque(map(st.streams.move_to_end, seen), maxlen=0)  # at C speed: 10,000 streams
    return Admitted(events, streams, new, st, channels, rows, len(seen) == len(events))


def known_rows(
    events: Sequence[Event], st: StateTable, field_mode: str, n_features: int
) -> tuple[Members, np.ndarray, np.ndarray, list[int] | None] | None:
    """Validate ``events`` each on its own against its stream (nothing is registered: they
    are to be scored, not learned), and lay out those of known streams as channel rows:
    (their indices, slots, values, first row of each event or None); None if no stream is
    known."""
    channels = field_mode == "channels"
    fast = univariate_batch(events, st.single_field) if channels and events else None
    if fast is not None:  # all known, one channel each
        streams, _, values = fast
        slots = np.array(list(map(st.single_slot.__getitem__, streams)), dtype=np.int64)
        return slice(None), slots, values[:, None], None
    validate_batch(events, st.fields, field_mode, n_features, together=False)
    known = [i for i, e in enumerate(events) if e.stream in st]
    if not known:
        return None
    return known, *channel_rows(events, known, st.streams, st.fields, channels)
