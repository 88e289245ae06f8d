"""``import streamvgan`` and ``streamvgan --help`` stay light: torch alone costs seconds of CPU
(6-11 s wall on a loaded machine), so the package root and the CLI import the heavy libraries
only inside the functions that use them. Each check runs in a fresh interpreter, because this
test process has long imported everything."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "kafka", "river", "matplotlib", "tqdm")

CHECK = """
import sys
{body}
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(",".join(heavy))
"""


def _heavy_after(body: str) -> list[str]:
    code = CHECK.format(body=body, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return [m for m in line.split(",") if m]


def test_import_streamvgan_loads_no_heavy_library():
    assert _heavy_after("import streamvgan\nimport streamvgan.engine.types") == []


def test_cli_help_loads_no_heavy_library():
    body = """
import contextlib, io
from streamvgan import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
assert "evaluate" in out.getvalue() and "serve" in out.getvalue()
for command in ("serve", "demo", "bench", "evaluate"):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main([command, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, (command, exc.code)
"""
    assert _heavy_after(body) == []


@pytest.mark.parametrize("name", ["StreamEngine", "VAEGANDetector", "ModelConfig"])
def test_lazy_names_still_resolve(name):
    import streamvgan

    assert getattr(streamvgan, name).__name__ == name
    assert name in dir(streamvgan)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        streamvgan.nope  # noqa: B018
