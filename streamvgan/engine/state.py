"""Per-channel state of many streams, kept in preallocated numpy arrays indexed by slot.

A *channel* is one row the network advances: a single field of a stream in ``channels``
mode, or a whole stream in ``joint`` mode. Keeping every channel's state in a row of a few
arrays (not in one Python object per stream) is what lets one batched model call serve all
streams of a poll, and makes the bytes per stream easy to count.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamvgan.engine.config import EngineConfig
from streamvgan.errors import InvalidInputError

log = logging.getLogger(__name__)

#: arrays of the table: name -> (shape after the slot axis, dtype); the symbols are the sizes
#: given to :class:`StateTable` (F fields, H horizon, S smoothing, K signals, W season window,
#: R replay size). The order is the order of a stream record's body: do not reorder.
LAYOUT: dict[str, tuple[tuple[str, ...], type]] = {
    "h": (("hidden",), np.float32),  # GRU state h_t
    "norm_mean": (("F",), np.float64),  # online normaliser, original units
    "norm_var": (("F",), np.float64),
    "n": ((), np.int64),  # events learned
    "last": (("F",), np.float64),  # last value, original units
    "outside": (("F",), np.int16),  # signed run of consecutive values beyond 4 sd
    "f_mean": (("H", "F"), np.float32),  # forecast made after the last event, normalised
    "f_scale": (("H", "F"), np.float32),
    "critic_mean": ((), np.float32),  # running statistics of the critic component
    "critic_var": ((), np.float32),
    "warm_n": ((), np.int32),  # events since the first fit (critic and forecast statistics)
    "err_model": (("F",), np.float32),  # EW squared one-step error of the network's forecast
    "err_last": (("F",), np.float32),  # and of the last value (persistence), normalised units
    "recent": (("S", "K"), np.float32),  # last values of each detection signal (ring)
    "cal_n": (("K",), np.int32),  # values in each signal's calibration since it (re)started
    "cal_mean": (("K",), np.float64),  # exponentially weighted mean and variance of each
    "cal_var": (("K",), np.float64),  # smoothed signal: the calibration history
    "lvl_mean": (("F",), np.float64),  # long-run level and variance of the values, original
    "lvl_var": (("F",), np.float64),  # units (not winsorised, never re-levelled)
    "lvl_short": (("F",), np.float64),  # short-run level (a few events' half-life)
    "season_buf": (("W", "F"), np.float32),  # last values, original units (ring)
    "period": (("F",), np.int32),  # detected season length in events (0: none)
    "seen_min": (("F",), np.float64),  # range of the values seen, original units
    "seen_max": (("F",), np.float64),
    "quiet": ((), np.int32),  # events left in the alert cooldown
    "buf": (("R", "F"), np.float32),  # replay buffer of normalised values (ring)
    "buf_w": (("R",), np.float16),  # learning weight of each buffered point
}

#: the arrays of :data:`LAYOUT` that can hold a NaN or an infinity
_FLOAT_ARRAYS = frozenset(n for n, (_, d) in LAYOUT.items() if np.dtype(d).kind == "f")


@dataclass
class StreamRecord:
    """One stream's state as plain data: its fields, the slot key of each channel, the model
    version the state was written under, and its rows of every state array."""

    stream: str
    fields: list[str]
    keys: list[str]
    model_version: int
    rows: dict[str, np.ndarray]


class StateTable:
    """Slots of channel state with least-recently-seen eviction of whole streams.

    Every array of :data:`LAYOUT` is an attribute of the same name, one row per slot
    (``table.norm_mean[slot]``); :attr:`arrays` maps the names to the same arrays.

    Parameters
    ----------
    n_features
        Values per channel (1 in channels mode).
    hidden_size, horizon, replay_size, smoothing
        Sizes of the per-channel arrays.
    n_signals
        Detection signals calibrated per channel (see README "How the score is computed").
    season_window
        Values kept per channel to detect a season and look one season back (0: none).
    max_streams
        Streams kept; the least recently seen stream is evicted (all its channels) to make room.

    Examples
    --------
    >>> table = StateTable(1, 8, 4, replay_size=16, smoothing=2, max_streams=2)
    >>> for name in ["a", "b", "c"]:
    ...     _ = table.add_stream(name, ["value"])
    >>> list(table.streams), table.evictions
    (['b', 'c'], 1)
    """

    h: np.ndarray
    norm_mean: np.ndarray
    norm_var: np.ndarray
    n: np.ndarray
    last: np.ndarray
    outside: np.ndarray
    f_mean: np.ndarray
    f_scale: np.ndarray
    critic_mean: np.ndarray
    critic_var: np.ndarray
    warm_n: np.ndarray
    err_model: np.ndarray
    err_last: np.ndarray
    recent: np.ndarray
    cal_n: np.ndarray
    cal_mean: np.ndarray
    cal_var: np.ndarray
    lvl_mean: np.ndarray
    lvl_var: np.ndarray
    lvl_short: np.ndarray
    season_buf: np.ndarray
    period: np.ndarray
    seen_min: np.ndarray
    seen_max: np.ndarray
    quiet: np.ndarray
    buf: np.ndarray
    buf_w: np.ndarray

    def __init__(
        self,
        n_features: int,
        hidden_size: int,
        horizon: int,
        replay_size: int,
        smoothing: int,
        max_streams: int,
        initial_capacity: int = 64,
        n_signals: int = 3,
        season_window: int = 0,
    ) -> None:
        self.sizes = {
            "F": n_features,
            "hidden": hidden_size,
            "H": horizon,
            "S": smoothing,
            "R": replay_size,
            "K": n_signals,
            "W": season_window,
        }
        self.max_streams = max_streams
        self.capacity = 0
        self._grow(initial_capacity)
        # stream -> {field key -> slot}; ordered from least to most recently seen
        self.streams: OrderedDict[str, dict[str, int]] = OrderedDict()
        #: stream -> its field names, sorted (the keys are the fields in channels mode, "*" in
        #: joint mode)
        self.fields: dict[str, tuple[str, ...]] = {}
        #: stream -> its one field, and its slot, for streams with one field (fast paths)
        self.single_field: dict[str, str] = {}
        self.single_slot: dict[str, int] = {}
        self.slot_owner: dict[int, tuple[str, str]] = {}
        self._free: list[int] = []
        self._next = 0
        self.evictions = 0
        #: streams reset because their state turned non-finite (see :meth:`reset_nonfinite`)
        self.streams_reset = 0
        #: called with the name of each stream evicted to make room (set by the engine)
        self.on_evict: Callable[[str], None] | None = None

    @classmethod
    def for_config(cls, config: EngineConfig) -> StateTable:
        """The table an engine with ``config`` keeps (signals: see README "How the score is
        computed": the model's, then a jump and a level per field)."""
        m = config.model
        return cls(
            n_features=m.n_features,
            hidden_size=m.hidden_size,
            horizon=m.horizon,
            replay_size=config.replay_size,
            smoothing=config.smoothing,
            max_streams=config.max_streams,
            n_signals=1 + 2 * m.n_features,
            season_window=config.season_window,
        )

    # -- layout ------------------------------------------------------------------------------
    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every state array by name (the attributes themselves, not copies)."""
        return {name: getattr(self, name) for name in LAYOUT}

    def _shape(self, name: str, rows: int) -> tuple[int, ...]:
        dims, _ = LAYOUT[name]
        return (rows, *(self.sizes[d] for d in dims))

    def _grow(self, capacity: int) -> None:
        for name, (_, dtype) in LAYOUT.items():
            new: np.ndarray = np.zeros(self._shape(name, capacity), dtype=dtype)
            if self.capacity:
                new[: self.capacity] = getattr(self, name)
            setattr(self, name, new)
        self.capacity = capacity

    def bytes_per_channel(self) -> int:
        return sum(
            int(np.prod(self._shape(n, 1))) * np.dtype(d).itemsize for n, (_, d) in LAYOUT.items()
        )

    # -- slots -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.streams)

    def __contains__(self, stream: str) -> bool:
        return stream in self.streams

    def slots_of(self, stream: str) -> dict[str, int] | None:
        return self.streams.get(stream)

    def channels(self, stream: str) -> tuple[list[str], np.ndarray]:
        """``stream``'s field names and slots; InvalidInputError for an unknown stream."""
        slots = self.streams.get(stream)
        if slots is None:
            raise InvalidInputError(f"unknown stream {stream!r}: no events seen for it yet")
        return list(self.fields[stream]), np.asarray(list(slots.values()), dtype=np.int64)

    def touch(self, stream: str) -> None:
        self.streams.move_to_end(stream)

    def add_stream(
        self,
        stream: str,
        keys: Iterable[str],
        fields: Iterable[str] | None = None,
        protect: Container[str] = frozenset(),
    ) -> dict[str, int]:
        """Give ``stream`` (with ``fields``, by default the keys) one fresh slot per key,
        evicting the least recently seen streams (except those in ``protect``, which the
        current batch is using) when full."""
        while len(self.streams) >= self.max_streams:
            victim = next((s for s in self.streams if s not in protect), None)
            if victim is None:
                break
            self.remove_stream(victim)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict(victim)
        slots = {}
        for key in keys:
            slot = self._free.pop() if self._free else self._take_new()
            self._reset(slot)
            slots[key] = slot
            self.slot_owner[slot] = (stream, key)
        self.streams[stream] = slots
        names = self.fields[stream] = tuple(slots if fields is None else fields)
        if len(slots) == 1:
            self.single_field[stream] = names[0]
            self.single_slot[stream] = next(iter(slots.values()))
        return slots

    def _take_new(self) -> int:
        if self._next >= self.capacity:
            self._grow(max(2 * self.capacity, 64))
        slot = self._next
        self._next += 1
        return slot

    def _reset(self, slot: int) -> None:
        for name in LAYOUT:
            getattr(self, name)[slot] = 0

    def reset_stream(self, stream: str) -> None:
        """Zero every channel of ``stream`` in place (its slots stay), as if it were new."""
        for slot in self.streams[stream].values():
            self._reset(slot)

    def reset_nonfinite(
        self,
        slots: np.ndarray,
        names: Iterable[str] | None = None,
        extra: np.ndarray | None = None,
    ) -> int:
        """Reset (:meth:`reset_stream`) every stream with a channel in ``slots`` whose state
        (arrays ``names``, all by default) holds a NaN or an infinity, or where ``extra`` is
        True; return how many (also counted in :attr:`streams_reset`).

        Inputs are bounded (:data:`~streamvgan.engine.values.MAX_ABS_VALUE`), so this is a
        guard against what should not happen (diverged weights, a corrupt restored state):
        a stream left NaN would score NaN forever, a reset one starts again as new."""
        if len(slots) == 0:
            return 0
        bad = self.nonfinite_rows(slots, names)
        if extra is not None:
            bad |= extra
        if not bad.any():
            return 0
        owner = self.slot_owner
        streams = sorted({owner[int(slot)][0] for slot in slots[bad] if int(slot) in owner})
        for stream in streams:
            self.reset_stream(stream)
        self.streams_reset += len(streams)
        log.warning(
            "reset the state of %d streams that turned non-finite (NaN or inf), e.g. "
            "%r; they start again as new streams",
            *(len(streams), streams[0]),
        )
        return len(streams)

    def nonfinite_rows(self, slots: np.ndarray, names: Iterable[str] | None = None) -> np.ndarray:
        """A bool per slot of ``slots``: does any float array (or those in ``names``) hold a
        NaN or an infinity in that slot's row?"""
        count = len(slots)
        names = LAYOUT if names is None else names
        if count == 1:  # views of one row: no gathers (the one-stream case, every event)
            slot = int(slots[0])
            floats = [n for n in names if n in _FLOAT_ARRAYS]
            flat = np.concatenate([getattr(self, n)[slot].ravel() for n in floats])
            return np.array([not np.isfinite(flat).all()])
        finite = np.ones(count, dtype=bool)
        for arr in map(self.__getattribute__, names):
            if arr.dtype.kind == "f":  # each in its own dtype: no float64 copy of them all
                finite &= np.isfinite(arr[slots].reshape(count, -1)).all(axis=1)
        return ~finite

    def remove_stream(self, stream: str) -> None:
        self.fields.pop(stream, None)
        self.single_field.pop(stream, None)
        self.single_slot.pop(stream, None)
        for slot in self.streams.pop(stream).values():
            self.slot_owner.pop(slot, None)
            self._free.append(slot)

    def used_slots(self) -> np.ndarray:
        return np.fromiter(self.slot_owner.keys(), dtype=np.int64, count=len(self.slot_owner))

    # -- rows in and out (checkpoints, changelog records) ------------------------------------
    def rows(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the rows ``slots`` of every array, in :data:`LAYOUT` order."""
        return {name: np.ascontiguousarray(getattr(self, name)[slots]) for name in LAYOUT}

    def check_rows(self, arrays: Mapping[str, np.ndarray], count: int) -> None:
        """Raise ValueError saying what differs unless ``arrays`` are ``count`` rows of every
        array of this table, with this table's shapes."""
        if set(arrays) != set(LAYOUT):
            raise ValueError(f"stream state has arrays {sorted(arrays)}, expected {sorted(LAYOUT)}")
        for name, arr in arrays.items():
            want = self._shape(name, count)
            if tuple(arr.shape) != want:
                raise ValueError(
                    f"stream state array {name!r} has shape {tuple(arr.shape)}, this model needs "
                    f"{want} ({count} channels): saved with another configuration"
                )

    def put_rows(self, slots: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
        """Write rows (checked with :meth:`check_rows` first) into ``slots``."""
        self.check_rows(arrays, len(slots))
        for name, arr in arrays.items():
            getattr(self, name)[slots] = arr

    def restore(
        self,
        names: list[str],
        fields: list[list[str]],
        keys: list[list[str]],
        arrays: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """Install streams ``names`` (replacing any of those names) with their saved rows,
        stream by stream in ``arrays``; return their slots. All shapes are checked first
        (ValueError, nothing changed), and each array is copied in one assignment (not per
        stream: 100,000 streams load in seconds, not a minute)."""
        self.check_rows(arrays, sum(len(k) for k in keys))
        restored: list[int] = []
        for stream, stream_fields, stream_keys in zip(names, fields, keys):
            if stream in self.streams:
                self.remove_stream(stream)
            restored.extend(self.add_stream(stream, stream_keys, stream_fields).values())
        slots = np.asarray(restored, dtype=np.int64)
        self.put_rows(slots, arrays)  # after every add_stream: the table may have grown
        return slots

    def record(self, stream: str, model_version: int) -> StreamRecord | None:
        """``stream``'s state (None if unknown), written under ``model_version``."""
        return self.records([stream], model_version)[0]

    def records(self, streams: Sequence[str], model_version: int) -> list[StreamRecord | None]:
        """:meth:`record` of each of ``streams``, with one gather per array for all of them
        (a changelog commit exports hundreds at once)."""
        known = [self.streams.get(stream) for stream in streams]
        slots = [np.asarray(list(s.values()), dtype=np.int64) for s in known if s is not None]
        if not slots:
            return [None] * len(streams)
        every = self.rows(np.concatenate(slots))
        out: list[StreamRecord | None] = []
        start = 0
        for stream, channels in zip(streams, known):
            if channels is None:
                out.append(None)
                continue
            end = start + len(channels)
            rows = {name: arr[start:end] for name, arr in every.items()}
            out.append(
                StreamRecord(stream, list(self.fields[stream]), list(channels), model_version, rows)
            )
            start = end
        return out

    def restore_record(self, record: StreamRecord) -> np.ndarray:
        """Install ``record`` (replacing the stream's state if any) and return its slots;
        ValueError saying what does not fit, and the stream is then gone."""
        try:
            return self.restore([record.stream], [record.fields], [record.keys], record.rows)
        except ValueError:
            if record.stream in self.streams:
                self.remove_stream(record.stream)
            raise

    def state_dict(self) -> dict[str, Any]:
        """Every stream (least recently seen first) with its fields, slot keys and rows, and
        the eviction count, as plain data."""
        order = [slot for slots in self.streams.values() for slot in slots.values()]
        return {
            "streams": list(self.streams),
            "fields": [list(self.fields[s]) for s in self.streams],
            "keys": [list(slots) for slots in self.streams.values()],
            "arrays": self.rows(np.asarray(order, dtype=np.int64)),
            "evictions": self.evictions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> np.ndarray:
        """Restore :meth:`state_dict`'s streams (see :meth:`restore`); return their slots."""
        slots = self.restore(state["streams"], state["fields"], state["keys"], state["arrays"])
        self.evictions = int(state["evictions"])
        return slots

    @staticmethod
    def rows_to_bytes(rows: Mapping[str, np.ndarray]) -> tuple[list[list], bytes]:
        """``rows`` (from :meth:`rows`) as their layout ``[[name, shape, dtype], ...]`` and
        their raw bytes, concatenated in that order."""
        layout = [[name, list(a.shape), a.dtype.str] for name, a in rows.items()]
        return layout, b"".join(np.ascontiguousarray(a).tobytes() for a in rows.values())

    @staticmethod
    def rows_from_bytes(layout: list, body: bytes) -> dict[str, np.ndarray]:
        """The inverse of :meth:`rows_to_bytes`; ValueError if ``body`` does not match
        ``layout``."""
        arrays, offset = {}, 0
        try:
            for name, shape, dtype in layout:
                dt = np.dtype(dtype)
                count = int(np.prod(shape))
                flat = np.frombuffer(body, dtype=dt, count=count, offset=offset)
                arrays[name] = flat.reshape(shape).copy()
                offset += count * dt.itemsize
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"does not match its header: {exc}") from exc
        if offset != len(body):
            raise ValueError(f"has {len(body) - offset} unexpected trailing bytes")
        return arrays

    # -- rings -------------------------------------------------------------------------------
    def push(self, slots: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Append normalised ``values`` (B, F) with learning ``weights`` (B,) to the replay
        rings; ``n`` must not have been incremented for this event yet."""
        pos = self.n[slots] % self.sizes["R"]
        self.buf[slots, pos] = values
        self.buf_w[slots, pos] = weights

    def ring_tail(
        self, ring: np.ndarray, slots: np.ndarray, ends: np.ndarray, length: int
    ) -> np.ndarray:
        """The ``length`` rows of ring array ``ring`` (one of this table's, slot first, ring
        position second) written before write count ``ends`` (B,) at channels ``slots``, oldest
        first, as (B, length, ...); rows from before a channel's first write are zero."""
        pos = ends[:, None] + np.arange(-length, 0)[None, :]  # (B, length)
        out = ring[slots[:, None], pos % ring.shape[1]]
        out[pos < 0] = 0
        return out

    def season_values(self, slot: int, n: int) -> np.ndarray:
        """The last ``min(n, W)`` values (in original units) of one channel ``slot``, oldest
        first, as (length, F) float64."""
        length = int(min(n, self.sizes["W"]))
        tail = self.ring_tail(self.season_buf, np.array([slot]), np.array([n]), length)
        return tail[0].astype(np.float64)

    def recent_values(self, slots: np.ndarray, length: int) -> np.ndarray:
        """The last ``length`` buffered values (B, length, F), oldest first, zero-padded on
        the left where a channel has fewer points."""
        return self.ring_tail(self.buf, slots, self.n[slots], length)

    def windows(
        self, slots: np.ndarray, ends: np.ndarray, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows of ``length`` points ending before event count ``ends`` (B,), with weights."""
        return (
            self.ring_tail(self.buf, slots, ends, length),
            self.ring_tail(self.buf_w, slots, ends, length),
        )
