"""Compare reports rebuilt from raw files: numbers, escaping, failed rows, schema checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from compare_fixture import make_compare_dir

from kvbench.errors import KvbenchError
from kvbench.export.compare_report import write_report
from kvbench.report.schema import SCHEMA_VERSION, load_results

EVIL = '<script>console.log("injected")</script>'


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    d = make_compare_dir(
        tmp_path_factory.mktemp("cmp") / "r", labels=("trtllm", EVIL), failed="vllm"
    )
    write_report(d)
    return d


def _events(run_dir: Path, kind: str) -> list[dict]:
    """A run's raw request or sample lines, read with nothing but json."""
    text = (run_dir / f"{kind}s.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_report_numbers_equal_the_raw_files(report_dir):
    results = load_results(report_dir / "results.json")
    assert results.schema_version == SCHEMA_VERSION
    checked = 0
    for engine in results.engines:
        for probe in engine.probes:
            reqs = _events(report_dir / probe.run_dir, "request")
            samples = _events(report_dir / probe.run_dir, "sample")
            done = [r for r in reqs if r["finished"] is not None and r["error"] is None]
            assert probe.requests_sent == len(reqs)
            assert probe.requests_finished == len(done)
            e2e = [r["finished"] - r["sent"] for r in done]
            assert probe.latency.e2e_p99 == pytest.approx(np.percentile(e2e, 99), rel=1e-12)
            # latency counts completed requests only: one still streaming has no TTFT yet
            ttft = [r["first_token"] - r["sent"] for r in done]
            assert probe.latency.ttft_p50 == pytest.approx(np.percentile(ttft, 50), rel=1e-12)
            assert 0 < probe.mean_in_system <= probe.max_in_system
            assert len(samples) == 120  # one every 0.5 s of the 60 s run
            checked += 1
    assert checked == 8
    trtllm = results.engines[0]
    raw = json.loads((report_dir / "engines/0-engine/engine.json").read_text())
    assert trtllm.boundary.lower == raw["search"]["lower"]
    assert trtllm.boundary.upper == raw["search"]["upper"]
    assert trtllm.engine_seconds == raw["calibration"]["engine_seconds"] + sum(
        p["engine_seconds"] for p in raw["search"]["probes"]
    )
    mid = (raw["search"]["lower"] + raw["search"]["upper"]) / 2
    assert trtllm.gap_percent == pytest.approx(100 * (raw["theory"]["mu"] - mid) / mid)
    # provisioning: ⌈20 / (0.9 · μ)⌉ with μ = 0.97·3.0 → ⌈7.64⌉ = 8
    assert trtllm.provisioning.replicas_theory == 8
    assert trtllm.verdict_counts == {"STABLE": 2, "UNSTABLE": 2, "INCONCLUSIVE": 0, "FAILING": 0}


def test_summary_and_csv_show_the_results_numbers(report_dir):
    results = load_results(report_dir / "results.json")
    summary = (report_dir / "summary.md").read_text()
    html = (report_dir / "report.html").read_text()
    for engine in results.engines[:2]:
        bracket = f"{engine.boundary.lower:.3f} – {engine.boundary.upper:.3f}"
        assert bracket in summary and bracket in html
        assert f"{engine.theory.mu:.3f}" in summary and f"{engine.theory.mu:.3f}" in html
        assert f"{engine.gap_percent:+.1f}%" in summary
    probes = pd.read_csv(report_dir / "probes.csv")
    first = results.engines[0].probes
    rows = probes[probes["engine"] == "trtllm"].sort_values("probe")
    assert list(rows["rate"]) == [p.rate for p in first]
    assert list(rows["e2e_p99"]) == pytest.approx([p.latency.e2e_p99 for p in first])
    samples = pd.read_csv(report_dir / "samples.csv")
    assert set(samples["engine"]) == {"trtllm", EVIL}
    raw_kv = [s["kv_used_tokens"] for s in _events(report_dir / first[1].run_dir, "sample")]
    shown = samples[(samples["engine"] == "trtllm") & (samples["probe"] == first[1].index)]
    assert list(shown["kv_usage"]) == pytest.approx([kv / 131000 for kv in raw_kv])


def test_failed_engine_has_its_row_marked_failed(report_dir):
    results = load_results(report_dir / "results.json")
    failed = results.engines[2]
    assert failed.status == "failed" and failed.boundary is None
    assert (
        "FAILED: http://127.0.0.1:9/health: connection refused"
        in (report_dir / "summary.md").read_text()
    )
    html = (report_dir / "report.html").read_text()
    assert '<tr class="failed"\n data-engine="vllm">' in html


def test_user_labels_are_escaped_everywhere(report_dir):
    html = (report_dir / "report.html").read_text()
    summary = (report_dir / "summary.md").read_text()
    assert EVIL not in html
    # Markdown shows the command in a code span, where tags are literal text
    assert all(
        f"`kvbench compare --backends trtllm,{EVIL},vllm`" in line
        for line in summary.splitlines()
        if EVIL in line
    )
    assert "&lt;script&gt;console.log(&#34;injected&#34;)&lt;/script&gt; (emulated)" in html
    assert '&lt;script&gt;console.log("injected")&lt;/script&gt; (emulated)' in summary


def test_emulated_engines_are_marked_on_rows_and_plots(report_dir):
    html = (report_dir / "report.html").read_text()
    assert "EMULATED engines (kvbench emulate): not GPU measurements" in html
    assert html.count("trtllm (emulated)") >= 3  # summary row, plots, section title
    assert "EMULATED engines, not GPU measurements" in html  # plot titles


def test_rebuilding_gives_identical_files(report_dir):
    before = {
        p: (report_dir / p).read_bytes() for p in ("results.json", "summary.md", "report.html")
    }
    write_report(report_dir)
    assert before == {p: (report_dir / p).read_bytes() for p in before}


def test_unknown_schema_version_is_a_one_line_error(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": "kvbench.compare.results", "schema_version": 99}))
    with pytest.raises(KvbenchError, match="schema_version 99 is not supported"):
        load_results(path)


def test_truncated_last_line_of_a_killed_run_is_ignored(tmp_path):
    d = make_compare_dir(tmp_path / "r", labels=("trtllm",), capacities=(3.0,), target_rate=None)
    run = d / "engines/0-engine/probe-00/requests.jsonl"
    lines = run.read_text().splitlines()
    run.write_text("\n".join(lines) + '\n{"request_id": 99, "intended')
    (d / "engines/0-engine/probe-00/end.json").unlink()  # killed: no end line either
    report, _ = write_report(d)
    assert report.results.engines[0].probes[0].requests_sent == len(lines)
