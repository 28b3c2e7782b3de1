"""Command-line interface. One module per command; this file only assembles the group.

Commands are registered explicitly below, so the list of what `kvbench --help` shows is readable
in one place.
"""

import sys

import click

from kvbench import __version__
from kvbench.errors import KvbenchError


class _Group(click.Group):
    """Turns KvbenchError into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KvbenchError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvbench")
def cli() -> None:
    """Measure the request rate at which an LLM inference engine's queue stays bounded,
    and set it beside the KV-cache-aware queueing model's prediction."""


def _register() -> None:
    from kvbench.cli import boundary, calibrate, compare, emulate, report, run, simulate, theory

    cli.add_command(theory.theory)
    cli.add_command(emulate.emulate)
    cli.add_command(theory.provision)
    cli.add_command(calibrate.calibrate)
    cli.add_command(simulate.simulate)
    cli.add_command(run.run)
    cli.add_command(boundary.boundary)
    cli.add_command(compare.compare)
    cli.add_command(report.report)


_register()


def main() -> None:
    cli()
