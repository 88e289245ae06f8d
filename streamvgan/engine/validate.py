"""The checks every event passes before any state changes (a batch is validated whole)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from streamvgan.engine.types import Event
from streamvgan.engine.values import MAX_ABS_VALUE, check_value
from streamvgan.errors import InvalidInputError


def validate_event(
    event: Event,
    known_fields: Callable[[str], tuple[str, ...] | None],
    field_mode: str,
    n_features: int,
) -> tuple[str, ...]:
    """The sorted field names of ``event``, or :class:`InvalidInputError` saying what is wrong
    with it: not an Event, an empty stream name, no values, a value that is not a finite
    number within range, fields other than those ``known_fields(stream)`` says the stream has
    (None: a new stream), or (``field_mode="joint"``) not ``n_features`` fields."""
    if not isinstance(event, Event):
        raise InvalidInputError(f"expected an Event, got {type(event).__name__}: {event!r}")
    stream = event.stream
    if not isinstance(stream, str) or not stream:
        raise InvalidInputError(f"stream must be a non-empty string, got {stream!r}")
    if not isinstance(event.values, Mapping) or not event.values:
        raise InvalidInputError(
            f"stream {stream!r}: values must be a non-empty mapping of field -> number, "
            f"got {event.values!r}"
        )
    for name, value in event.values.items():
        if not isinstance(name, str):
            raise InvalidInputError(f"stream {stream!r}: field names must be strings, got {name!r}")
        check_value(value, f"stream {stream!r}: field {name!r}")
    names = tuple(sorted(event.values))
    known = known_fields(stream)
    if known is not None and names != known:
        missing, extra = sorted(set(known) - set(names)), sorted(set(names) - set(known))
        raise InvalidInputError(
            f"stream {stream!r} has fields {list(known)}; this event has missing fields "
            f"{missing} and extra fields {extra}: send the same fields every time"
        )
    if field_mode == "joint" and len(names) != n_features:
        raise InvalidInputError(
            f"stream {stream!r}: joint mode expects {n_features} fields, got {list(names)}"
        )
    return names


def validate_batch(
    events: Sequence[Event],
    known: Mapping[str, tuple[str, ...]],
    field_mode: str,
    n_features: int,
    together: bool = True,
) -> dict[str, tuple[str, ...]]:
    """:func:`validate_event` for each event; return each stream's field names. ``known``:
    the fields of the streams seen before; ``together``: events of a new stream must agree
    with its first event in this batch too (they will all be learned)."""
    seen: dict[str, tuple[str, ...]] = {}
    fields = (lambda s: seen.get(s) or known.get(s)) if together else known.get
    for event in events:
        seen.setdefault(event.stream, validate_event(event, fields, field_mode, n_features))
    return seen


def univariate_batch(
    events: Sequence[Event], single_field: Mapping[str, str]
) -> tuple[list[str], list[str], np.ndarray] | None:
    """The fast path of :func:`validate_batch` for the common case, with the same outcome:
    events of exactly :class:`Event` type, each with one field, its value a Python float or
    int (not a bool) that is finite and within ``MAX_ABS_VALUE``, of streams known to have
    that one field (``single_field``: stream -> field). Returns the events' streams, field
    names and values (float64); None if any event is otherwise (then :func:`validate_batch`
    names the first bad event, or accepts a batch that is merely not of this kind, e.g. with
    new streams). Checks by type sets and list comparisons, not per event in Python."""
    if len(events) == 1:  # one event (the River adapters' every call): plain comparisons
        return _univariate_one(events[0], single_field)
    if set(map(type, events)) - {Event}:
        return None
    dicts = [e.values for e in events]
    if set(map(type, dicts)) - {dict} or set(map(len, dicts)) - {1}:
        return None
    streams = [e.stream for e in events]
    names = [name for d in dicts for name in d]
    if list(map(single_field.get, streams)) != names:  # also: every stream is known
        return None
    xs = [x for d in dicts for x in d.values()]
    if set(map(type, xs)) - {float, int}:
        return None
    try:
        values = np.array(xs, dtype=np.float64)
    except OverflowError:  # a Python int beyond float64
        return None
    if not (np.abs(values) <= MAX_ABS_VALUE).all():  # NaN and inf fail this too
        return None
    return streams, names, values


def _univariate_one(
    event: Event, single_field: Mapping[str, str]
) -> tuple[list[str], list[str], np.ndarray] | None:
    """:func:`univariate_batch` for one event, with the same outcome."""
    if type(event) is not Event or type(event.values) is not dict or len(event.values) != 1:
        return None
    ((name, x),) = event.values.items()
    if single_field.get(event.stream) != name or (type(x) is not float and type(x) is not int):
        return None
    try:
        value = float(x)
    except OverflowError:  # a Python int beyond float64
        return None
    if not abs(value) <= MAX_ABS_VALUE:  # NaN and inf fail this too
        return None
    return [event.stream], [name], np.array([value])
