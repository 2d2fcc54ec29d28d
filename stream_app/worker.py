"""Everything a worker runs: importing this module registers every agent, table and page."""

from __future__ import annotations

import logging
import sys

import torch

from stream_app.app import app, settings
from stream_app import lag, web  # noqa: F401 - registers the lag timer and the query pages
from stream_app.agents import behavior, cells, traffic  # noqa: F401 - registers the agents

__all__ = ["app", "run"]


def run() -> None:
    """Run a Faust worker with the settings from the environment (blocks until stopped)."""
    torch.set_num_threads(settings.torch_threads)
    if settings.log_level != "debug":  # their debug records cost measurable time on the hot path
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    sys.argv = ["stream-app", "worker", "-l", settings.log_level,
                "--web-host", settings.web_host, "--web-port", str(settings.web_port)]
    app.main()
