"""Workloads: specs, the packaged Azure trace, CSV/JSONL parsing and its one-line errors."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvbench.errors import KvbenchError
from kvbench.workload import (
    SyntheticWorkload,
    TraceWorkload,
    UniformLengths,
    load_workload,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "spec, law",
    [
        ("pd-1:1", UniformLengths(10, 1600, 10, 1600)),
        ("pd-2:1", UniformLengths(10, 2133, 10, 1066)),
        ("pd-1:2", UniformLengths(10, 1066, 10, 2133)),
        ("uniform:5-9,1-3", UniformLengths(5, 9, 1, 3)),
        ("fixed:512,128", UniformLengths(512, 512, 128, 128)),
    ],
)
def test_specs_parse_to_their_laws(spec, law):
    workload = load_workload(spec)
    assert isinstance(workload, SyntheticWorkload)
    assert workload.law == law and workload.name == spec
    assert workload.max_request_tokens == law.prompt_max + law.output_max
    assert workload.timestamps is None and not workload.is_trace


def test_synthetic_draws_cover_the_inclusive_range_uniformly():
    s, o = load_workload("uniform:1-4,7-8").draw(40_000, seed=5)
    assert s.dtype == np.int64 and o.dtype == np.int64
    assert sorted(np.unique(s)) == [1, 2, 3, 4] and sorted(np.unique(o)) == [7, 8]
    assert np.bincount(s)[1:] / len(s) == pytest.approx([0.25] * 4, abs=0.01)
    again = load_workload("uniform:1-4,7-8").draw(40_000, seed=5)
    assert np.array_equal(s, again[0]) and np.array_equal(o, again[1])


def test_synthetic_workload_has_no_rows():
    with pytest.raises(KvbenchError, match="no rows"):
        load_workload("pd-1:1").rows()


def test_packaged_azure_trace_matches_the_shared_copy():
    workload = load_workload("azure-conv")
    assert isinstance(workload, TraceWorkload) and workload.is_trace
    s, o = workload.rows()
    assert len(s) == 19_366
    # first and last rows of the file, and the trace's hour
    assert (s[0], o[0]) == (374, 44) and (s[-1], o[-1]) == (197, 183)
    assert workload.timestamps[1] == pytest.approx(50.9951690 - 46.6805900)
    assert workload.timestamps[-1] == pytest.approx(3501.721937)
    assert workload.max_request_tokens == int((s + o).max())


def test_trace_draws_resample_rows():
    workload = load_workload("azure-conv")
    s, o = workload.draw(1000, seed=2)
    pairs = set(zip(*workload.rows(), strict=True))
    assert all((a, b) in pairs for a, b in zip(s, o, strict=True))


def test_csv_with_seven_fractional_digits_and_crlf(tmp_path):
    path = write(
        tmp_path,
        "t.csv",
        AZURE_HEADER.replace("\n", "\r\n")
        + "2023-11-16 23:59:59.9999999,10,2\r\n2023-11-17 00:00:00.0000001,20,3\r\n",
    )
    workload = load_workload(path)
    assert workload.name == "t"
    assert workload.timestamps[1] == pytest.approx(2e-7, abs=1e-12)
    assert [list(a) for a in workload.rows()] == [[10, 20], [2, 3]]


def test_jsonl_with_and_without_timestamps(tmp_path):
    timed = write(
        tmp_path,
        "a.jsonl",
        '{"prompt_len": 5, "output_len": 6, "timestamp": 10.5}\n\n'
        '{"prompt_len": 7, "output_len": 8.0, "timestamp": 12}\n',
    )
    workload = load_workload(timed)
    assert list(workload.timestamps) == [0.0, 1.5]
    assert [list(a) for a in workload.rows()] == [[5, 7], [6, 8]]
    untimed = write(tmp_path, "b.jsonl", '{"prompt_len": 5, "output_len": 6}\n')
    assert load_workload(untimed).timestamps is None


def test_csv_in_the_jsonl_column_names_without_timestamps(tmp_path):
    path = write(tmp_path, "c.csv", "prompt_len,output_len\n3,4\n")
    workload = load_workload(path)
    assert workload.timestamps is None and workload.max_request_tokens == 7


@pytest.mark.parametrize(
    "name, text, where, reason",
    [
        ("e.csv", "", "e.csv", "empty"),
        ("h.csv", AZURE_HEADER, "h.csv", "no requests"),
        ("m.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.1,3\n", "m.csv:1", "output length"),
        (
            "n.csv",
            AZURE_HEADER + "2023-11-16 18:15:46.1,3,4\n2023-11-16 18:15:47,x,4\n",
            "n.csv:3",
            "not a non-negative integer",
        ),
        (
            "g.csv",
            AZURE_HEADER + "2023-11-16 18:15:46.1,-3,4\n",
            "g.csv:2",
            "not a non-negative integer",
        ),
        ("z.csv", AZURE_HEADER + "2023-11-16 18:15:46.1,0,4\n", "z.csv:2", "at least 1"),
        ("f.csv", AZURE_HEADER + "2023-11-16 18:15:46.1,3\n", "f.csv:2", "expected 3 fields"),
        ("t.csv", AZURE_HEADER + "yesterday,3,4\n", "t.csv:2", "timestamp"),
        ("d.csv", AZURE_HEADER + "2023-02-30 10:00:00,3,4\n", "d.csv:2", "not a valid date"),
        (
            "o.csv",
            AZURE_HEADER + "2023-11-16 10:00:01,3,4\n2023-11-16 10:00:00,3,4\n",
            "o.csv:3",
            "earlier",
        ),
        ("j.jsonl", '{"prompt_len": 1, "output_len": 2}\n[1]\n', "j.jsonl:2", "JSON object"),
        ("k.jsonl", '{"prompt_len": 1}\n', "k.jsonl:1", "output_len"),
        ("b.jsonl", '{"prompt_len": true, "output_len": 2}\n', "b.jsonl:1", "not an integer"),
        (
            "x.jsonl",
            '{"prompt_len": 1, "output_len": 2, "timestamp": 1}\n{"prompt_len": 1, "output_len": 2}\n',
            "x.jsonl:2",
            "every line",
        ),
        (
            "y.jsonl",
            '{"prompt_len": 1, "output_len": 2, "timestamp": "soon"}\n',
            "y.jsonl:1",
            "timestamp",
        ),
        (
            "w.jsonl",
            '{"prompt_len": 1, "output_len": 2}\n{oops\n',
            "w.jsonl:2",
            "not a JSON object",
        ),
    ],
)
def test_malformed_traces_fail_with_file_and_line(tmp_path, name, text, where, reason):
    path = write(tmp_path, name, text)
    with pytest.raises(KvbenchError, match=reason) as err:
        load_workload(path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / where)) and "\n" not in message


def test_unknown_spec_lists_the_choices():
    with pytest.raises(KvbenchError, match="pd-1:1.*azure-conv"):
        load_workload("pd-3:1")


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(AZURE_HEADER.encode() + b"2023-11-16 10:00:00,3,4\n\xff\xfe,1,2\n")
    with pytest.raises(KvbenchError, match=r"bin.csv:3: not UTF-8"):
        load_workload(str(path))


def _assert_loads_or_fails_cleanly(path: str) -> None:
    try:
        workload = load_workload(path)
    except KvbenchError as err:
        assert "\n" not in str(err) and str(err).startswith(path)
        return
    s, o = workload.rows()
    assert len(s) == len(o) > 0 and s.min() >= 1 and o.min() >= 1


_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_settings
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".jsonl", ".txt"]))
def test_arbitrary_bytes_never_raise_anything_but_kvbench_error(tmp_path, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    _assert_loads_or_fails_cleanly(str(path))


_cell = st.one_of(
    st.integers(-5, 10**12).map(str),
    st.sampled_from(["2023-11-16 18:15:46.6805900", "2023-11-16T18:15:46Z", "1.5", "nan", "", '"']),
    st.text(max_size=8),
)


@_settings
@given(rows=st.lists(st.lists(_cell, min_size=0, max_size=4), max_size=6))
def test_arbitrary_csv_lines_never_raise_anything_but_kvbench_error(tmp_path, rows):
    path = tmp_path / "fuzz.csv"
    path.write_text(AZURE_HEADER + "\n".join(",".join(row) for row in rows), encoding="utf-8")
    _assert_loads_or_fails_cleanly(str(path))


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@_settings
@given(
    records=st.lists(
        st.dictionaries(
            st.sampled_from(["prompt_len", "output_len", "timestamp", "x"]),
            _json_value | st.integers(-3, 5000),
            max_size=4,
        ),
        max_size=5,
    )
)
def test_arbitrary_jsonl_records_never_raise_anything_but_kvbench_error(tmp_path, records):
    import json

    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    _assert_loads_or_fails_cleanly(str(path))


def test_trace_arrays_are_read_only_so_a_cached_trace_cannot_be_corrupted():
    workload = load_workload("azure-conv")
    s, _ = workload.rows()
    with pytest.raises(ValueError):
        s[0] = 1
    with pytest.raises(ValueError):
        workload.timestamps[0] = 1.0
    assert load_workload("azure-conv").rows()[0][0] == 374
