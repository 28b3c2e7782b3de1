"""`kvbench theory` and `kvbench provision` (issue 2)."""

import click


@click.command()
def theory() -> None:
    """Stability rate of the KV-cache queueing model (placeholder until issue 2 lands)."""
    raise click.ClickException("not implemented yet")


@click.command()
def provision() -> None:
    """Replicas needed for a target rate (placeholder until issue 2 lands)."""
    raise click.ClickException("not implemented yet")
