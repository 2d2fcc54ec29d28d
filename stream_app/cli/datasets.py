"""`stream-app datasets`: the named public data sets, where they are found, and `fetch` to get one."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from stream_app import datasets as catalogue
from stream_app.cli.common import console, env_help
from stream_app.settings import Settings

__all__ = ["datasets", "fetch"]


@click.group(invoke_without_command=True)
@click.pass_context
def datasets(ctx: click.Context) -> None:
    """List the named data sets (source, licence, size, where found); `datasets fetch NAME` gets one.

    `replay`, `train` and `evaluate` look for a set in --data-dir (when given), then the cache
    ($STREAM_APP_CACHE/data), then $STREAM_APP_DATA_DIR, then ../shared/data beside the project.
    """
    if ctx.invoked_subcommand is None:
        _list(Settings.from_env())


def _list(settings: Settings) -> None:
    table = Table(show_lines=True)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("data set, source, licence", ratio=3, overflow="fold")
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("found in", ratio=1, overflow="fold")
    for entry in catalogue.CATALOGUE.values():
        found = catalogue.find(entry.name, settings)
        where = str(found) if found else f"[yellow]not found[/]: stream-app datasets fetch {entry.name}"
        about = f"{entry.title}\n[dim]source:[/] {entry.source}\n[dim]licence:[/] {entry.licence}"
        table.add_row(entry.name, about, f"{entry.size / 1e6:.1f} MB", where)
    Console().print(table)
    console.print(f"Fetched sets go to {catalogue.cache_root(settings)}; docs/datasets.md has the citations.")


@datasets.command()
@click.argument("name", type=click.Choice(list(catalogue.CATALOGUE)))
@click.option("--from", "from_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Import an offline copy from DIR (holding the set's folder, e.g. foursquare-nyc/, or its files) "
                   "instead of downloading; the same checksums are checked.")
@click.option("--base-url", default=None, metavar="URL",
              help="Download <URL>/<folder>/<file> instead of the original repository: a mirror, or file:///DIR.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help=env_help("Cache folder; the set goes to <cache>/data/<folder>/", "cache_dir"))
def fetch(name: str, from_dir: Path | None, base_url: str | None, cache_dir: str | None) -> None:
    """Download the data set NAME from its public source into the cache, checking each file's sha256.

    A file that fails its checksum is deleted and the command fails; a file already cached with the
    right checksum is kept. Without internet access, copy the files from another machine and use --from.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

    if from_dir is not None and base_url is not None:
        raise click.UsageError("--from and --base-url are alternatives: give one")
    settings = Settings.from_env(cache_dir=cache_dir)
    entry = catalogue.dataset(name)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def show(data_file: catalogue.DataFile, done: int) -> None:
            if data_file.name not in tasks:
                tasks[data_file.name] = progress.add_task(data_file.name, total=data_file.size)
            progress.update(tasks[data_file.name], completed=done)

        try:
            if from_dir is not None:
                folder = catalogue.import_dataset(name, from_dir, settings, progress=show)
            else:
                folder = catalogue.fetch_dataset(name, settings, base_url=base_url, progress=show)
        except catalogue.DatasetError as exc:
            raise click.ClickException(str(exc)) from exc
    console.print(f"[green]{entry.name}[/]: {len(entry.files)} file(s), {entry.size / 1e6:.1f} MB, sha256 verified, "
                  f"in {folder}")
    if entry.citation:
        console.print(f"Cite: {entry.citation}")
