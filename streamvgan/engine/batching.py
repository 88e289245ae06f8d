"""Between events and the engine's arrays: a round of events as channel rows, and a scored
batch back as one :class:`Score` per event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamvgan.engine.signals import COMPONENTS, ScoreBatch
from streamvgan.engine.types import Event, Score


@dataclass(frozen=True)
class Scored:
    """Scores from :meth:`StreamEngine.assess`, with the computation behind them: passed to
    :meth:`StreamEngine.process` with the same events before anything else changed the
    engine, it is learned from instead of computed again (River's score_one, learn_one)."""

    scores: list[Score]
    revision: int
    batch: ScoreBatch | None
    engine: object = field(default=None, repr=False, compare=False)

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


def rounds(events: Sequence[Event]) -> list[list[int]]:
    """Indices of ``events`` by round: the k-th event of every stream goes into round k."""
    ordinal: dict[str, int] = {}
    out: list[list[int]] = []
    for i, event in enumerate(events):
        k = ordinal.get(event.stream, 0)
        ordinal[event.stream] = k + 1
        if k == len(out):
            out.append([])
        out[k].append(i)
    return out


def channel_rows(
    events: Sequence[Event],
    members: list[int],
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


def to_scores(
    events: Sequence[Event],
    members: list[int],
    b: ScoreBatch,
    starts: list[int],
    model_version: int,
) -> list[Score]:
    """One :class:`Score` per event of ``members`` from its rows of ``b`` (the most anomalous
    channel where an event has several)."""
    # published scores are numbers in [0, 1] whatever happened in the state
    score = np.clip(np.nan_to_num(b.score, nan=0.0), 0.0, 1.0)
    raw = np.nan_to_num(b.raw, nan=0.0, posinf=0.0, neginf=0.0)
    comps = np.nan_to_num(b.comps, nan=0.0, posinf=0.0, neginf=0.0)
    best_rows: Sequence[int]  # the row reported for each member
    if len(b.slots) == len(members):
        best_rows = range(len(members))
    else:  # several channels per event: report the most anomalous
        bounds = [*starts, len(b.slots)]
        best_rows = [a + int(np.argmax(score[a:c])) for a, c in zip(bounds[:-1], bounds[1:])]
    return [
        Score(
            stream=events[i].stream,
            score=float(score[best]),
            raw=float(raw[best]),
            components=dict(zip(COMPONENTS, comps[best].tolist())),
            model_version=model_version,
            warm=b.warm,
            ts=events[i].ts,
        )
        for i, best in zip(members, best_rows)
    ]
