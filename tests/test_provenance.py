"""Provenance: the hardware read with the GPU tools users have (a fake `nvidia-smi` on PATH that
prints NVIDIA's own CSV format, a fake NVML module, a DCGM exporter's metrics), absent with a
reason when there is none, the engine's version from each emulator's own endpoint, and no
credential in a recorded launch command."""

from __future__ import annotations

import http.server
import sys
import threading
import types
from pathlib import Path

import pytest

from kvbench import __version__, provenance
from kvbench.backends.engines import open_emulator
from kvbench.errors import KvbenchError

# `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits` on a
# two-GPU H100 host (memory.total in MiB), and the header lines of `nvidia-smi -q`
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=name,memory.total,driver_version)
    echo "NVIDIA H100 80GB HBM3, 81559, 550.90.07"
    echo "NVIDIA H100 80GB HBM3, 81559, 550.90.07" ;;
  -q)
    printf '\\n==============NVSMI LOG==============\\n\\n'
    printf 'Timestamp                                 : Mon Nov 30 12:00:00 2026\\n'
    printf 'Driver Version                            : 550.90.07\\n'
    printf 'CUDA Version                              : 12.4\\n\\n'
    printf 'Attached GPUs                             : 2\\n' ;;
  *) exit 9 ;;
esac
"""

# what dcgm-exporter serves (internal/pkg/rendermetrics: gpu, UUID, pci_bus_id, device,
# modelName, Hostname, then label fields such as DCGM_FI_DRIVER_VERSION)
_DCGM_GPUS = [
    ("0", "GPU-aaa", "00000000:19:00.0"),
    ("1", "GPU-bbb", "00000000:3B:00.0"),
]


def _dcgm(field: str, help_text: str, value: int) -> str:
    lines = [f"# HELP {field} {help_text}", f"# TYPE {field} gauge"]
    for gpu, uuid, bus in _DCGM_GPUS:
        lines.append(
            f'{field}{{gpu="{gpu}",UUID="{uuid}",pci_bus_id="{bus}",device="nvidia{gpu}",'
            'modelName="NVIDIA H200",Hostname="gpu-node-7",DCGM_FI_DRIVER_VERSION="570.86.15"}'
            f" {value}"
        )
    return "\n".join(lines) + "\n"


DCGM_METRICS = (
    _dcgm("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", 97)
    + _dcgm("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", 1000)
    + _dcgm("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", 141000)
    + _dcgm("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", 3)
)

GPU_FIELDS = ("gpu_model", "gpu_count", "gpu_memory_mib", "driver_version", "cuda_version")


@pytest.fixture
def no_nvml(monkeypatch):
    """nvidia-ml-py not importable, whatever this machine has installed."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


