"""Options and helpers shared by the CLI's commands."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

__all__ = ["console", "broker_option", "broker_url", "BrokerEndpoint", "env_help"]

console = Console(stderr=True)


def env_help(text: str, setting: str) -> str:
    """Help text naming the environment variable behind a flag (``setting`` is the Settings field)."""
    from stream_app.settings import Settings

    env = {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}[setting]
    return f"{text} [env: {env}]"

broker_option = click.option(
    "--broker", default=None, envvar="STREAM_APP_BROKER", show_envvar=True,
    help="Kafka URL, e.g. kafka://localhost:9092. Without it an embedded single-node broker is started.")


@dataclass(frozen=True)
class BrokerEndpoint:
    """The broker a command talks to: the one it was given, or the embedded one it started."""

    url: str
    kind: str  # "external" (given by --broker or STREAM_APP_BROKER), "kafka" or "tansu" (embedded)

    @property
    def producer_max_batch(self) -> int | None:
        """1 for Tansu, whose ListOffsets is wrong after multi-record batches: one record per batch keeps
        table recovery correct (README, "Embedded broker"). None leaves it to the settings."""
        return 1 if self.kind == "tansu" else None


@contextlib.contextmanager
def broker_url(broker: str | None, kind: str = "auto", *, port: int | None = None,
               data_dir: Path | None = None) -> Iterator[BrokerEndpoint]:
    """Yield ``broker``, or start an embedded broker for the duration of the block.

    The embedded broker stops, and its temporary folder goes, however the command ends: Ctrl-C,
    SIGTERM and SIGHUP stop it through this block, a SIGKILL through its guardian process.
    """
    if broker:
        yield BrokerEndpoint(url=broker, kind="external")
        return
    from stream_app.broker import EmbeddedBroker
    from stream_app.lifecycle import stop_on_signals
    from stream_app.settings import Settings

    settings = Settings.from_env()
    embedded = EmbeddedBroker(kind=kind, port=port, data_dir=data_dir, cache_root=Path(settings.cache_dir),
                              kafka_version=settings.kafka_version)
    with stop_on_signals():
        with console.status("Starting the embedded broker (first run resolves Apache Kafka from Maven Central)..."):
            info = embedded.start()
        try:
            kept = "kept" if data_dir is not None else "temporary, removed at stop"
            console.print(f"[green]Embedded {info.kind} broker at {info.url}[/] (pid {embedded.pid}; "
                          f"files in {embedded.workdir}, {kept})")
            yield BrokerEndpoint(url=info.url, kind=info.kind)
        finally:
            embedded.stop()
