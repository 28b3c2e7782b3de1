"""`kvbench compare --ray`: each engine measured as a Ray task on a node that has the GPUs it asks
for (the `kvbench[ray]` extra; the session: kvbench.ray_session).

The task does on its node what a local compare does for one engine: opens the engine (launches
it from its recipe with --launch, where Ray's CUDA_VISIBLE_DEVICES gives it the task's GPUs, or
starts its emulator, or attaches to --url), runs kvbench's load client beside it, and writes the
engine's raw folder, which it sends back whole. So the report is built by the same code from the
same files as a local compare (and merges with other machines' reports), while the engines run
side by side, one node or one set of GPUs each. A task is not retried: a measurement cut short
by a lost node is a failed row, as a local engine that dies is.
"""

from __future__ import annotations

import contextlib
import io
import math
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvbench import interrupt
from kvbench.benchmark import raw
from kvbench.errors import KvbenchError
from kvbench.ray_session import check_address, finished, import_ray, ray_session

# measure(directory, engine entry, observer or None) → whether it was interrupted; run on the node
MeasureEngine = Callable[[Path, dict[str, Any], Any], bool]


@dataclass(frozen=True)
class RayPlacement:
    address: str | None  # None: a local cluster started here
    gpus_per_engine: float
    gpu_resource: str = "GPU"  # a custom resource where a cluster names its accelerators so

    def check(self) -> None:
        """Refuse what cannot be placed, before anything runs."""
        if not (math.isfinite(self.gpus_per_engine) and self.gpus_per_engine >= 0):
            raise KvbenchError(
                f"--gpus-per-engine must be a number ≥ 0, got {self.gpus_per_engine}"
            )
        if not self.gpu_resource.strip():
            raise KvbenchError("--gpu-resource needs a Ray resource name, e.g. GPU")
        import_ray()
        if self.address:
            check_address(self.address)

    def task_options(self) -> dict[str, Any]:
        if self.gpu_resource == "GPU":
            return {"num_cpus": 1, "num_gpus": self.gpus_per_engine}
        resources = {self.gpu_resource: self.gpus_per_engine} if self.gpus_per_engine else {}
        return {"num_cpus": 1, "resources": resources}


@contextlib.contextmanager
def placement_session(placement: RayPlacement) -> Iterator[None]:
    """The Ray session the comparison runs in, opened before anything is written, and refused
    when no node has the GPUs an engine asks for (Ray would wait for one for ever)."""
    with ray_session(placement.address) as ray:
        want = placement.gpus_per_engine
        if want > 0:
            have = max(
                (
                    n["Resources"].get(placement.gpu_resource, 0.0)
                    for n in ray.nodes()
                    if n["Alive"]
                ),
                default=0.0,
            )
            if have < want:
                raise KvbenchError(
                    f"--gpus-per-engine {want:g}: no node of the Ray cluster has {want:g} "
                    f"{placement.gpu_resource} (the most on one node: {have:g}); give fewer, or "
                    "--gpu-resource NAME where the cluster names its accelerators otherwise"
                )
        yield


def _engine_task(measure: MeasureEngine, header: dict[str, Any], entry: dict[str, Any]) -> bytes:
    """On the node: one engine measured into a scratch compare directory, its folder returned
    as a gzipped tar."""
    with tempfile.TemporaryDirectory(prefix="kvbench-ray-") as scratch:
        root = Path(scratch)
        raw.write_json_atomic(root / raw.COMPARE_FILE, header)
        measure(root, entry, None)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(root / raw.ENGINES_DIR / entry["slug"], arcname=entry["slug"])
        return buffer.getvalue()


def measure_on_ray(
    directory: Path,
    header: dict[str, Any],
    entries: list[dict[str, Any]],
    placement: RayPlacement,
    measure: MeasureEngine,
    observer,
) -> bool:
    """Measure `entries` (engines of the compare at `directory`) side by side as Ray tasks; each
    engine's folder lands in `directory` as it finishes. Returns whether the comparison was
    interrupted; the engines still running then are recorded as interrupted."""
    engines = directory / raw.ENGINES_DIR
    engines.mkdir(exist_ok=True)
    with ray_session(placement.address) as ray:
        task = ray.remote(max_retries=0, **placement.task_options())(_engine_task)
        shared = ray.put(measure)
        pending = {}
        for index, entry in enumerate(entries):
            observer.engine_started(entry["label"], entry["kind"], index, len(entries))
            pending[task.remote(shared, header, entry)] = entry
        try:
            with contextlib.closing(finished(ray, pending)) as results:
                for entry, data, failure in results:
                    if failure is not None:
                        _record(engines, entry, "failed", f"its Ray task failed: {failure}")
                    else:
                        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                            tar.extractall(engines, filter="data")
                    found = raw.read_json(engines / entry["slug"] / raw.ENGINE_FILE)
                    observer.engine_finished(entry["label"], found["status"], found.get("error"))
        except KeyboardInterrupt:
            # finished() cancelled the tasks still running; they stay in `pending`
            for entry in pending.values():
                _record(
                    engines,
                    entry,
                    "interrupted",
                    f"stopped by {interrupt.stopped_by()} while measured on a Ray node; "
                    "what it measured there is lost",
                )
            return True
    return False


def _record(engines: Path, entry: dict[str, Any], status: str, error: str) -> None:
    folder = engines / entry["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    raw.write_json_atomic(folder / raw.ENGINE_FILE, {**entry, "status": status, "error": error})