def _path_with(tmp_path: Path, monkeypatch, tools: dict[str, str]) -> None:
    """PATH holding only `tools` (name → script), so no GPU tool of this machine is found."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in tools.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_gpus_are_read_with_nvidia_smi(tmp_path, monkeypatch, no_nvml):
    _path_with(tmp_path, monkeypatch, {"nvidia-smi": FAKE_NVIDIA_SMI})
    found = provenance.collect(engine="vllm", kind="simulated", url=None)
    hw = found["hardware"]
    assert hw["local"] is True
    assert hw["gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert hw["gpu_count"] == 2
    assert hw["gpu_memory_mib"] == 81559
    assert hw["driver_version"] == "550.90.07"
    assert hw["cuda_version"] == "12.4"
    assert found["sources"]["hardware.gpu_model"] == "nvidia-smi"
    assert not any(k.startswith("hardware.") for k in found["absent"])
    assert hw["cpu_cores"] >= 1 and hw["host"]


def test_no_gpu_tool_leaves_gpu_fields_absent_with_the_reason(tmp_path, monkeypatch, no_nvml):
    _path_with(tmp_path, monkeypatch, {})
    found = provenance.collect(engine="sglang", kind="simulated", url=None)
    for key in GPU_FIELDS:
        assert found["hardware"][key] is None
        reason = found["absent"][f"hardware.{key}"]
        assert "no nvidia-smi on PATH" in reason and "nvidia-ml-py not installed" in reason
    # what was readable still is
    assert found["hardware"]["cpu_cores"] >= 1


def test_a_failing_nvidia_smi_is_a_reason_not_a_crash(tmp_path, monkeypatch, no_nvml):
    _path_with(
        tmp_path,
        monkeypatch,
        {"nvidia-smi": "#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n"},
    )
    found = provenance.collect(engine="vllm", kind="simulated", url=None)
    assert found["hardware"]["gpu_model"] is None
    assert "NVIDIA-SMI has failed" in found["absent"]["hardware.gpu_model"]


def test_gpus_are_read_with_nvml_first(tmp_path, monkeypatch):
    _path_with(tmp_path, monkeypatch, {"nvidia-smi": "#!/bin/sh\nexit 1\n"})
    handles = ["h0", "h1", "h2", "h3"]
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(handles),
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=150_754_820_096),
        nvmlSystemGetDriverVersion=lambda: "570.86.15",
        nvmlSystemGetCudaDriverVersion=lambda: 12080,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    hw = provenance.collect(engine="vllm", kind="simulated", url=None)["hardware"]
    assert (hw["gpu_model"], hw["gpu_count"]) == ("NVIDIA H200", 4)
    assert hw["gpu_memory_mib"] == 150_754_820_096 // 2**20 == 143_771
    assert (hw["driver_version"], hw["cuda_version"]) == ("570.86.15", "12.8")


class _Exporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = DCGM_METRICS.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def dcgm_exporter():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_remote_engine_takes_hardware_from_dcgm_exporter_and_metadata(dcgm_exporter, monkeypatch):
    monkeypatch.setattr(provenance, "_TIMEOUT", 0.5)
    found = provenance.collect(
        engine="trtllm",
        kind="real",
        url="http://10.255.255.1:1",  # another host (nothing answers: model and version absent)
        metadata={"cpu_model": "AMD EPYC 9654", "rack": "b7"},
        gpu_exporter=dcgm_exporter,
    )
    hw = found["hardware"]
    assert hw["local"] is False
    assert (hw["gpu_model"], hw["gpu_count"]) == ("NVIDIA H200", 2)
    assert hw["driver_version"] == "570.86.15"
    assert hw["gpu_memory_mib"] == 1000 + 141000 + 3
    assert hw["host"] == "gpu-node-7"
    assert hw["cpu_model"] == "AMD EPYC 9654"
    assert found["sources"]["hardware.cpu_model"] == "--metadata"
    assert found["metadata"] == {"cpu_model": "AMD EPYC 9654", "rack": "b7"}
    # never read from this host, never guessed
    assert hw["cpu_cores"] is None and hw["cuda_version"] is None
    assert "another host" in found["absent"]["hardware.cpu_cores"]
    assert found["model"]["id"] is None and "GET /v1/models" in found["absent"]["model.id"]


def test_remote_engine_without_metadata_has_no_hardware(monkeypatch):
    monkeypatch.setattr(provenance, "_TIMEOUT", 0.5)
    found = provenance.collect(engine="vllm", kind="real", url="http://10.255.255.1:1")
    assert all(found["hardware"][k] is None for k in provenance.HARDWARE_FIELDS)
    assert set(found["absent"]) >= {f"hardware.{k}" for k in provenance.HARDWARE_FIELDS}


@pytest.mark.parametrize(
    ("engine", "version_source", "max_len"),
    [("vllm", "GET /version", 4096), ("trtllm", "GET /version", None), ("sglang", None, 4096)],
)
def test_engine_version_and_model_from_each_emulator(tmp_path, engine, version_source, max_len):
    backend = open_emulator(engine, log_dir=tmp_path)
    try:
        found = provenance.for_backend(backend, f"emulate:{engine}")
    finally:
        backend.close()
    assert found["engine"] == {"name": engine, "version": f"{__version__} (kvbench emulator)"}
    expected = version_source or "GET /get_server_info"
    assert found["sources"]["engine.version"] == expected
    assert found["model"]["id"] == ("default" if engine == "sglang" else "kvbench-emulated")
    assert found["model"]["max_model_len"] == max_len
    if max_len is None:  # TensorRT-LLM's model card has no max_model_len
        assert found["absent"]["model.max_model_len"] == "GET /v1/models gives no max_model_len"
    # kvbench launched it: the command is recorded, and the hardware is this host's
    argv = found["launch"]["argv"]
    assert argv[argv.index("-m") : argv.index("-m") + 5] == [
        "-m",
        "kvbench",
        "emulate",
        "--engine",
        engine,
    ]
    assert found["hardware"]["local"] is True


def test_credential_metadata_is_never_recorded():
    assert provenance.parse_metadata(["db_password=hunter2", "HF_TOKEN=x", "gpu_count=8"]) == {
        "db_password": provenance.REDACTED,
        "HF_TOKEN": provenance.REDACTED,
        "gpu_count": "8",
    }


def test_bad_gpu_exporter_is_refused_before_anything_runs():
    from click.testing import CliRunner

    from kvbench.cli import cli

    for args in (
        ["compare", "--backends", "sim:vllm"],
        ["run", "--backend", "sim:vllm", "--request-rate", "1", "--num-prompts", "10"],
    ):
        result = CliRunner().invoke(cli, [*args, "--gpu-exporter", "gpu-node:9400"])
        assert result.exit_code == 2, result.output
        assert result.output == (
            "error: --gpu-exporter 'gpu-node:9400': expected a URL such as "
            "http://HOST:9400/metrics\n"
        )


def test_bad_metadata_is_one_line_error():
    with pytest.raises(KvbenchError, match="expected KEY=VALUE"):
        provenance.parse_metadata(["gpu_model"])
    with pytest.raises(KvbenchError, match="whole number"):
        provenance.parse_metadata(["gpu_count=eight"])


def test_loopback_urls_are_this_host():
    assert provenance.is_loopback("http://127.0.0.1:8000")
    assert provenance.is_loopback("http://localhost:8000")
    assert provenance.is_loopback("http://[::1]:8000")
    assert not provenance.is_loopback("http://10.0.0.5:8000")
    assert not provenance.is_loopback("http://gpu-node-7:8000")


def test_installed_version_names_what_is_missing():
    # no engine is installed in kvbench's test environment
    with pytest.raises(KvbenchError, match="tensorrt-llm is not installed"):
        provenance.installed_version(sys.executable, "trtllm")


# `rocm-smi --showproductname --showmeminfo vram --showdriverversion --json` on a two-GPU
# MI300X host: one object per card, the driver under "system"
FAKE_ROCM_SMI = """#!/bin/sh
echo '{"card0": {"Card Series": "AMD Instinct MI300X", "Card Model": "0x74a1",
           "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "M3000100",
           "VRAM Total Memory (B)": "205822885888", "VRAM Total Used Memory (B)": "297345024"},
 "card1": {"Card Series": "AMD Instinct MI300X", "Card Model": "0x74a1",
           "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "M3000100",
           "VRAM Total Memory (B)": "205822885888", "VRAM Total Used Memory (B)": "297345024"},
 "system": {"Driver version": "6.8.5"}}'
