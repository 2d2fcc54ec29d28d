"""Dead-letter records for rejected inputs: readable JSON, plus the exact bytes for replay.

The value is the project's ``schemas.DeadLetter`` JSON (source topic, partition, offset, reason,
detail, a readable cut of the payload), so existing readers keep working. That struct cuts the
payload to 4,096 characters and decodes it as UTF-8 with replacement characters, so the record
also carries what it cannot:

- the record key is the original key, byte for byte (null stays null);
- the original headers are kept as they were;
- header ``dlq.payload`` holds the original value byte for byte (absent when the value was null,
  and for payloads over ``MAX_EXACT_PAYLOAD`` bytes, which ``dlq.payload-omitted`` then says).

Replaying a dead letter is therefore: key, ``dlq.payload`` and the non-``dlq.`` headers, onto
``source_topic``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from schemas import DeadLetter, Rejection, encode

__all__ = ["Rejected", "KEY_MISMATCH", "PAYLOAD_HEADER", "OMITTED_HEADER", "MAX_EXACT_PAYLOAD",
           "REJECTION_TYPES", "LetterRecord", "dead_letter_record", "key_mismatch"]

KEY_MISMATCH = "key_mismatch"
PAYLOAD_HEADER = "dlq.payload"
OMITTED_HEADER = "dlq.payload-omitted"
#: Larger payloads are not copied into the header: the dead letter must stay under the broker's
#: default 1 MiB message limit.
MAX_EXACT_PAYLOAD = 512 * 1024


class Rejected(NamedTuple):
    """A reason to dead-letter a record that ``schemas.Rejection``'s fixed validation reasons do not
    cover (``key_mismatch``, or a pipeline's own); a decoder may return it like a ``Rejection``."""

    reason: str
    detail: str


#: What a batch decoder may return in place of a valid record.
REJECTION_TYPES: tuple[type, ...] = (Rejection, Rejected)

Headers = Sequence[tuple[str, bytes]]
#: A dead letter ready to send: (key, value, headers).
LetterRecord = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def key_mismatch(key: bytes | None, field: str, expected: str) -> Rejected:
    """Why a record whose key is not its ``field`` is refused (it would split that key's state)."""
    if key is None:
        return Rejected(KEY_MISMATCH, f"record key is null; expected {field} {expected[:128]!r}")
    return Rejected(KEY_MISMATCH, f"record key {key[:128]!r} differs from {field} {expected[:128]!r}")


def dead_letter_record(*, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                       headers: Headers, reason: str, detail: str, received_at_ms: int) -> LetterRecord:
    """(key, value, headers) of the dead letter for one rejected record."""
    letter = DeadLetter.from_record(value, key, source_topic=topic, partition=partition, offset=offset,
                                    reason=reason, detail=detail, received_at=received_at_ms)
    out_headers = [(name, bytes(data)) for name, data in headers or () if not name.startswith("dlq.")]
    if value is not None:
        if len(value) <= MAX_EXACT_PAYLOAD:
            out_headers.append((PAYLOAD_HEADER, value))
        else:
            out_headers.append((OMITTED_HEADER, f"{len(value)} bytes > {MAX_EXACT_PAYLOAD}".encode()))
    return key, encode(letter), out_headers
