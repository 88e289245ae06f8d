"""Plain messages that cross the engine's boundary: what goes in (``Event``) and what comes
out (``Score``, ``Forecast``). No tensors here: callers (the service, the River adapters,
the evaluation) only ever see floats, lists and numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The field name a univariate event's value is stored under.
DEFAULT_FIELD = "value"

#: What can drive a score (:attr:`Cause.signal`); the engine's arrays carry the index.
CAUSES = ("model", "jump", "level", "extreme")


@dataclass(frozen=True)
class Event:
    """One observation of one stream.

    ``values`` maps field names to finite floats; a univariate stream uses
    ``{"value": x}``. ``ts`` is carried through untouched for the caller's bookkeeping;
    the engine relies on the order events are given in, not on ``ts``.

    >>> Event("host-1/cpu", {"value": 0.42}, ts=1732867200000).values["value"]
    0.42
    """

    stream: str
    values: Mapping[str, float]
    ts: Any = None


@dataclass(frozen=True)
class Cause:
    """What drove a score: the detection ``signal`` whose calibrated z was the largest
    (``"model"``, ``"jump"`` or ``"level"``), or ``"extreme"`` where the new-extreme rule set the
    score to 1.0; and the ``field`` behind it (for jump and level the field whose calibrated z
    was the largest, for extreme the field furthest beyond its range, for the model signal the
    field with the largest normalised forecast error; in ``channels`` mode the field of the
    channel that scored highest). README "How the score is computed" says more.

    >>> Cause("jump", "cpu")
    Cause(signal='jump', field='cpu')
    """

    signal: str
    field: str | None


@dataclass(frozen=True)
class Score:
    """The anomaly score of one event.

    ``score`` is the calibrated tail probability in [0, 1] (higher is more anomalous);
    ``raw`` the uncalibrated model signal, the weighted combination of ``surprise``,
    ``reconstruction`` and the standardised ``critic``. ``components`` holds five values:
    those three, ``jump`` and ``level`` (for a stream with several fields, the channel that
    scored highest). ``warm`` is False while the score came from the cold-start fallback (no
    fitted model yet). ``cause`` says which signal and field drove the score (None while
    no signal is counted yet: a stream's first events, or one unknown to :meth:`score`).
    ``fields``, for an event of more than one field only (else None), maps each field to its
    own score: the calibrated score of the largest of that field's signals (in ``channels``
    mode its channel's score), the new-extreme rule and the joint model signal counted in the
    field their cause names; ``score`` is the largest of them and the field ``cause`` names
    has exactly ``score``. How each is computed: README "How the score is computed".
    """

    stream: str
    score: float
    raw: float
    components: dict[str, float]
    model_version: int
    warm: bool
    ts: Any = None
    cause: Cause | None = None
    fields: dict[str, float] | None = None


@dataclass(frozen=True)
class Forecast:
    """A probabilistic forecast of the next ``horizon`` steps of one stream.

    ``mean`` has shape (horizon, n_fields); ``quantiles`` maps each level
    (e.g. 0.1, 0.5, 0.9) to an array of the same shape, in the stream's original units.
    """

    stream: str
    fields: list[str]
    mean: np.ndarray
    quantiles: dict[float, np.ndarray] = field(default_factory=dict)
    model_version: int = 0
    warm: bool = False


@dataclass(frozen=True)
class ForecastColumns:
    """The forecasts of many streams as arrays (:meth:`StreamEngine.forecast_columns
    <streamvgan.engine.StreamEngine.forecast_columns>`), for callers that handle many streams
    per call; :meth:`forecasts` makes the :class:`Forecast` of each.

    Rows are channels: stream ``i`` owns rows ``rows[i]:rows[i + 1]``, one per field each of
    width 1 (``joint=False``, the ``channels`` field mode), or one row of all its fields
    (``joint=True``). Quantile ``q`` of a row is ``mean + z[q] * spread``.

    >>> import numpy as np
    >>> cols = ForecastColumns(["a"], [["value"]], [0, 1], np.zeros((1, 2, 1)),
    ...                        np.ones((1, 2, 1)), {0.1: -1.28, 0.9: 1.28}, False, 3)
    >>> fc = cols.forecasts()[0]
    >>> fc.mean.shape, fc.quantiles[0.9][:, 0].tolist(), fc.warm
    ((2, 1), [1.28, 1.28], True)
    """

    streams: list[str]
    fields: list[list[str]]  # each stream's field names
    rows: list[int]  # len(streams) + 1 row offsets
    mean: np.ndarray  # (rows, horizon, width), original units
    spread: np.ndarray  # (rows, horizon, width), one standard deviation
    z: Mapping[float, float]  # quantile level -> its standard normal quantile
    joint: bool
    model_version: int

    def __len__(self) -> int:
        return len(self.streams)

    def levels(self) -> np.ndarray:
        """(rows, 1 + levels, width, horizon): the mean, then each quantile in ``z``'s order."""
        parts = [self.mean] + [self.mean + zq * self.spread for zq in self.z.values()]
        return np.swapaxes(np.stack(parts, axis=1), 2, 3)

    def forecasts(self) -> list[Forecast]:
        """One :class:`Forecast` per stream, arrays (horizon, n_fields)."""

        def to_fields(a: np.ndarray) -> np.ndarray:  # (rows of one stream, H, width)
            return a[0] if self.joint else a[:, :, 0].T

        version, out = self.model_version, []
        for i, stream in enumerate(self.streams):
            m = self.mean[self.rows[i] : self.rows[i + 1]]
            sp = self.spread[self.rows[i] : self.rows[i + 1]]
            quantiles = {q: to_fields(m + zq * sp) for q, zq in self.z.items()}
            out.append(
                Forecast(stream, self.fields[i], to_fields(m), quantiles, version, version > 0)
            )
        return out
