"""Test-suite wiring. tests/engines/ drives a real engine (vLLM's CPU build); it runs only where
.ci/run (or a developer) has made that engine's environment available, named by
KVBENCH_VLLM_PYTHON, and is not collected otherwise."""

import os

collect_ignore = [] if os.environ.get("KVBENCH_VLLM_PYTHON") else ["engines"]
