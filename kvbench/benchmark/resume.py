"""`kvbench compare --resume DIR`: continue an interrupted comparison from its raw files.

Nothing finished is measured again. An engine whose engine.json says `ok` or `failed` is kept as
it is. An engine stopped part-way keeps its calibration (b̄ and the theory at it: running the
burst again would move the search's start) and every probe the search judged: the search is
deterministic given its probes' verdicts (probe k runs with seed + k, its rate and length follow
from the probes before it), so those probes are replayed, each verdict and its evidence read back
from the judged run's summary.json, and the search goes on from the first probe it had not
judged, taking the decisions an uninterrupted run would have taken. A run cut off mid-probe (and
the extensions of that probe) is moved aside to `unfinished-N/`, kept but no longer part of the
search, and the probe runs again from its start (the earlier servers' logs go there too).

The comparison must be the same one: the settings that steer the search or what it measures are
checked against the directory's compare.json, and a difference is refused before anything runs.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvbench import __version__
from kvbench.backends.base import QueueSample
from kvbench.benchmark import raw
from kvbench.benchmark.batch_time import BatchTimeEstimate
from kvbench.benchmark.recorder import HEADER_FILE, SUMMARY_FILE, read_samples
from kvbench.benchmark.search import Probe
from kvbench.errors import KvbenchError
from kvbench.jsonable import dumps

# The settings a resumed comparison must share with the interrupted one (compare.json's config
# keys), by the flag that sets them. The search budget, target rate, URLs (a server may come
# back on another port) and credentials may change.
CHECKED = {
    "backends": "--backends",
    "engines": "--backends",
    "workload": "--workload",
    "seed": "--seed",
    "precision": "--precision",
    "confidence": "--confidence",
    "kv_tokens": "--kv-tokens",
    "time_scale": "--time-scale",
    "replicas": "--replicas",
    "launch_model": "--launch",
    "served_model": "--model",
    "trim": "--trim",
    "replay": "--replay",
    "engine_settings": "--engine-setting",
    "slo": "--slo",
    "method": "--method",
}
# An engine in one of these states is finished: resuming keeps it as it is.
FINISHED = ("ok", "failed")


def reopen(directory: Path, config_json: dict[str, Any], command: str) -> dict[str, Any]:
    """compare.json of the interrupted comparison in `directory`, checked against this
    command's configuration (CompareConfig.to_json() with its defaults filled in) and marked
    resumed."""
    if not raw.is_compare_dir(directory):
        raise KvbenchError(
            f"--resume {directory}: not a kvbench compare directory (no compare.json)"
        )
    header, _ = raw.read_compare(directory)
    was = header.get("kvbench_version")
    if was != __version__:
        raise KvbenchError(
            f"--resume {directory}: written by kvbench {was}, this is {__version__}; "
            "resume it with that version"
        )
    stored = _engines_named(header.get("config", {}))
    # as written to compare.json (tuples become lists), so that equal settings compare equal
    given = _engines_named(json.loads(dumps(config_json)))
    ran = f", which ran: {header['command']}" if header.get("command") else ""
    for key, flag in CHECKED.items():
        if stored.get(key) != given.get(key):
            raise KvbenchError(
                f"--resume {directory}: {flag} differs ({key} {given.get(key)!r} here, "
                f"{stored.get(key)!r} in the interrupted comparison{ran}); resume with the same "
                "settings"
            )
    header["interrupted"] = False
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header.setdefault("resumed", []).append({"at": now, "command": command})
    raw.write_json_atomic(directory / raw.COMPARE_FILE, header)
    return header


def _engines_named(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with `engines` naming every label's engine (a label absent from it names its
    own engine), so that two spellings of the same --backends compare equal."""
    engines = config.get("engines") or {}
    return {**config, "engines": {b: engines.get(b, b) for b in config.get("backends", [])}}


def previous_engine(directory: Path, asked: dict[str, Any]) -> dict[str, Any] | None:
    """What an earlier attempt recorded for this engine (engine.json), or None if it never
    started."""
    path = directory / raw.ENGINES_DIR / asked["slug"] / raw.ENGINE_FILE
    return raw.read_json(path) if path.is_file() else None


def calibrated(data: dict[str, Any]) -> bool:
    """Whether the engine's calibration finished (b̄ and the theory at it were recorded)."""
    return all(key in data for key in ("calibration", "batch_time", "theory"))


def calibration(root: Path, data: dict[str, Any]) -> tuple[BatchTimeEstimate, list[QueueSample]]:
    """The finished calibration burst, read back: its b̄ and the engine's gauges during it."""
    samples = read_samples(root / data["calibration"]["run_dir"])
    return BatchTimeEstimate(**data["batch_time"]), samples


def replayed_probes(root: Path, data: dict[str, Any]) -> list[Probe]:
    """The probes the earlier search judged (none for an engine measured afresh), as the search
    saw them."""
    probes = []
    for record in data.get("search", {}).get("probes", []):
        run_dir = root / record["run_dir"]
        summary = _read(run_dir / SUMMARY_FILE)
        header = _read(run_dir / HEADER_FILE)
        verdict = summary.get("verdict") or "INCONCLUSIVE"
        if verdict != record["verdict"]:
            raise KvbenchError(
                f"{run_dir / SUMMARY_FILE}: verdict {verdict} but engine.json says "
                f"{record['verdict']}; the directory was changed since, cannot resume"
            )
        probes.append(
            Probe(
                rate=record["rate"],
                duration=header["config"]["duration"],
                engine_seconds=record["engine_seconds"],
                verdict=verdict,
                extensions=record["extensions"],
                evidence=summary.get("evidence") or {},
                client_kept_schedule=summary["client_kept_schedule"],
                run_dir=str(run_dir),
                failures=summary.get("failures") or {},
                throughput=summary.get("throughput") or {},
                slo=summary.get("slo"),
                latency=summary.get("latency") or {},
            )
        )
    return probes


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KvbenchError(f"{path}: missing; cannot replay this probe") from None
    except json.JSONDecodeError as err:
        raise KvbenchError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None


def set_aside(engine_dir: Path, previous: dict[str, Any]) -> None:
    """Before an interrupted engine is measured again: move the runs of the probes its search had
    not judged (and an unfinished calibration, and the logs of the servers started before) into
    engine_dir/unfinished-N/, so that they are written afresh and nothing is overwritten."""
    judged = len(previous.get("search", {}).get("probes", []))
    keep_calibration = calibrated(previous)
    stale = [
        d
        for d in sorted(engine_dir.iterdir())
        if d.is_dir()
        and (
            (d.name.startswith("probe-") and int(d.name[6:].split("-")[0]) >= judged)
            or (d.name == "calibration" and not keep_calibration)
            # the earlier servers' logs: a server started now writes its own there
            or d.name == "server"
        )
    ]
    if not stale:
        return
    n = 1
    while (engine_dir / f"unfinished-{n}").exists():
        n += 1
    aside = engine_dir / f"unfinished-{n}"
    aside.mkdir()
    for d in stale:
        shutil.move(d, aside / d.name)
