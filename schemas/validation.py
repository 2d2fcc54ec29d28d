"""Bytes to records: every payload becomes a valid record or a ``Rejection``, never an exception."""

from __future__ import annotations

import functools
import logging
import re
import time
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from schemas.events import TrafficReading, UserEvent
from schemas.exceptions import FieldError, SchemaError
from schemas.timestamps import MAX_FUTURE_MS, MIN_TIMESTAMP_MS, check_time_window

__all__ = [
    "REJECTION_REASONS", "DEFAULT_MAX_BYTES", "Rejection", "decode", "decode_each", "decode_user_event",
    "decode_traffic_reading", "encode", "to_dict",
]

logger = logging.getLogger(__name__)

#: Every reason a payload can be rejected for; a Prometheus label, so the set stays small and fixed.
REJECTION_REASONS = ("empty", "too_large", "malformed_json", "invalid_field", "out_of_range", "bad_timestamp")
DEFAULT_MAX_BYTES = 16384

T = TypeVar("T", bound=msgspec.Struct)
Clock = Callable[[], float]

_ENCODER = msgspec.json.Encoder()
_ERROR_AT = re.compile(r"^(?P<message>.*?) - at `(?:(?P<key>key)` in `)?(?P<path>[^`]*)`$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`")
_RANGE_WORDS = (" >= ", " <= ", " > ", " < ", "out of range")
_ENUM_ERROR = "Invalid enum value"


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """Why a payload was refused: a fixed ``reason`` code and a ``detail`` that names the field."""

    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in REJECTION_REASONS:
            message = f"unknown rejection reason {self.reason!r}; expected one of {REJECTION_REASONS}"
            raise SchemaError(message)


def decode(raw: bytes | None, cls: type[T], *, max_bytes: int = DEFAULT_MAX_BYTES,
           clock: Clock = time.time) -> T | Rejection:
    """Decode one JSON payload into ``cls``, or say why not; never raises for any ``raw``.

    A record's ``ts``, where it has one, must lie in [2000-01-01, now + 1 day]; ``clock`` gives
    "now" in seconds (``time.time`` by default) so tests can pin it.
    """
    if not raw or raw.isspace():
        return Rejection(reason="empty", detail="payload: no bytes")
    if len(raw) > max_bytes:
        return Rejection(reason="too_large", detail=f"payload: {len(raw)} bytes, limit {max_bytes}")
    decoder = _decoder(cls)
    try:
        record: T = decoder.decode(raw)
        if hasattr(record, "ts"):
            check_time_window(record.ts, int(clock() * 1000))
    except msgspec.ValidationError as exc:
        return _from_validation_error(exc, raw, cls)
    except FieldError as exc:
        return Rejection(reason=exc.reason, detail=str(exc))
    except msgspec.DecodeError as exc:
        return Rejection(reason="malformed_json", detail=f"payload: {_lower_first(str(exc))}")
    except RecursionError:
        return Rejection(reason="malformed_json", detail="payload: nested too deeply")
    except Exception as exc:  # last line of defence: one bad record must never stop a worker
        logger.warning("unexpected error decoding %r: %r", cls, exc)
        return Rejection(reason="malformed_json", detail=f"payload: {type(exc).__name__}")
    return record


def decode_each(raws: Iterable[bytes | None], cls: type[T], *, max_bytes: int = DEFAULT_MAX_BYTES,
                clock: Clock = time.time) -> list[T | Rejection]:
    """``decode`` of each payload, with the same results: what a batch decoder calls. A payload
    that decodes and whose time is in the window costs one decoder call; any other goes through
    ``decode``, which words its rejection."""
    decoder, timed = _decoder(cls), "ts" in cls.__struct_fields__
    out: list[T | Rejection] = []
    for raw in raws:
        if raw and len(raw) <= max_bytes:
            try:
                record = decoder.decode(raw)
            except Exception:  # a rejection (or the unexpected): decode() below says which
                pass
            else:
                if not timed or MIN_TIMESTAMP_MS <= record.ts <= int(clock() * 1000) + MAX_FUTURE_MS:
                    out.append(record)
                    continue
        out.append(decode(raw, cls, max_bytes=max_bytes, clock=clock))
    return out


