"""Many streams at once: per-stream state, the batched online step, score calibration,
fine-tuning with weight hot-swap, and checkpoints. Knows nothing of Kafka or River."""

from streamvgan.engine.config import EngineConfig
from streamvgan.engine.engine import COMPONENTS, StreamEngine
from streamvgan.engine.training import BackgroundFineTuner, FitReport
from streamvgan.engine.types import DEFAULT_FIELD, Event, Forecast, Score
from streamvgan.nn.model import ModelConfig

__all__ = [
    "COMPONENTS",
    "DEFAULT_FIELD",
    "BackgroundFineTuner",
    "EngineConfig",
    "Event",
    "FitReport",
    "Forecast",
    "ModelConfig",
    "Score",
    "StreamEngine",
]
