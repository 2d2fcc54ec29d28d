"""`stream-app worker`: a stream worker with its settings from flags, then the environment."""

from __future__ import annotations

import os

import click

from stream_app.cli.common import broker_option, broker_url, env_help
from stream_app.settings import Settings

__all__ = ["worker"]


@click.command()
@broker_option
@click.option("--web-port", type=int, default=None, help=env_help("Port of /metrics and the query API", "web_port"))
@click.option("--web-host", default=None, help=env_help("Address of /metrics and the query API", "web_host"))
@click.option("--checkpoint", default=None, help=env_help("Next-action checkpoint (hot-reloaded)", "checkpoint"))
@click.option("--traffic-checkpoint", default=None, help=env_help("Traffic checkpoint", "traffic_checkpoint"))
@click.option("--state-dir", default=None, help=env_help("Worker data directory", "state_dir"))
def worker(broker: str | None, **overrides: object) -> None:
    """Run a stream worker (Faust): consumes inputs, emits predictions, forecasts, alerts."""
    with broker_url(broker) as url:
        settings = Settings.from_env(broker=url, **overrides)
        os.environ.update(settings.as_env())
        from stream_app.worker import run  # the app reads its settings at import

        run()
