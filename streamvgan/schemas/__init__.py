"""JSON Schemas (draft 2020-12) of every message streamvgan reads or writes on Kafka.

The files beside this module are the published contract; other programs can read them from an
installed package with :func:`load_schema` (or ``importlib.resources``):

* ``event.schema.json``: an input event (the value of a record on the input topic);
* ``score.schema.json``, ``forecast.schema.json``, ``continuation.schema.json``: the values of
  the records on ``TOPIC.scores``, ``TOPIC.forecasts`` and ``TOPIC.continuations``;
* ``dead_letter_headers.schema.json``: the headers of a record on ``TOPIC.dlq``, as an object of
  header name to UTF-8 text (its key and value are the original record's, byte for byte).

Each file carries its version in ``x-schema-version``; the output records also carry it in their
``schema_version`` property (``streamvgan.service.wire.SCHEMA_VERSION``). The service validates
input in code (``streamvgan.service.wire.decode_event``), so it needs no schema library; the
tests check with ``jsonschema`` that the code and these files agree.

>>> sorted(load_schema("score")["required"])[:3]
['anomaly', 'components', 'model_version']
>>> try:
...     load_schema("events")
... except ValueError as exc:
...     print(exc)
no schema 'events'; use one of: event, score, forecast, continuation, dead_letter_headers
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from streamvgan.errors import InvalidInputError

#: The published schemas, by the name :func:`load_schema` takes (file ``NAME.schema.json``).
SCHEMA_NAMES = ("event", "score", "forecast", "continuation", "dead_letter_headers")


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``name`` (one of :data:`SCHEMA_NAMES`), as shipped in the package."""
    if name not in SCHEMA_NAMES:
        raise InvalidInputError(f"no schema {name!r}; use one of: {', '.join(SCHEMA_NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)
