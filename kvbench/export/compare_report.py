"""A compare report in every format, rebuilt from a compare directory's raw files.

from kvbench.export.compare_report import write_report
report, files = write_report(Path("reports/2026-12-01-trtllm-vs-sglang"))
"""

from __future__ import annotations

from pathlib import Path

from kvbench.report.build import Report, build_report

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"


def write_report(
    directory: Path, *, figures: bool = False, shared_plotlyjs: bool = False
) -> tuple[Report, list[Path]]:
    """(Re)build results.json, summary.md, report.html, probes.csv and samples.csv in
    `directory` from its raw files, and with `figures` each plot as PNG and SVG in figures/;
    with `shared_plotlyjs` report.html loads plotly.js from the directory above instead of
    carrying it. Returns the report and the files written."""
    # the HTML and figure writers import plotly: only when a report is written
    from kvbench.export import csv, html, markdown
    from kvbench.export import figures as static

    report = build_report(directory)
    results = directory / RESULTS_FILE
    report.results.write(results)
    summary = directory / SUMMARY_FILE
    summary.write_text(markdown.render(report.results), encoding="utf-8")
    written = [
        results,
        summary,
        html.write(report, directory, shared_plotlyjs=shared_plotlyjs),
        *csv.write(report, directory),
    ]
    return report, written + (static.write(report, directory) if figures else [])
