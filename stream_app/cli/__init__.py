"""The ``stream-app`` command line: broker, worker, demo, generate, replay, tail, schemas, train, evaluate."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click
from rich.console import Console

from stream_app.cli import io as cli_io, demo
from stream_app.cli.common import broker_option, broker_url
from stream_app.settings import Settings, setting_docs

__all__ = ["main", "cli"]

_ENV_OF = {env.removeprefix("STREAM_APP_").lower(): env for env, _, _ in setting_docs()}


def _env_help(text: str, setting: str) -> str:
    return f"{text} [env: {_ENV_OF[setting]}]"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def cli(verbose: bool) -> None:
    """Real-time behavior stream processor on Kafka.

    Workers keep per-user GRU state and sliding windows, emit next-action predictions,
    traffic-flow forecasts and anomaly alerts, and export Prometheus metrics. Every setting
    can also come from a STREAM_APP_* environment variable (see `stream-app settings`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # metadata races while topics are being created are retried; they are noise here
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        logging.getLogger("models.next_action.training").setLevel(logging.WARNING)  # its progress bar says the same


@cli.command()
@click.option("--kind", type=click.Choice(["auto", "kafka", "tansu"]), default="auto", show_default=True,
              help="auto = Apache Kafka (KRaft) when a JDK and Maven exist, else the Tansu fallback.")
def broker(kind: str) -> None:
    """Run a local single-node broker on a free loopback port until Ctrl-C."""
    with broker_url(None, kind) as url:
        click.echo(url)
        _wait_for_signal()


@cli.command()
@broker_option
@click.option("--web-port", type=int, default=None, help=_env_help("Port of /metrics and the query API", "web_port"))
@click.option("--web-host", default=None, help=_env_help("Address of /metrics and the query API", "web_host"))
@click.option("--checkpoint", default=None, help=_env_help("Next-action checkpoint (hot-reloaded)", "checkpoint"))
@click.option("--traffic-checkpoint", default=None, help=_env_help("Traffic checkpoint", "traffic_checkpoint"))
@click.option("--state-dir", default=None, help=_env_help("Worker data directory", "state_dir"))
def worker(broker: str | None, **overrides: object) -> None:
    """Run a stream worker (Faust): consumes inputs, emits predictions, forecasts, alerts."""
    with broker_url(broker) as url:
        settings = Settings.from_env(broker=url, **overrides)
        os.environ.update(settings.as_env())
        from stream_app.worker import run  # the app reads its settings at import

        run()


@cli.command()
def settings() -> None:
    """List every STREAM_APP_* environment variable with its default and meaning."""
    from rich.table import Table

    table = Table("variable", "default", "meaning")
    for env, default, doc in setting_docs():
        table.add_row(env, default, doc)
    Console().print(table)


@cli.command()
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


def _wait_for_signal() -> None:
    received = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: received.append(True))
    while not received:
        signal.pause()


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


from stream_app.cli import models as cli_models  # noqa: E402  (train, evaluate)

for _command in (cli_io.generate, cli_io.replay, cli_io.tail, demo.demo, cli_models.train, cli_models.evaluate):
    cli.add_command(_command)
