"""`kvbench report DIR`: rebuild a run's summary from its raw files (complete, interrupted or
killed), write summary.json and print it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvbench.benchmark.recorder import read_run, write_summary
from kvbench.benchmark.runner import summarize
from kvbench.cli.run import run_exit_status
from kvbench.export.json import write_json
from kvbench.output.run import run_summary_text
from kvbench.report.raw import is_compare_dir


@click.command(
    epilog="""\b
Examples:
  kvbench run --backend sim:sglang --request-rate 2 --duration 900 --output runs/sg-2
  kvbench report runs/sg-2
  kvbench report runs/sg-2 --json
  kvbench report reports/2026-11-28-trtllm-vs-sglang
"""
)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def report(directory: str, as_json: bool) -> None:
    """Rebuild the summary of the run in DIRECTORY from its header, request records and queue
    samples, and write it to DIRECTORY/summary.json. For a `kvbench compare` directory, rebuild
    its whole report (results.json, summary.md, report.html, CSVs) from the raw files."""
    if is_compare_dir(Path(directory)):
        from kvbench.cli.compare import rebuild_compare_report

        rebuild_compare_report(Path(directory), as_json)
        return
    data = read_run(directory)
    summary = summarize(data.header, data.records, data.samples, status=data.status)
    summary["error"] = None if data.end is None else data.end.get("error")
    summary["workload"] = data.header["config"]["workload"]
    write_summary(directory, summary)
    if as_json:
        write_json(summary)
    else:
        click.echo(run_summary_text(summary, directory))
    sys.exit(run_exit_status(summary))
