"""Run one stream worker: the app built from its settings, under Faust's worker."""

from __future__ import annotations

import gc
import logging
import sys

import torch

from stream_app.app import create_app
from stream_app.models_holder import ModelLoadError
from stream_app.settings import Settings

__all__ = ["run", "tune_garbage_collector"]

# Young collections every 10,000 net allocations instead of CPython's 700: a batch's temporaries (plans,
# predictions, records: thousands per batch) then mostly die by reference counting before a collection
# promotes them, and fewer reach the old generations whose full collections pause the loop.
GC_THRESHOLDS = (10_000, 10, 10)


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
    tune_garbage_collector()
    # Faust's worker reads its own command line; the web address is given again for its banner.
    sys.argv = ["stream-app", "worker", "-l", settings.log_level,
                "--web-host", settings.web_host, "--web-port", str(settings.web_port)]
    app.faust.main()


def tune_garbage_collector() -> None:
    """Freeze what the start built (modules, torch, the model: ~250,000 objects that live as long as the
    process) so that full collections no longer walk it, and collect the young generation less often.

    Measured on the behavior pipeline (20,000 events, in-process, busy 2-core machine): with the
    defaults the collector took about a third of the batch time, in full collections of 100-350 ms
    each (4 per 20,000 events); a live worker at 1,300 events/s fell seconds behind instead of
    hundreds of milliseconds (docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
