"""Per-channel state of many streams, kept in preallocated numpy arrays indexed by slot.

A *channel* is one row the network advances: a single field of a stream in ``channels``
mode, or a whole stream in ``joint`` mode. Keeping every channel's state in a row of a few
arrays (not in one Python object per stream) is what lets one batched model call serve all
streams of a poll, and makes the bytes per stream easy to count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Iterable

import numpy as np

# arrays of the table: name -> (shape after the slot axis, dtype); symbols resolved in __init__
_LAYOUT = {
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


class StateTable:
    """Slots of channel state with least-recently-seen eviction of whole streams.

    Parameters
    ----------
    n_features
        Values per channel (1 in channels mode).
    hidden_size, horizon, replay_size, smoothing
        Sizes of the per-channel arrays.
    n_signals
        Detection signals calibrated per channel (see :class:`streamvgan.engine.StreamEngine`).
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
        self.arrays: dict[str, np.ndarray] = {}
        self._grow(initial_capacity)
        # stream -> {field key -> slot}; ordered from least to most recently seen
        self.streams: OrderedDict[str, dict[str, int]] = OrderedDict()
        self.slot_owner: dict[int, tuple[str, str]] = {}
        self._free: list[int] = []
        self._next = 0
        self.evictions = 0
        #: called with the name of each stream evicted to make room (set by the engine)
        self.on_evict: Callable[[str], None] | None = None

    # -- layout ------------------------------------------------------------------------------
    def _shape(self, name: str, rows: int) -> tuple[int, ...]:
        dims, _ = _LAYOUT[name]
        return (rows, *(self.sizes[d] for d in dims))

    def _grow(self, capacity: int) -> None:
        for name, (_, dtype) in _LAYOUT.items():
            new = np.zeros(self._shape(name, capacity), dtype=dtype)
            if name in self.arrays:
                new[: self.capacity] = self.arrays[name]
            self.arrays[name] = new
        self.capacity = capacity

    def bytes_per_channel(self) -> int:
        return sum(
            int(np.prod(self._shape(n, 1))) * np.dtype(d).itemsize for n, (_, d) in _LAYOUT.items()
        )

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(name)

    # -- slots -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.streams)

    def __contains__(self, stream: str) -> bool:
        return stream in self.streams

    def slots_of(self, stream: str) -> dict[str, int] | None:
        return self.streams.get(stream)

    def touch(self, stream: str) -> None:
        self.streams.move_to_end(stream)

    def add_stream(
        self, stream: str, keys: Iterable[str], protect: Container[str] = frozenset()
    ) -> dict[str, int]:
        """Give ``stream`` one fresh slot per key, evicting the least recently seen streams
        (except those in ``protect``, which the current batch is using) when full."""
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
        return slots

    def _take_new(self) -> int:
        if self._next >= self.capacity:
            self._grow(max(2 * self.capacity, 64))
        slot = self._next
        self._next += 1
        return slot

    def _reset(self, slot: int) -> None:
        for arr in self.arrays.values():
            arr[slot] = 0
        self.arrays["norm_var"][slot] = 0.0

    def reset_stream(self, stream: str) -> None:
        """Zero every channel of ``stream`` in place (its slots stay), as if it were new."""
        for slot in self.streams[stream].values():
            self._reset(slot)

    def nonfinite_rows(self, slots: np.ndarray, names: Iterable[str] | None = None) -> np.ndarray:
        """A bool per slot of ``slots``: does any float array (or those in ``names``) hold a
        NaN or an infinity in that slot's row?"""
        bad = np.zeros(len(slots), dtype=bool)
        for name in self.arrays if names is None else names:
            arr = self.arrays[name]
            if arr.dtype.kind == "f":
                bad |= ~np.isfinite(arr[slots].reshape(len(slots), -1)).all(axis=1)
        return bad

    def remove_stream(self, stream: str) -> None:
        for slot in self.streams.pop(stream).values():
            self.slot_owner.pop(slot, None)
            self._free.append(slot)

    def used_slots(self) -> np.ndarray:
        return np.fromiter(self.slot_owner.keys(), dtype=np.int64, count=len(self.slot_owner))

    # -- replay buffer -----------------------------------------------------------------------
    def push(self, slots: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Append normalised ``values`` (B, F) with learning ``weights`` (B,) to the rings;
        ``n`` must not have been incremented for this event yet."""
        pos = self.arrays["n"][slots] % self.sizes["R"]
        self.arrays["buf"][slots, pos] = values
        self.arrays["buf_w"][slots, pos] = weights

    def _ring_tail(self, ring: str, slots: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        """The ``length`` rows of ring array ``ring`` written before write count ``ends`` (B,)
        at channels ``slots``, oldest first, as (B, length, ...); rows from before a channel's
        first write are zero."""
        pos = ends[:, None] + np.arange(-length, 0)[None, :]  # (B, length)
        out = self.arrays[ring][slots[:, None], pos % self.arrays[ring].shape[1]]
        out[pos < 0] = 0
        return out

    def season_values(self, slot: int, n: int) -> np.ndarray:
        """The last ``min(n, W)`` values (in original units) of one channel ``slot``, oldest
        first, as (length, F) float64."""
        length = int(min(n, self.sizes["W"]))
        tail = self._ring_tail("season_buf", np.array([slot]), np.array([n]), length)
        return tail[0].astype(np.float64)

    def recent_values(self, slots: np.ndarray, length: int) -> np.ndarray:
        """The last ``length`` buffered values (B, length, F), oldest first, zero-padded on
        the left where a channel has fewer points."""
        return self._ring_tail("buf", slots, self.arrays["n"][slots], length)

    def windows(
        self, slots: np.ndarray, ends: np.ndarray, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows of ``length`` points ending before event count ``ends`` (B,), with weights."""
        return (
            self._ring_tail("buf", slots, ends, length),
            self._ring_tail("buf_w", slots, ends, length),
        )
