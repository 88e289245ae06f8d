"""streamvgan: anomaly scores, forecasts and synthetic continuations for many time series at
once, from an online recurrent VAE-GAN; as a Kafka service and as River models."""

from streamvgan.engine import EngineConfig, Event, Forecast, ModelConfig, Score, StreamEngine
from streamvgan.errors import (
    CheckpointError,
    ConfigurationError,
    InvalidInputError,
    StreamVGANError,
)
from streamvgan.river import VAEGANDetector, VAEGANForecaster

__version__ = "0.1.0"

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
