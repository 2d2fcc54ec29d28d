"""Local state snapshots: one file per store partition, the changelog offset it covers, a checksum.

Kafka Streams keeps a ``.checkpoint`` file next to each persistent store with the changelog offset
the store holds; on restart it restores only the changelog after that offset. Our stores live in
memory, so the snapshot carries the data too. Layout (little-endian)::

    magic "STSNAP01" | header length u32 | header JSON | entry count u64 |
    (key length u32, key, value length u32, value) * count | CRC-32 of everything before, u32

The header names the store, the changelog topic and partition, and ``changelog_offset``: the
snapshot equals the changelog replayed from offset 0 up to (not including) that offset. A file is
written to a temporary name, fsynced and renamed, so a crash leaves the previous snapshot or none,
never half of one; ``read_snapshot`` refuses anything whose checksum, size or header does not match.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stream_app.transport.exceptions import SnapshotError

__all__ = ["Snapshot", "snapshot_path", "write_snapshot", "read_snapshot", "remove_stale_temporaries"]

MAGIC = b"STSNAP01"
FORMAT_VERSION = 1
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Snapshot:
    """A store partition's content as of ``changelog_offset`` (exclusive end) of its changelog."""

    store: str
    changelog_topic: str
    partition: int
    changelog_offset: int
    data: dict[bytes, bytes]


def snapshot_path(state_dir: Path, store: str, partition: int) -> Path:
    """Where the snapshot of ``store``'s ``partition`` lives inside a transport's state folder."""
    return state_dir / f"{store}-{partition}.snapshot"


def encode_snapshot(store: str, changelog_topic: str, partition: int, changelog_offset: int,
                    data: Mapping[bytes, bytes]) -> bytes:
    """The bytes of a snapshot file (see the module docstring for the layout)."""
    header = json.dumps({"version": FORMAT_VERSION, "store": store, "changelog_topic": changelog_topic,
                         "partition": partition, "changelog_offset": changelog_offset},
                        separators=(",", ":")).encode()
    pack = _U32.pack
    parts = [MAGIC, pack(len(header)), header, _U64.pack(len(data))]
    for key, value in data.items():
        parts += (pack(len(key)), key, pack(len(value)), value)
    body = b"".join(parts)
    return body + pack(zlib.crc32(body))


def decode_snapshot(raw: bytes) -> Snapshot:
    """Parse snapshot bytes; ``SnapshotError`` says what is wrong with them."""
    if len(raw) < len(MAGIC) + 16 or not raw.startswith(MAGIC):
        raise SnapshotError("not a state snapshot (bad magic or too short)")
    end = len(raw) - 4
    (crc,) = _U32.unpack_from(raw, end)
    if zlib.crc32(memoryview(raw)[:end]) != crc:
        raise SnapshotError("checksum mismatch (file truncated or corrupt)")
    try:
        return _parse_body(raw, end)
    except (struct.error, ValueError, KeyError, TypeError) as exc:  # only reachable past a matching CRC
        raise SnapshotError(f"malformed snapshot body: {exc}") from exc


def _parse_body(raw: bytes, end: int) -> Snapshot:
    at = len(MAGIC)
    (header_len,) = _U32.unpack_from(raw, at)
    at += 4
    header = json.loads(raw[at:at + header_len])
    at += header_len
    if header.get("version") != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {header.get('version')!r}, expected {FORMAT_VERSION}")
    (count,) = _U64.unpack_from(raw, at)
    at += 8
    data: dict[bytes, bytes] = {}
    unpack = _U32.unpack_from
    for _ in range(count):  # slicing the bytes object copies each key and value once
        key_end = at + 4 + unpack(raw, at)[0]
        value_end = key_end + 4 + unpack(raw, key_end)[0]
        data[raw[at + 4:key_end]] = raw[key_end + 4:value_end]
        at = value_end
    if at != end:
        raise SnapshotError(f"snapshot has {end - at} bytes more or less than its {count} entries")
    return Snapshot(store=header["store"], changelog_topic=header["changelog_topic"],
                    partition=int(header["partition"]), changelog_offset=int(header["changelog_offset"]),
                    data=data)


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Write atomically: temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = encode_snapshot(snapshot.store, snapshot.changelog_topic, snapshot.partition,
                          snapshot.changelog_offset, snapshot.data)
    # A name of its own per writer: a periodic snapshot still being written never shares a file with the next.
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}{_TEMP_SUFFIX}")
    with open(temporary, "wb") as file:
        file.write(raw)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_snapshot(path: Path, *, store: str, changelog_topic: str, partition: int) -> Snapshot | None:
    """The snapshot at ``path``, or None when there is none; ``SnapshotError`` when it is unreadable
    or belongs to another store, changelog or partition."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    snapshot = decode_snapshot(raw)
    found = (snapshot.store, snapshot.changelog_topic, snapshot.partition)
    if found != (store, changelog_topic, partition):
        raise SnapshotError(f"{path} holds {found}, expected {(store, changelog_topic, partition)}")
    return snapshot


def remove_stale_temporaries(state_dir: Path) -> int:
    """Delete temporaries a crash left mid-write; returns how many."""
    removed = 0
    for temporary in state_dir.glob(f"*.snapshot.*{_TEMP_SUFFIX}"):
        temporary.unlink(missing_ok=True)
        removed += 1
    return removed
