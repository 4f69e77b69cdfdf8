"""Regenerate the Python code of the OpSeF protocol from its .proto file.

Usage::

    python protos/generate.py          # rewrite src/opsef_protocol/v1/*_pb2*.py
    python protos/generate.py --check  # exit 1 if the committed code is stale

Needs ``grpcio-tools`` at the version pinned in ``protos/pyproject.toml``'s
``codegen`` extra (the generated code must run on protobuf 4.25, which
TensorFlow 2.15 requires).
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "proto"
OUT_ROOT = HERE / "src"
PROTOS = sorted(PROTO_ROOT.rglob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def _generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # imported here: only codegen needs it

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = _generate(Path(tmp))
        stale = [f for f in files if not (OUT_ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, OUT_ROOT / f, shallow=False)]
        if ns.check:
            if stale:
                sys.stderr.write("stale generated code (run python protos/generate.py): " + ", ".join(map(str, stale)) + "\n")
                return 1
            return 0
        for f in stale:
            (OUT_ROOT / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / f, OUT_ROOT / f)
            sys.stdout.write(f"wrote {OUT_ROOT / f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
