#!/usr/bin/env bash
# Set up the orchestrator environment (.venv) for this checkout; idempotent.
# The model services' environments are built on first use by the orchestrator
# itself (cached in ${OPSEF_CACHE:-~/.cache/opsef}/envs, keyed by their pins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${OPSEF_PYTHON:-python3.11}
command -v "$PY" >/dev/null || { echo "setup: $PY not found; install Python 3.11 or set OPSEF_PYTHON" >&2; exit 2; }
key=$(cat orchestrator/constraints.txt orchestrator/pyproject.toml protos/pyproject.toml deploy/requirements-validate.txt | sha256sum | cut -c1-16)
if [ -f .venv/.opsef-setup ] && [ "$(cat .venv/.opsef-setup)" = "$key" ]; then
  exit 0
fi
echo "setup: creating .venv (orchestrator, protocol package, test and validation tools)" >&2
rm -rf .venv
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c orchestrator/constraints.txt \
  -e protos -e "orchestrator[test]" -r deploy/requirements-validate.txt
echo "$key" > .venv/.opsef-setup
