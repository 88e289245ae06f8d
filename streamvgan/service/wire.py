"""The wire format: strict decoding of input records, JSON output records, dead-letter headers.

Input records follow ``streamvgan/schemas/event.schema.json`` (a JSON Schema, draft 2020-12),
validated here in code so the hot path needs no schema library. A record that fails raises
:class:`DecodeError` whose ``reason`` is one of :data:`REASONS`, the value of the ``reason``
label of ``streamvgan_consumer_records_dead_lettered_total``. Numbers go through the same
:func:`~streamvgan.engine.values.check_value` as the engine's and the River adapters' input:
NaN and Infinity literals are ``non_finite``; numbers beyond
:data:`~streamvgan.engine.values.MAX_ABS_VALUE` (1e30), however many digits they have, are
``out_of_range``. Decoding never raises anything but :class:`DecodeError`; the service still
dead-letters a record as ``internal_error`` should anything else escape.

Dead-letter records keep the original key and value bytes unchanged and carry the cause and
the source coordinates in headers, as Kafka Connect's dead-letter queue does
(``errors.deadletterqueue.context.headers.enable``), under the ``__streamvgan.errors.`` prefix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streamvgan.engine.types import (
    CAUSES,
    DEFAULT_FIELD,
    Event,
    Forecast,
    ForecastColumns,
    Score,
)
from streamvgan.engine.values import MAX_ABS_VALUE, NOT_A_NUMBER, ValueRejected, check_value
from streamvgan.errors import InvalidInputError

if TYPE_CHECKING:
    from streamvgan.engine.batching import ScoreColumns

#: Version of the output records' layout; bumped on any incompatible change.
SCHEMA_VERSION = 1

REASONS = (
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "schema",
    "non_finite",
    "out_of_range",
    "missing_stream",
    "engine_error",
    "internal_error",
)

#: Header names of dead-letter records.
HEADER_PREFIX = "__streamvgan.errors."
H_REASON = HEADER_PREFIX + "reason"
H_MESSAGE = HEADER_PREFIX + "message"
H_TOPIC = HEADER_PREFIX + "topic"
H_PARTITION = HEADER_PREFIX + "partition"
H_OFFSET = HEADER_PREFIX + "offset"

MAX_STREAM_LENGTH = 256
MAX_FIELDS = 64
MAX_FIELD_NAME_LENGTH = 64
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_ALLOWED_KEYS = frozenset(("stream", "ts", "value", "values"))
_ISO_RE = re.compile(
    r"^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"(?:[T ]([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d)(?:\.(\d{1,9}))?)?"
    r"(Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)?)?$"
)


class DecodeError(InvalidInputError):
    """A record that cannot become an event; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


class _NonFinite(Exception):
    pass


class _Duplicate(Exception):
    pass


class _OutOfRange(Exception):
    pass


