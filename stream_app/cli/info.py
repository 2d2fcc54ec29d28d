"""`stream-app settings` and `stream-app schemas`: what a user configures and what they receive."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from stream_app.settings import setting_docs

__all__ = ["settings", "schemas"]


@click.command()
def settings() -> None:
    """List every STREAM_APP_* environment variable with its default and meaning."""
    from rich.table import Table

    table = Table("variable", "default", "meaning")
    for env, default, doc in setting_docs():
        table.add_row(env, default, doc)
    Console().print(table)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write <topic>.schema.json files here instead of printing one JSON document.")
def schemas(out_dir: Path | None) -> None:
    """JSON Schema of every topic's values (inputs, outputs, dead letters)."""
    import json

    from schemas import json_schemas, write_schemas

    if out_dir is None:
        click.echo(json.dumps(json_schemas(), indent=2))
        return
    for path in write_schemas(out_dir):
        click.echo(path)
