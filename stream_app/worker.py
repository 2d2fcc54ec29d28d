"""Run one stream worker: the app built from its settings, under Faust's worker."""

from __future__ import annotations

import logging
import sys

import torch

from stream_app.app import create_app
from stream_app.models_holder import ModelLoadError
from stream_app.settings import Settings

__all__ = ["run"]


def run(settings: Settings) -> None:
    """Build the app from ``settings`` and run its Faust worker (blocks until stopped)."""
    torch.set_num_threads(settings.torch_threads)
    if settings.log_level != "debug":  # their debug records cost measurable time on the hot path
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        app = create_app(settings)
    except ModelLoadError as exc:  # a clear one-line error, not a traceback
        raise SystemExit(f"stream-app worker: {exc}") from exc
    # Faust's worker reads its own command line; the web address is given again for its banner.
    sys.argv = ["stream-app", "worker", "-l", settings.log_level,
                "--web-host", settings.web_host, "--web-port", str(settings.web_port)]
    app.faust.main()
