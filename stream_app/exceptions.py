"""Errors raised by the stream app."""

__all__ = ["StreamAppError", "ConfigError", "BrokerError"]


class StreamAppError(Exception):
    """Root of every error the stream app raises."""


class ConfigError(StreamAppError):
    """A setting is missing or malformed; the message names the variable and how to fix it."""


class BrokerError(StreamAppError):
    """The embedded broker could not be resolved, started or reached."""
