"""Feature encoding: hand-computed time, distance, vocabulary and spatial-hash cases."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from models.exceptions import ModelError
from models.next_action.features import (
    DENSE_NAMES,
    N_DENSE,
    OOV_ID,
    PAD_ID,
    EventRecord,
    FeatureSpec,
    Vocabulary,
    cell_bucket,
    encode_events,
    haversine_km,
    time_features,
)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
COL = {name: i for i, name in enumerate(DENSE_NAMES)}


@pytest.mark.parametrize("ts_ms, hour, weekday", [
    (0, 0.0, 3),                              # 1970-01-01 00:00 UTC, a Thursday
    (6 * HOUR_MS, 6.0, 3),
    (DAY_MS + 18 * HOUR_MS + 30 * 60_000, 18.5, 4),  # Friday 18:30
    (1_333_411_200_000, 0.0, 1),              # 2012-04-03 00:00 UTC, a Tuesday
    (-DAY_MS, 0.0, 2),                        # 1969-12-31, a Wednesday
])
def test_time_features_hand_computed(ts_ms: int, hour: float, weekday: int) -> None:
    got = time_features(np.array([ts_ms]))[0]
    expected = [math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24),
                math.sin(2 * math.pi * weekday / 7), math.cos(2 * math.pi * weekday / 7)]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_haversine_hand_computed() -> None:
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(2 * math.pi * 6371.0088 / 360)
    assert haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(3935.75, abs=0.1)
    assert haversine_km(10.0, 20.0, 10.0, 20.0) == 0.0


def test_vocabulary_ids_oov_and_round_trip() -> None:
    vocab = Vocabulary.build(["b", "a", "b", "c", "c", "c"])
    assert vocab.to_list() == ["c", "b", "a"]          # most frequent first, ties by token
    assert [vocab.encode(t) for t in ["c", "b", "a", "zzz"]] == [2, 3, 4, OOV_ID]
    assert vocab.decode(PAD_ID) == "<pad>" and vocab.decode(OOV_ID) == "<oov>"
    assert vocab.decode(3) == "b" and len(vocab) == 5 and "a" in vocab
    assert Vocabulary.from_list(vocab.to_list()).to_list() == vocab.to_list()
    np.testing.assert_array_equal(vocab.encode_many(["a", "nope"]), [4, OOV_ID])
    assert Vocabulary.build(["x", "y", "y"], min_count=2).to_list() == ["y"]


@pytest.mark.parametrize("bad", [["a", "a"], ["a", 3]])
def test_vocabulary_rejects_duplicates_and_non_strings(bad: list) -> None:
    with pytest.raises(ModelError):
        Vocabulary(bad)


def test_vocabulary_decode_out_of_range() -> None:
    with pytest.raises(ModelError):
        Vocabulary(["a"]).decode(7)


def test_cell_bucket_is_blake2b_of_the_h3_cell() -> None:
    # 882a1072d7fffff is the resolution-8 H3 cell of (40.7, -74.0).
    digest = hashlib.blake2b(b"882a1072d7fffff", digest_size=8).digest()
    assert cell_bucket(40.7, -74.0, 8, 4096) == int.from_bytes(digest, "little") % 4096 + 1
    buckets = {cell_bucket(40.7 + i * 0.01, -74.0, 8, 4096) for i in range(20)}
    assert len(buckets) > 15                             # power-of-two bucket counts still spread


def test_cell_bucket_stable_across_processes() -> None:
    code = "from models.next_action.features import cell_bucket; print(cell_bucket(40.75, -73.98, 9, 1000))"
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert outputs == {str(cell_bucket(40.75, -73.98, 9, 1000))}


def test_encode_events_hand_computed() -> None:
    vocab = Vocabulary(["home", "work"])
    spec = FeatureSpec(lat_mean=1.0, lat_std=2.0, lon_mean=0.0, lon_std=4.0, n_cell_buckets=64)
    events = [EventRecord("home", 6 * HOUR_MS, 0.0, 0.0),
              EventRecord("work", 6 * HOUR_MS + 90_000, 0.0, 1.0),
              EventRecord("gym", 6 * HOUR_MS + 30_000, None, None),     # late and without location
              EventRecord("home", 7 * HOUR_MS, 3.0, 2.0)]
    enc = encode_events(events, vocab, spec)
    assert enc.dense.shape == (4, N_DENSE) and enc.dense.dtype == np.float32
    np.testing.assert_array_equal(enc.tokens, [2, 3, OOV_ID, 2])
    np.testing.assert_allclose(enc.dense[:, COL["log_gap_s"]],
                               [0.0, math.log1p(90), 0.0, math.log1p(3600 - 30)], rtol=1e-6)
    np.testing.assert_allclose(enc.dense[:, COL["log_moved_km"]],
                               [0.0, math.log1p(111.19508), 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(enc.dense[:, COL["has_location"]], [1, 1, 0, 1])
    np.testing.assert_allclose(enc.dense[:, COL["lat_norm"]], [-0.5, -0.5, 0.0, 1.0])
    np.testing.assert_allclose(enc.dense[:, COL["lon_norm"]], [0.0, 0.25, 0.0, 0.5])
    assert enc.cells[2] == 0 and all(1 <= c <= 64 for c in enc.cells[[0, 1, 3]])
    np.testing.assert_allclose(enc.dense[0, :2], [1.0, 0.0], atol=1e-7)          # 06:00


def test_encode_events_continues_from_previous_event() -> None:
    vocab, spec = Vocabulary(["a"]), FeatureSpec()
    one = encode_events([EventRecord("a", 100_000, 0.0, 1.0)], vocab, spec,
                        prev_ts_ms=40_000, prev_lat=0.0, prev_lon=0.0)
    assert one.dense[0, COL["log_gap_s"]] == pytest.approx(math.log1p(60))
    assert one.dense[0, COL["log_moved_km"]] == pytest.approx(math.log1p(111.19508), rel=1e-6)
    late = encode_events([EventRecord("a", 10_000)], vocab, spec, prev_ts_ms=40_000)
    assert late.dense[0, COL["log_gap_s"]] == 0.0


def test_feature_spec_fit_and_round_trip() -> None:
    events = [EventRecord("a", 0, 40.0, -74.0), EventRecord("b", 1, 42.0, -72.0), EventRecord("c", 2)]
    spec = FeatureSpec.fit(events, h3_resolution=7, n_cell_buckets=10)
    assert (spec.lat_mean, spec.lat_std, spec.lon_mean, spec.lon_std) == (41.0, 1.0, -73.0, 1.0)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec.fit([EventRecord("a", 0)]) == FeatureSpec()
    with pytest.raises(ModelError):
        FeatureSpec(h3_resolution=16)
