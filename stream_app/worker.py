"""Run one stream worker: the app built from its settings, under Faust's worker."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time

import torch
from aiokafka.errors import KafkaConnectionError, KafkaError, NodeNotReadyError

from stream_app.app import create_app
from stream_app.models_holder import ModelLoadError
from stream_app.settings import Settings

__all__ = ["run", "tune_garbage_collector", "broker_failure"]

log = logging.getLogger(__name__)

# A worker that a broker failure stopped (Faust's start gives up on a broker that restarts under it)
# starts again, as a fresh process with the same pid, this many times in a row at most.
MAX_BROKER_RESTARTS = 10
_RESTARTS_ENV = "STREAM_APP_BROKER_RESTARTS"  # set by the worker for the process it becomes

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
    started = time.monotonic()
    try:
        app.faust.main()
    except SystemExit as exit:
        failure = broker_failure(exit) if exit.code not in (0, None) else None
        if failure is not None:
            _restart_after(failure, ran_s=time.monotonic() - started)
        raise


def broker_failure(exc: BaseException | None) -> KafkaError | None:
    """The broker error (unreachable, restarting) behind a worker's exit, if that is what stopped it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KafkaConnectionError, NodeNotReadyError)) or (
                isinstance(exc, KafkaError) and getattr(exc, "retriable", False)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _restart_after(failure: KafkaError, ran_s: float) -> None:
    """Become a fresh worker (``exec``: same pid, same command line) after a broker failure stopped this
    one, as a supervisor would restart it; at-least-once state resumes from the last checkpoint. A
    worker that ran ten minutes starts the count again."""
    restarts = 0 if ran_s > 600 else int(os.environ.get(_RESTARTS_ENV, "0"))
    if restarts >= MAX_BROKER_RESTARTS:
        log.critical("the broker failed %d times in a row while the worker ran (%r): giving up", restarts, failure)
        return
    delay_s = min(2.0 ** restarts, 30.0)
    log.error("the worker stopped on a broker failure (%r); starting again in %.0f s (%d/%d)",
              failure, delay_s, restarts + 1, MAX_BROKER_RESTARTS)
    time.sleep(delay_s)
    os.environ[_RESTARTS_ENV] = str(restarts + 1)
    logging.shutdown()  # flushes the log handlers: exec drops buffers
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


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
