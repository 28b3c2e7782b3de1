"""Realistic workloads: shared prefixes (`prefix:N,P,SPEC`) down to the HTTP bodies, ShareGPT
conversations, CSV traces read by pandas with the row-by-row reader's errors, and parquet export
without its optional extra."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from click.testing import CliRunner
from emulator_helpers import ListSink, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvbench.workload as workload_module
from kvbench.backends.engines import ENGINES
from kvbench.benchmark.runner import build_schedule
from kvbench.cli import cli
from kvbench.emulate.formats import make_format
from kvbench.emulate.server import build_app
from kvbench.errors import KvbenchError
from kvbench.profile import build_profile
from kvbench.workload import (
    SharedPrefix,
    SyntheticWorkload,
    TraceWorkload,
    UniformLengths,
    load_workload,
)

DATA = Path(__file__).parent / "data"
SHAREGPT = DATA / "sharegpt_sample.json"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


# --- shared prefixes ---------------------------------------------------------------------------


def test_prefix_spec_adds_the_prefix_to_every_prompt_of_its_inner_law():
    workload = load_workload("prefix:4,100,uniform:10-20,5-6")
    assert isinstance(workload, SyntheticWorkload)
    assert workload.prefix == SharedPrefix(count=4, length=100)
    assert workload.law == UniformLengths(110, 120, 5, 6)
    assert workload.max_request_tokens == 126
    s, o = workload.draw(1000, seed=3)
    inner_s, inner_o = load_workload("uniform:10-20,5-6").draw(1000, seed=3)
    np.testing.assert_array_equal(s, inner_s + 100)
    np.testing.assert_array_equal(o, inner_o)


def test_prefix_ids_are_uniform_reproducible_and_independent_of_the_lengths():
    workload = load_workload("prefix:4,100,fixed:10,5")
    ids = workload.prefix_ids(40_000, seed=7)
    np.testing.assert_array_equal(ids, workload.prefix_ids(40_000, seed=7))
    assert not np.array_equal(ids, workload.prefix_ids(40_000, seed=8))
    counts = np.bincount(ids, minlength=4)
    assert counts.size == 4 and np.all(np.abs(counts - 10_000) < 400)  # 4σ is 346
    assert load_workload("fixed:10,5").prefix_ids(10, seed=7) is None


def test_prefix_over_a_trace_keeps_its_rows_and_timestamps():
    workload = load_workload(f"prefix:2,7,{SHAREGPT}")
    assert isinstance(workload, TraceWorkload)
    assert [list(a) for a in workload.rows()] == [[19, 18, 16], [61, 38, 27]]
    azure = load_workload("prefix:3,50,azure-conv")
    np.testing.assert_array_equal(azure.rows()[0], load_workload("azure-conv").rows()[0] + 50)
    assert azure.timestamps is load_workload("azure-conv").timestamps


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("prefix:4,100", "expected prefix:N,P,SPEC"),
        ("prefix:0,100,fixed:1,1", "N must be an integer ≥ 1"),
        ("prefix:2,x,fixed:1,1", "P must be an integer ≥ 1"),
        ("prefix:2,3,prefix:2,3,fixed:1,1", "one prefix"),
        ("prefix:2,3,fixed:0,1", "prompt range"),
        ("prefix:2,999999990,fixed:10,1", "exceeds"),
    ],
)
def test_bad_prefix_specs_say_what_is_wrong(spec, reason):
    with pytest.raises(KvbenchError, match=reason):
        load_workload(spec)


def test_schedule_requests_carry_their_prefix():
    requests = build_schedule(load_workload("prefix:3,64,fixed:32,4"), 10.0, num_prompts=50, seed=2)
    ids = load_workload("prefix:3,64,fixed:32,4").prefix_ids(50, seed=2)
    assert [r.prefix_id for r in requests] == list(ids)
    assert {(r.prompt_len, r.prefix_len) for r in requests} == {(96, 64)}
    assert all(
        r.prefix_id is None
        for r in build_schedule(load_workload("fixed:32,4"), 10.0, num_prompts=5)
    )


def test_http_requests_naming_a_prefix_send_the_same_first_tokens():
    """Through the real driver to a vLLM emulator: the bodies' first 64 ids group exactly as the
    schedule's prefix ids do, and the 32 ids after them are every request's own."""
    bodies: list[dict] = []

    @web.middleware
    async def capture(request, handler):
        if request.path == "/v1/completions":
            bodies.append(await request.json())
        return await handler(request)

    app = build_app(make_format("vllm", build_profile("vllm", kv_tokens=20_000)), zero_latency=True)
    app.middlewares.append(capture)
    requests = build_schedule(
        load_workload("prefix:3,64,fixed:32,4"), 100.0, num_prompts=30, seed=2
    )
    with serving(app) as url:
        backend = ENGINES["vllm"](url, scrape_period=0.05)
        backend.execute(requests, ListSink(), duration=5.0)
    assert not backend.failures and len(bodies) == 30
    prompts = [body["prompt"] for body in bodies]
    assert {len(p) for p in prompts} == {96}
    groups = Counter(tuple(p[:64]) for p in prompts)
    assert sorted(groups.values()) == sorted(Counter(r.prefix_id for r in requests).values())
    assert len({tuple(p[64:]) for p in prompts}) == 30


# --- ShareGPT ----------------------------------------------------------------------------------


def test_sharegpt_takes_each_conversations_opening_exchange_from_its_counts():
    workload = load_workload(str(SHAREGPT))
    # QWJhYvA_0 (12, 61); hRPPgZT_0 (11, 38); 2SsZjWY_7 (9, 27). Skipped: one turn, opened by
    # gpt, no turns.
    assert [list(a) for a in workload.rows()] == [[12, 11, 9], [61, 38, 27]]
    assert workload.timestamps is None and workload.name == "sharegpt_sample"
    assert load_workload(f"sharegpt:{SHAREGPT}").rows()[0].tolist() == [12, 11, 9]


def _without_counts(tmp_path):
    text = SHAREGPT.read_text()
    path = tmp_path / "nocounts.json"
    path.write_text(text.replace('"num_tokens"', '"n"'))
    return path


def test_sharegpt_without_counts_or_tokenizer_says_what_is_needed(tmp_path):
    path = _without_counts(tmp_path)
    with pytest.raises(KvbenchError) as err:
        load_workload(str(path))
    message = str(err.value)
    assert message.startswith(
        f"{path}: conversation 0 (id 'QWJhYvA_0'): the prompt turn has no num_tokens"
    )
    assert "tokenizer=DIR" in message and "transformers" in message and "\n" not in message


def test_sharegpt_tokenizer_without_transformers_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as when it is not installed
    path = _without_counts(tmp_path)
    r = CliRunner().invoke(cli, ["theory", "--workload", f"sharegpt:{path},tokenizer={tmp_path}"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: {path}: counting tokens with tokenizer={tmp_path} needs transformers "
        "(pip install transformers), or give each turn a num_tokens count"
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"id": "a"}', "expected a JSON list of conversations"),
        ('[{"id": "a", "conversations": 3}]', "conversation 0 \\(id 'a'\\): expected an object"),
        ('[\n{"id": "a",\n "conversations": [}\n]', ":3: not JSON"),
        (
            '[{"conversations": [{"from": "human", "num_tokens": 0}, {"from": "gpt", "num_tokens": 3}]}]',
            "conversation 0: prompt num_tokens must be at least 1",
        ),
        ('[{"conversations": [{"from": "gpt", "value": "x"}]}]', "no conversation opens"),
    ],
)
def test_bad_sharegpt_files_name_the_conversation(tmp_path, text, reason):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(KvbenchError, match=reason) as err:
        load_workload(f"sharegpt:{path}")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


# --- CSV traces through pandas -----------------------------------------------------------------


@pytest.fixture
def fast(monkeypatch):
    """Every CSV trace read by pandas first, however small."""
    monkeypatch.setattr(workload_module, "FAST_CSV_BYTES", 0)


def _both(path: str):
    """(row-by-row result, pandas-first result): arrays or the error message."""
    results = []
    for threshold in (float("inf"), 0):
        saved = workload_module.FAST_CSV_BYTES
        workload_module.FAST_CSV_BYTES = threshold
        try:
            w = load_workload(path)
            results.append(
                (
                    w.prompt_lens.tolist(),
                    w.output_lens.tolist(),
                    None if w.timestamps is None else w.timestamps.tolist(),
                )
            )
        except KvbenchError as err:
            results.append(str(err))
        finally:
            workload_module.FAST_CSV_BYTES = saved
    return results


def test_pandas_reads_the_packaged_trace_as_the_row_reader_does(tmp_path):
    text = (Path(workload_module.__file__).parent / "data" / "azure_llm_2023_conv.csv").read_text()
    path = tmp_path / "azure.csv"
    path.write_text(text)
    slow, quick = _both(str(path))
    assert slow[:2] == quick[:2]
    np.testing.assert_allclose(quick[2], slow[2], rtol=0, atol=1e-9)
    assert quick[2][-1] == pytest.approx(3501.721937)


def test_pandas_path_reads_integer_seconds_and_the_jsonl_column_names(tmp_path, fast):
    path = tmp_path / "s.csv"
    path.write_text("timestamp,prompt_len,output_len\n100,3,4\n102,5,6\n102,7,8\n")
    w = load_workload(str(path))
    assert w.timestamps.tolist() == [0.0, 2.0, 2.0]
    assert [a.tolist() for a in w.rows()] == [[3, 5, 7], [4, 6, 8]]


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            AZURE_HEADER + "2023-11-16 18:15:46.1,3,4\n2023-11-16 18:15:47.0,x,4\n",
            3,
            "not a non-negative integer",
        ),
        (
            AZURE_HEADER + "2023-11-16 18:15:46.1,3,4\n" * 3 + "2023-11-16 18:15:46.1,0,4\n",
            5,
            "at least 1",
        ),
        (
            AZURE_HEADER + "2023-11-16 18:15:46.1,3,4\n2023-11-16 18:15:46.1,3\n",
            3,
            "expected 3 fields",
        ),
        (
            AZURE_HEADER + "2023-11-16 18:15:46.1,3,4\n2023-11-16 18:15:46.1,3,4,5\n",
            3,
            "expected 3 fields",
        ),
        (AZURE_HEADER + "2023-11-16 18:15:46.1,3,4\nyesterday,3,4\n", 3, "timestamp"),
        (AZURE_HEADER + "2023-11-16 10:00:01.0,3,4\n2023-11-16 10:00:00.5,3,4\n", 3, "earlier"),
        (
            AZURE_HEADER + "2023-11-16 10:00:01.0,3,4\n2023-11-16 10:00:02.0,3,2000000000\n",
            3,
            "exceeds",
        ),
        (
            AZURE_HEADER + "2023-11-16 10:00:01.0,3,4\n2023-11-16 10:00:02.0,3.5,4\n",
            3,
            "not a non-negative integer",
        ),
    ],
)
def test_bad_rows_are_named_by_line_when_pandas_reads_first(tmp_path, fast, text, where, reason):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(KvbenchError, match=reason) as err:
        load_workload(str(path))
    assert str(err.value).startswith(f"{path}:{where}: ") and "\n" not in str(err.value)


_cell = st.one_of(
    st.integers(-5, 10**12).map(str),
    st.sampled_from(
        [
            "2023-11-16 18:15:46.6805900",
            "2023-11-16 18:15:47.1",
            "2023-11-16T18:15:46Z",
            "1.5",
            "7",
            "nan",
            "",
            '"',
            " 3",
        ]
    ),
    st.text(max_size=6),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.lists(_cell, min_size=2, max_size=4), max_size=6))
def test_pandas_first_and_row_by_row_agree_on_any_file(tmp_path, rows):
    path = tmp_path / "fuzz.csv"
    path.write_text(AZURE_HEADER + "\n".join(",".join(row) for row in rows), encoding="utf-8")
    slow, quick = _both(str(path))
    if isinstance(slow, str) or isinstance(quick, str):
        assert slow == quick
    else:
        assert slow[:2] == quick[:2]
        assert (slow[2] is None) == (quick[2] is None)
        if slow[2] is not None:
            np.testing.assert_allclose(quick[2], slow[2], rtol=0, atol=1e-6)


# --- parquet without pyarrow -------------------------------------------------------------------


def test_parquet_export_without_pyarrow_names_the_extra_before_simulating(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as in a plain `pip install kvbench`
    out = tmp_path / "sim"
    r = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--engine",
            "vllm",
            "--request-rate",
            "1",
            "--num-prompts",
            "5",
            "--output",
            str(out),
        ],
    )
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: writing parquet needs pyarrow: pip install 'kvbench[parquet]' (or pip install pyarrow)"
    ]
    assert not out.exists()
