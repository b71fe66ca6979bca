"""``sslx new-plugin``: scaffold a pretext-task plugin package (being written)."""

from __future__ import annotations

import click


@click.command("new-plugin")
@click.argument("name")
def new_plugin(name: str) -> None:
    """Scaffold a new pretext-task plugin package NAME."""
    raise click.ClickException("not implemented yet")
