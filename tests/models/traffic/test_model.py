"""TrafficGRU: chained step equals forward, shapes per hidden-state case, config and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.exceptions import ModelError
from models.traffic.model import N_TIME_FEATURES, TrafficConfig, TrafficGRU, time_features

SENSORS, HIDDEN, BATCH, TIME = 5, 8, 3, 7


def _adjacency(n: int = SENSORS) -> np.ndarray:
    rng = np.random.default_rng(0)
    adj = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
    adj = np.maximum(adj, adj.T)
    np.fill_diagonal(adj, 0)
    return adj.astype(np.float32)


def _model(*, use_time_features: bool = True, use_observed_mask: bool = True,
           sparse: bool = False, **options) -> TrafficGRU:
    torch.manual_seed(0)
    config = TrafficConfig(n_sensors=SENSORS, hidden_dim=HIDDEN, horizons=(1, 3, 6),
                           use_time_features=use_time_features,
                           use_observed_mask=use_observed_mask, node_embedding_dim=3, **options)
    model = TrafficGRU(config, _adjacency(), sparse=sparse)
    torch.nn.init.normal_(model.head.weight, std=0.3)  # the head starts at zero (persistence)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    speeds = 20 + 50 * torch.rand(BATCH, TIME, SENSORS, generator=generator)
    features = torch.rand(BATCH, TIME, N_TIME_FEATURES, generator=generator) * 2 - 1
    observed = (torch.rand(BATCH, TIME, SENSORS, generator=generator) > 0.3).float()
    return speeds, features, observed


@pytest.mark.parametrize("use_time_features", [True, False])
@pytest.mark.parametrize("use_observed_mask", [True, False])
@pytest.mark.parametrize("given_h", [False, True])
def test_chained_step_equals_forward(use_time_features: bool, use_observed_mask: bool,
                                     given_h: bool) -> None:
    model = _model(use_time_features=use_time_features, use_observed_mask=use_observed_mask)
    speeds, features, observed = _inputs()
    features = features if use_time_features else None
    mask = observed if use_observed_mask else None
    h0 = torch.randn(BATCH, SENSORS, HIDDEN) * 0.5 if given_h else None
    with torch.no_grad():
        full, h_full = model(speeds, features, h0, observed=mask)
        h, steps = h0, []
        for t in range(TIME):
            prediction, h = model.step(speeds[:, t], None if features is None else features[:, t], h,
                                       observed_t=None if mask is None else mask[:, t])
            steps.append(prediction)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("given_h", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_shapes_for_each_hidden_state_case(given_h: bool, sparse: bool) -> None:
    model = _model(sparse=sparse)
    speeds, features, observed = _inputs()
    h0 = torch.zeros(BATCH, SENSORS, HIDDEN) if given_h else None
    predictions, h = model(speeds, features, h0, observed=observed)
    assert predictions.shape == (BATCH, TIME, SENSORS, 3) and h.shape == (BATCH, SENSORS, HIDDEN)
    step_prediction, step_h = model.step(speeds[:, 0], features[:, 0], h0)
    assert step_prediction.shape == (BATCH, SENSORS, 3) and step_h.shape == (BATCH, SENSORS, HIDDEN)


def test_time_of_day_only_ignores_the_weekday_columns() -> None:
    model = _model(use_day_of_week=False)
    speeds, features, _ = _inputs()
    other_week = features.clone()
    other_week[..., 2:] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(model(speeds, features)[0], model(speeds, other_week)[0])


def test_sparse_and_dense_adjacency_agree() -> None:
    dense, sparse = _model(sparse=False), _model(sparse=True)
    speeds, features, observed = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(sparse(speeds, features, observed=observed)[0],
                                   dense(speeds, features, observed=observed)[0],
                                   atol=1e-4, rtol=1e-5)


def test_untrained_head_is_persistence() -> None:
    model = TrafficGRU(TrafficConfig(n_sensors=SENSORS, hidden_dim=HIDDEN), _adjacency())
    speeds, features, _ = _inputs()
    predictions, _ = model(speeds, features)
    torch.testing.assert_close(predictions, speeds.unsqueeze(-1).expand(-1, -1, -1, 3))


def test_gradients_reach_every_parameter() -> None:
    model = _model().train()
    speeds, features, observed = _inputs()
    predictions, _ = model(speeds, features, observed=observed)
    predictions.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_inputs_are_model_errors() -> None:
    model = _model()
    speeds, features, _ = _inputs()
    with pytest.raises(ModelError, match="time features"):
        model(speeds)
    with pytest.raises(ModelError, match="sensors"):
        model(speeds[..., :2], features)
    with pytest.raises(ModelError, match="sensors"):
        TrafficGRU(TrafficConfig(n_sensors=4), _adjacency())


@pytest.mark.parametrize("options", [{"n_sensors": 0}, {"hidden_dim": 0}, {"horizons": ()},
                                     {"horizons": (0, 3)}, {"horizons": (3, 3)},
                                     {"speed_scale": 0.0}])
def test_config_validation(options: dict) -> None:
    with pytest.raises(ModelError, match="invalid TrafficConfig"):
        TrafficConfig(**{"n_sensors": 3, **options})


def test_config_dict_round_trip() -> None:
    config = TrafficConfig(n_sensors=3, hidden_dim=4, horizons=(1, 2), use_time_features=False)
    assert TrafficConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match="no fields"):
        TrafficConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_time_features_known_points() -> None:
    thursday_midnight = 0  # 1970-01-01 00:00 was a Thursday (day 3 of a Monday-based week)
    monday_6am = 4 * 86_400_000 + 6 * 3_600_000
    features = time_features(np.array([thursday_midnight, monday_6am]))
    np.testing.assert_allclose(features[0, :2], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(features[1, :2], [1.0, 0.0], atol=1e-6)  # quarter of a day
    week_angle = 2 * np.pi * (3 / 7)
    np.testing.assert_allclose(features[0, 2:], [np.sin(week_angle), np.cos(week_angle)], atol=1e-6)
    week_angle = 2 * np.pi * (0.25 / 7)
    np.testing.assert_allclose(features[1, 2:], [np.sin(week_angle), np.cos(week_angle)], atol=1e-6)


def _profile_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    profile = 30 + 30 * torch.rand(BATCH, TIME, SENSORS, generator=generator)
    ahead = 30 + 30 * torch.rand(BATCH, TIME, SENSORS, 3, generator=generator)
    return profile, ahead


@pytest.mark.parametrize("given_h", [False, True])
def test_chained_step_equals_forward_with_the_profile(given_h: bool) -> None:
    model = _model(use_profile=True)
    torch.nn.init.normal_(model.profile_gate.weight, std=0.3)
    model.set_value_scale(torch.linspace(20, 80, SENSORS))
    speeds, features, observed = _inputs()
    profile, ahead = _profile_inputs()
    h0 = torch.randn(BATCH, SENSORS, HIDDEN) * 0.5 if given_h else None
    with torch.no_grad():
        full, h_full = model(speeds, features, h0, observed=observed, profile=profile, profile_ahead=ahead)
        h, steps = h0, []
        for t in range(TIME):
            prediction, h = model.step(speeds[:, t], features[:, t], h, observed_t=observed[:, t],
                                       profile_t=profile[:, t], profile_ahead_t=ahead[:, t])
            steps.append(prediction)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_full, atol=1e-5, rtol=0)


def test_open_profile_gate_with_a_silent_head_serves_the_profile() -> None:
    model = _model(use_profile=True)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.constant_(model.profile_gate.bias, 30.0)  # sigmoid(30) = 1: the profile ahead
    speeds, features, observed = _inputs()
    profile, ahead = _profile_inputs()
    with torch.no_grad():
        prediction, _ = model(speeds, features, observed=observed, profile=profile, profile_ahead=ahead)
    torch.testing.assert_close(prediction, ahead, atol=1e-4, rtol=0)


def test_profile_inputs_are_required_exactly_when_configured() -> None:
    speeds, features, _ = _inputs()
    profile, ahead = _profile_inputs()
    with pytest.raises(ModelError, match="pass profile and profile_ahead"):
        _model(use_profile=True)(speeds, features)
    with pytest.raises(ModelError, match="without use_profile"):
        _model()(speeds, features, profile=profile, profile_ahead=ahead)
    with pytest.raises(ModelError, match="value_scale must be"):
        _model().set_value_scale(torch.zeros(SENSORS))