#: Longest integer literal parsed: 40 digits are already beyond MAX_ABS_VALUE and MAX_TS_MS,
#: and never converting longer ones keeps Python's 4,300-digit limit (a ValueError) and
#: float()'s OverflowError out of decoding.
_MAX_INT_CHARS = 41


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise _OutOfRange(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: beyond float64 (float() rounds it to inf)
        raise _OutOfRange(text if len(text) <= 40 else text[:37] + "...")
    return value


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return result


_decoder = json.JSONDecoder(
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicates,
    parse_int=_parse_int,
    parse_float=_parse_float,
)

#: Numbers orjson reads as floats may have been integers written with more digits than 64
#: bits hold (the standard library keeps them as ints, and their messages differ): from this
#: magnitude on, the standard library decides.
_FAST_FLOAT_LIMIT = float(2**63)


def _parse(text: str) -> Any:
    """``_decoder.decode(text)``, with orjson first (``decode_event`` of a one-value event:
    5.0 -> 4.1 us here).

    orjson's answer is taken only when it is certainly the standard library's: an object of
    strings, numbers, booleans, nulls and objects of those, in a text without ``\\u``
    escapes, with a float magnitude below 2**63, and with no duplicate key. orjson keeps the
    last of duplicate keys; one is detected by counting quotes: without ``\\u`` escapes,
    every ``"`` of the text is either a delimiter of a key or string the result holds, or an
    escaped quote inside one of them, so a key or value dropped as a duplicate leaves the
    text with more quotes than the result accounts for. Anything else (every error among
    them) takes the standard library's path, so every result, reason and message is the
    same as before (``tests/service/test_wire.py``, a property test over generated records).
    """
    if "\\u" not in text:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(data) is dict and _quotes_in(data, 0) == text.count('"'):
                return data
    return _decoder.decode(text)


def _quotes_in(obj: dict[str, Any], depth: int) -> int:
    """The ``"`` characters that ``obj`` accounts for in its JSON text (delimiters of its
    keys and strings and the quotes inside them); -1 where the fast path does not apply (a
    list, an object nested twice, a float beyond :data:`_FAST_FLOAT_LIMIT`)."""
    total = 0
    for key, value in obj.items():
        total += 2 + key.count('"')
        kind = type(value)
        if kind is str:
            total += 2 + value.count('"')
        elif kind is float:
            if not -_FAST_FLOAT_LIMIT < value < _FAST_FLOAT_LIMIT:
                return -1
        elif kind is dict and depth == 0:
            inner = _quotes_in(value, 1)
            if inner < 0:
                return -1
            total += inner
        elif kind not in (int, bool) and value is not None:
            return -1
    return total


def _check_ts(ts: Any) -> None:
    if isinstance(ts, bool) or ts is None:
        raise DecodeError("schema", f"'ts' must be epoch milliseconds or ISO-8601, got {ts!r}")
    if isinstance(ts, int):
        if not 0 <= ts <= MAX_TS_MS:
            raise DecodeError("schema", f"'ts'={ts} is outside 0..{MAX_TS_MS} (epoch milliseconds)")
        return
    if isinstance(ts, str):
        match = _ISO_RE.match(ts)
        if match is None:
            raise DecodeError(
                "schema",
                f"'ts'={ts[:64]!r} is not an ISO-8601 date-time (e.g. 2024-11-29T08:00:00Z)",
            )
        year, month, day = (int(g) for g in match.group(1, 2, 3))
        try:
            datetime(year, month, day)
        except ValueError:
            raise DecodeError("schema", f"'ts'={ts!r} is not a real calendar date") from None
        return
    raise DecodeError(
        "schema",
        f"'ts' must be an integer (epoch ms) or an ISO-8601 string, got {type(ts).__name__} {ts!r}",
    )


def _number(x: Any, where: str) -> float:
    try:
        return check_value(x, where)
    except ValueRejected as exc:
        reason = "schema" if exc.reason == NOT_A_NUMBER else exc.reason
        raise DecodeError(reason, str(exc)) from None


def decode_event(value: bytes | None, key: bytes | None = None) -> Event:
    """Decode and validate one record value (and key) into an engine :class:`Event`.

    Raises :class:`DecodeError` with the reason and a message naming the field and value.

    Examples
    --------
    >>> from streamvgan.service.wire import decode_event, DecodeError
    >>> decode_event(b'{"stream": "host-1/cpu", "ts": 1732867200000, "value": 0.42}')
    Event(stream='host-1/cpu', values={'value': 0.42}, ts=1732867200000)
    >>> decode_event(b'{"ts": "2024-11-29T08:00:00Z", "values": {"cpu": 1}}', key=b"h1")
    Event(stream='h1', values={'cpu': 1.0}, ts='2024-11-29T08:00:00Z')
    >>> try:
    ...     decode_event(b'{"stream": "a", "ts": 1, "value": NaN}')
    ... except DecodeError as e:
    ...     print(e.reason)
    non_finite

    """
    if value is None:
        raise DecodeError(
            "not_an_object", "record has no value (a tombstone); expected a JSON object"
        )
    try:
        text = value if isinstance(value, str) else bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", f"record value is not valid UTF-8: {exc}") from None
    try:
        data = _parse(text)
    except _NonFinite as exc:
        raise DecodeError("non_finite", f"record holds the non-finite number {exc}") from None
    except _Duplicate as exc:
        raise DecodeError("schema", f"property {str(exc)!r} appears twice") from None
    except _OutOfRange as exc:
        raise DecodeError(
            "out_of_range",
            f"record holds the number {exc}, beyond the accepted range +-{MAX_ABS_VALUE:g}",
        ) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("invalid_json", f"record value is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError(
            "not_an_object", f"record value must be a JSON object, got {type(data).__name__}"
        )
    extra = data.keys() - _ALLOWED_KEYS
    if extra:
        raise DecodeError(
            "schema",
            f"unknown properties {sorted(extra)[:5]}; allowed: stream, ts, value, values",
        )
    stream = data.get("stream")
    if stream is None:
        if "stream" in data:
            raise DecodeError("schema", "'stream' must be a non-empty string, got null")
        if not key:
            raise DecodeError(
                "missing_stream", "no 'stream' property and no record key to take it from"
            )
        try:
            stream = bytes(key).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_utf8", f"record key is not valid UTF-8: {exc}") from None
    elif not isinstance(stream, str) or not stream:
        raise DecodeError("schema", f"'stream' must be a non-empty string, got {stream!r}")
    if len(stream) > MAX_STREAM_LENGTH:
        raise DecodeError(
            "schema", f"stream id is {len(stream)} characters; at most {MAX_STREAM_LENGTH}"
        )
    if "ts" not in data:
        raise DecodeError("schema", "missing required property 'ts'")
    ts = data["ts"]
    _check_ts(ts)
    has_value, has_values = "value" in data, "values" in data
    if has_value == has_values:
        raise DecodeError(
            "schema", "exactly one of 'value' (a number) or 'values' (an object) is required"
        )
    if has_value:
        values = {DEFAULT_FIELD: _number(data["value"], "'value'")}
    else:
        raw = data["values"]
        if not isinstance(raw, dict):
            raise DecodeError(
                "schema", f"'values' must be an object of numbers, got {type(raw).__name__}"
            )
        if not 1 <= len(raw) <= MAX_FIELDS:
            raise DecodeError(
                "schema", f"'values' must have 1 to {MAX_FIELDS} fields, got {len(raw)}"
            )
        values = {}
        for name, x in raw.items():
            if not 1 <= len(name) <= MAX_FIELD_NAME_LENGTH:
                raise DecodeError(
                    "schema", f"field name {name[:80]!r} must be 1 to {MAX_FIELD_NAME_LENGTH} chars"
                )
            values[name] = _number(x, f"values[{name!r}]")
    return Event(stream=stream, values=values, ts=ts)


def load_schema() -> dict[str, Any]:
    """The input event's JSON Schema, as shipped in the package."""
    text = resources.files("streamvgan.schemas").joinpath("event.schema.json").read_text("utf-8")
    return json.loads(text)


def encode_event(stream: str, ts: Any, value: float | Mapping[str, float]) -> bytes:
    """The JSON bytes of one input event (what replay and the demo produce)."""
    if isinstance(value, Mapping):
        return _dumps({"stream": stream, "ts": ts, "values": dict(value)})
    return _dumps({"stream": stream, "ts": ts, "value": value})


# -- output records


def _dumps(obj: Any) -> bytes:
    """Compact JSON; a non-finite float is written as null rather than invalid JSON.

    orjson first: 25x faster than the standard library on a score record (1.2 against 31 us
    here), and it already writes NaN and infinities as null. What it refuses (an integer
    beyond 64 bits, a key that is not a string, a type it does not know) takes the standard
    library's path, so every message encodes as before. Decoding takes orjson where its answer
    is certainly the standard library's (:func:`_parse`).
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        pass
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError:  # a non-finite float: encode it as null rather than invalid JSON
        return json.dumps(_finite_or_none(obj), separators=(",", ":")).encode("utf-8")


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


#: Significant digits kept in forecast and continuation values: model outputs are float32,
#: whose further digits are noise, and shorter numbers make smaller records.
SIGNIFICANT_DIGITS = 7


def _round_sig(array: Any) -> np.ndarray:
    """``array`` rounded to :data:`SIGNIFICANT_DIGITS`, vectorised (one numpy pass)."""
    a = np.asarray(array, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        magnitude = np.floor(np.log10(np.abs(a)))
        magnitude = np.where(np.isfinite(magnitude), magnitude, 0.0)
        scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - magnitude)
        return np.round(a * scale) / scale


@dataclass(frozen=True)
class ScoreMessage:
    """One record of the scores topic: the anomaly score of one input event.

    Examples
    --------
    >>> from streamvgan.service.wire import ScoreMessage
    >>> m = ScoreMessage(stream="a", ts=1, score=0.5, raw=0.1, components={"surprise": 0.1},
    ...                  model_version=3, warm=True, anomaly=False)
    >>> m.to_bytes()
    b'{"schema_version":1,"stream":"a","ts":1,"score":0.5,"raw":0.1,"components":{"surprise":0.1},"model_version":3,"warm":true,"anomaly":false}'
    >>> ScoreMessage.from_bytes(m.to_bytes()) == m
    True

    """

    stream: str
    ts: Any
    score: float
    raw: float
    components: dict[str, float]
    model_version: int
    warm: bool
    anomaly: bool
    schema_version: int = SCHEMA_VERSION
    #: what drove the score, {"signal": ..., "field": ...}; None (left out of the record)
    #: while no signal is counted yet
    cause: dict[str, str | None] | None = None
    #: each field's own score, {"cpu": 0.93, "mem": 0.12}, for an event of several fields
    #: only; None (left out of the record) for an event of one field
    fields: dict[str, float] | None = None

    @classmethod
    def from_score(cls, score: Score, ts: Any, threshold: float) -> ScoreMessage:
        cause = score.cause
        return cls(
            stream=score.stream,
            ts=ts,
            score=float(score.score),
            raw=float(score.raw),
            components={k: float(v) for k, v in score.components.items()},
            model_version=int(score.model_version),
            warm=bool(score.warm),
            anomaly=bool(score.score >= threshold),
            cause=None if cause is None else {"signal": cause.signal, "field": cause.field},
            fields=None if score.fields is None else {k: float(v) for k, v in score.fields.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": self.schema_version,
            "stream": self.stream,
            "ts": self.ts,
            "score": self.score,
            "raw": self.raw,
            "components": self.components,
            "model_version": self.model_version,
            "warm": self.warm,
            "anomaly": self.anomaly,
        }
        if self.cause is not None:
            out["cause"] = self.cause
        if self.fields is not None:
            out["fields"] = self.fields
        return out

    def to_bytes(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoreMessage:
        return cls(**json.loads(data))


def encode_scores(columns: ScoreColumns, threshold: float) -> list[bytes]:
    """The score record of each row of ``columns``, straight from the arrays: the same bytes
    as ``ScoreMessage.from_score(score, score.ts, threshold).to_bytes()`` of each of
    ``columns.scores()``, without a :class:`Score` and a :class:`ScoreMessage` per event.

    The service's hot path: at 1,000 events per poll the two objects per event cost more
    than encoding them (tests/service/test_processing.py checks the bytes are equal).
    """
    names, version, dumps = columns.field_names, int(columns.model_version), _dumps
    causes: dict[tuple[str, int, int], dict[str, str | None]] = {}
    out: list[bytes] = []
    for stream, ts, s, r, (a, b, c, d, e), w, k, f, fs in zip(
        columns.streams,
        columns.ts,
        columns.score.tolist(),
        columns.raw.tolist(),
        columns.components.tolist(),
        columns.warm.tolist(),
        columns.cause.tolist(),
        columns.cause_field.tolist(),
        columns.field_dicts(),
    ):
        record = {
            "schema_version": SCHEMA_VERSION, "stream": stream, "ts": ts, "score": s, "raw": r,
            "components": {
                "surprise": a, "reconstruction": b, "critic": c, "jump": d, "level": e
            },
            "model_version": version, "warm": w, "anomaly": s >= threshold,
        }  # fmt: skip
        if k >= 0:  # NO_CAUSE (-1): no signal counted yet, no "cause" in the record
            cause = causes.get((stream, k, f))
            if cause is None:
                fields = names.get(stream, ())
                field_ = fields[f] if 0 <= f < len(fields) else None
                cause = causes[stream, k, f] = {"signal": CAUSES[k], "field": field_}
            record["cause"] = cause
        if fs is not None:  # an event of several fields: each field's own score
            record["fields"] = fs
        out.append(dumps(record))
    return out


@dataclass(frozen=True)
class ForecastMessage:
    """One record of the forecasts topic: mean and quantiles of the next ``horizon`` steps.

    ``mean[field]`` and ``quantiles[level][field]`` are lists of ``horizon`` floats, in the
    stream's original units; ``ts`` is that of the stream's latest event, the forecast origin.
    """

    stream: str
    ts: Any
    horizon: int
    fields: list[str]
    mean: dict[str, list[float]]
    quantiles: dict[str, dict[str, list[float]]]
    model_version: int
    warm: bool
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_forecast(cls, forecast: Forecast, ts: Any) -> ForecastMessage:
        fields_ = list(forecast.fields)
        levels = list(forecast.quantiles)
        # one array (1 + levels, F, H) rounded in one pass, then plain lists
        stacked = np.stack([forecast.mean, *(forecast.quantiles[q] for q in levels)])
        rows = _round_sig(np.swapaxes(stacked, 1, 2)).tolist()
        return cls(
            stream=forecast.stream,
            ts=ts,
            horizon=int(stacked.shape[1]),
            fields=fields_,
            mean=dict(zip(fields_, rows[0])),
            quantiles={_level(q): dict(zip(fields_, rows[k + 1])) for k, q in enumerate(levels)},
            model_version=int(forecast.model_version),
            warm=bool(forecast.warm),
        )

    def to_bytes(self) -> bytes:
        # not dataclasses.asdict: it deep-copies every list, which costs more than encoding
        return _dumps(
            {
                "stream": self.stream,
                "ts": self.ts,
                "horizon": self.horizon,
                "fields": self.fields,
                "mean": self.mean,
                "quantiles": self.quantiles,
                "model_version": self.model_version,
                "warm": self.warm,
                "schema_version": self.schema_version,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ForecastMessage:
        return cls(**json.loads(data))


def encode_forecasts(columns: ForecastColumns, ts: Mapping[str, Any]) -> list[bytes]:
    """The forecast record of each stream of ``columns`` (origin ``ts[stream]``): the same
    bytes as ``ForecastMessage.from_forecast(fc, ts[fc.stream]).to_bytes()`` for each of
    ``columns.forecasts()``, made from the arrays: the mean and every quantile of every
    stream rounded in one numpy pass and turned into lists in one call, no object per stream
    (a forecast per stream per poll made this the service's largest cost after the model)."""
    levels = _round_sig(columns.levels()).tolist()  # [row][mean, quantiles...][width][H]
    names = [_level(q) for q in columns.z]
    horizon = int(columns.mean.shape[1])
    version, warm = int(columns.model_version), columns.model_version > 0
    out: list[bytes] = []
    for i, stream in enumerate(columns.streams):
        fields_ = list(columns.fields[i])
        first = columns.rows[i]
        if columns.joint:  # one row: [level][field][H]
            per = levels[first]
            series = [dict(zip(fields_, per[k])) for k in range(len(per))]
        else:  # a row per field: [level][0][H]
            own = levels[first : first + len(fields_)]
            series = [
                {name: row[k][0] for name, row in zip(fields_, own)} for k in range(1 + len(names))
            ]
        out.append(
            _dumps(
                {
                    "stream": stream,
                    "ts": ts[stream],
                    "horizon": horizon,
                    "fields": fields_,
                    "mean": series[0],
                    "quantiles": {q: series[k + 1] for k, q in enumerate(names)},
                    "model_version": version,
                    "warm": warm,
                    "schema_version": SCHEMA_VERSION,
                }
            )
        )
    return out


@dataclass(frozen=True)
class ContinuationMessage:
    """One record of the continuations topic: sampled future trajectories of one stream.

    ``samples[field]`` is a list of ``n_samples`` lists of ``horizon`` floats.
    """

    stream: str
    ts: Any
    horizon: int
    n_samples: int
    fields: list[str]
    samples: dict[str, list[list[float]]]
    model_version: int
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_array(
        cls, stream: str, ts: Any, fields_: Sequence[str], samples: np.ndarray, model_version: int
    ) -> ContinuationMessage:
        samples = np.asarray(samples)  # (n_samples, H, F)
        n, horizon = int(samples.shape[0]), int(samples.shape[1])
        per_field = _round_sig(np.moveaxis(samples, 2, 0)).tolist()  # (F, n_samples, H)
        return cls(
            stream=stream,
            ts=ts,
            horizon=horizon,
            n_samples=n,
            fields=list(fields_),
            samples=dict(zip(fields_, per_field)),
            model_version=int(model_version),
        )

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "stream": self.stream,
                "ts": self.ts,
                "horizon": self.horizon,
                "n_samples": self.n_samples,
                "fields": self.fields,
                "samples": self.samples,
                "model_version": self.model_version,
                "schema_version": self.schema_version,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ContinuationMessage:
        return cls(**json.loads(data))


def _level(q: float) -> str:
    return f"{float(q):g}"


@dataclass(frozen=True)
class DeadLetter:
    """Why a record went to the dead-letter topic, and where it came from."""

    reason: str
    message: str
    topic: str
    partition: int
    offset: int
    original_headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)

    def headers(self) -> list[tuple[str, bytes]]:
        """The original headers followed by the error context headers."""
        ours = [
            (H_REASON, self.reason.encode()),
            (H_MESSAGE, self.message[:1000].encode("utf-8", "replace")),
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(self.partition).encode()),
            (H_OFFSET, str(self.offset).encode()),
        ]
        kept = [(k, v) for k, v in self.original_headers if not k.startswith(HEADER_PREFIX)]
        return kept + ours

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]]) -> DeadLetter:
        """Read the error context back from a dead-letter record's headers."""
        found = {k: v for k, v in headers}
        try:
            return cls(
                reason=found[H_REASON].decode(),
                message=found[H_MESSAGE].decode("utf-8", "replace"),
                topic=found[H_TOPIC].decode(),
                partition=int(found[H_PARTITION]),
                offset=int(found[H_OFFSET]),
                original_headers=tuple(
                    (k, v) for k, v in found.items() if not k.startswith(HEADER_PREFIX)
                ),
            )
        except KeyError as exc:
            raise InvalidInputError(
                f"not a streamvgan dead-letter record: no header {exc}"
            ) from None
