"""Crowd scoring's shortcut: windows that cannot alert skip the full test, with the same decisions,
profiles and rhythm as a scorer that tests every window; the unrolled profile update matches the
per-statistic one it replaced."""

from __future__ import annotations

from array import array

import numpy as np
import pytest

from models.next_action.crowd import CellProfile, CrowdAlert, CrowdAnomalyConfig, CrowdAnomalyScorer, week_slot

T0 = 1_709_528_400_000  # a Monday 05:00 UTC
WINDOW_MS = 15 * 60_000


class _EveryWindowTested(CrowdAnomalyScorer):
    """The scorer without its shortcut: every window goes through ``_expected`` and ``_test``."""

    skipped = 0

    def _may_alert(self, profile: CellProfile, slot: int, events: int, users: int) -> bool:
        if not super()._may_alert(profile, slot, events, users):
            self.skipped += 1
        return True


def _city(rng: np.random.Generator, days: int = 4) -> list[tuple[str, int, int, int]]:
    """(cell, window start, events, users): a busy square, alone on day 1, that empties for an hour on
    day 3; quiet cells from day 2 with a gathering on day 3 and silent windows; a jump to week slots
    never seen before."""
    rows = []
    for w in range(days * 96):
        start = T0 + w * WINDOW_MS + (86_400_000 * 3 if w >= days * 80 else 0)  # a jump to unseen slots
        hour = (w // 4) % 24
        rate = 0.3 + 1.7 * (8 <= hour < 22)
        for c in range(12 if w >= 96 else 0):  # the busy square alone on day 1: it sets the reference
            users = int(rng.poisson(rate * (1 + c % 3)))
            events = int(sum(rng.geometric(0.3) for _ in range(users)))
            if c == 5 and 2 * 96 + 70 <= w < 2 * 96 + 78:
                events, users = events + 70, users + 30   # a gathering
            rows.append((f"cell-{c}", start, events, users))
        empty = 2 * 96 + 30 <= w < 2 * 96 + 34
        rows.append(("square", start, 0 if empty else 34 + w % 7 * 2, 0 if empty else 20 + w % 5))
    return rows


def score_windows(scorer: CrowdAnomalyScorer, rows: list[tuple[str, int, int, int]], window_ms: int = WINDOW_MS) \
        -> tuple[list[CrowdAlert], dict[str, bytes], dict[str, list[float] | float]]:
    """Score (cell, window start, events, users) rows in order, each cell with its own profile: the
    alerts, each profile's bytes and the scorer's rhythm state."""
    profiles: dict[str, CellProfile] = {}
    alerts = []
    for cell, start, events, users in rows:
        alert = scorer.observe(profiles.setdefault(cell, CellProfile()), cell, start, start + window_ms, events, users)
        if alert is not None:
            alerts.append(alert)
    return alerts, {cell: profile.to_bytes() for cell, profile in profiles.items()}, scorer.rhythm_state()


@pytest.mark.parametrize("config", [CrowdAnomalyConfig(), CrowdAnomalyConfig(alpha=0.2, min_users=1)],
                         ids=["default", "ready-to-alert"])
def test_windows_that_cannot_alert_skip_the_test_with_the_same_alerts_profiles_and_rhythm(
        config: CrowdAnomalyConfig) -> None:
    rows = _city(np.random.default_rng(5))
    reference = _EveryWindowTested(config)
    expected = score_windows(reference, rows)
    assert score_windows(CrowdAnomalyScorer(config), rows) == expected
    alerts = expected[0]
    assert {(a.kind, a.statistic) for a in alerts} >= {("spike", "users"), ("drop", "events")}, \
        "both tails are exercised"
    assert 0 < reference.skipped < len(rows), "some windows, not all, take the shortcut"


def _learn_per_statistic(scorer: CrowdAnomalyScorer, profile: CellProfile, slot: int,
                         observed: tuple[float, float]) -> None:
    """The update as it was written before it was unrolled (one statistic after the other)."""
    rate = 1.0 / min(profile.seen + 1, scorer.config.memory_windows * 168)
    profile.level = [level + rate * (x - level) for level, x in zip(profile.level, observed, strict=True)]
    profile.seen += 1
    n = profile.slot_seen[slot]
    slot_rate = 1.0 / min(n + 1, scorer.config.memory_windows)
    step = array("f", [0.0])
    for i, x in enumerate(observed, start=2 * slot):
        m = profile.slot_mean[i]
        step[0] = slot_rate * (x - m)
        profile.slot_mean[i] = m + step[0]
    profile.slot_seen[slot] = min(n + 1, 65_535)
    for i, x in enumerate(observed):
        scorer._week[slot][i] += x
        scorer._total[i] += x
    scorer._week_seen[slot] += 1
    scorer._week_seen_total += 1
    scorer._cells_windows += 1


def test_the_unrolled_profile_update_matches_the_per_statistic_one() -> None:
    rng = np.random.default_rng(11)
    fast, slow = CrowdAnomalyScorer(), CrowdAnomalyScorer()
    fast_profile, slow_profile = CellProfile(), CellProfile()
    for w in range(5_000):  # past memory_windows in every slot, and slot counts that keep growing
        slot = week_slot(T0 + w * WINDOW_MS)
        events, users = float(rng.poisson(30)), float(rng.poisson(9))
        fast._learn(fast_profile, slot, events, users)
        _learn_per_statistic(slow, slow_profile, slot, (events, users))
    assert fast_profile.to_bytes() == slow_profile.to_bytes()
    assert fast.rhythm_state() == slow.rhythm_state()
