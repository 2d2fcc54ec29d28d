"""`stream-app broker`: a local single-node broker until stopped."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from stream_app.cli.common import broker_url

__all__ = ["broker"]


@click.command()
@click.option("--kind", type=click.Choice(["auto", "kafka", "tansu"]), default="auto", show_default=True,
              help="auto = Apache Kafka (KRaft) when a JDK and Maven exist, else the Tansu fallback.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Serve on this loopback port (default: a free one, printed at start).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the broker's data in this folder across restarts: formatted on first use, reused after "
                   "(Apache Kafka only). Default: a temporary folder removed at stop.")
def broker(kind: str, port: int | None, data_dir: Path | None) -> None:
    """Run a local single-node broker until Ctrl-C, SIGTERM or SIGHUP; prints its URL on stdout.

    Stopping it stops the broker process and removes its temporary folder; so does killing this
    command, even with SIGKILL. To stop a broker and bring it back with its topics and records:

        stream-app broker --port 19092 --data-dir ./kafka-data
    """
    with broker_url(None, kind, port=port, data_dir=data_dir) as endpoint:
        click.echo(endpoint.url)
        _wait_until_stopped()


def _wait_until_stopped() -> None:
    """Sleep until SIGINT (KeyboardInterrupt) or SIGTERM/SIGHUP (Terminated, a KeyboardInterrupt)."""
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
