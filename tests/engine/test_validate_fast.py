"""The fast validation path for one event must decide exactly as the batch path does."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest

from streamvgan.engine import Event
from streamvgan.engine.validate import univariate_batch

KNOWN = {"cpu": "value", "mem": "used"}


class _Dict(dict):
    pass


CASES = [
    Event("cpu", {"value": 1.5}),
    Event("cpu", {"value": 3}),
    Event("cpu", {"value": -1e30}),
    Event("cpu", {"value": 1.0000001e30}),
    Event("cpu", {"value": 10**400}),
    Event("cpu", {"value": True}),
    Event("cpu", {"value": math.nan}),
    Event("cpu", {"value": -math.inf}),
    Event("cpu", {"value": "1.0"}),
    Event("cpu", {"value": np.float64(1.0)}),
    Event("cpu", {"value": None}),
    Event("cpu", {"used": 1.0}),
    Event("cpu", {"value": 1.0, "used": 2.0}),
    Event("cpu", {}),
    Event("cpu", OrderedDict(value=1.0)),
    Event("cpu", _Dict(value=1.0)),
    Event("disk", {"value": 1.0}),
    Event("mem", {"used": 0.0}),
    ("cpu", {"value": 1.0}),
]


@pytest.mark.parametrize("event", CASES, ids=[repr(c)[:60] for c in CASES])
def test_one_event_decides_as_the_batch_path(event) -> None:
    one = univariate_batch([event], KNOWN)
    two = univariate_batch([event, event], KNOWN)  # two copies: the batch path, same outcome
    assert (one is None) == (two is None)
    if one is not None and two is not None:
        assert one[0] == two[0][:1] and one[1] == two[1][:1]
        assert one[2].dtype == np.float64 and np.array_equal(one[2], two[2][:1])
