"""The one place the service and the trainer build their engine from the settings."""

from __future__ import annotations

import logging
from typing import Any

from streamvgan.engine import EngineConfig, StreamEngine
from streamvgan.service import checkpoints

log = logging.getLogger(__name__)


def new_engine(settings: Any) -> StreamEngine:
    """A fresh engine configured by ``settings`` (``engine_params``, seed, device)."""
    config = EngineConfig.from_params(**settings.engine_config_params())
    return StreamEngine(config, seed=settings.seed, device=settings.device)


def load_or_build_engine(settings: Any, on_fallback: Any = None) -> tuple[StreamEngine, int | None]:
    """The engine of the newest checkpoint in ``settings.checkpoint_dir`` (its architecture,
    every other setting from ``settings``), else a fresh one; with the ``engine.revision`` as
    on disk (None for a fresh engine: nothing to rewrite).
    ``on_fallback(path, exc)`` is called for each unusable checkpoint skipped."""
    s = settings
    config = EngineConfig.from_params(**s.engine_config_params())
    if s.checkpoint_dir:
        # the architecture from the checkpoint, every other setting from `config`
        engine = checkpoints.load_checkpoint(
            s.checkpoint_dir, device=s.device, on_fallback=on_fallback, settings=config
        )
        if engine is not None:
            return engine, engine.revision
        log.info("no checkpoint in %s yet: starting a fresh model", s.checkpoint_dir)
    else:
        log.warning("no --checkpoint-dir: the model and stream state are lost on restart")
    return StreamEngine(config, seed=s.seed, device=s.device), None
