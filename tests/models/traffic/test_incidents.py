"""Incidents: clean networks of counts and of speeds stay within the alert budget; an injected
incident is raised once for the right sensor, grouped with its neighbours and resolved after it ends."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.incidents import (
    RAISED,
    RESOLVED,
    IncidentConfig,
    IncidentDetector,
    ResidualScale,
    calibrate_threshold,
    neighbour_lists,
    residuals,
    z_scores,
)

HOUR, STEP = 3_600_000, 300_000
WEEK = 7 * 24 * HOUR
PATH = np.diag(np.ones(7), 1) + np.diag(np.ones(7), -1)  # 8 sensors in a row


def _profile(windows: int, step_ms: int, sensors: int) -> np.ndarray:
    """[windows, sensors] a daily cycle, a different level per sensor."""
    hours = (np.arange(windows) * step_ms % (24 * HOUR)) / HOUR
    shape = 1 + 0.8 * np.exp(-((hours - 8) / 1.5) ** 2) + 1.0 * np.exp(-((hours - 17) / 2) ** 2)
    return shape[:, None] * np.linspace(1.0, 3.0, sensors)[None, :]


def _speeds(weeks: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    windows = int(weeks * WEEK / STEP)
    expected = 70 - 8 * _profile(windows, STEP, 8)
    noise = np.random.default_rng(seed).normal(0, 1.0, expected.shape) * (1 + 0.5 * (expected < 55))
    return expected + noise, expected, (np.arange(windows) + 1) * STEP


def _counts(weeks: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    windows = int(weeks * WEEK / HOUR)
    expected = 0.3 * _profile(windows, HOUR, 8) ** 2  # 0.3 at night to ~8 at the evening peak: many zeros
    return np.random.default_rng(seed).poisson(expected).astype(float), expected, (np.arange(windows) + 1) * HOUR


def _calibrated(data, step_ms: int, config: IncidentConfig) -> tuple[IncidentConfig, ResidualScale]:
    """Scale fitted on two weeks, threshold calibrated on the third (the validation part)."""
    observed, expected, ends = data
    fit = slice(0, 2 * WEEK // step_ms)
    check = slice(2 * WEEK // step_ms, 3 * WEEK // step_ms)
    local = ends - step_ms
    scale = ResidualScale.fit(residuals(observed[fit], expected[fit], config.counts),
                              np.ones_like(observed[fit], bool), local[fit], HOUR,
                              minimum=1.0 if config.counts else 0.0)
    z = z_scores(observed[check], expected[check], scale.at(local[check]), counts=config.counts)
    threshold, raised = calibrate_threshold(z, ends[check], neighbour_lists(PATH), config)
    assert raised <= config.budget_per_sensor_week * 8
    return dataclasses.replace(config, threshold=threshold), scale


def _replay(data, step_ms: int, config: IncidentConfig, scale: ResidualScale, part: slice) -> list:
    observed, expected, ends = data
    detector = IncidentDetector([f"s{i}" for i in range(8)], PATH, config, name="net")
    events = []
    for t in range(*part.indices(len(ends))):
        local = ends[t] - step_ms
        events += detector.update(int(ends[t]), observed[t], expected[t], scale.at(local))
    return events


@pytest.mark.parametrize(("kind", "direction"), [("speeds", "below"), ("counts", "both")])
def test_clean_network_stays_within_the_alert_budget(kind: str, direction: str) -> None:
    step = STEP if kind == "speeds" else HOUR
    data = (_speeds if kind == "speeds" else _counts)(weeks=6, seed=1)
    config, scale = _calibrated(data, step, IncidentConfig(direction=direction, counts=kind == "counts"))
    events = _replay(data, step, config, scale, slice(3 * WEEK // step, None))  # three unseen weeks
    raised = [e for e in events if e.status == RAISED]
    # The budget is one incident per sensor and week, on average over the network: 24 in 3 weeks here,
    # with room for the sampling noise of a count that small; no sensor storms.
    assert len(raised) <= 1.5 * 8 * 3, f"{len(raised)} incidents on a clean network in 3 weeks"
    per_sensor = max([sum(e.sensor_id == s for e in raised) for s in {e.sensor_id for e in raised}], default=0)
    assert per_sensor <= 4 * 3


@pytest.mark.parametrize(("kind", "sensor", "neighbour", "factor", "follows", "hour"),
                         [("speeds", 3, 2, 0.2, 0.5, 17), ("counts", 7, 6, 0.0, 0.0, 16)])
def test_injected_incident_is_raised_once_grouped_and_resolved(kind: str, sensor: int, neighbour: int, factor: float,
                                                               follows: float, hour: int) -> None:
    step = STEP if kind == "speeds" else HOUR
    observed, expected, ends = (_speeds if kind == "speeds" else _counts)(weeks=4, seed=2)
    config, scale = _calibrated((observed, expected, ends), step,
                                IncidentConfig(direction="below", counts=kind == "counts"))
    start = 3 * WEEK // step + (hour * HOUR) // step  # day 22, at the evening peak
    length = 90 * 60_000 // step if kind == "speeds" else 4
    observed = observed.copy()
    observed[start:start + length, sensor] *= factor  # the sensor collapses (counts: a closed station)
    observed[start + 1:start + length, neighbour] *= follows  # its neighbour follows a window later
    events = _replay((observed, expected, ends), step, config, scale, slice(3 * WEEK // step, None))
    here = {f"s{sensor}", f"s{neighbour}"}
    during = [e for e in events if e.sensor_id in here and start - 3 <= e.window_end_ms // step - 1 < start + length]
    raised = [e for e in during if e.status == RAISED]
    assert [e.sensor_id for e in raised] == [f"s{sensor}"], events
    assert raised[0].window_end_ms <= ends[start + config.depart_windows - 1] and raised[0].score < 0
    resolved = [e for e in events if e.status == RESOLVED and e.incident_id == raised[0].incident_id]
    assert len(resolved) == 1 and ends[start + length - 1] < resolved[0].window_end_ms <= ends[start + length + 12]
    assert set(resolved[0].sensors) == here  # the neighbour joined the incident instead of raising its own


def test_history_gate_and_missing_values() -> None:
    detector = IncidentDetector(["a", "b"], np.zeros((2, 2)), IncidentConfig(threshold=3, depart_windows=2))
    low = np.array([0.0, 0.0])
    for t in range(4):  # far below, but the profile has one period of history: not scored
        assert detector.update(t, low, np.array([50.0, 50.0]), np.ones(2), history=np.array([1, 1])) == []
    assert detector.update(5, np.array([0.0, np.nan]), np.array([50.0, 50.0]), np.ones(2), np.array([2, 2])) == []
    events = detector.update(6, np.array([0.0, np.nan]), np.array([50.0, 50.0]), np.ones(2), np.array([2, 2]))
    assert [(e.status, e.sensor_id, e.severity) for e in events] == [(RAISED, "a", "critical")]


def test_state_bytes_round_trip_mid_incident() -> None:
    observed, expected, ends = _speeds(weeks=1, seed=3)
    config = IncidentConfig(threshold=3.0)
    scale = np.full(8, 1.5)
    observed[100:120, 5] -= 30
    detector = IncidentDetector([f"s{i}" for i in range(8)], PATH, config, name="n")
    for t in range(110):
        detector.update(int(ends[t]), observed[t], expected[t], scale)
    assert detector.open_incidents == 1
    restored = IncidentDetector([f"s{i}" for i in range(8)], PATH, config, name="n")
    restored.load_state_bytes(detector.state_bytes())
    assert restored.state_bytes() == detector.state_bytes()
    rest = [(a.status, a.incident_id) for t in range(110, 200) for a in restored.update(int(ends[t]), observed[t],
                                                                                         expected[t], scale)]
    assert rest == [(RESOLVED, f"n:s5:{ends[101]}")]
    with pytest.raises(ModelError):
        IncidentDetector(["a"], np.zeros((1, 1))).load_state_bytes(detector.state_bytes())


def test_config_validation() -> None:
    with pytest.raises(ModelError, match="invalid IncidentConfig"):
        IncidentConfig(direction="sideways")
    with pytest.raises(ModelError, match="invalid IncidentConfig"):
        IncidentConfig(threshold=0)
