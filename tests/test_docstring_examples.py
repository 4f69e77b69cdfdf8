"""The examples in the docstrings of the orchestrator and the protocol package run and give what they show."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import opsef_orchestrator
import opsef_protocol


def _modules() -> list[str]:
    names = []
    for pkg in (opsef_orchestrator, opsef_protocol):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if ".v1" in info.name:  # generated gRPC code
                continue
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (run it with -s)"
