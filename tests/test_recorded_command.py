"""The command line a compare records (results.json `command`, the report's header) is the one
the user typed: no flag they did not give, credentials redacted."""

from __future__ import annotations

import shlex

from kvbench.cli.compare import _command_line, compare


def recorded(*args: str) -> list[str]:
    ctx = compare.make_context("compare", list(args))
    return shlex.split(_command_line(ctx))


def test_nothing_typed_records_only_the_backends():
    # before: click's UNSET defaults differ from every value, so `--json` was always appended
    assert recorded() == ["kvbench", "compare", "--backends", "trtllm,sglang"]


def test_typed_options_are_recorded_and_defaults_left_out():
    words = recorded(
        "--backends", "sim:vllm", "--seed", "3", "--json", "--confidence", "0.95", "--no-progress"
    )
    assert words == [
        "kvbench", "compare", "--backends", "sim:vllm", "--confidence", "0.95", "--seed", "3",
        "--json",
    ]  # fmt: skip


def test_credentials_typed_are_not_recorded():
    words = recorded(
        "--backends", "a=vllm", "--url", "a=http://u:pw@h:8000", "--api-key", "sk-secret",
        "--header", "Authorization=Bearer x",
    )  # fmt: skip
    text = " ".join(words)
    assert "sk-secret" not in text and "pw" not in text and "Bearer" not in text
    assert ["--api-key", "***"] == words[words.index("--api-key") : words.index("--api-key") + 2]
