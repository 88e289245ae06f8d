"""Many streams at once: per-stream state, the batched online step, score calibration,
fine-tuning with weight hot-swap, and checkpoints. Knows nothing of Kafka or River.

The names below are imported on first use (PEP 562): ``streamvgan.engine.types`` (the plain
messages the service encodes) can be imported without loading torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamvgan.engine.config import EngineConfig
    from streamvgan.engine.engine import Scored, StreamEngine
    from streamvgan.engine.signals import COMPONENTS, ScoreBatch
    from streamvgan.engine.training import FitReport
    from streamvgan.engine.tuner import BackgroundFineTuner
    from streamvgan.engine.types import (
        CAUSES,
        DEFAULT_FIELD,
        Cause,
        Event,
        Forecast,
        ForecastColumns,
        Score,
    )
    from streamvgan.nn.model import ModelConfig

#: public name -> the module it is imported from on first use
_LAZY = {
    "CAUSES": "streamvgan.engine.types",
    "COMPONENTS": "streamvgan.engine.signals",
    "DEFAULT_FIELD": "streamvgan.engine.types",
    "BackgroundFineTuner": "streamvgan.engine.tuner",
    "Cause": "streamvgan.engine.types",
    "EngineConfig": "streamvgan.engine.config",
    "Event": "streamvgan.engine.types",
    "FitReport": "streamvgan.engine.training",
    "Forecast": "streamvgan.engine.types",
    "ForecastColumns": "streamvgan.engine.types",
    "ModelConfig": "streamvgan.nn.model",
    "Score": "streamvgan.engine.types",
    "ScoreBatch": "streamvgan.engine.signals",
    "Scored": "streamvgan.engine.engine",
    "StreamEngine": "streamvgan.engine.engine",
}

__all__ = [
    "CAUSES",
    "COMPONENTS",
    "DEFAULT_FIELD",
    "BackgroundFineTuner",
    "Cause",
    "EngineConfig",
    "Event",
    "FitReport",
    "Forecast",
    "ForecastColumns",
    "ModelConfig",
    "Score",
    "ScoreBatch",
    "Scored",
    "StreamEngine",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamvgan.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
