"""Shared fixtures for the evaluation tests.

NAB lives beside the repository (CI clones the repo next to a copy of ``shared/``), so it is
found relative to this file, never through an absolute path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NAB_ROOT = (Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "nab").resolve()


@pytest.fixture(scope="session")
def nab_root() -> Path:
    if not (NAB_ROOT / "labels" / "combined_windows.json").exists():
        pytest.skip(
            f"NAB corpus not found at {NAB_ROOT}: clone the repository beside a copy of shared/ "
            "(shared/datasets/nab) to run the NAB tests"
        )
    return NAB_ROOT
