"""Per-user state as stored in the changelogged table: the model state plus what serving needs.

The envelope is msgpack (msgspec), versioned; the model part is ``models.next_action.serving.UserState``'s own
compact binary encoding (float32 hidden vector, window events), kept as opaque bytes.
"""

from __future__ import annotations

import msgspec

from models.next_action.serving import UserState

__all__ = ["ENVELOPE_VERSION", "StoredUser", "encode_user", "decode_user", "RECENT_IDS"]

ENVELOPE_VERSION = 1
# Event ids remembered per user to recognise a re-delivered event.
RECENT_IDS = 16


class StoredUser(msgspec.Struct, kw_only=True):
    """A user's table value: model state, the latest prediction (JSON) and recent event ids."""

    v: int = ENVELOPE_VERSION
    model: bytes = b""
    last_prediction: bytes = b""
    recent_ids: list[str] = []
    last_ts_ms: int = 0

    def user_state(self) -> UserState | None:
        return UserState.from_bytes(self.model) if self.model else None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StoredUser)


def encode_user(stored: StoredUser) -> bytes:
    return _encoder.encode(stored)


def decode_user(raw: bytes) -> StoredUser:
    """Decode a table value; a value from a future or unknown version raises ``ValueError``."""
    stored = _decoder.decode(raw)
    if stored.v != ENVELOPE_VERSION:
        raise ValueError(f"user state version {stored.v} is not readable by version {ENVELOPE_VERSION}")
    return stored
