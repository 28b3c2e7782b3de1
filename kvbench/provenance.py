"""Where a result came from: the served model, the engine and its version, the launch command,
and the hardware the engine ran on.

Every field is read, never inferred: what cannot be read is recorded as absent (null) with the
reason in `absent`, so a reader of a result can tell "unknown" from "none". The hardware is read
on this host only when the engine runs here (kvbench launched or emulated it, or it is reached
on a loopback address); an engine elsewhere is described by what the user states with
`--metadata KEY=VALUE` and, optionally, by the labels of a DCGM exporter on its host
(`--gpu-exporter URL`).

    {"model":    {"id": ..., "max_model_len": ...},
     "engine":   {"name": ..., "version": ...},
     "launch":   {"argv": [...], "env": {...}} or null,
     "hardware": {"local": bool, "host": ..., "cpu_model": ..., "cpu_cores": ...,
                  "memory_mib": ..., "gpu_model": ..., "gpu_count": ..., "gpu_memory_mib": ...,
                  "driver_version": ..., "cuda_version": ...},
     "metadata": {KEY: VALUE, ...},
     "sources":  {"engine.version": "GET /version", "hardware.gpu_model": "nvidia-smi", ...},
     "absent":   {"model.max_model_len": "GET /v1/models gives no max_model_len", ...}}
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvbench.errors import KvbenchError
from kvbench.redact import REDACTED, is_secret_variable

HARDWARE_FIELDS = (
    "host",
    "cpu_model",
    "cpu_cores",
    "memory_mib",
    "gpu_model",
    "gpu_count",
    "gpu_memory_mib",
    "driver_version",
    "cuda_version",
)
INTEGER_FIELDS = frozenset({"cpu_cores", "memory_mib", "gpu_count", "gpu_memory_mib"})
# the distribution each engine is installed as, for `importlib.metadata.version`
DISTRIBUTIONS = {"vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrt-llm"}
# where each engine says its version: vLLM and TensorRT-LLM serve GET /version
# ({"version": ...}); SGLang puts `version` in /get_server_info (/server_info in newer releases)
VERSION_PATHS = {
    "vllm": ("/version",),
    "trtllm": ("/version",),
    "sglang": ("/get_server_info", "/server_info"),
}
_TIMEOUT = 5.0


def parse_metadata(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--metadata KEY=VALUE` flags as a dict; a value under a credential-like key (named as an
    environment variable holding one would be) is redacted."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KvbenchError(f"--metadata {value!r}: expected KEY=VALUE, e.g. gpu_model=H200")
        if key in INTEGER_FIELDS and not text.strip().isdigit():
            raise KvbenchError(f"--metadata {key}={text!r}: expected a whole number")
        found[key] = REDACTED if is_secret_variable(key) else text.strip()
    return found


def check_exporter_url(url: str | None) -> str | None:
    """--gpu-exporter must be an http(s) URL (checked before anything is measured)."""
    if url is not None and (
        urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname
    ):
        raise KvbenchError(
            f"--gpu-exporter {url!r}: expected a URL such as http://HOST:9400/metrics"
        )
    return url


def is_loopback(url: str) -> bool:
    """True when `url` points at this host (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Record:
    """The provenance being assembled: values, where each came from, and why any is absent."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {
            "model": {"id": None, "max_model_len": None},
            "engine": {"name": None, "version": None},
            "launch": None,
            "hardware": {"local": False, **{f: None for f in HARDWARE_FIELDS}},
            "metadata": {},
            "sources": {},
            "absent": {},
        }

    def set(self, section: str, name: str, value: Any, source: str) -> None:
        self.data[section][name] = value
        self.data["sources"][f"{section}.{name}"] = source
        self.data["absent"].pop(f"{section}.{name}", None)

    def absent(self, section: str, name: str, reason: str) -> None:
        if self.data[section][name] is None:
            self.data["absent"][f"{section}.{name}"] = reason


# ---- the engine's own answers ---------------------------------------------------------------


def _get_json(url: str) -> Any:
    """The JSON body of GET `url`; KvbenchError naming the endpoint otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:
            return json.loads(resp.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as err:
        raise KvbenchError(f"GET {urlsplit(url).path}: HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        raise KvbenchError(f"GET {urlsplit(url).path}: {err}") from None
    except ValueError:
        raise KvbenchError(f"GET {urlsplit(url).path}: not JSON") from None


def _read_model(record: _Record, url: str) -> None:
    try:
        body = _get_json(url + "/v1/models")
        card = body["data"][0]
    except KvbenchError as err:
        record.absent("model", "id", str(err))
        record.absent("model", "max_model_len", str(err))
        return
    except (KeyError, IndexError, TypeError):
        record.absent("model", "id", "GET /v1/models lists no model")
        record.absent("model", "max_model_len", "GET /v1/models lists no model")
        return
    if isinstance(card.get("id"), str):
        record.set("model", "id", card["id"], "GET /v1/models")
    else:
        record.absent("model", "id", "GET /v1/models gives no model id")
    if isinstance(card.get("max_model_len"), int):
        record.set("model", "max_model_len", card["max_model_len"], "GET /v1/models")
    else:
        record.absent("model", "max_model_len", "GET /v1/models gives no max_model_len")


def _read_version(record: _Record, url: str, engine: str) -> None:
    reasons = []
    for path in VERSION_PATHS.get(engine, ()):
        try:
            body = _get_json(url + path)
        except KvbenchError as err:
            reasons.append(str(err))
            continue
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, str) and version:
            record.set("engine", "version", version, f"GET {path}")
            return
        reasons.append(f"GET {path} gives no version")
    record.absent("engine", "version", "; ".join(reasons) or f"{engine} serves no version")


def installed_version(python: str, engine: str) -> str:
    """The version of `engine` installed for interpreter `python` (the launch environment)."""
    dist = DISTRIBUTIONS[engine]
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KvbenchError(f"{python}: cannot ask for the {dist} version: {err}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KvbenchError(f"{python}: {dist} is not installed ({last})")
    return done.stdout.strip()


# ---- the hardware of this host --------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KvbenchError(f"{argv[0]}: {err}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KvbenchError(f"{' '.join(argv)}: exit {done.returncode}: {last}")
    return done.stdout


def _same(values: list[Any], what: str) -> Any:
    """The one value all GPUs share; a host with mixed GPUs is described as such."""
    distinct = sorted({str(v) for v in values})
    if len(distinct) == 1:
        return values[0]
    return " + ".join(distinct) if what == "model" else None


def _gpus_from_nvml() -> dict[str, Any]:
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        names = [pynvml.nvmlDeviceGetName(h) for h in handles]
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
        memory = [pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20 for h in handles]
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040 for 12.4
    finally:
        pynvml.nvmlShutdown()
    if not handles:
        raise KvbenchError("NVML lists no GPU")
    return {
        "gpu_model": _same(names, "model"),
        "gpu_count": len(handles),
        "gpu_memory_mib": _same(memory, "memory"),
        "driver_version": driver.decode() if isinstance(driver, bytes) else driver,
        "cuda_version": f"{cuda // 1000}.{cuda % 1000 // 10}",
    }


def _gpus_from_nvidia_smi() -> dict[str, Any]:
    # one CSV line per GPU: "NVIDIA H100 80GB HBM3, 81559, 550.90.07" (memory.total in MiB)
    text = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ]
    )
    rows = [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()]
    if not rows or any(len(r) != 3 or not r[1].isdigit() for r in rows):
        raise KvbenchError(f"nvidia-smi --query-gpu: unexpected output {text[:120]!r}")
    found: dict[str, Any] = {
        "gpu_model": _same([r[0] for r in rows], "model"),
        "gpu_count": len(rows),
        "gpu_memory_mib": _same([int(r[1]) for r in rows], "memory"),
        "driver_version": _same([r[2] for r in rows], "driver"),
    }
    # the CUDA version the driver supports is in the report's header, not a --query-gpu field
    cuda = re.search(r"^CUDA Version\s*:\s*(\S+)", _run(["nvidia-smi", "-q"]), re.MULTILINE)
    found["cuda_version"] = cuda.group(1) if cuda else None
    return found


def _gpus_from_rocm_smi() -> dict[str, Any]:
    text = _run(
        ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showdriverversion", "--json"]
    )
    try:
        data = json.loads(text)
    except ValueError:
        raise KvbenchError("rocm-smi --json: not JSON") from None
    cards = {k: v for k, v in data.items() if k.startswith("card") and isinstance(v, dict)}
    if not cards:
        raise KvbenchError("rocm-smi lists no GPU")

    def field(card: dict, *names: str) -> Any:
        lowered = {k.lower(): v for k, v in card.items()}
        return next((lowered[n] for n in names if n in lowered), None)

    names = [field(c, "card series", "device name", "card model") for c in cards.values()]
    vram = [field(c, "vram total memory (b)") for c in cards.values()]
    system = data.get("system") or {}
    return {
        "gpu_model": _same(names, "model") if all(names) else None,
        "gpu_count": len(cards),
        "gpu_memory_mib": (
            _same([int(v) // 2**20 for v in vram], "memory")
            if all(str(v).isdigit() for v in vram)
            else None
        ),
        "driver_version": field(system, "driver version"),
        "cuda_version": None,
    }


def _read_gpus(record: _Record) -> None:
    """GPU fields from the first tool that answers: NVML, nvidia-smi, rocm-smi."""
    tried = []
    readers: list[tuple[str, Callable[[], dict[str, Any]], str | None]] = [
        ("nvidia-ml-py (NVML)", _gpus_from_nvml, None)
    ]
    readers += [(tool, reader, tool) for tool, reader in _SMI_TOOLS]
    for name, reader, executable in readers:
        if executable is not None and shutil.which(executable) is None:
            tried.append(f"no {executable} on PATH")
            continue
        try:
            found = reader()
        except ImportError:
            tried.append("nvidia-ml-py not installed")
            continue
        except KvbenchError as err:
            tried.append(str(err))
            continue
        except Exception as err:  # NVML raises its own error types (no driver, no device)
            tried.append(f"{name}: {type(err).__name__}: {err}")
            continue
        for key, value in found.items():
            if value is not None:
                record.set("hardware", key, value, name)
            else:
                record.absent("hardware", key, f"{name} does not report it")
        return
    reason = "; ".join(tried)
    for key in ("gpu_model", "gpu_count", "gpu_memory_mib", "driver_version", "cuda_version"):
        record.absent("hardware", key, f"no GPU found on this host ({reason})")


_SMI_TOOLS = [("nvidia-smi", _gpus_from_nvidia_smi), ("rocm-smi", _gpus_from_rocm_smi)]


def _read_host(record: _Record) -> None:
    record.data["hardware"]["local"] = True
    record.set("hardware", "host", socket.gethostname(), "this host")
    for key, value in (
        ("cpu_model", _cpu_model()),
        ("cpu_cores", os.cpu_count()),
        ("memory_mib", _memory_mib()),
    ):
        if value is None:
            record.absent("hardware", key, "not readable on this host")
        else:
            record.set("hardware", key, value, "this host")
    _read_gpus(record)


# ---- a remote host: a DCGM exporter's labels ------------------------------------------------


def _read_dcgm(record: _Record, url: str) -> None:
    """GPU fields from a DCGM exporter's /metrics: every DCGM_FI_DEV_* sample carries the labels
    gpu, UUID, modelName and Hostname, and DCGM_FI_DRIVER_VERSION where the exporter's counters
    include that label field; memory is DCGM_FI_DEV_FB_FREE + _USED + _RESERVED (MiB)."""
    from kvbench.backends.prometheus import Metrics

    source = f"DCGM exporter {urlsplit(url).hostname}"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:
            text = resp.read().decode("utf-8", errors="replace")
        metrics = Metrics.parse(text, url)
    except (urllib.error.URLError, OSError, ValueError, KvbenchError) as err:
        for key in ("gpu_model", "gpu_count", "driver_version", "gpu_memory_mib"):
            record.absent("hardware", key, f"{source}: {err}")
        return
    samples = [
        s
        for name in sorted(metrics.names())
        if name.startswith("DCGM_FI_DEV_")
        for s in metrics.samples(name)
    ]
    gpus: dict[str, dict[str, str]] = {}
    for s in samples:
        gpus.setdefault(s.labels.get("UUID") or s.labels.get("gpu", ""), s.labels)
    if not gpus:
        for key in ("gpu_model", "gpu_count", "driver_version", "gpu_memory_mib"):
            record.absent("hardware", key, f"{source}: no DCGM_FI_DEV_* samples")
        return
    labels = list(gpus.values())
    record.set("hardware", "gpu_count", len(gpus), source)
    for key, label in (
        ("gpu_model", "modelName"),
        ("driver_version", "DCGM_FI_DRIVER_VERSION"),
        ("host", "Hostname"),
    ):
        values = [lab.get(label) for lab in labels]
        if all(values) and record.data["hardware"][key] is None:
            record.set(
                "hardware", key, _same(values, "model" if key == "gpu_model" else key), source
            )
        else:
            record.absent("hardware", key, f"{source}: no {label} label")
    parts = [
        {s.labels.get("UUID") or s.labels.get("gpu", ""): s.value for s in metrics.samples(name)}
        for name in ("DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED")
    ]
    if all(set(p) == set(gpus) for p in parts):
        totals = [int(sum(p[g] for p in parts)) for g in gpus]
        record.set("hardware", "gpu_memory_mib", _same(totals, "memory"), source)
    else:
        record.absent(
            "hardware",
            "gpu_memory_mib",
            f"{source}: needs DCGM_FI_DEV_FB_FREE, _USED and _RESERVED for every GPU",
        )


# ---- assembling -----------------------------------------------------------------------------


def collect(
    *,
    engine: str,
    kind: str,
    url: str | None,
    server: Any = None,
    metadata: dict[str, str] | None = None,
    gpu_exporter: str | None = None,
) -> dict[str, Any]:
    """The provenance of one engine. `engine`: vllm, sglang, trtllm, or a simulator policy;
    `kind`: real, emulated or simulated; `url`: where it answers (None for the simulator);
    `server`: the launch.LaunchedServer when kvbench started it (its command line and the
    environment kvbench set are recorded as the launcher reports them, credentials redacted; its
    interpreter, argv[0], is asked for the engine's installed version
    when the engine does not say it); `metadata`: --metadata, whose
    hardware keys (HARDWARE_FIELDS) fill or override what was read."""
    record = _Record()
    record.set("engine", "name", engine, "backend")
    if url is not None:
        _read_model(record, url.rstrip("/"))
        _read_version(record, url.rstrip("/"), engine)
    else:
        for key in ("id", "max_model_len"):
            record.absent("model", key, f"{kind} engine: no served model")
        record.absent("engine", "version", f"{kind} engine in kvbench {_kvbench_version()}")
    if server is not None:
        launched = server.record()  # credentials redacted by the launcher
        record.data["launch"] = {"argv": launched["argv"], "env": launched.get("env", {})}
        if record.data["engine"]["version"] is None and kind == "real" and engine in DISTRIBUTIONS:
            interpreter = server.argv[0]
            try:
                version = installed_version(interpreter, engine)
                record.set("engine", "version", version, f"installed in {interpreter}")
            except KvbenchError as err:
                record.absent(
                    "engine", "version", f"{record.data['absent'].get('engine.version')}; {err}"
                )
    local = (
        server is not None
        or kind in ("emulated", "simulated")
        or (url is not None and is_loopback(url))
    )
    if local:
        _read_host(record)
    else:
        for key in HARDWARE_FIELDS:
            record.absent(
                "hardware", key, "engine on another host: give --metadata or --gpu-exporter"
            )
        if gpu_exporter is not None:
            _read_dcgm(record, gpu_exporter)
    for key, value in (metadata or {}).items():
        record.data["metadata"][key] = value
        if key in HARDWARE_FIELDS:
            record.set(
                "hardware", key, int(value) if key in INTEGER_FIELDS else value, "--metadata"
            )
    return record.data


def _kvbench_version() -> str:
    from kvbench import __version__

    return __version__


def engine_of(backend_name: str) -> str:
    """The engine a backend name stands for: `sim:vllm`, `emulate:vllm` and `vllm` are vLLM."""
    return backend_name.rpartition(":")[2]


def for_backend(
    backend: Any,
    backend_name: str,
    *,
    metadata: dict[str, str] | None = None,
    gpu_exporter: str | None = None,
) -> dict[str, Any]:
    """The provenance of an opened backend. Replicas behind one dispatcher are described by the
    first: kvbench starts or attaches them alike, and their hardware is given per host."""
    from kvbench.backends.replicas import RoundRobinBackend

    first = backend.replicas[0] if isinstance(backend, RoundRobinBackend) else backend
    # an HTTP backend learns whether the server is kvbench's emulator from its first answer
    getattr(first, "time_scale", None)
    return collect(
        engine=engine_of(backend_name),
        kind=first.kind,
        url=getattr(first, "url", None),
        server=getattr(first, "server", None),
        metadata=metadata,
        gpu_exporter=gpu_exporter,
    )
