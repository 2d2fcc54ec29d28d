"""Errors raised by the models package."""

__all__ = ["ModelError", "CheckpointError"]


class ModelError(Exception):
    """Root of every error the models package raises."""


class CheckpointError(ModelError):
    """A checkpoint is missing, corrupt, or was written for another model or version."""
