"""Seasonal profile: slot means by hand, leave-one-period-out, the online update, local time with DST."""

from __future__ import annotations

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.calendar import check_timezone, local_wall_ms
from models.traffic.profile import SeasonalProfile, ewma_update, profile_slot_ms

HOUR = 3_600_000
DAY = 24 * HOUR
MONDAY = 1_704_067_200_000  # 2024-01-01T00:00Z, a Monday


def _hourly(weeks: int, sensors: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[hours, sensors] a weekday/weekend profile (sensor 1 twice sensor 0) plus noise, and its times."""
    times = MONDAY + HOUR * np.arange(weeks * 168)
    hour, weekday = (times % DAY) // HOUR, (times // DAY + 3) % 7
    base = np.where(weekday < 5, 10 + 10 * np.exp(-((hour - 8) / 2.0) ** 2), 4.0)
    noise = np.random.default_rng(seed).normal(0, 1, (len(times), sensors))
    return base[:, None] * np.arange(1, sensors + 1) + noise, times


def test_slot_means_by_hand() -> None:
    values = np.array([[1.0], [2.0], [3.0], [4.0]])  # Monday 00h, 01h; next Monday 00h, 01h
    times = np.array([MONDAY, MONDAY + HOUR, MONDAY + 7 * DAY, MONDAY + 7 * DAY + HOUR])
    profile = SeasonalProfile.fit(values, np.ones_like(values, bool), times, HOUR)
    assert profile.hour_of_week(MONDAY)[0] == pytest.approx(2.0)  # mean of 1 and 3
    assert profile.hour_of_day(MONDAY + HOUR)[0] == pytest.approx(3.0)  # mean of 2 and 4
    assert profile.hour_of_day(MONDAY + 5 * HOUR)[0] == pytest.approx(2.5)  # empty slot: the sensor mean
    assert profile.hour_of_week(MONDAY + DAY)[0] == pytest.approx(2.0)  # empty week slot: the day slot


def test_leave_one_out_never_reads_the_rows_own_day_or_week() -> None:
    values, times = _hourly(weeks=3)
    observed = np.ones_like(values, bool)
    profile = SeasonalProfile.fit(values, observed, times, HOUR)
    spiked = values.copy()
    spiked[200] += 1000.0  # a huge value on one row
    loo_spiked = SeasonalProfile.fit(spiked, observed, times, HOUR)
    loo_spiked.day_shrinkage, loo_spiked.week_shrinkage = profile.day_shrinkage, profile.week_shrinkage
    same = loo_spiked.leave_one_out(spiked, observed, times)
    unaffected = profile.leave_one_out(values, observed, times)[200]
    np.testing.assert_allclose(same[200], unaffected, atol=0.1)  # only the overall mean (1000 / 504 rows) moves
    assert same[200 + 168, 0] > values[200 + 168, 0] + 100  # the next week's same slot does see it


def test_blend_beats_the_plain_averages_out_of_sample() -> None:
    values, times = _hourly(weeks=4, seed=1)
    observed = np.ones_like(values, bool)
    train, test = slice(0, 3 * 168), slice(3 * 168, 4 * 168)
    profile = SeasonalProfile.fit(values[train], observed[train], times[train], HOUR)
    errors = {name: np.sqrt(np.mean((getattr(profile, name)(times[test]) - values[test]) ** 2))
              for name in ("expected", "hour_of_week", "hour_of_day")}
    assert errors["expected"] <= errors["hour_of_week"] < errors["hour_of_day"]


def test_online_update_is_a_running_mean_then_an_ewma() -> None:
    mean, count = np.array([10.0, 0.0]), np.array([3.0, 0.0])
    new_mean, new_count = ewma_update(mean, count, np.array([14.0, 7.0]), np.array([True, True]), alpha=0.1)
    np.testing.assert_allclose(new_mean, [11.0, 7.0])  # weight 1/4 (running mean), first value starts a slot
    np.testing.assert_allclose(new_count, [4.0, 1.0])
    assert mean.tolist() == [10.0, 0.0]  # pure: the inputs are untouched
    late, _ = ewma_update(np.array([10.0]), np.array([100.0]), np.array([20.0]), np.array([True]), alpha=0.1)
    assert late[0] == pytest.approx(11.0)  # past 1/alpha values: the EWMA weight
    kept, _ = ewma_update(np.array([10.0]), np.array([5.0]), np.array([np.nan]), np.array([True]))
    assert kept[0] == 10.0


def test_observe_moves_only_the_rows_slots_and_arrays_round_trip() -> None:
    values, times = _hourly(weeks=2)
    profile = SeasonalProfile.fit(values, np.ones_like(values, bool), times, HOUR)
    before = profile.copy()
    profile.observe(int(MONDAY + 14 * DAY + 8 * HOUR), np.array([100.0, 100.0]), np.array([True, False]))
    assert profile.hour_of_week(MONDAY + 8 * HOUR)[0] > before.hour_of_week(MONDAY + 8 * HOUR)[0]
    assert profile.hour_of_week(MONDAY + 8 * HOUR)[1] == before.hour_of_week(MONDAY + 8 * HOUR)[1]
    np.testing.assert_array_equal(profile.week_mean[:8], before.week_mean[:8])
    again = SeasonalProfile.from_arrays(profile.to_arrays(), 2)
    np.testing.assert_array_equal(again.expected(times), profile.expected(times))
    with pytest.raises(ModelError, match="do not fit 3 sensors"):
        SeasonalProfile.from_arrays(profile.to_arrays(), 3)


@pytest.mark.parametrize(("step_ms", "slot_ms"), [(300_000, 900_000), (HOUR, HOUR), (7 * 60_000, 900_000),
                                                  (25 * 60_000, 30 * 60_000)])
def test_profile_slots_divide_a_day(step_ms: int, slot_ms: int) -> None:
    assert profile_slot_ms(step_ms) == slot_ms and DAY % slot_ms == 0


def test_local_time_follows_daylight_saving() -> None:
    # 2024-03-10: New York moves from UTC-5 to UTC-4 at 07:00 UTC.
    utc = np.array([1_710_050_400_000, 1_710_054_000_000])  # 06:00Z and 07:00Z
    local_hours = (local_wall_ms(utc, "America/New_York") % DAY) / HOUR
    assert local_hours.tolist() == [1.0, 3.0]
    assert local_wall_ms(utc, None).tolist() == utc.tolist()
    with pytest.raises(ModelError, match="IANA name"):
        check_timezone("Europe/Atlantis")
