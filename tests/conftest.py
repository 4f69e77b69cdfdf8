"""Shared fixtures: the real data, and real model services on loopback (started once per session)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only: never write there); tests needing it skip when absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data folder ../shared/data (or $OPSEF_SHARED_DATA) is not present")
    return d


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


@pytest.fixture(scope="session")
def unet(manager: ServiceManager) -> Iterator[SegmenterClient]:
    yield from _client(manager, "unet")


@pytest.fixture(scope="session")
def cellpose(manager: ServiceManager) -> Iterator[SegmenterClient]:
    yield from _client(manager, "cellpose")
