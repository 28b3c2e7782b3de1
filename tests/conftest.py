"""Test-suite wiring. tests/engines/ drives a real engine (vLLM's CPU build); it runs only where
.ci/run (or a developer) has made that engine's environment available, named by
KVBENCH_VLLM_PYTHON, and is not collected otherwise.

Under CI the property tests draw the same examples every run, so a red run is reproducible and
a new search for counterexamples is a developer's deliberate run (without CI set)."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

collect_ignore = [] if os.environ.get("KVBENCH_VLLM_PYTHON") else ["engines"]
