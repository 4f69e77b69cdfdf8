"""Shared fixtures: where the real data is, temporary output folders."""
from __future__ import annotations

from pathlib import Path

import pytest

from opsef_orchestrator.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only: never write there); tests needing it skip when absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data folder ../shared/data (or $OPSEF_SHARED_DATA) is not present")
    return d
