"""Labelled engines (`--backends LABEL=ENGINE`), the results.json schema, and `kvbench report
merge`: two comparisons made as if on two machines (the hardware stated with --metadata) become
one report with a System table grouped by hardware, and a mismatch between them is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from kvbench.backends.labels import parse_backends
from kvbench.cli import cli
from kvbench.errors import KvbenchError
from kvbench.redact import REDACTED

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "kvbench" / "report" / "results.schema.json"
FAST = ["--precision", "0.2", "--max-engine-seconds", "3000", "--no-progress"]


def _compare(out: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli, ["compare", "--output-dir", str(out), *FAST, *args])
    assert result.exit_code == 0, result.output
    (directory,) = [p for p in out.iterdir() if p.is_dir()]
    return directory


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """One comparison per 'machine': the simulated engines, labelled, each host described by
    --metadata as a remote engine's would be."""
    a = _compare(
        tmp_path_factory.mktemp("h200"),
        "--backends",
        "h200-trt=sim:trtllm,h200-vllm=sim:vllm",
        "--metadata",
        "gpu_model=NVIDIA H200",
        "--metadata",
        "gpu_count=8",
        "--metadata",
        "rack=b7",
        "--metadata",
        "api_key=sk-live-9",
        "--seed",
        "3",
    )
    b = _compare(
        tmp_path_factory.mktemp("mi300"),
        "--backends",
        "mi300-sgl=sim:sglang",
        "--metadata",
        "gpu_model=AMD Instinct MI300X",
        "--metadata",
        "gpu_count=8",
        "--seed",
        "4",
    )
    return a, b


def test_labels_name_the_rows_and_provenance_is_recorded(machines):
    a, _ = machines
    results = json.loads((a / "results.json").read_text())
    assert [e["label"] for e in results["engines"]] == ["h200-trt", "h200-vllm"]
    assert [e["backend"] for e in results["engines"]] == ["sim:trtllm", "sim:vllm"]
    prov = results["engines"][0]["provenance"]
    assert prov["engine"]["name"] == "trtllm"
    assert prov["hardware"]["gpu_model"] == "NVIDIA H200"
    assert prov["hardware"]["gpu_count"] == 8
    assert prov["sources"]["hardware.gpu_count"] == "--metadata"
    assert prov["metadata"]["rack"] == "b7"
    # a credential given as metadata is written nowhere: not in the command, config or results
    assert prov["metadata"]["api_key"] == REDACTED
    assert f"api_key={REDACTED}" in results["command"]
    for path in a.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".html", ".csv", ".jsonl"):
            assert "sk-live-9" not in path.read_text(errors="replace"), path
    # the simulator serves no model: absent, with the reason
    assert prov["model"]["id"] is None and "simulated" in prov["absent"]["model.id"]
    summary = (a / "summary.md").read_text()
    assert summary.index("## System") < summary.index("## Summary")
    assert "8 × NVIDIA H200" in summary and "rack=b7" in summary
    html = (a / "report.html").read_text()
    assert html.index('id="system"') < html.index('id="summary"')


