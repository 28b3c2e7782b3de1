"""SIGTERM (a job runner's timeout, `kill PID`) stops every command as Ctrl-C does: what was
measured is kept (a run's end.json and summary), the servers kvbench started are stopped, and
the exit status is 143 (Ctrl-C: 130). Driven as users meet it: a real process, a real signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvbench.backends.vllm import VllmBackend
from kvbench.benchmark.recorder import read_run


def _start(tmp_path: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kvbench", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a signal for kvbench alone, as a job runner sends it
        # SIG_IGN as a shell without job control starts `kvbench … &`; else the default, even
        # where pytest itself was started that way (the disposition is inherited)
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
        ),
    )


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _handles_sigterm(p: subprocess.Popen) -> bool:
    """Whether the command is running with its SIGTERM handler in place (the signal's bit in
    the process's caught-signal mask): a SIGTERM before that ends Python at once."""
    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _stop(p: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def _requests_written(run_dir: Path, n: int):
    def check() -> bool:
        f = run_dir / "requests.jsonl"
        return f.exists() and f.read_text().count("\n") >= n

    return check


@pytest.mark.parametrize(
    "sig, code, by", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_run_keeps_its_partial_run(tmp_path, sig, code, by):
    out = tmp_path / "run"
    p = _start(
        tmp_path,
        "run",
        "--backend",
        "sim:ideal",
        "--request-rate",
        "20",
        "--duration",
        "20000",
        "--output",
        str(out),
    )
    _wait_for(_requests_written(out, 50), "requests in the run directory")
    rc, _, err = _stop(p, sig)
    assert rc == code, err
    assert f"stopped by {by}; partial run in {out}" in err
    assert "Traceback" not in err
    data = read_run(out)
    assert data.status == "interrupted" and len(data.records) >= 50
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"


def test_run_against_an_emulator_stops_it_on_sigterm(tmp_path):
    out = tmp_path / "run"
    p = _start(
        tmp_path,
        "run",
        "--backend",
        "emulate:vllm",
        "--workload",
        "fixed:16,16",
        "--request-rate",
        "5",
        "--duration",
        "600",
        "--output",
        str(out),
    )
    _wait_for(_requests_written(out, 5), "requests in the run directory")
    servers = _children(p.pid)
    assert servers, "the emulator is a child of kvbench"
    rc, _, err = _stop(p)
    assert rc == 143, err
    assert read_run(out).status == "interrupted"
    for pid in servers:
        _wait_for(lambda pid=pid: not _alive(pid), f"emulator {pid} to exit", timeout=30)


def test_boundary_stops_on_sigterm(tmp_path):
    # a 0.1% bracket on an unlimited budget: a search of a minute or more
    p = _start(
        tmp_path,
        "boundary",
        "--backend",
        "sim:vllm",
        "--precision",
        "0.001",
        "--max-engine-seconds",
        "inf",
    )
    _wait_for(lambda: _handles_sigterm(p), "the search to start")
    time.sleep(1)
    assert p.poll() is None, p.communicate()
    rc, out, err = _stop(p)
    assert rc == 143, err
    assert out == "" and err.startswith("stopped by SIGTERM;"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background"])
def test_emulate_exits_143_on_sigterm(tmp_path, sigint_ignored):
    # started in the background by a script, SIGINT is ignored from birth: SIGTERM must still
    # stop it (it did nothing, and a CI run's emulators outlived their tests)
    p = _start(
        tmp_path, "emulate", "--engine", "trtllm", "--port", "0", sigint_ignored=sigint_ignored
    )
    _wait_for(lambda: p.poll() is not None or _listening(p.pid), "the emulator to listen")
    rc, _, err = _stop(p)
    assert rc == 143, err
    assert "Traceback" not in err


def _listening(pid: int) -> bool:
    """Whether `pid` holds a listening TCP socket (state 0A in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                return True
    return False


def test_compare_writes_its_report_and_stops_its_emulators_on_sigterm(tmp_path):
    # open-loop probes: a judged probe is what there is to keep
    p = _start(
        tmp_path, "compare", "--backends", "trtllm,sglang", "--no-progress", "--method", "open-loop"
    )
    # once the first engine has a probe, there is something to keep
    engine = lambda: next(iter((tmp_path / "reports").glob("*/engines/0-trtllm/engine.json")), None)  # noqa: E731
    _wait_for(lambda: engine() is not None, "the compare directory")
    _wait_for(
        lambda: json.loads(engine().read_text()).get("search", {}).get("probes"),
        "a finished probe",
        timeout=240,
    )
    servers = _children(p.pid)
    rc, out, err = _stop(p)
    assert rc == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    directory = engine().parents[2]
    results = json.loads((directory / "results.json").read_text())
    assert results["interrupted"] is True
    first = results["engines"][0]
    assert first["status"] == "interrupted" and first["probes"]
    assert first["error"].startswith("stopped by SIGTERM")
    assert (directory / "report.html").is_file()
    for pid in servers:
        _wait_for(lambda pid=pid: not _alive(pid), f"emulator {pid} to exit", timeout=30)


def test_compare_killed_by_sigterm_resumes_without_rerunning_judged_probes(tmp_path):
    # a coarse bracket: what is checked is that judged probes survive, not the boundary
    args = ("compare", "--backends", "trtllm", "--no-progress", "--method", "open-loop")
    args += ("--precision", "0.3")
    p = _start(tmp_path, *args)
    engine = lambda: next(iter((tmp_path / "reports").glob("*/engines/0-trtllm/engine.json")), None)  # noqa: E731
    _wait_for(lambda: engine() is not None, "the compare directory")
    _wait_for(
        lambda: json.loads(engine().read_text()).get("search", {}).get("probes"),
        "a finished probe",
        timeout=240,
    )
    rc, _, err = _stop(p)
    assert rc == 143, err
    directory = engine().parents[2]
    judged = json.loads(engine().read_text())["search"]["probes"]
    kept = {f: f.read_bytes() for r in judged for f in (directory / r["run_dir"]).iterdir()}
    resumed = subprocess.run(
        [sys.executable, "-m", "kvbench", *args, "--resume", str(directory)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads((directory / "results.json").read_text())
    assert results["interrupted"] is False
    (e,) = results["engines"]
    assert e["status"] == "ok" and e["boundary"]["lower"] and e["boundary"]["upper"]
    # the probes judged before the SIGTERM are the search's first probes, their runs untouched
    assert [p["run_dir"] for p in e["probes"][: len(judged)]] == [r["run_dir"] for r in judged]
    assert all(f.read_bytes() == b for f, b in kept.items())


def test_a_run_cancelled_from_outside_is_an_interrupt():
    """A signal that cancels the HTTP backend's main task while a task group or timeout inside
    cancels it too reaches kvbench as CancelledError on Python 3.11 (asyncio.Runner raises
    KeyboardInterrupt only for its own lone cancellation): the backend hands it on as the
    interrupt it is, so compare keeps its report and exits 143 (a newcomer run once exited 1)."""

    async def cancelled_twice():
        task = asyncio.current_task()
        task.cancel()
        task.cancel()
        await asyncio.sleep(1)

    with pytest.raises(KeyboardInterrupt):
        VllmBackend("http://127.0.0.1:9")._run(cancelled_twice())
