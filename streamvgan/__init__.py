"""streamvgan: anomaly scores, forecasts and synthetic continuations for many time series at
once, from an online recurrent VAE-GAN; as a Kafka service and as River models."""

from streamvgan._version import __version__ as __version__
from streamvgan.engine import EngineConfig, Event, Forecast, ModelConfig, Score, StreamEngine
from streamvgan.errors import (
    CheckpointError,
    ConfigurationError,
    InvalidInputError,
    StreamVGANError,
)
from streamvgan.river import VAEGANDetector, VAEGANForecaster

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
