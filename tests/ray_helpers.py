"""Ray in tests: skipped with the reason where it is not installed, required under CI (as the
browser tests are: tests/browser.py), and one local cluster per test session (conftest.py)."""

from __future__ import annotations

import os

import pytest

# Two CPUs, and two units of a custom resource standing in for GPUs: `compare --ray` places
# each engine on a node that has what it asks for.
CPUS = 2
GPU_RESOURCE = "test_gpu"
GPUS = 2


def ray_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("KVBENCH_REQUIRE_RAY") == "1"


def import_ray():
    try:
        import ray
    except ImportError:
        reason = "Ray not installed (pip install 'kvbench[ray]')"
        if ray_required():
            pytest.fail(f"{reason}, and CI or KVBENCH_REQUIRE_RAY=1 requires it")
        pytest.skip(f"{reason}; set KVBENCH_REQUIRE_RAY=1 to make this a failure")
    return ray
