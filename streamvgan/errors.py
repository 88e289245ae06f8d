"""The exception hierarchy: one root, a few subclasses that also subclass the builtin
exception whose meaning they share, so callers may catch either."""

from __future__ import annotations


class StreamVGANError(Exception):
    """Root of every error streamvgan raises on purpose."""


class InvalidInputError(StreamVGANError, ValueError):
    """An event, value or argument is malformed; the message names the field and the value."""


class CheckpointError(StreamVGANError, RuntimeError):
    """A checkpoint is missing, corrupt, or was written for another model configuration."""


class ConfigurationError(StreamVGANError, ValueError):
    """A setting has a value that cannot work; the message says which and what to use."""


class BrokerError(StreamVGANError, RuntimeError):
    """The embedded broker could not be started or reached."""
