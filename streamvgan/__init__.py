"""streamvgan: anomaly scores, forecasts and synthetic continuations for many time series at
once, from an online recurrent VAE-GAN; as a Kafka service and as River models.

The names below are imported on first use (PEP 562), so ``import streamvgan`` and
``streamvgan --help`` do not load torch, River or Kafka; ``streamvgan.StreamEngine`` does."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamvgan._version import __version__ as __version__
from streamvgan.errors import (
    CheckpointError,
    ConfigurationError,
    InvalidInputError,
    StreamVGANError,
)

if TYPE_CHECKING:
    from streamvgan.engine import EngineConfig, Event, Forecast, ModelConfig, Score, StreamEngine
    from streamvgan.river import VAEGANDetector, VAEGANForecaster

#: public name -> the module it is imported from on first use
_LAZY = {
    "EngineConfig": "streamvgan.engine",
    "Event": "streamvgan.engine",
    "Forecast": "streamvgan.engine",
    "ModelConfig": "streamvgan.engine",
    "Score": "streamvgan.engine",
    "StreamEngine": "streamvgan.engine",
    "VAEGANDetector": "streamvgan.river",
    "VAEGANForecaster": "streamvgan.river",
}

__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "EngineConfig",
    "Event",
    "Forecast",
    "InvalidInputError",
    "ModelConfig",
    "Score",
    "StreamEngine",
    "StreamVGANError",
    "VAEGANDetector",
    "VAEGANForecaster",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamvgan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
