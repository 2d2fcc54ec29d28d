"""Options and helpers shared by the CLI's commands."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import click
from rich.console import Console

__all__ = ["console", "broker_option", "broker_url", "env_help"]

console = Console(stderr=True)


def env_help(text: str, setting: str) -> str:
    """Help text naming the environment variable behind a flag (``setting`` is the Settings field)."""
    from stream_app.settings import Settings

    env = {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}[setting]
    return f"{text} [env: {env}]"

broker_option = click.option(
    "--broker", default=None, envvar="STREAM_APP_BROKER", show_envvar=True,
    help="Kafka URL, e.g. kafka://localhost:9092. Without it an embedded single-node broker is started.")

@contextlib.contextmanager
def broker_url(broker: str | None, kind: str = "auto") -> Iterator[str]:
    """Yield ``broker``, or start an embedded broker for the duration of the block."""
    if broker:
        yield broker
        return
    from stream_app.broker import EmbeddedBroker

    embedded = EmbeddedBroker(kind=kind)
    with console.status("Starting the embedded broker (first run resolves Apache Kafka from Maven Central)..."):
        info = embedded.start()
    console.print(f"[green]Embedded {info.kind} broker at {info.url}[/]")
    if info.kind == "tansu":
        # Tansu's ListOffsets is wrong after multi-record batches: one record per batch keeps
        # table recovery correct (see README, "Embedded broker").
        os.environ.setdefault("STREAM_APP_PRODUCER_MAX_BATCH", "1")
    try:
        yield info.url
    finally:
        embedded.stop()