def decode_user_event(raw: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                      clock: Clock = time.time) -> UserEvent | Rejection:
    """Decode a ``UserEvent``; see ``decode``."""
    return decode(raw, UserEvent, max_bytes=max_bytes, clock=clock)


def decode_traffic_reading(raw: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                           clock: Clock = time.time) -> TrafficReading | Rejection:
    """Decode a ``TrafficReading``; see ``decode``."""
    return decode(raw, TrafficReading, max_bytes=max_bytes, clock=clock)


def encode(obj: Any) -> bytes:
    """Compact JSON bytes for a record (fields at their default are left out)."""
    return _ENCODER.encode(obj)


def to_dict(obj: msgspec.Struct) -> dict[str, Any]:
    """The record as plain Python builtins, the same fields ``encode`` writes."""
    builtins: dict[str, Any] = msgspec.to_builtins(obj)  # a Struct always becomes a dict
    return builtins


@functools.cache
def _decoder(cls: type[T]) -> msgspec.json.Decoder[T]:
    try:
        return msgspec.json.Decoder(cls)
    except TypeError as exc:
        raise SchemaError(f"cannot decode into {cls!r}: {exc}") from exc


def _from_validation_error(exc: msgspec.ValidationError, raw: bytes, cls: type) -> Rejection:
    cause = exc.__cause__
    if isinstance(cause, FieldError):
        return Rejection(reason=cause.reason, detail=str(cause))
    message, field = _split_message(str(exc))
    if missing := _MISSING.match(message):
        name = missing["field"] if field == "payload" else f"{field}.{missing['field']}"
        return Rejection(reason="invalid_field", detail=f"{name}: missing required field")
    if field == "ts":
        reason = "bad_timestamp"
    elif any(word in message for word in _RANGE_WORDS):
        reason = "out_of_range"
        message += _got(raw, field)
    else:
        reason = "invalid_field"
        message += _choices(cls, field) if message.startswith(_ENUM_ERROR) else ""
    return Rejection(reason=reason, detail=f"{field}: {_lower_first(message)}")


def _choices(cls: type, field: str) -> str:
    """``"; expected one of a, b"`` for a top-level Literal field of ``cls``, else ``""``."""
    try:
        annotation = typing.get_type_hints(cls).get(field)
    except Exception:  # a courtesy only: never let it turn a rejection into a crash
        return ""
    options = [a for a in typing.get_args(annotation) if isinstance(a, str)]
    if typing.get_origin(annotation) is not typing.Literal or not options:
        return ""
    return "; expected one of " + ", ".join(options)


def _split_message(text: str) -> tuple[str, str]:
    """msgspec's ``"<message> - at `$.a.b`"`` as (message, ``"a.b"``); the root is ``"payload"``."""
    located = _ERROR_AT.match(text)
    if located is None:
        return text, "payload"
    path = located["path"].removeprefix("$").removeprefix(".") or "payload"
    return located["message"], f"{path} key" if located["key"] else path


def _got(raw: bytes, field: str) -> str:
    """``", got <value>"`` for a top-level field of ``raw``, or ``""`` when that is not simple."""
    if not field.isidentifier():
        return ""
    try:
        payload = msgspec.json.decode(raw)
    except Exception:  # the payload already failed once; the suffix is only a courtesy
        return ""
    value = payload.get(field) if isinstance(payload, dict) else None
    return f", got {value!r}"[:80] if isinstance(value, (int, float, str)) else ""


def _lower_first(text: str) -> str:
    """``"Expected ..."`` -> ``"expected ..."``, leaving acronyms such as ``"JSON"`` alone."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
