"""The model each pipeline serves, swapped between batches when its checkpoint file changes.

Model faults are loud: a configured checkpoint that cannot be loaded at start stops the worker
(``ModelLoadError``) unless the fallback is explicitly allowed, and then the fallback serves
visibly (``stream_app_model_fallback`` is 1 and every reload attempt logs a WARNING); a checkpoint
file that disappears while serving is logged and counted (``outcome="missing"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

from stream_app.exceptions import ConfigError
from stream_app.metrics import Metrics

__all__ = ["HotModel", "ModelLoadError"]

log = logging.getLogger(__name__)

M = TypeVar("M")


class ModelLoadError(ConfigError):
    """The configured checkpoint cannot be loaded at start, and serving the fallback was not allowed."""


class HotModel(Generic[M]):
    """Serves the checkpoint at ``path`` (or ``fallback`` when no path is configured), reloaded when it changes.

    ``refresh()`` (called from a timer) reloads when the file's size or mtime changes. A load that
    fails keeps the model already serving, logs why, and counts ``outcome="failed"``. At start, a
    configured checkpoint that cannot be loaded raises ``ModelLoadError``, unless ``allow_fallback``.
    """

    def __init__(self, pipeline: str, path: str | None, load: Callable[[str], M], fallback: M,
                 metrics: Metrics, *, allow_fallback: bool = False) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.path = path
        self._load = load
        self.current: M = fallback
        self.on_fallback = True
        self._signature: tuple[int, int] | None = None
        self._missing = False
        self.last_error: str | None = None
        self._fallback_gauge = metrics.model_fallback.labels(pipeline=pipeline)
        if not self.refresh():  # the checkpoint, when there is one, serves from the first event
            self._publish()
        if path and self.on_fallback:
            self._refuse_or_warn(allow_fallback)

    @property
    def version(self) -> str:
        return getattr(self.current, "version", "unknown")

    def refresh(self) -> bool:
        """Reload if the checkpoint changed; True when a new model now serves."""
        path, signature = self.path, self._file_signature()
        if path is None:
            return False
        if signature is None:
            self._note_missing()
            return False
        self._missing = False
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            model = self._load(path)
        except Exception as exc:  # any failure keeps the serving model; the reason is logged
            self.metrics.model_reloads.labels(pipeline=self.pipeline, outcome="failed").inc()
            self.last_error = f"{exc}"
            level = logging.WARNING if self.on_fallback else logging.ERROR
            log.log(level, "%s: keeping model %s%s, checkpoint %s could not be loaded: %s", self.pipeline,
                    self.version, " (the fallback)" if self.on_fallback else "", path, exc)
            return False
        self.current, self.on_fallback = model, False
        self.metrics.model_reloads.labels(pipeline=self.pipeline, outcome="loaded").inc()
        log.info("%s: now serving model %s from %s", self.pipeline, self.version, path)
        self._publish()
        return True

    def _refuse_or_warn(self, allow_fallback: bool) -> None:
        reason = self.last_error or "the file does not exist"
        if not allow_fallback:
            raise ModelLoadError(
                f"{self.pipeline}: checkpoint {self.path} cannot be loaded ({reason}). Fix or replace the file, "
                "unset STREAM_APP_CHECKPOINT to serve the online fallback on purpose, or set "
                "STREAM_APP_ALLOW_FALLBACK=true to start on the fallback until a loadable checkpoint appears")
        log.warning("%s: checkpoint %s cannot be loaded (%s); serving the fallback %s until it can "
                    "(STREAM_APP_ALLOW_FALLBACK=true)", self.pipeline, self.path, reason, self.version)

    def _note_missing(self) -> None:
        """The configured file is gone: say so once per disappearance, count it."""
        if self._missing:
            return
        self._missing = True
        self._signature = None  # the same file put back is loaded again
        self.metrics.model_reloads.labels(pipeline=self.pipeline, outcome="missing").inc()
        log.warning("%s: checkpoint %s is missing; still serving model %s%s", self.pipeline, self.path,
                    self.version, " (the fallback)" if self.on_fallback else "")

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
        self._fallback_gauge.set(1 if self.on_fallback and self.path else 0)
