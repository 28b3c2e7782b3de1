"""`kvbench report merge`: one report from compare directories made on different machines.

Each source's engines are copied, raw files and runs alike, into a new compare directory whose
compare.json lists them all (grouped by hardware), so the merged report is built by the same
code from the same raw format as any other. Rows keep their labels; a label two sources share
gets the source directory's name appended. Sources that differ in workload, seed or kvbench
version are merged all the same, with a warning in the report: their rows are not measurements
of the same thing.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvbench import __version__
from kvbench.benchmark import raw
from kvbench.benchmark.compare_config import banner_for, slug
from kvbench.errors import KvbenchError
from kvbench.report.system import hardware_of

# configuration keys whose difference makes rows incomparable, with how a warning names them
COMPARED = (("workload", "workloads"), ("seed", "seeds"), ("slo", "SLOs"))


def _relocate(value: Any, old: str, new: str) -> Any:
    """`value` with every path under `old` (relative to a compare directory) moved to `new`."""
    if isinstance(value, dict):
        return {k: _relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, old, new) for v in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


def mismatches(sources: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """One line per setting the sources disagree on: workload, seed, kvbench version."""
    found = []
    checks = [
        (what, {d: (h.get("config") or {}).get(key) for d, h in sources}) for key, what in COMPARED
    ]
    checks.append(("kvbench versions", {d: h.get("kvbench_version") for d, h in sources}))
    for what, values in checks:
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            listed = ", ".join(f"{d.name}: {v}" for d, v in values.items())
            found.append(f"the merged runs differ in {what} ({listed}); their rows do not compare")
    return found


def merge(directories: list[Path], output: Path, command: str) -> Path:
    """Write the merged compare directory `output` (raw files only: build the report with
    kvbench.export.compare_report.write_report); its compare.json carries the warnings."""
    if len(directories) < 2:
        raise KvbenchError("report merge: give at least two compare directories")
    if output.exists() and any(output.iterdir()):
        raise KvbenchError(f"{output}: already exists and is not empty; choose a new --output")
    sources = []
    for d in directories:
        if not raw.is_compare_dir(d):
            raise KvbenchError(f"{d}: not a kvbench compare directory (no {raw.COMPARE_FILE})")
        header, engines = raw.read_compare(d)
        sources.append((d, header, engines))
    warnings = mismatches([(d, h) for d, h, _ in sources])

    labels = [str(e["label"]) for _, _, engines in sources for e in engines]
    entries = []
    for d, header, engines in sources:
        for eng in engines:
            label = str(eng["label"])
            if labels.count(label) > 1:
                label = f"{label}@{d.name}"
            entries.append((d, header, eng, label))
    taken = [e[3] for e in entries]
    if len(set(taken)) != len(taken):
        raise KvbenchError("report merge: two sources share a directory name and a label")
    # rows grouped by hardware, each group where it first appears, sources' order within
    first: dict[str, int] = {}
    for _, _, eng, _ in entries:
        first.setdefault(hardware_of(eng.get("provenance")), len(first))
    entries.sort(key=lambda e: first[hardware_of(e[2].get("provenance"))])

    output.mkdir(parents=True, exist_ok=True)
    asked = []
    for i, (d, _, eng, label) in enumerate(entries):
        old_slug, new_slug = str(eng["slug"]), f"{i}-{slug(label)}"
        old, new = f"{raw.ENGINES_DIR}/{old_slug}/", f"{raw.ENGINES_DIR}/{new_slug}/"
        source_dir = d / raw.ENGINES_DIR / old_slug
        target = output / raw.ENGINES_DIR / new_slug
        data = dict(_relocate(eng, old, new), label=label, slug=new_slug, source=d.name)
        if source_dir.is_dir():
            shutil.copytree(source_dir, target)
        else:  # never started (its source was interrupted): the row says so
            target.mkdir(parents=True)
        raw.write_json_atomic(target / raw.ENGINE_FILE, data)
        asked.append(
            {
                k: data.get(k)
                for k in ("label", "backend", "kind", "replicas", "urls", "slug", "source")
            }
        )

    versions = sorted({str(h.get("kvbench_version")) for _, h, _ in sources})
    scales = {
        float(e[2]["time_scale"]) for e in entries if e[2].get("time_scale") not in (None, 1.0)
    }
    merged = {
        "kind": raw.RAW_KIND,
        "version": raw.RAW_VERSION,
        "name": " + ".join(str(h.get("name")) for _, h, _ in sources),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "kvbench_version": versions[0] if len(versions) == 1 else " / ".join(versions),
        "versions": {"merged by kvbench": __version__},
        "config": dict(sources[0][1].get("config") or {}),
        "banner": banner_for({str(a["kind"]) for a in asked}, scales),
        "interrupted": any(h.get("interrupted") for _, h, _ in sources),
        "engines": asked,
        "warnings": warnings,
        "merged_from": [
            {
                "directory": str(d),
                "name": h.get("name"),
                "created": h.get("created"),
                "command": h.get("command"),
                "kvbench_version": h.get("kvbench_version"),
                "workload": (h.get("config") or {}).get("workload"),
                "seed": (h.get("config") or {}).get("seed"),
            }
            for d, h, _ in sources
        ],
    }
    raw.write_json_atomic(output / raw.COMPARE_FILE, merged)
    return output
