"""Next-action data loaders and splits (real data sets skip only when their folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.exceptions import ModelError
from models.next_action.datasets import (
    FOURSQUARE_EPOCH_MS,
    ActionDataset,
    Split,
    data_fingerprint,
    leave_last_out,
    load_diginetica,
    load_event_file,
    load_foursquare,
    merge_validation,
)
from models.next_action.features import EventRecord

ROWS = [
    {"user_id": "u1", "ts": 3000, "action": "view", "item_id": "i3", "category": "c1", "lat": 40.7, "lon": -74.0},
    {"user_id": "u1", "ts": 1000, "action": "view", "item_id": "i1", "category": "c1"},
    {"user_id": "u2", "ts": "2024-01-01T00:00:00Z", "action": "buy", "item_id": "i2", "category": "c2"},
    {"user_id": "u1", "ts": 2000, "action": "cart", "item_id": "i2", "category": "c2"},
    {"user_id": "u1", "ts": 4000, "action": "buy", "category": "c3"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_event_file_jsonl_leave_last_out(tmp_path: Path) -> None:
    data = load_event_file(_write_jsonl(tmp_path / "events.jsonl", ROWS))
    by_key = {s.key: s for s in data.sequences}
    u1 = by_key["u1"]
    assert [e.token for e in u1.events] == ["view", "cart", "view", "buy"]       # sorted by time
    assert u1.splits == (Split.TRAIN, Split.TRAIN, Split.VALID, Split.TEST)
    assert u1.events[2] == EventRecord("view", 3000, 40.7, -74.0)
    assert by_key["u2"].events[0].ts_ms == 1_704_067_200_000 and by_key["u2"].splits == (Split.TRAIN,)
    assert len(data.fingerprint) == 16 and data.name == "events"


@pytest.mark.parametrize("field, tokens", [("item_id", ["i1", "i2", "i3"]), ("category", ["c1", "c2", "c1", "c3"])])
def test_event_file_action_field(tmp_path: Path, field: str, tokens: list[str]) -> None:
    data = load_event_file(_write_jsonl(tmp_path / "events.jsonl", ROWS), action_field=field)
    u1 = next(s for s in data.sequences if s.key == "u1")
    assert [e.token for e in u1.events] == tokens


def test_event_file_csv(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,ts,action,lat,lon\na,10,x,1.5,2.5\na,20,y,,\na,30,z,1,2\n")
    seq = load_event_file(path).sequences[0]
    assert seq.events == (EventRecord("x", 10, 1.5, 2.5), EventRecord("y", 20), EventRecord("z", 30, 1.0, 2.0))


@pytest.mark.parametrize("text", ['{"user_id": "a", "action": "x"}', "{not json",
                                  '{"user_id": "a", "ts": "soon", "action": "x"}'])
def test_event_file_bad_rows_name_the_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + text + "\n")
    with pytest.raises(ModelError, match=r"bad\.jsonl:2"):
        load_event_file(path)


def test_event_file_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        load_event_file(tmp_path / "missing.jsonl")
    with pytest.raises(ModelError):
        load_event_file(_write_jsonl(tmp_path / "e.jsonl", ROWS), action_field="user_id")


def test_leave_last_out_is_stable_and_merge_validation() -> None:
    events = [EventRecord("b", 5), EventRecord("a", 5), EventRecord("c", 1), EventRecord("d", 9)]
    data = leave_last_out("toy", {"k": events}, "f")
    assert [e.token for e in data.sequences[0].events] == ["c", "b", "a", "d"]
    assert data.n_targets(Split.TRAIN) == 1 and data.n_targets(Split.VALID) == 1
    merged = merge_validation(data)
    assert merged.sequences[0].splits == (Split.TRAIN, Split.TRAIN, Split.TRAIN, Split.TEST)
    assert list(merged.training_tokens()) == ["c", "b", "a"]


def test_data_fingerprint_follows_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert data_fingerprint(a) == data_fingerprint(a) != data_fingerprint(b)


@pytest.mark.data
def test_foursquare_protocol(shared_data: Path) -> None:
    folder = shared_data / "foursquare-nyc"
    data = load_foursquare(folder)
    assert len(data.sequences) == 1083
    assert data.n_targets(Split.TEST) == data.n_targets(Split.VALID) == 1083
    assert data.n_targets(Split.TRAIN) == 147_938 - 3 * 1083
    raw = np.load(folder / "NYC.npy")
    user1 = raw[raw[:, 0] == 1]
    seq = next(s for s in data.sequences if s.key == "1")
    assert seq.events[0].ts_ms == FOURSQUARE_EPOCH_MS + int(user1[:, 2].min()) * 60_000
    assert all(a.ts_ms <= b.ts_ms for a, b in zip(seq.events, seq.events[1:], strict=False))
    assert all(e.lat is not None for e in seq.events)


@pytest.mark.data
def test_diginetica_srgnn_protocol(shared_data: Path) -> None:
    data = load_diginetica(shared_data / "diginetica-sample")
    merged: ActionDataset = merge_validation(data)
    sessions = {split: sum(1 for s in merged.sequences if s.splits[0] == split) for split in Split}
    assert sessions[Split.TRAIN] == 469 and sessions[Split.TEST] == 39
    assert merged.n_targets(Split.TEST) == 99
    assert len(set(merged.training_tokens())) == 309
    n_valid = sum(1 for s in data.sequences if s.splits[0] == Split.VALID)
    assert n_valid == round(469 * 0.1)
