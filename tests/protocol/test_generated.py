"""The committed generated code matches the .proto (fails when someone forgets to regenerate)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_orchestrator_never_imports_a_framework() -> None:
    code = ("import sys, opsef_orchestrator.cli, opsef_orchestrator.client, opsef_orchestrator.manager, "
            "opsef_orchestrator.demo, opsef_orchestrator.evaluation; "
            "bad = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
