"""Real model services on loopback, started once per test session through the local manager."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.manager import ServiceManager


@pytest.fixture(scope="session")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceManager]:
    """A manager with its own state folder; stops what it started at the end."""
    mgr = ServiceManager(state_dir=tmp_path_factory.mktemp("opsef-state"), endpoints={})
    mgr.explicit = {}  # tests start their own services, whatever OPSEF_ENDPOINTS says
    yield mgr
    mgr.down()


def _client(manager: ServiceManager, name: str) -> Iterator[SegmenterClient]:
    address = manager.up([name], timeout=300)[name]
    with SegmenterClient(address, timeout=120, attempts=3) as client:
        yield client


@pytest.fixture(scope="session")
def stardist(manager: ServiceManager) -> Iterator[SegmenterClient]:
    yield from _client(manager, "stardist")
