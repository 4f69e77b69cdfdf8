"""Fixtures of the reliability suite: services started with extra arguments, test certificates, small file systems."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.reliability._support import Served, make_certs, mounted, start_serve


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Served]]:
    """Factory ``serve(service, *args)``; every process it started is stopped at the end of the module."""
    started: list[Served] = []

    def _start(service: str, *args: str) -> Served:
        s = start_serve(service, tmp_path_factory.mktemp(f"serve-{service}"), list(args))
        started.append(s)
        return s

    yield _start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA, a server certificate for localhost/127.0.0.1, a client certificate, and an unrelated CA."""
    pytest.importorskip("cryptography", reason="the cryptography package (orchestrator test extra) makes the test certificates")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real file system that fills up (root ignores permissions, not ENOSPC)."""
    target = tmp_path / "small"
    target.mkdir()
    with mounted([["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(target)]], target):
        yield target


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder behind a read-only bind mount (EROFS even for root)."""
    target = tmp_path / "ro"
    target.mkdir()
    (target / "existing.txt").write_text("written before\n")
    with mounted([["mount", "--bind", str(target), str(target)],
                   ["mount", "-o", "remount,ro,bind", str(target)]], target):
        yield target


