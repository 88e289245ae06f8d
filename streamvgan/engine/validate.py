"""The checks every event passes before any state changes (a batch is validated whole)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from streamvgan.engine.types import Event
from streamvgan.engine.values import check_value
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
