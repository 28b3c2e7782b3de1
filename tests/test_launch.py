"""The launcher against stand-in processes (a real engine is launched in tests/engines/)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from kvbench.backends.launch import Recipe, launch
from kvbench.errors import KvbenchError


def recipe(
    tmp_path, command: str, defaults='["--no-enable-prefix-caching", "--api-server-count", "1"]'
):
    d = tmp_path / "fake"
    d.mkdir()
    (d / "recipe.toml").write_text(
        textwrap.dedent(f"""
        engine = "fake"
        command = {command}
        health = "/"
        startup_timeout_s = 20
        defaults = {defaults}
        [settings]
        "--max-num-seqs" = "max_num_seqs"
        "--block-size" = "block_size"
        """)
    )
    return Recipe.load("fake", tmp_path)


def test_shipped_recipes_load_and_keep_modelling_defaults():
    v = Recipe.load("vllm")
    argv = v.argv(
        python="py",
        model="/m",
        host="127.0.0.1",
        port=8000,
        config=None,
        extra=["--max-num-seqs", "4", "--enable-prefix-caching"],
    )
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--no-enable-prefix-caching" not in argv  # the user's explicit choice wins
    assert argv[argv.index("--api-server-count") + 1] == "1"
    assert v.read_settings(argv) == {"max_num_seqs": 4}
    assert "--enable-metrics" in Recipe.load("sglang").defaults
    assert "enable_iter_perf_stats: true" in Recipe.load("trtllm").config


def test_settings_read_both_flag_spellings(tmp_path):
    r = recipe(tmp_path, '["x"]')
    assert r.read_settings(["--max-num-seqs=8", "--block-size", "32", "--other", "1"]) == {
        "max_num_seqs": 8,
        "block_size": 32,
    }


def test_launch_waits_for_health_keeps_log_and_stops_by_pid(tmp_path):
    r = recipe(tmp_path, '["{python}", "-m", "http.server", "{port}", "--bind", "{host}"]', "[]")
    server = launch("fake", "/model", python=sys.executable, recipe=r, log_dir=tmp_path / "log")
    assert server.url.startswith("http://127.0.0.1:")
    assert server.process.poll() is None
    server.stop()
    assert server.process.poll() is not None
    assert server.log_text().startswith("$ " + sys.executable)


def test_engine_that_dies_at_start_is_reported_with_its_log(tmp_path):
    r = recipe(
        tmp_path,
        '["{python}", "-c", "import sys; print(\'CUDA out of memory\'); sys.exit(3)"]',
        "[]",
    )
    with pytest.raises(KvbenchError, match="exited with code 3.*CUDA out of memory"):
        launch("fake", "/model", python=sys.executable, recipe=r, log_dir=tmp_path / "log")


def test_missing_recipe_is_one_line(tmp_path):
    with pytest.raises(KvbenchError, match="no launch recipe for engine 'nope'"):
        Recipe.load("nope", tmp_path)
