"""The launcher against stand-in processes (a real engine is launched in tests/engines/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from kvbench.backends.launch import (
    RECIPES,
    LaunchOptions,
    Recipe,
    free_port,
    launch,
    redact_given,
)
from kvbench.errors import KvbenchError
from kvbench.redact import redact_argv, redact_env

ROOT = Path(__file__).resolve().parents[1]

# A stand-in engine: serves HTTP on the port after `--port`, ignores every other argument, and
# writes its argv and environment to $STANDIN_DUMP (when set) so a test can see what reached it.
STANDIN = """\
import http.server, json, os, sys
args = sys.argv[1:]
if os.environ.get("STANDIN_DUMP"):
    with open(os.environ["STANDIN_DUMP"], "w") as f:
        json.dump({"argv": args, "env": dict(os.environ), "path": sys.path}, f)
port = int(args[args.index("--port") + 1])
handler = http.server.SimpleHTTPRequestHandler
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""

# A stand-in engine that starts a worker of its own (as vLLM starts its engine core) and exits on
# SIGTERM without stopping it: only a signal to the whole process group reaches the worker.
PARENT_OF_WORKER = """\
import signal, subprocess, sys, time
args = sys.argv[1:]
worker_port = args[args.index("--worker-port") + 1]
subprocess.Popen([sys.executable, "-m", "http.server", worker_port, "--bind", "127.0.0.1"])
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
port = int(args[args.index("--port") + 1])
import http.server
handler = http.server.SimpleHTTPRequestHandler
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""


def recipe(tmp_path, command: str, defaults="[]", extra_toml=""):
    d = tmp_path / "recipes" / "fake"
    d.mkdir(parents=True)
    (d / "recipe.toml").write_text(
        textwrap.dedent(f"""
        engine = "fake"
        command = {command}
        health = "/"
        startup_timeout_s = 30
        defaults = {defaults}
        [settings]
        "--max-num-seqs" = "max_num_seqs"
        "--block-size" = "block_size"
        """)
        + textwrap.dedent(extra_toml)
    )
    return Recipe.load("fake", tmp_path / "recipes")


def standin(tmp_path, script: str = STANDIN, **kw) -> Recipe:
    path = tmp_path / "standin.py"
    path.write_text(script)
    return recipe(
        tmp_path, f'["{{python}}", "{path}", "--host", "{{host}}", "--port", "{{port}}"]', **kw
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_shipped_recipes_load_from_the_package_and_keep_engine_defaults():
    # read through importlib.resources from inside the kvbench package, as a wheel installs it
    assert (RECIPES / "vllm" / "recipe.toml").is_file()
    for engine in ("vllm", "sglang", "trtllm"):
        packaged = (RECIPES / engine / "recipe.toml").read_text()
        assert packaged == (ROOT / "backends" / engine / "recipe.toml").read_text()
    v = Recipe.load("vllm")
    argv = v.argv(
        python="py", model="/m", host="127.0.0.1", port=8000, extra=["--max-num-seqs", "4"]
    )
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert not any("prefix-caching" in a for a in argv)  # vLLM's own default (on) stays
    assert argv[argv.index("--api-server-count") + 1] == "1"
    assert v.read_settings(argv) == {"max_num_seqs": 4}
    s = Recipe.load("sglang")
    assert "--enable-metrics" in s.defaults
    assert "--disable-radix-cache" not in s.defaults and "--schedule-policy" not in s.defaults
    assert s.optional[0].args == ["--load-snapshot-publish-interval", "1"]
    t = Recipe.load("trtllm")
    assert t.config_flags[0] == "--extra_llm_api_options"  # works on every trtllm-serve version
    assert "enable_iter_perf_stats: true" in t.config and "return_perf_metrics: true" in t.config
    # nothing that would replace serve's KV or scheduler settings built from its command line
    assert "kv_cache_config" not in t.config and "scheduler_config" not in t.config


def test_trtllm_options_file_is_passed_once_and_merged_with_the_users(tmp_path):
    t = Recipe.load("trtllm")
    assert t.write_config(["--max_batch_size", "8"], tmp_path) == [
        "--max_batch_size",
        "8",
        "--extra_llm_api_options",
        str(tmp_path / "engine-config.yaml"),
    ]
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "kv_cache_config:\n  free_gpu_memory_fraction: 0.5\nenable_iter_perf_stats: false"
    )
    out = tmp_path / "launch"
    out.mkdir()
    extra = t.write_config(["--config", str(mine), "--tp_size", "2"], out)
    assert extra == ["--tp_size", "2", "--extra_llm_api_options", str(out / "engine-config.yaml")]
    merged = (out / "engine-config.yaml").read_text()
    assert "free_gpu_memory_fraction: 0.5" in merged  # the user's KV settings kept
    assert "enable_iter_perf_stats: false" in merged  # the user's choice wins
    assert "enable_iter_perf_stats: true" not in merged
    assert "return_perf_metrics: true" in merged  # what the user did not set is added
    assert t.write_config([f"--extra_llm_api_options={mine}"], out)[0] == "--extra_llm_api_options"


def test_optional_default_only_where_the_engine_defines_the_flag(tmp_path):
    toml = """
        [[optional_defaults]]
        args = ["--publish-interval", "1"]
        package = "fakeengine"
        files = ["srt/server_args.py", "srt/arg_groups/**/*.py"]
        defines = "publish_interval"
        """
    r = standin(tmp_path, extra_toml=toml)
    pkg = tmp_path / "site" / "fakeengine"
    (pkg / "srt" / "arg_groups" / "fields").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise SystemExit('the check must not import the engine')")
    (pkg / "srt" / "server_args.py").write_text("decode_log_interval = 40\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}

    def argv():
        server = launch("fake", "/m", recipe=r, env=env, log_dir=tmp_path / "log")
        server.stop()
        return server.argv

    assert "--publish-interval" not in argv()  # an older engine would reject the flag
    (pkg / "srt" / "arg_groups" / "fields" / "observability.py").write_text(
        "publish_interval: int = 15\n"
    )
    assert argv()[-2:] == ["--publish-interval", "1"]


def test_launch_passes_engine_args_env_and_records_them_redacted(tmp_path):
    r = standin(tmp_path, defaults='["--block-size", "16"]')
    dump = tmp_path / "dump.json"
    options = LaunchOptions.parse(
        None,
        ["--max-num-seqs=8", "--block-size", "32", "--api-key", "sk-very-secret"],
        [f"STANDIN_DUMP={dump}", "HF_TOKEN=hf_secret", "PLAIN=1"],
    )
    server = launch(
        "fake",
        "/m",
        python=sys.executable,
        recipe=r,
        extra_args=list(options.args),
        env=options.env,
        log_dir=tmp_path / "log",
    )
    try:
        seen = json.loads(dump.read_text())
    finally:
        server.stop()
    assert seen["argv"][-5:] == [
        "--max-num-seqs=8",
        "--block-size",
        "32",
        "--api-key",
        "sk-very-secret",
    ]
    assert "16" not in seen["argv"]  # the user's --block-size replaces the recipe's
    assert seen["env"]["HF_TOKEN"] == "hf_secret" and seen["env"]["PLAIN"] == "1"
    assert seen["env"]["PYTHONSAFEPATH"] == "1"  # the engine imports nothing from the cwd
    assert server.settings == {"max_num_seqs": 8, "block_size": 32}
    record = server.record()
    assert record["env"]["HF_TOKEN"] == "<redacted>" and record["env"]["PLAIN"] == "1"
    assert record["argv"][-2:] == ["--api-key", "<redacted>"]
    written = json.dumps(record) + server.log_text()
    assert "sk-very-secret" not in written and "hf_secret" not in written


def test_redaction_keeps_what_is_not_a_credential():
    assert redact_argv(["--api-key=x", "--max-num-batched-tokens", "8192", "--tokenizer", "t"]) == [
        "--api-key=<redacted>",
        "--max-num-batched-tokens",
        "8192",
        "--tokenizer",
        "t",
    ]
    assert redact_env(
        {"OPENAI_API_KEY": "k", "AWS_SECRET_ACCESS_KEY": "s", "DB_PASSWORD": "p"}
    ) == {
        "OPENAI_API_KEY": "<redacted>",
        "AWS_SECRET_ACCESS_KEY": "<redacted>",
        "DB_PASSWORD": "<redacted>",
    }
    assert redact_env({"VLLM_CPU_KVCACHE_SPACE": "1"}) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    labels = ["vllm", "sglang"]
    assert redact_given(["vllm=HF_TOKEN=x", "A=1"], labels, env=True) == [
        "vllm=HF_TOKEN=<redacted>",
        "A=1",
    ]
    assert redact_given(
        ["vllm=--api-key", "sglang=--tp", "vllm=k", "sglang=2"], labels, env=False
    ) == [
        "vllm=--api-key",
        "sglang=--tp",
        "vllm=<redacted>",
        "sglang=2",
    ]


def test_per_engine_launch_options():
    labels = ["vllm", "sglang"]
    py = ["vllm=/envs/vllm/bin/python"]
    args = ["--seed=1", "vllm=--max-num-seqs=8", "sglang=--tp=2"]
    env = ["A=1", "sglang=B=2"]
    v = LaunchOptions.for_engine("vllm", labels, py, args, env)
    s = LaunchOptions.for_engine("sglang", labels, py, args, env)
    assert (v.python, v.args, v.env) == (
        "/envs/vllm/bin/python",
        ("--seed=1", "--max-num-seqs=8"),
        {"A": "1"},
    )
    assert (s.python, s.args, s.env) == (None, ("--seed=1", "--tp=2"), {"A": "1", "B": "2"})
    with pytest.raises(KvbenchError, match="--engine-env 'B': expected KEY=VALUE"):
        LaunchOptions.parse(None, [], ["B"])
    # meant for an engine that is not compared: refused rather than given to every engine
    with pytest.raises(KvbenchError, match="'trtllm=--tp_size=2': trtllm is not among"):
        LaunchOptions.for_engine("vllm", labels, [], ["trtllm=--tp_size=2"], [])


def test_settings_read_both_flag_spellings(tmp_path):
    r = recipe(tmp_path, '["x"]')
    assert r.read_settings(["--max-num-seqs=8", "--block-size", "32", "--other", "1"]) == {
        "max_num_seqs": 8,
        "block_size": 32,
    }


def test_launch_waits_for_health_keeps_log_and_stops_its_workers(tmp_path):
    worker = free_port()
    r = standin(tmp_path, PARENT_OF_WORKER, defaults=f'["--worker-port", "{worker}"]')
    server = launch("fake", "/model", python=sys.executable, recipe=r, log_dir=tmp_path / "log")
    assert server.url.startswith("http://127.0.0.1:")
    assert wait_until(lambda: answers(f"http://127.0.0.1:{worker}/"), 20)
    server.stop()
    assert server.process.poll() is not None
    # the engine's own worker went with it (SIGTERM to the server's pid alone leaves it serving)
    assert wait_until(lambda: not answers(f"http://127.0.0.1:{worker}/"), 5)
    assert server.log_text().startswith("$ " + sys.executable)
    assert server.guard is None


KILLED_PARENT = """\
import sys
from pathlib import Path
from kvbench.backends.launch import Recipe, launch
r = Recipe.load("fake", Path(sys.argv[1]))
server = launch("fake", "/m", recipe=r, log_dir=Path(sys.argv[2]))
print(server.url, flush=True)
sys.stdin.read()
"""


def test_server_and_its_workers_die_with_a_sigkilled_kvbench(tmp_path):
    worker = free_port()
    standin(tmp_path, PARENT_OF_WORKER, defaults=f'["--worker-port", "{worker}"]')
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(tmp_path / "recipes"), str(tmp_path / "log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = parent.stdout.readline().strip()
    assert answers(url + "/") and wait_until(lambda: answers(f"http://127.0.0.1:{worker}/"), 20)
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not answers(url + "/"), 10)
    assert wait_until(lambda: not answers(f"http://127.0.0.1:{worker}/"), 10)
    log = (tmp_path / "log" / "fake.log").read_text()
    assert "kvbench exited without stopping it; stopping process group" in log


def test_engine_that_dies_at_start_is_reported_with_its_log(tmp_path):
    r = recipe(
        tmp_path,
        '["{python}", "-c", "import sys; print(\'CUDA out of memory\'); sys.exit(3)"]',
    )
    with pytest.raises(KvbenchError, match="exited with code 3.*CUDA out of memory"):
        launch("fake", "/model", python=sys.executable, recipe=r, log_dir=tmp_path / "log")


def test_missing_recipe_is_one_line(tmp_path):
    with pytest.raises(KvbenchError, match="no launch recipe for engine 'nope'"):
        Recipe.load("nope", tmp_path)


# --- the CLI, as users run it -----------------------------------------------------------------


def kvbench_command() -> list[str]:
    """The installed console script, as users start kvbench (it never puts the working
    directory on the module path); `python -P -m kvbench` where there is none."""
    script = Path(sys.executable).with_name("kvbench")
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "kvbench"]


def test_children_never_import_from_the_working_directory(tmp_path):
    here = tmp_path / "clone"
    (here / "kvbench").mkdir(parents=True)
    marker = tmp_path / "imported-from-cwd"
    (here / "kvbench" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "raise ImportError('the source tree, not the installed package')\n"
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [*kvbench_command(), "run", "--backend", "emulate:vllm", "--workload", "fixed:8,4"]
        + ["--request-rate", "4", "--duration", "2", "--output", str(out), "--json"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert json.loads(proc.stdout)["verdict"] in ("STABLE", "UNSTABLE", "INCONCLUSIVE")
    server = json.loads((out / "header.json").read_text())["servers"][0]
    assert server["argv"][1] == "-P" and server["env"]["PYTHONSAFEPATH"] == "1"


def _started_server(root: Path, timeout: float = 90) -> str | None:
    """The URL of the first server kvbench logged under `root` (its log's first line is the
    command), once it answers."""

    def find():
        for log in root.rglob("*.log"):
            words = log.read_text(errors="replace").split("\n", 1)[0].split()
            if "--port" in words:
                url = f"http://127.0.0.1:{words[words.index('--port') + 1]}"
                if answers(url + "/health"):
                    return url
        return None

    found = [None]
    wait_until(lambda: (found.__setitem__(0, find()) or found[0]) is not None, timeout)
    return found[0]


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--backend", "emulate:vllm", "--request-rate", "2", "--duration", "120"],
        ["compare", "--backends", "trtllm", "--no-progress"],
    ],
    ids=["run", "compare"],
)
def test_sigkill_of_kvbench_leaves_no_emulator_serving(tmp_path, command):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where `run` keeps the emulator's log
    proc = subprocess.Popen(
        [*kvbench_command(), *command]
        + (["--output-dir", str(tmp_path / "reports")] if command[0] == "compare" else []),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = _started_server(tmp_path)
        assert url is not None, "the emulator never answered"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_until(lambda: not answers(url + "/health"), 10), f"{url} still serving"


def fake_engine_python(tmp_path: Path, serve: bool) -> Path:
    """An executable standing in for an engine environment's interpreter: it records the command
    line and environment it was given, then either serves kvbench's vLLM emulator on the
    requested host and port (so kvbench measures it end to end) or fails as a broken engine."""
    script = tmp_path / "engine-python"
    dump = tmp_path / "engine-got.json"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""
        import json, os, sys
        args = sys.argv[1:]
        with open({str(dump)!r}, "w") as f:
            json.dump({{"argv": args, "env": dict(os.environ)}}, f)
        if not {serve!r}:
            print("no GPU here"); sys.exit(3)
        host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
        os.execv(sys.executable, [sys.executable, "-P", "-m", "kvbench", "emulate",
                 "--engine", "vllm", "--host", host, "--port", port])
        """)
    )
    script.chmod(0o755)
    return script


