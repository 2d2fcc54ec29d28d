"""Errors raised by the schemas package."""

__all__ = ["SchemaError", "FieldError"]


class SchemaError(Exception):
    """Root of every error the schemas package raises."""


class FieldError(SchemaError, ValueError):
    """One field of a record breaks a rule; ``reason`` is one of ``REJECTION_REASONS``.

    Subclasses ``ValueError`` so msgspec turns it into a ``ValidationError`` while decoding
    (keeping this error as ``__cause__``), and constructing a bad record in code raises it as is.
    """

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
