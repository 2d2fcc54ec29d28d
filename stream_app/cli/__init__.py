"""The ``stream-app`` command line: one module per command, gathered into one group here."""

from __future__ import annotations

import logging
import sys

import click

from stream_app.cli import (
    broker,
    datasets,
    dead_letters,
    demo,
    info,
    io,
    models,
    next_action,  # noqa: F401  (imported to attach its subcommands to train and evaluate)
    traffic,  # noqa: F401  (likewise)
    worker,
)

__all__ = ["main", "cli"]


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


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


for _command in (broker.broker, worker.worker, demo.demo, io.generate, io.replay, io.tail, info.settings, info.schemas,
                 models.train, models.evaluate, datasets.datasets,
                 dead_letters.dead_letters):
    cli.add_command(_command)
