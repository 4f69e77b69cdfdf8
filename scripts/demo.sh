#!/usr/bin/env bash
# The main job: set up, start the model services locally, segment real nuclei
# images (../shared/data/dsb2018/val, or --data DIR) with the starter models,
# write label images and print precision/recall/F1.  Extra arguments go to
# `opsef-orchestrate demo` (e.g. --data DIR, --output DIR, --models ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/opsef-orchestrate demo "$@"
