"""`kvbench report DIR`: rebuild a run's summary from its raw files (complete, interrupted or
killed), write summary.json and print it. `kvbench report merge DIR… --output DIR`: one report
from compare directories made on different machines."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from kvbench.benchmark.raw import is_compare_dir
from kvbench.benchmark.recorder import read_run, write_summary
from kvbench.benchmark.runner import summarize
from kvbench.cli import options
from kvbench.cli.run import run_exit_status
from kvbench.errors import KvbenchError
from kvbench.export.json import write_json
from kvbench.output.run import run_summary_text


class _ReportGroup(click.Group):
    """`report merge …` is a subcommand; anything else (`report DIR`, `report --json DIR`) is
    the rebuild of one directory, as before there were subcommands."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return "rebuild", rebuild, args


@click.command(
    "rebuild",
    epilog="""\b
Examples:
  kvbench run --backend sim:sglang --request-rate 2 --duration 900 --output runs/sg-2
  kvbench report runs/sg-2
  kvbench report runs/sg-2 --json
  kvbench report reports/2026-12-01-trtllm-vs-sglang
""",
)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@options.static_figures()
@options.shared_plotlyjs()
def rebuild(directory: str, as_json: bool, figures: bool, shared_plotlyjs: bool) -> None:
    """Rebuild the summary of the run in DIRECTORY from its header, request records and queue
    samples, and write it to DIRECTORY/summary.json. For a `kvbench compare` directory, rebuild
    its whole report (results.json, summary.md, report.html, CSVs) from the raw files."""
    if is_compare_dir(Path(directory)):
        from kvbench.cli.compare import failed_engines_status, rebuild_compare_report

        report = rebuild_compare_report(Path(directory), as_json, figures, shared_plotlyjs)
        sys.exit(failed_engines_status(report.results))
    if figures or shared_plotlyjs:
        raise KvbenchError(
            f"{directory}: --figures and --shared-plotlyjs are for a compare directory's "
            "report.html; a run has none"
        )
    data = read_run(directory)
    summary = summarize(
        data.header, data.records, data.samples, status=data.status, scrape=data.scrape
    )
    summary["error"] = None if data.end is None else data.end.get("error")
    summary["workload"] = data.header["config"]["workload"]
    write_summary(directory, summary)
    if as_json:
        write_json(summary)
    else:
        click.echo(run_summary_text(summary, directory))
    sys.exit(run_exit_status(summary))


@click.command(
    epilog="""\b
Examples:
  kvbench report merge h200/2026-11-30-h200 mi300/2026-11-30-mi300 --output h200-vs-mi300
"""
)
@click.argument("directories", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The merged report's directory (new, or empty).",
)
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout.")
@options.shared_plotlyjs()
def merge(directories: tuple[str, ...], output: Path, as_json: bool, shared_plotlyjs: bool) -> None:
    """Build one report from compare directories made on different machines: every engine of
    every directory becomes a row, grouped by hardware. Directories that differ in workload,
    seed or kvbench version are merged with a warning (in the report and on stderr)."""
    from kvbench.cli.compare import rebuild_compare_report
    from kvbench.report.merge import merge as merge_directories

    command = shlex.join(["kvbench", "report", "merge", *directories, "--output", str(output)])
    merged = merge_directories([Path(d) for d in directories], output, command)
    report = rebuild_compare_report(merged, as_json, shared_plotlyjs=shared_plotlyjs)
    for warning in report.results.warnings:
        click.echo(f"warning: {warning}", err=True)


@click.group(
    cls=_ReportGroup,
    subcommand_metavar="DIRECTORY | merge DIRECTORY... --output DIR",
    context_settings={"ignore_unknown_options": True},
    invoke_without_command=False,
)
def report() -> None:
    """Rebuild a run's or a comparison's report from its raw files (`kvbench report DIR`), or
    merge comparisons made on different machines into one (`kvbench report merge DIR…`)."""


report.add_command(rebuild)
report.add_command(merge)
