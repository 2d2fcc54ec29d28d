"""Errors of the batch transport; all derive from the app's root error."""

from __future__ import annotations

from stream_app.exceptions import StreamAppError

__all__ = ["TransportError", "SnapshotError", "NotLocalError"]


class TransportError(StreamAppError):
    """The transport could not start, restore or checkpoint; the message says what to fix."""


class SnapshotError(TransportError):
    """A local state snapshot is unreadable (truncated, corrupt, another store's); restore falls back
    to the full changelog."""


class NotLocalError(TransportError):
    """A key's partition is not owned by this worker: ask ``owner_of(partition)`` instead."""