def test_run_launches_with_engine_python_args_and_env_and_records_them(tmp_path):
    python = fake_engine_python(tmp_path, serve=True)
    out = tmp_path / "run"
    proc = subprocess.run(
        [*kvbench_command(), "run", "--backend", "vllm", "--launch", "/models/m"]
        + ["--engine-python", str(python), "--engine-arg=--max-num-seqs", "--engine-arg=8"]
        + ["--engine-arg=--api-key", "--engine-arg=sk-do-not-write"]
        + ["--engine-env", "HF_TOKEN=hf_do_not_write", "--engine-env", "VLLM_X=1"]
        + [
            "--workload",
            "fixed:8,4",
            "--request-rate",
            "4",
            "--duration",
            "2",
            "--output",
            str(out),
        ]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "engine-got.json").read_text())
    assert got["argv"][:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert got["argv"][-4:] == ["--max-num-seqs", "8", "--api-key", "sk-do-not-write"]
    assert got["env"]["HF_TOKEN"] == "hf_do_not_write" and got["env"]["VLLM_X"] == "1"
    server = json.loads((out / "header.json").read_text())["servers"][0]
    assert server["argv"][0] == str(python)
    assert server["argv"][-4:] == ["--max-num-seqs", "8", "--api-key", "<redacted>"]
    assert server["env"] == {
        "PYTHONSAFEPATH": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN": "<redacted>",
        "VLLM_X": "1",
    }
    for written in [*out.rglob("*"), Path(server["log"])]:
        text = written.read_text(errors="replace") if written.is_file() else ""
        assert "do_not_write" not in text and "do-not-write" not in text, written


def test_compare_gives_each_engine_its_own_launch_options_and_records_them(tmp_path):
    python = fake_engine_python(tmp_path, serve=False)
    proc = subprocess.run(
        [*kvbench_command(), "compare", "--backends", "vllm", "--launch", "/models/m"]
        + ["--engine-python", f"vllm={python}", "--engine-arg", "vllm=--max-num-seqs=8"]
        + ["--engine-env", "vllm=SECRET_KEY=do_not_write"]
        + ["--no-progress", "--output-dir", str(tmp_path / "reports")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "exited with code 3" in proc.stdout + proc.stderr
    got = json.loads((tmp_path / "engine-got.json").read_text())
    assert got["argv"][-1] == "--max-num-seqs=8"
    assert got["env"]["SECRET_KEY"] == "do_not_write"
    (engine,) = (tmp_path / "reports").rglob("engine.json")
    data = json.loads(engine.read_text())
    assert data["status"] == "failed"
    assert data["engine_launch"] == {
        "python": str(python),
        "args": ["--max-num-seqs=8"],
        "env": {"SECRET_KEY": "<redacted>"},
    }
    for written in (tmp_path / "reports").rglob("*"):
        if written.is_file():
            assert "do_not_write" not in written.read_text(errors="replace"), written
