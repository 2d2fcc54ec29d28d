"""`stream-app broker`: a local single-node broker until stopped."""

from __future__ import annotations

import signal

import click

from stream_app.cli.common import broker_url

__all__ = ["broker"]


@click.command()
@click.option("--kind", type=click.Choice(["auto", "kafka", "tansu"]), default="auto", show_default=True,
              help="auto = Apache Kafka (KRaft) when a JDK and Maven exist, else the Tansu fallback.")
def broker(kind: str) -> None:
    """Run a local single-node broker on a free loopback port until Ctrl-C."""
    with broker_url(None, kind) as url:
        click.echo(url)
        _wait_for_signal()


def _wait_for_signal() -> None:
    received = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: received.append(True))
    while not received:
        signal.pause()
