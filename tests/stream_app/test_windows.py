"""Event-time windows: assignment, watermark closing, late records."""

from __future__ import annotations

import pytest

from stream_app.windows import ActivityWindow, EventTimeWindows, SpeedWindow, Watermark, window_starts

MIN = 60_000


@pytest.mark.parametrize(("ts", "size", "step", "expected"), [
    (0, 5 * MIN, None, [0]),
    (5 * MIN - 1, 5 * MIN, None, [0]),
    (5 * MIN, 5 * MIN, None, [5 * MIN]),
    (7 * MIN, 5 * MIN, MIN, [3 * MIN, 4 * MIN, 5 * MIN, 6 * MIN, 7 * MIN]),
    (7 * MIN + 30_000, 5 * MIN, MIN, [3 * MIN, 4 * MIN, 5 * MIN, 6 * MIN, 7 * MIN]),
])
def test_window_starts(ts, size, step, expected):
    assert window_starts(ts, size, step) == expected


def test_watermark_of_one_partition_is_its_max_event_time_minus_grace():
    mark = Watermark(grace_ms=1000)
    assert mark.value is None
    for ts in (5000, 3000, 9000, 8000):
        mark.observe(ts)
    assert mark.value == 8000


def test_tumbling_windows_close_in_order_and_refuse_late_records():
    windows = EventTimeWindows(size_ms=5 * MIN, new_window=SpeedWindow)
    assert windows.add("s1", 1 * MIN, 50.0, 10.0)
    assert windows.add("s1", 2 * MIN, 30.0, None)
    assert windows.add("s2", 6 * MIN, 60.0, None)
    assert list(windows.close(4 * MIN)) == [], "nothing ends before the watermark"
    closed = list(windows.close(5 * MIN))
    assert [(k, s) for k, s, _ in closed] == [("s1", 0)]
    window = closed[0][2]
    assert (window.count, window.mean, window.low, window.high, window.flow) == (2, 40.0, 30.0, 50.0, 10.0)
    assert not windows.add("s1", 3 * MIN, 99.0, None), "its window already closed: late"
    assert windows.add("s1", 7 * MIN, 20.0, None), "a later window is still open"


def test_hopping_windows_count_distinct_users_and_actions():
    windows = EventTimeWindows(size_ms=2 * MIN, step_ms=MIN, new_window=ActivityWindow)
    windows.add("cell", 90_000, "u1", "view")
    windows.add("cell", 100_000, "u1", "buy")
    windows.add("cell", 130_000, "u2", "view")
    closed = {start: w for _, start, w in windows.close(10 * MIN)}
    assert sorted(closed) == [0, MIN, 2 * MIN]
    assert (closed[0].events, len(closed[0].users), closed[0].actions) == (2, 1, {"view": 1, "buy": 1})
    assert (closed[MIN].events, len(closed[MIN].users), closed[MIN].actions) == (3, 2, {"view": 2, "buy": 1})
    assert (closed[2 * MIN].events, len(closed[2 * MIN].users)) == (1, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watermark_waits_for_the_slowest_partition_until_it_goes_idle():
    clock = FakeClock()
    mark = Watermark(grace_ms=1000, idle_s=5.0, clock=clock)
    mark.observe(50_000, partition=0)
    mark.observe(10_000, partition=1)
    assert mark.value == 9_000, "partition 1 is behind: it holds the watermark"
    clock.now = 3.0
    mark.observe(60_000, partition=0)
    assert mark.value == 9_000
    clock.now = 6.0
    assert mark.value == 59_000, "partition 1 has been silent for more than idle_s"
    mark.observe(20_000, partition=1)
    assert mark.value == 59_000, "the watermark never moves backwards"
    mark.observe(70_000, partition=0)
    assert mark.value == 59_000, "partition 1 is active again and behind"
    clock.now = 20.0
    assert mark.value == 69_000, "all partitions silent: the furthest sets the watermark"


def test_a_partition_not_heard_from_holds_the_watermark_until_idle():
    clock = FakeClock()
    mark = Watermark(grace_ms=0, idle_s=5.0, partitions=2, clock=clock)
    mark.observe(50_000, partition=0)
    assert mark.value is None, "partition 1 may still hold older records"
    clock.now = 6.0
    assert mark.value == 50_000


def test_an_all_silent_input_closes_its_last_window_then_follows_processing_time():
    clock = FakeClock()
    mark = Watermark(grace_ms=60_000, idle_s=5.0, partitions=2, clock=clock, end_of_input_ms=300_000)
    windows: EventTimeWindows[SpeedWindow] = EventTimeWindows(size_ms=300_000, new_window=SpeedWindow)
    for partition, ts in ((0, 600_000), (1, 610_000)):
        mark.observe(ts, partition)
        windows.add(f"s{partition}", ts, 40.0, None)
    clock.now = 5.0
    assert list(windows.close(mark.value)) == [], "still within idle_s: the last window waits"
    clock.now = 5.5
    assert [(key, start) for key, start, _ in windows.close(mark.value)] == [("s0", 600_000), ("s1", 600_000)]
    assert mark.value == 610_000 + 300_000 + 500, "one window past the last event, plus the silent processing time"
    clock.now = 7.5
    assert mark.value == 910_000 + 2_500
    assert not windows.add("s0", 700_000, 1.0, None), "a reading behind the advanced watermark is late"


def test_without_end_of_input_an_all_silent_input_stops_at_its_last_event():
    clock = FakeClock()
    mark = Watermark(grace_ms=0, idle_s=5.0, clock=clock)
    mark.observe(610_000)
    clock.now = 60.0
    assert mark.value == 610_000
