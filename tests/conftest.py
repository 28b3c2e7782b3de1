"""Test-suite wiring. tests/engines/ drives a real engine (vLLM's CPU build); it runs only where
.ci/run (or a developer) has made that engine's environment available, named by
KVBENCH_VLLM_PYTHON, and is not collected otherwise.

Under CI the property tests draw the same examples every run, so a red run is reproducible and
a new search for counterexamples is a developer's deliberate run (without CI set)."""

import os

import pytest
from hypothesis import settings
from ray_helpers import CPUS, GPU_RESOURCE, GPUS, import_ray

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

collect_ignore = [] if os.environ.get("KVBENCH_VLLM_PYTHON") else ["engines"]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (a second ray.init in one process fails)."""
    ray = import_ray()
    ray.init(
        num_cpus=CPUS,
        resources={GPU_RESOURCE: GPUS},
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
