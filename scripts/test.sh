#!/usr/bin/env bash
# Set up everything (orchestrator env + every service env, cached) and run the
# whole test suite: protocol, services over real gRPC, orchestrator, deployment
# files, and each service's own adapter tests in its own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/opsef-orchestrate services install
export OPSEF_STATE_DIR=${OPSEF_STATE_DIR:-$(mktemp -d)}
unset OPSEF_ENDPOINTS
exec .venv/bin/python -m pytest "$@"
