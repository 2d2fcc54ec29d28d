"""The model each pipeline serves, swapped between batches when its checkpoint file changes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

from stream_app.metrics import Metrics

__all__ = ["HotModel"]

log = logging.getLogger(__name__)

M = TypeVar("M")


class HotModel(Generic[M]):
    """Serves ``fallback`` until ``path`` holds a loadable checkpoint, then that model.

    ``refresh()`` (called from a timer) reloads when the file's size or mtime changes. A load that
    fails keeps the model already serving, logs why, and counts ``outcome="failed"``.
    """

    def __init__(self, pipeline: str, path: str | None, load: Callable[[str], M], fallback: M,
                 metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.path = path
        self._load = load
        self.current: M = fallback
        self._signature: tuple[int, int] | None = None
        if not self.refresh():  # the checkpoint, when there is one, serves from the first event
            self._publish()

    @property
    def version(self) -> str:
        return getattr(self.current, "version", "unknown")

    def refresh(self) -> bool:
        """Reload if the checkpoint changed; True when a new model now serves."""
        path, signature = self.path, self._file_signature()
        if path is None or signature is None or signature == self._signature:
            return False
        self._signature = signature
        try:
            model = self._load(path)
        except Exception as exc:  # any failure keeps the serving model; the reason is logged
            self.metrics.model_reloads.labels(pipeline=self.pipeline, outcome="failed").inc()
            log.error("%s: keeping model %s, checkpoint %s could not be loaded: %s",
                      self.pipeline, self.version, self.path, exc)
            return False
        self.current = model
        self.metrics.model_reloads.labels(pipeline=self.pipeline, outcome="loaded").inc()
        log.info("%s: now serving model %s from %s", self.pipeline, self.version, self.path)
        self._publish()
        return True

    def _file_signature(self) -> tuple[int, int] | None:
        if not self.path:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _publish(self) -> None:
        self.metrics.model_info.labels(pipeline=self.pipeline).info({"version": self.version})
