"""Snapshot files: exact round trip, atomic replacement, and every kind of damage detected."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.transport.exceptions import SnapshotError
from stream_app.transport.snapshot import (
    Snapshot,
    decode_snapshot,
    encode_snapshot,
    read_snapshot,
    remove_stale_temporaries,
    snapshot_path,
    write_snapshot,
)

CASES = {
    "empty": {},
    "one": {b"u1": b"\x01\x02"},
    "binary": {bytes(range(256)): bytes(reversed(range(256))), b"": b"", b"\x00": b"\xff" * 1000},
    "many": {f"user-{i}".encode(): (i * 7919).to_bytes(8, "little") * (i % 5) for i in range(5000)},
}


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    path = snapshot_path(tmp_path, "users", 3)
    write_snapshot(path, Snapshot("users", "app-users-changelog", 3, 12345, CASES[name]))

    restored = read_snapshot(path, store="users", changelog_topic="app-users-changelog", partition=3)

    assert restored == Snapshot("users", "app-users-changelog", 3, 12345, CASES[name])
    assert not list(tmp_path.glob("*.tmp")), "the temporary file must be renamed, not left behind"


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert read_snapshot(tmp_path / "absent.snapshot", store="s", changelog_topic="c", partition=0) is None


def _raw() -> bytes:
    return encode_snapshot("s", "c", 0, 99, {b"k%d" % i: b"v" * i for i in range(50)})


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:-1],                                   # truncated checksum
    lambda raw: raw[: len(raw) // 2],                       # truncated body
    lambda raw: raw[:40] + bytes([raw[40] ^ 0x01]) + raw[41:],  # one flipped bit
    lambda raw: b"XXXXXXXX" + raw[8:],                      # wrong magic
    lambda raw: b"",                                        # empty file
    lambda raw: raw + b"\x00",                              # trailing garbage
], ids=["no-crc", "half", "bit-flip", "magic", "empty", "trailing"])
def test_damage_is_detected(damage) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot(damage(_raw()))


def test_snapshot_of_another_store_or_partition_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.snapshot"
    write_snapshot(path, Snapshot("s", "c", 0, 5, {b"k": b"v"}))
    with pytest.raises(SnapshotError, match="expected"):
        read_snapshot(path, store="s", changelog_topic="c", partition=1)
    with pytest.raises(SnapshotError, match="expected"):
        read_snapshot(path, store="other", changelog_topic="c", partition=0)


def test_rewrite_replaces_the_previous_snapshot(tmp_path: Path) -> None:
    path = snapshot_path(tmp_path, "s", 0)
    write_snapshot(path, Snapshot("s", "c", 0, 5, {b"a": b"1"}))
    write_snapshot(path, Snapshot("s", "c", 0, 9, {b"b": b"2"}))

    assert read_snapshot(path, store="s", changelog_topic="c", partition=0) == Snapshot("s", "c", 0, 9, {b"b": b"2"})


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "s-0.snapshot.123-456.tmp").write_bytes(b"half a snapshot")
    (tmp_path / "s-1.snapshot").write_bytes(_raw())

    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-1.snapshot"]
