"""The user's decayed profile: advancing many users at once equals adding their tokens one by one."""

from __future__ import annotations

import numpy as np
import pytest

from models.exceptions import ModelError
from models.next_action.history import Profile, advance_profiles, profile_snapshots

ENCODE = {f"t{i}": i + 2 for i in range(9)}  # t9..t11 are out of the vocabulary
OOV = 1


def _token_runs(seed: int, users: int, longest: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"t{rng.integers(0, 12)}" for _ in range(int(rng.integers(0, longest + 1)))] for _ in range(users)]


def _one_by_one(profile: Profile, run: list[str], decay: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each token's snapshot (ids, weights) from the profile itself, added token by token."""
    ids, weights = [], []
    for token in run:
        profile.add(token, decay)
        ids.append(profile.slot_ids(ENCODE, OOV))
        weights.append(profile.weights())
    return ids, weights


@pytest.mark.parametrize("decay", [0.8, 1.0, 1e-20], ids=["decayed", "undecayed", "rescaled-often"])
def test_advance_profiles_equals_adding_one_token_at_a_time(decay: float) -> None:
    """Several users (some without new tokens, more distinct tokens than slots so slots get
    replaced, unknown tokens, and with ``1e-20`` a rescale of the units every few tokens)."""
    size = 4
    history = _token_runs(1, 6, 12)
    runs = _token_runs(2, 6, 9)
    runs[2] = []
    batched, single = [Profile(size) for _ in runs], [Profile(size) for _ in runs]
    for profile, other, old in zip(batched, single, history, strict=True):
        for token in old:
            profile.add(token, decay)
            other.add(token, decay)
    slot_ids = [p.slot_ids(ENCODE, OOV) for p in batched]
    before, after = advance_profiles(runs, ENCODE, batched, decay, slot_ids, OOV)

    start_weights = [p.weights() for p in single]
    assert len(before) == len(runs) and len(after) == sum(map(len, runs))
    row = 0
    for u, (profile, run) in enumerate(zip(single, runs, strict=True)):
        mass = start_weights[u].sum()
        np.testing.assert_array_equal(before.ids[u], profile.slot_ids(ENCODE, OOV))
        assert before.mass[u] == np.float32(mass)                # (the same float operations: equal bits)
        np.testing.assert_array_equal(before.probs[u], (start_weights[u] / mass if mass else start_weights[u]).astype(
            np.float32))
        for ids, weights in zip(*_one_by_one(profile, run, decay), strict=True):
            np.testing.assert_array_equal(after.ids[row], ids)
            assert after.mass[row] == np.float32(weights.sum())
            np.testing.assert_array_equal(after.probs[row], (weights / weights.sum()).astype(np.float32))
            row += 1
        assert batched[u].filled() == profile.filled()           # the profiles themselves advanced alike
        np.testing.assert_array_equal(slot_ids[u], profile.slot_ids(ENCODE, OOV))  # and their cached ids


def test_profile_snapshots_is_advance_profiles_for_one_user() -> None:
    run = _token_runs(3, 1, 20)[0]
    a, b = Profile(3), Profile(3)
    snapshots = profile_snapshots(run, ENCODE, a, 0.9, oov_id=OOV)
    _, after = advance_profiles([run], ENCODE, [b], 0.9, [b.slot_ids(ENCODE, OOV)], OOV)
    for name in ("ids", "probs", "mass"):
        np.testing.assert_array_equal(getattr(snapshots, name), getattr(after, name))


def test_advance_profiles_of_size_zero_and_of_mixed_sizes() -> None:
    before, after = advance_profiles([["t1"], []], ENCODE, [Profile(0), Profile(0)], 0.9,
                                     [np.zeros(0, np.int64)] * 2, OOV)
    assert before.ids.shape == (2, 0) and after.ids.shape == (1, 0) and after.mass.tolist() == [0.0]
    with pytest.raises(ModelError, match="slots advanced together"):
        advance_profiles([["t1"], ["t2"]], ENCODE, [Profile(2), Profile(3)], 0.9,
                         [np.zeros(2, np.int64), np.zeros(3, np.int64)], OOV)
