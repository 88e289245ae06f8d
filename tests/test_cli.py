"""The command line's logging: our own progress at INFO, libraries (kafka-python wrote 268 of
the demo's 371 lines at INFO) only from WARNING unless --log-level debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

EMIT = """
import logging
from streamvgan.cli import configure_logging
configure_logging({level!r})
logging.getLogger("kafka.conn").info("library-info")
logging.getLogger("kafka.conn").warning("library-warning")
logging.getLogger("streamvgan.tools.demo").info("own-info")
logging.getLogger("streamvgan.tools.demo").debug("own-debug")
"""


def _stderr(level: str) -> str:
    done = subprocess.run([sys.executable, "-c", EMIT.format(level=level)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_libraries_log_only_warnings_at_info():
    err = _stderr("INFO")
    assert "own-info" in err and "library-warning" in err
    assert "library-info" not in err and "own-debug" not in err


def test_debug_shows_library_logs_too():
    err = _stderr("debug")
    assert all(word in err for word in ("library-info", "library-warning", "own-info",
                                        "own-debug"))


def test_warning_hides_our_info():
    err = _stderr("WARNING")
    assert "library-warning" in err and "own-info" not in err


def test_a_bad_level_is_named():
    from streamvgan.cli import configure_logging

    with pytest.raises(SystemExit, match="--log-level 'loud' is not a logging level"):
        configure_logging("loud")