def test_fresh_results_json_validates_against_the_published_schema(machines):
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for directory in machines:
        results = json.loads((directory / "results.json").read_text())
        jsonschema.validate(results, schema)
    # the schema has teeth: a renamed field or a wrong type is caught
    broken = json.loads((machines[0] / "results.json").read_text())
    broken["engines"][0]["provenance"]["hardware"]["gpu_count"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    del broken["engines"][0]["probes"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_docs_publish_the_same_schema():
    docs = SCHEMA_FILE.parents[2] / "docs" / "results.schema.json"
    assert json.loads(docs.read_text()) == json.loads(SCHEMA_FILE.read_text())


def test_merge_builds_one_report_grouped_by_hardware_and_flags_mismatches(machines, tmp_path):
    a, b = machines
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        cli, ["report", "merge", str(b), str(a), "--output", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    stdout = result.stdout
    merged = json.loads(stdout)
    # rows grouped by hardware, each group where it first appears (the MI300X directory first)
    assert [e["label"] for e in merged["engines"]] == ["mi300-sgl", "h200-trt", "h200-vllm"]
    assert [m["seed"] for m in merged["merged_from"]] == [4, 3]
    (warning,) = merged["warnings"]
    assert "seeds" in warning and f"{a.name}: 3" in warning and f"{b.name}: 4" in warning
    assert f"warning: {warning}" in result.stderr
    # the figures are the sources' own: each engine's bracket is unchanged by the merge
    for source in (a, b):
        for e in json.loads((source / "results.json").read_text())["engines"]:
            (same,) = [m for m in merged["engines"] if m["label"] == e["label"]]
            assert same["boundary"] == e["boundary"]
            assert [p["rate"] for p in same["probes"]] == [p["rate"] for p in e["probes"]]
    summary = (out / "summary.md").read_text()
    assert "Warning: the merged runs differ in seeds" in summary
    assert summary.index("8 × AMD Instinct MI300X") < summary.index("8 × NVIDIA H200")
    # rebuilding the merged directory from its raw files gives the same results
    again = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["engines"] == merged["engines"]


def test_merging_a_directory_with_itself_renames_the_shared_labels(machines, tmp_path):
    a, _ = machines
    copy = tmp_path / "again"
    import shutil

    shutil.copytree(a, copy)
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["report", "merge", str(a), str(copy), "--output", str(out)])
    assert result.exit_code == 0, result.output
    labels = [e["label"] for e in json.loads((out / "results.json").read_text())["engines"]]
    assert labels == [
        f"h200-trt@{a.name}",
        f"h200-vllm@{a.name}",
        "h200-trt@again",
        "h200-vllm@again",
    ]
    assert "warning" not in result.stderr  # same workload, seed and version


def test_merge_refuses_a_non_compare_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    result = CliRunner().invoke(
        cli, ["report", "merge", str(tmp_path / "x"), str(tmp_path / "y"), "--output", "o"]
    )
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert (
        result.output.startswith("error: ") and "not a kvbench compare directory" in result.output
    )


def test_parse_backends_labels():
    assert parse_backends("h200-trt=trtllm, mi300-sgl=sglang") == (
        ["h200-trt", "mi300-sgl"],
        {"h200-trt": "trtllm", "mi300-sgl": "sglang"},
    )
    assert parse_backends("trtllm,sim:sglang") == (
        ["trtllm", "sim:sglang"],
        {"trtllm": "trtllm", "sim:sglang": "sim:sglang"},
    )


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ("vllm,vllm", "names vllm twice; label each, e.g. --backends vllm-a=vllm,vllm-b=vllm"),
        ("a=vllm,a=sglang", "label 'a' is given twice"),
        ("a=h100", "unknown engine 'h100'"),
        ("=vllm", "expected ENGINE or LABEL=ENGINE"),
    ],
)
def test_bad_backends_are_refused_with_one_error_line(backends, message):
    with pytest.raises(KvbenchError, match=message.replace("(", r"\(")):
        parse_backends(backends)
    result = CliRunner().invoke(cli, ["compare", "--backends", backends, "--no-progress"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_url_attaches_by_label(tmp_path):
    # the label, not the engine, names the URL; a URL for an unknown label is refused
    result = CliRunner().invoke(
        cli,
        ["compare", "--backends", "box=vllm", "--url", "vllm=http://127.0.0.1:9", "--no-progress"],
    )
    assert result.exit_code == 2 and "--url names vllm, not in --backends" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            "--backends",
            "box=vllm",
            "--url",
            "box=http://127.0.0.1:9",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
            "--json",
        ],
    )
    (engine,) = json.loads(result.stdout)["engines"]
    assert (engine["label"], engine["backend"], engine["status"]) == ("box", "vllm", "failed")
    assert engine["urls"] == ["http://127.0.0.1:9"]
