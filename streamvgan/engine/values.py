"""The one check every input value passes: a real number, finite, and within ``MAX_ABS_VALUE``.

Shared by the wire decoder (``service/wire.py``), the engine's batch validation and the River
adapters, so a value is accepted or refused alike wherever it enters.

Why a bound below float64's range: part of each stream's state is float32 (the season ring
holds original values, the signal ring holds jumps ``|x_t - x_{t-1}|``), and the normaliser
squares deviations in float64. A value of 1e39 overflows float32 (max 3.4e38), 1e200 overflows
the squared deviation (1e400); either turns the stream's state into inf/NaN. ``1e30`` keeps
eight orders of magnitude of headroom below float32's limit for differences and sums, and
its square (1e60) is far inside float64. No real metric comes near it; a producer that sends
such a value sends a bug, so the record is refused (dead-lettered as ``out_of_range`` by the
service, :class:`ValueRejected` from the engine and the River adapters).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamvgan.errors import InvalidInputError

#: Largest magnitude accepted for an input value (see the module docstring for why).
MAX_ABS_VALUE = 1e30

#: Reasons of :class:`ValueRejected`, a subset of the service's dead-letter reasons.
NOT_A_NUMBER, NON_FINITE, OUT_OF_RANGE = "not_a_number", "non_finite", "out_of_range"


class ValueRejected(InvalidInputError):
    """An input value that is not a finite real number within ``MAX_ABS_VALUE``.

    ``reason`` is ``"not_a_number"``, ``"non_finite"`` or ``"out_of_range"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _short(x: Any) -> str:
    """``repr(x)`` cut to 40 characters: a 4,000-digit integer must not flood a log line
    (nor hit Python's int-to-str digit limit)."""
    if isinstance(x, int) and not isinstance(x, bool):
        bits = x.bit_length()
        if bits > 128:
            return f"an integer of about {int(bits * math.log10(2)) + 1} digits"
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _out_of_range(x: Any, where: str) -> str:
    return (
        f"{where} must be within +-{MAX_ABS_VALUE:g}, got {_short(x)}: larger magnitudes "
        "would overflow the stream's float32 state; send values in the stream's natural units"
    )


def check_value(x: Any, where: str = "value") -> float:
    """``x`` as a float, or :class:`ValueRejected` saying what is wrong with it.

    Accepts Python and numpy integers and floats (not bools) with ``|x| <= MAX_ABS_VALUE``.

    >>> check_value(3), check_value(np.float32(0.5))
    (3.0, 0.5)
    >>> for bad in (float("nan"), 10**400, 1e39, "1", True):
    ...     try:
    ...         check_value(bad)
    ...     except ValueRejected as exc:
    ...         print(exc.reason)
    non_finite
    out_of_range
    out_of_range
    not_a_number
    not_a_number
    """
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | float | np.integer | np.floating):
        raise ValueRejected(
            NOT_A_NUMBER, f"{where} must be a number, got {_short(x)} ({type(x).__name__})"
        )
    try:
        value = float(x)
    except OverflowError:  # a Python int beyond float64 (about 1.8e308)
        raise ValueRejected(OUT_OF_RANGE, _out_of_range(x, where)) from None
    if not math.isfinite(value):
        raise ValueRejected(NON_FINITE, f"{where} must be finite, got {_short(x)}")
    if abs(value) > MAX_ABS_VALUE:
        raise ValueRejected(OUT_OF_RANGE, _out_of_range(x, where))
    return value
