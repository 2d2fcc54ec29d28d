"""`stream-app worker`: a stream worker with its settings from flags, then the environment, then defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from stream_app.cli.common import broker_url, env_help
from stream_app.exceptions import ConfigError
from stream_app.settings import Settings

__all__ = ["worker"]


@click.command()
@click.option("--broker", default=None,
              help=env_help("Kafka URL, e.g. kafka://localhost:9092; without one an embedded single-node broker "
                            "is started", "broker"))
@click.option("--web-port", type=int, default=None, help=env_help("Port of /metrics and the query API", "web_port"))
@click.option("--web-host", default=None, help=env_help("Address of /metrics and the query API", "web_host"))
@click.option("--checkpoint", default=None, help=env_help("Next-action checkpoint (hot-reloaded)", "checkpoint"))
@click.option("--traffic-checkpoint", default=None, help=env_help("Traffic checkpoint", "traffic_checkpoint"))
@click.option("--state-dir", default=None, help=env_help("Worker data directory", "state_dir"))
@click.option("--stages", default=None,
              help=env_help("Stages this worker runs, comma-separated, of behavior,cells,traffic (default all "
                            "three); workers of one app id may split them, e.g. --stages behavior in one "
                            "process and --stages cells,traffic in another", "stages"))
def worker(**flags: Any) -> None:
    """Run a stream worker (Faust): consumes inputs, emits predictions, forecasts, alerts."""
    from stream_app.worker import run  # torch and Faust load only for this command

    try:
        settings = Settings.from_env(**flags)
    except ConfigError as exc:  # one line naming the setting and its fix, not a traceback
        raise click.UsageError(str(exc)) from exc
    with broker_url(settings.broker) as endpoint:
        limits: dict[str, Any] = {"producer_max_batch": endpoint.producer_max_batch} \
            if endpoint.producer_max_batch else {}
        run(dataclasses.replace(settings, broker=endpoint.url, **limits))
