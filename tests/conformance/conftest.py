"""The conformance suite's options and its ``service`` fixture (one running service per parameter).

By default the suite runs against every ``services/*/service.yaml`` that has a
project model with its weights present. The author of a new service runs it
against one folder with one command::

    .venv/bin/python -m pytest tests/conformance --service-dir services/NAME

``--update-reference`` (re)writes ``tests/conformance/reference/<service>__<model>.json``
from the current results instead of comparing with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from opsef_orchestrator.paths import services_root
from opsef_protocol.manifest import ManifestError, ModelRegistry, load_service_spec

from tests.conformance._support import ServiceProcess, read_only_dir, start_service


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opsef conformance")
    group.addoption("--service-dir", action="append", default=[], metavar="DIR",
                    help="run the conformance suite against this service folder (repeatable; default: services/* "
                         "with a project model whose weights are present)")
    group.addoption("--update-reference", action="store_true", default=False,
                    help="write the reference outputs of the conformance suite instead of comparing with them")


def _default_service_dirs() -> list[Path]:
    out = []
    root = services_root()
    for d in sorted(p for p in root.iterdir() if (p / "service.yaml").is_file()):
        try:
            spec = load_service_spec(d)
        except ManifestError:
            continue
        registry = ModelRegistry(d / spec.models_dir)
        if any(m.source != "published" and registry.weights_present(m.name) for m in registry.manifests()):
            out.append(d.resolve())
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "service" in metafunc.fixturenames:
        given = metafunc.config.getoption("--service-dir", default=[]) or []
        dirs = [Path(d).resolve() for d in given] or _default_service_dirs()
        for d in dirs:
            if not (d / "service.yaml").is_file():
                raise pytest.UsageError(f"--service-dir {d}: no service.yaml there")
        metafunc.parametrize("service", dirs, ids=[d.name for d in dirs], indirect=True, scope="session")


@pytest.fixture(scope="session")
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service folder of this parameter, running with a read-only HOME (stopped after its tests)."""
    service_dir: Path = request.param
    work = tmp_path_factory.mktemp(f"conformance-{service_dir.name}")
    home = work / "home"
    with read_only_dir(home) as home_read_only:
        proc = start_service(service_dir, work, home=home)
        proc.home_read_only = home_read_only
        try:
            yield proc
        finally:
            code = proc.stop()
            if code not in (0, None):
                print(f"service {proc.name} exited with {code}; log tail:\n{proc.log_tail()}")
