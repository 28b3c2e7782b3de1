"""The "System" table that heads every report: for each engine, the hardware it ran on, the
engine's version, the served model and the launch command, as plain unescaped text (each
exporter escapes for its format). Rows are grouped by hardware, so a report merged from several
machines reads machine by machine. What was not recorded shows as DASH, and the reasons are
listed under the table."""

from __future__ import annotations

from typing import Any

from kvbench.provenance import HARDWARE_FIELDS
from kvbench.report.schema import CompareResults, EngineResult
from kvbench.report.table import DASH, engine_name

SYSTEM_COLUMNS = [
    ("hardware", "hardware"),
    ("engine", "engine"),
    ("version", "engine version"),
    ("model", "model"),
    ("max_model_len", "max len"),
    ("host", "host"),
    ("gpu_memory", "GPU memory"),
    ("driver", "driver / CUDA"),
    ("cpu", "CPU"),
    ("launch", "launch command"),
]


def _get(prov: dict[str, Any], section: str, name: str) -> Any:
    return (prov.get(section) or {}).get(name)


def hardware_label(engine: EngineResult) -> str:
    return hardware_of(engine.provenance)


def hardware_of(provenance: dict[str, Any] | None) -> str:
    """What rows are grouped by: the GPUs (count × model), or the CPU for an engine without
    GPUs, or "not recorded"."""
    prov = provenance or {}
    model, count = _get(prov, "hardware", "gpu_model"), _get(prov, "hardware", "gpu_count")
    if model:
        return f"{count} × {model}" if count else str(model)
    cpu = _get(prov, "hardware", "cpu_model")
    if cpu:
        return f"no GPU read; CPU {cpu}"
    return "not recorded"


def _text(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def system_row(engine: EngineResult) -> dict[str, str]:
    prov = engine.provenance or {}
    hw = prov.get("hardware") or {}
    memory = hw.get("gpu_memory_mib")
    cores = hw.get("cpu_cores")
    cpu = _text(hw.get("cpu_model"))
    if cores is not None:
        cpu = f"{cpu}, {cores} cores"
    if hw.get("memory_mib") is not None:
        cpu = f"{cpu}, {hw['memory_mib'] / 1024:.0f} GiB RAM"
    launch = prov.get("launch") or {}
    return {
        "hardware": hardware_label(engine),
        "engine": engine_name(engine),
        "version": _text(_get(prov, "engine", "version")),
        "model": _text(_get(prov, "model", "id")),
        "max_model_len": _text(_get(prov, "model", "max_model_len")),
        "host": _text(hw.get("host")),
        "gpu_memory": DASH if memory is None else f"{memory:,} MiB each",
        "driver": f"{_text(hw.get('driver_version'))} / {_text(hw.get('cuda_version'))}",
        "cpu": cpu,
        "launch": " ".join(launch["argv"]) if launch.get("argv") else DASH,
    }


def system_rows(results: CompareResults) -> list[dict[str, str]]:
    """One row per engine, grouped by hardware in the order each group first appears."""
    order: dict[str, int] = {}
    for e in results.engines:
        order.setdefault(hardware_label(e), len(order))
    engines = sorted(results.engines, key=lambda e: order[hardware_label(e)])
    return [system_row(e) for e in engines]


def absent_notes(results: CompareResults) -> list[str]:
    """Per engine, what was not recorded and why: "label: a, b — reason"."""
    notes = []
    for e in results.engines:
        reasons: dict[str, list[str]] = {}
        for key, reason in ((e.provenance or {}).get("absent") or {}).items():
            reasons.setdefault(reason, []).append(key.partition(".")[2] or key)
        for reason, keys in reasons.items():
            notes.append(f"{engine_name(e)}: {', '.join(keys)} not recorded: {reason}")
        if e.provenance is None:
            notes.append(f"{engine_name(e)}: no provenance (written by an older kvbench)")
    return notes


def metadata_notes(results: CompareResults) -> list[str]:
    """Metadata the user stated that is not a hardware field, per engine."""
    notes = []
    for e in results.engines:
        extra = {
            k: v
            for k, v in ((e.provenance or {}).get("metadata") or {}).items()
            if k not in HARDWARE_FIELDS
        }
        if extra:
            notes.append(
                f"{engine_name(e)}: " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))
            )
    return notes
