#!/usr/bin/env bash
# Set up everything (orchestrator env + every service env, cached) and run the
# whole test suite: protocol, services over real gRPC, orchestrator, deployment
# files, and each service's own adapter tests in its own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real clients the tests open our outputs with (ImageJ under Xvfb, headless
# Chromium): installed when missing and we may (root + apt); else those tests skip.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v imagej >/dev/null || missing="$missing imagej"
  command -v xvfb-run >/dev/null || missing="$missing xvfb"
  command -v chromium >/dev/null || missing="$missing chromium"
  if [ -n "$missing" ]; then
    echo "test: installing$missing" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "test: could not install$missing; the tests that need them will skip" >&2
  fi
fi
.venv/bin/opsef-orchestrate services install
export OPSEF_STATE_DIR=${OPSEF_STATE_DIR:-$(mktemp -d)}
unset OPSEF_ENDPOINTS
exec .venv/bin/python -m pytest "$@"
