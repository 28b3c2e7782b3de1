"""Command-line interface. One module per command; this file only assembles the group.

Commands are registered explicitly below, so the list of what `kvbench --help` shows is readable
in one place.
"""

import sys
from collections.abc import Sequence
from typing import Any

import click

from kvbench import __version__, interrupt
from kvbench.errors import KvbenchError


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Group(click.Group):
    """Every failure a user can cause ends the same way: one `error: …` line on stderr and a
    non-zero exit (2 for bad input, click's usage errors included), never a traceback. A
    SIGTERM stops a command as Ctrl-C does (kvbench.interrupt), exiting 143 (Ctrl-C: 130)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as err:
            # click's own rendering is three lines (usage, hint, error); the hint fits in one
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            click.echo(f"error: {_one_line(err.format_message())}{hint}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"error: {_one_line(err.format_message())}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        # without standalone mode click returns the exit status of --help/--version, else the
        # command's return value (None)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        with interrupt.sigterm_as_ctrl_c():
            try:
                result = super().invoke(ctx)
            except KvbenchError as err:
                click.echo(f"error: {err}", err=True)
                sys.exit(err.exit_code)
            except KeyboardInterrupt:
                # a command that keeps partial results says where before this
                click.echo(f"stopped by {interrupt.stopped_by()}", err=True)
                sys.exit(interrupt.exit_code())
            if interrupt.terminated():
                # the command finished what it was doing when the SIGTERM came; still say so
                sys.exit(interrupt.exit_code())
            return result


@click.group(name="kvbench", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvbench")
def cli() -> None:
    """Measure the request rate at which an LLM inference engine's queue stays bounded,
    and set it beside the KV-cache-aware queueing model's prediction."""


def _register() -> None:
    from kvbench.cli import (
        boundary,
        calibrate,
        compare,
        emulate,
        report,
        run,
        simulate,
        sweep,
        theory,
    )

    cli.add_command(theory.theory)
    cli.add_command(emulate.emulate)
    cli.add_command(theory.provision)
    cli.add_command(calibrate.calibrate)
    cli.add_command(simulate.simulate)
    cli.add_command(run.run)
    cli.add_command(boundary.boundary)
    cli.add_command(compare.compare)
    cli.add_command(report.report)
    cli.add_command(sweep.sweep)


_register()


def main() -> None:
    cli()
