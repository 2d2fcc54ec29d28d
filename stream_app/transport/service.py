"""A transport run as a service of a Faust app: started and stopped with it, at any point of its start.

Faust (mode) stops a service's children even when the stop comes while they are starting (a SIGTERM
during the worker's start): ``on_stop`` then runs while ``on_start`` is still awaited, and the
service's tasks are never started. A service that waits for its run task to finish would wait for
a task that never ran; this one closes the transport's clients instead, so the worker exits at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode

from stream_app.transport.transport import Transport

__all__ = ["attach_transport_service"]

log = logging.getLogger(__name__)


def attach_transport_service(app: faust.App, transport: Transport[Any], start: Callable[[], Awaitable[None]],
                             what: str) -> type[mode.Service]:
    """Run ``transport`` as a service of ``app``: ``start`` (which starts the transport) when the app
    starts, ``run()`` until the app stops, then a last checkpoint; a stop before or during the start
    closes the clients without one. An error in ``run()`` (a pipeline bug) stops the worker.
    ``what`` names the transport in logs ("behavior transport")."""

    @app.service
    class TransportService(mode.Service):
        def __post_init__(self) -> None:
            self._finished = asyncio.Event()
            self._running = False

        async def on_start(self) -> None:
            await start()

        @mode.Service.task
        async def _run(self) -> None:
            self._running = True
            try:
                await transport.run()
            except Exception as exc:
                log.critical("the %s stopped on an error; stopping the worker: %r", what, exc)
                await self.crash(exc)
            finally:
                self._finished.set()

        async def on_stop(self) -> None:
            transport.stop()
            timeout_s = transport.config.shutdown_timeout_s + 5
            try:
                if self._running:
                    await asyncio.wait_for(self._finished.wait(), timeout_s)
                else:  # stopped before or while starting: run() never began and never will
                    await asyncio.wait_for(transport.close(), timeout_s)
            except TimeoutError:
                log.warning("the %s did not stop within %.0f s", what, timeout_s)

    # The name in logs ("[^--BehaviorTransportService]: Starting..."); mode keys the service's tasks by
    # module and __qualname__, which stays as defined.
    TransportService.__name__ = f"{what.title().replace(' ', '')}Service"
    return TransportService