"""


def test_amd_gpus_are_read_with_rocm_smi(tmp_path, monkeypatch, no_nvml):
    _path_with(tmp_path, monkeypatch, {"rocm-smi": FAKE_ROCM_SMI})
    found = provenance.collect(engine="sglang", kind="simulated", url=None)
    hw = found["hardware"]
    assert (hw["gpu_model"], hw["gpu_count"]) == ("AMD Instinct MI300X", 2)
    assert hw["gpu_memory_mib"] == 205822885888 // 2**20 == 196288
    assert hw["driver_version"] == "6.8.5"
    assert found["sources"]["hardware.gpu_model"] == "rocm-smi"
    # ROCm has no CUDA version: absent, and said so
    assert found["absent"]["hardware.cuda_version"] == "rocm-smi does not report it"


def test_run_header_records_provenance_without_credentials(tmp_path, monkeypatch, no_nvml):
    from click.testing import CliRunner

    from kvbench.benchmark.recorder import read_run
    from kvbench.cli import cli

    _path_with(tmp_path, monkeypatch, {"nvidia-smi": FAKE_NVIDIA_SMI})
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--backend",
            "sim:vllm",
            "--request-rate",
            "2",
            "--num-prompts",
            "200",
            "--output",
            str(out),
            "--metadata",
            "site=lab-3",
            "--metadata",
            "hf_token=hf_secret",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    prov = read_run(out).header["provenance"]
    assert prov["engine"]["name"] == "vllm"
    assert prov["hardware"]["gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert prov["metadata"] == {"site": "lab-3", "hf_token": provenance.REDACTED}
    assert "hf_secret" not in (out / "header.json").read_text()
