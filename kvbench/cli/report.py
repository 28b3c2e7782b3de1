"""`kvbench report DIR`: rebuild a report from the raw files a run or a compare wrote."""

from __future__ import annotations

from pathlib import Path

import click

from kvbench.errors import KvbenchError
from kvbench.report.raw import is_compare_dir


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def report(directory: Path, as_json: bool) -> None:
    """Rebuild the report of a compare directory from its raw files.

    \b
    Example:
      kvbench report reports/2026-11-28-trtllm-vs-sglang
    """
    if not directory.is_dir():
        raise KvbenchError(f"{directory}: no such directory")
    if is_compare_dir(directory):
        from kvbench.cli.compare import rebuild_compare_report

        rebuild_compare_report(directory, as_json)
        return
    raise KvbenchError(f"{directory}: not a kvbench compare directory (no compare.json)")
