"""CLI commands that build models: `train next-action|traffic` and `evaluate next-action|traffic`."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from stream_app.cli.common import console

__all__ = ["train", "evaluate", "job", "options", "data_dir_option", "threads_option",
           "progress_option", "set_threads", "summary", "cell", "write_reports", "out"]

out = Console()  # results go to stdout; progress and notes to stderr (cli_common.console)


def job(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn job errors into `Error: ...` and exit status 1; model logs at warning level unless -v."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from stream_app.jobs import JobError

        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # epochs already show in the progress
            logging.getLogger("models").setLevel(logging.WARNING)
        try:
            fn(*args, **kwargs)
        except JobError as exc:
            raise click.ClickException(str(exc)) from exc
    return wrapper


def options(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Folder holding the named sets, searched first; then the cache, $STREAM_APP_DATA_DIR "
                              "and ../shared/data (see `stream-app datasets`).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="torch CPU threads [default: torch's own choice].")
progress_option = click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")


@click.group()
def train() -> None:
    """Train a model and write a checkpoint that `stream-app worker` serves."""


@click.group()
def evaluate() -> None:
    """Score a model against baselines on the same test split (terminal, JSON, markdown)."""


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def summary(title: str, rows: list[tuple[str, str]], serve: str) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    out.print(f"[bold green]{title}[/]")
    out.print(grid)
    out.print("Serve it:")
    out.print(f"  {serve}", markup=False, highlight=False, soft_wrap=True)


def cell(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_reports(json_out: Path | None, markdown_out: Path | None, document: dict[str, Any], markdown: str) -> None:
    for path, text in ((json_out, json.dumps(document, indent=2)), (markdown_out, markdown)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            console.print(f"wrote {path}")
