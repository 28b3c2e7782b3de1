#!/usr/bin/env bash
# CI stage: kvbench as a newcomer meets it. Builds the wheel, installs it (not editable) into a
# fresh virtual environment, and runs the README's first command from the repository's root,
# where a ./kvbench source folder sits beside the installed package (the emulator children must
# import the installed one); then `kvbench theory` from a scratch directory. Fails on a non-zero
# exit or any engine row that is not ok.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$work"/dist/kvbench-*.whl
kvbench="$work/venv/bin/kvbench"

# the README's first command, as written (the report goes outside the checkout)
"$kvbench" compare --backends trtllm,sglang --no-progress --output-dir "$work/reports"
"$work/venv/bin/python" - "$work/reports" <<'PY'
import json, sys
from pathlib import Path

(results,) = Path(sys.argv[1]).glob("*/results.json")
engines = json.loads(results.read_text())["engines"]
bad = [f"{e['label']}: {e['status']} {e['error'] or ''}" for e in engines if e["status"] != "ok"]
if bad or len(engines) != 2:
    sys.exit("error: the README's first command: " + "; ".join(bad or ["not two engines"]))
PY

(cd "$(mktemp -d -p "$work")" && "$kvbench" theory)

# The plain install has no pyarrow (the `parquet` extra): parquet export says what to install,
# in one line, with exit status 2; and `kvbench --help` does not import pandas.
if "$work/venv/bin/python" -c "import pyarrow" 2>/dev/null; then
    echo "error: the plain wheel install pulled in pyarrow" >&2
    exit 1
fi
status=0
err=$("$kvbench" simulate --engine vllm --request-rate 1 --num-prompts 5 --output "$work/sim" 2>&1) || status=$?
if [[ $status -ne 2 || "$err" != "error: "*"kvbench[parquet]"* || "$err" == *$'\n'* ]]; then
    echo "error: simulate --output without pyarrow: exit $status, said: $err" >&2
    exit 1
fi
if "$work/venv/bin/python" -X importtime -m kvbench --help 2>&1 >/dev/null | grep -q '| pandas$'; then
    echo "error: kvbench --help imports pandas" >&2
    exit 1
fi
echo "wheel: compare and theory pass from an installed wheel"
