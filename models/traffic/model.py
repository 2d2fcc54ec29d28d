"""Traffic graph-GRU (T-GCN family): a training ``forward`` and a streaming ``step``.

Per step each sensor receives its value (divided by its ``value_scale``, ``speed_scale`` unless
training set one per sensor) and an optional 0/1 observed flag (0 where the caller imputed the
value); optional context shared by all sensors (time-of-day and day-of-week sin/cos) and a
learned per-sensor embedding add to the gates. The cell mixes neighbours through the renormalized
adjacency ``D^-1/2 (A+I) D^-1/2`` (T-GCN's graph convolution, applied to the input and to the
hidden state, each with a self term beside it), and the head predicts, for every horizon, the
change from the current value, so an untrained model starts as persistence.

With ``use_profile`` the model also reads the seasonal profile (:mod:`models.traffic.profile`):
the current departure from it is one more input, and each horizon's forecast moves from the
current value towards the profile at the target time by a learned gate ``g`` in (0, 1) before the
head's correction: ``x + g (profile_ahead - x) + scale * head(h)``. ``g`` starts near 0
(persistence); where the profile forecasts better, training opens it.

``forward`` runs a sequence for training; ``step`` advances one window for streaming; both share
the same cell, so chaining ``step`` reproduces ``forward``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.exceptions import ModelError
from models.traffic.graph import normalized_adjacency

__all__ = ["TrafficConfig", "TrafficGRU", "time_features", "N_TIME_FEATURES", "STEP_MS", "CHECKPOINT_KIND"]

logger = logging.getLogger(__name__)

N_TIME_FEATURES = 4  # sin/cos of time of day, sin/cos of day of week
STEP_MS = 300_000  # one window: 5 minutes
CHECKPOINT_KIND = "traffic-gru"
_DAY_MS = 86_400_000
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_CLOSED_GATE = -4.0  # initial profile-gate logit: sigmoid(-4) = 0.018, almost persistence
_SPARSE_MIN_SENSORS = 1_000
_SPARSE_MAX_DENSITY = 0.05


def time_features(local_ms: np.ndarray | int) -> np.ndarray:
    """Time-of-day and day-of-week encodings, [..., 4] float32 (sin/cos day, sin/cos week).

    ``local_ms``: [...] wall-clock milliseconds since 1970-01-01 in the network's local time
    (a local timestamp read as if it were UTC).
    """
    ms = np.asarray(local_ms, dtype=np.int64)
    day_fraction = (ms % _DAY_MS) / _DAY_MS
    week_fraction = (((ms // _DAY_MS) + _EPOCH_WEEKDAY) % 7 + day_fraction) / 7
    day_angle, week_angle = 2 * np.pi * day_fraction, 2 * np.pi * week_fraction
    features = np.stack([np.sin(day_angle), np.cos(day_angle),
                         np.sin(week_angle), np.cos(week_angle)], axis=-1)
    return features.astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class TrafficConfig:
    """Shape and inputs of a :class:`TrafficGRU`; plain values only, saved in checkpoints."""

    n_sensors: int
    hidden_dim: int = 64
    horizons: tuple[int, ...] = (3, 6, 12)  # steps ahead; 5-minute steps: 15/30/60 min
    use_time_features: bool = True
    use_day_of_week: bool = True  # with time features: all 4, else time of day only
    use_observed_mask: bool = True
    speed_scale: float = 70.0  # values are divided by this before entering the cell (see value_scale)
    step_minutes: int = 5
    node_embedding_dim: int = 0  # learned per-sensor vector feeding the gates (0: none)
    use_profile: bool = False  # read the seasonal profile and forecast on top of it

    def __post_init__(self) -> None:
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        problems = []
        if self.n_sensors < 1:
            problems.append(f"n_sensors={self.n_sensors} (need >= 1)")
        if self.node_embedding_dim < 0:
            problems.append(f"node_embedding_dim={self.node_embedding_dim} (need >= 0)")
        if self.hidden_dim < 1:
            problems.append(f"hidden_dim={self.hidden_dim} (need >= 1)")
        if not self.horizons or min(self.horizons) < 1 or len(set(self.horizons)) != len(self.horizons):
            problems.append(f"horizons={self.horizons} (need distinct steps >= 1)")
        if not self.speed_scale > 0:
            problems.append(f"speed_scale={self.speed_scale} (need > 0)")
        if problems:
            raise ModelError("invalid TrafficConfig: " + ", ".join(problems))

    @property
    def n_time_inputs(self) -> int:
        """Time-feature columns the model reads (the first of :func:`time_features`' 4)."""
        if not self.use_time_features:
            return 0
        return N_TIME_FEATURES if self.use_day_of_week else 2

    @property
    def n_node_inputs(self) -> int:
        """Per-sensor input channels: value, the observed flag when used, the profile departure when used."""
        return 1 + int(self.use_observed_mask) + int(self.use_profile)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoint metadata (horizons as a list)."""
        values = asdict(self)
        values["horizons"] = list(self.horizons)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrafficConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ModelError."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ModelError(f"TrafficConfig has no fields {sorted(unknown)}")
        return cls(**values)


class TrafficGRU(nn.Module):
    """Graph-convolutional GRU over a fixed sensor network with a multi-horizon head.

    ``adjacency``: [sensors, sensors] raw weights (normalized here). ``sparse``: keep the
    normalized adjacency as a sparse COO tensor; None picks sparse for big, sparse graphs.
    The adjacency is a non-persistent buffer: checkpoints hold weights, the network is given.
    """

    # Buffers, declared so type checkers know them as tensors (``register_buffer`` sets them).
    support: torch.Tensor  # normalized adjacency [sensors, sensors], dense or sparse
    value_scale: torch.Tensor  # [sensors]

    def __init__(self, config: TrafficConfig, adjacency: np.ndarray | torch.Tensor, *,
                 sparse: bool | None = None) -> None:
        super().__init__()
        self.config = config
        support = torch.as_tensor(normalized_adjacency(np.asarray(adjacency)))
        if support.shape != (config.n_sensors, config.n_sensors):
            raise ModelError(f"adjacency is {tuple(support.shape)}, config has "
                             f"{config.n_sensors} sensors")
        self.sparse = _choose_sparse(support) if sparse is None else sparse
        self.register_buffer("support", support.to_sparse().coalesce() if self.sparse else support,
                             persistent=False)
        hidden, n_in = config.hidden_dim, config.n_node_inputs
        self.input_gates = nn.Linear(2 * n_in, 3 * hidden)
        self.time_gates = (nn.Linear(config.n_time_inputs, 3 * hidden, bias=False)
                           if config.use_time_features else None)
        self.hidden_gates = nn.Linear(2 * hidden, 3 * hidden)
        self.node_embedding = (nn.Parameter(0.1 * torch.randn(config.n_sensors, config.node_embedding_dim))
                               if config.node_embedding_dim else None)
        self.node_gates = (nn.Linear(config.node_embedding_dim, 3 * hidden, bias=False)
                           if config.node_embedding_dim else None)
        self.head = nn.Linear(hidden, len(config.horizons))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.profile_gate = nn.Linear(hidden, len(config.horizons)) if config.use_profile else None
        if self.profile_gate is not None:
            nn.init.zeros_(self.profile_gate.weight)
            nn.init.constant_(self.profile_gate.bias, _CLOSED_GATE)
        self.register_buffer("value_scale", torch.full((config.n_sensors,), float(config.speed_scale)))

    def set_value_scale(self, scale: np.ndarray | torch.Tensor) -> None:
        """Per-sensor scale [sensors] of the values (positive); saved with the weights."""
        scale = torch.as_tensor(scale, dtype=self.value_scale.dtype).to(self.value_scale.device)
        if scale.shape != self.value_scale.shape or not bool((scale > 0).all()):
            raise ModelError(f"value_scale must be [{self.config.n_sensors}] positive numbers, got "
                             f"{tuple(scale.shape)}")
        self.value_scale.copy_(scale)

    def initial_hidden(self, batch: int) -> torch.Tensor:
        """Zero hidden state [batch, sensors, hidden] on the model's device."""
        return self.support.new_zeros(batch, self.config.n_sensors, self.config.hidden_dim,
                                      layout=torch.strided)

    def forward(self, speeds: torch.Tensor, time_features: torch.Tensor | None = None,
                h: torch.Tensor | None = None, *, observed: torch.Tensor | None = None,
                profile: torch.Tensor | None = None,
                profile_ahead: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a sequence.

        ``speeds``: [batch, time, sensors] values in original units; ``time_features``:
        [batch, time, 4] (required when the config uses them); ``h``: [batch, sensors, hidden]
        or None for zeros; ``observed``: [batch, time, sensors] 0/1, None meaning all observed;
        ``profile``: [batch, time, sensors] and ``profile_ahead``: [batch, time, sensors,
        horizons], the profile at each step and at each target (required with ``use_profile``).
        Returns predictions [batch, time, sensors, horizons] (original units; step ``t``
        forecasts ``t + horizon``) and the last hidden state [batch, sensors, hidden].
        """
        self._check_speeds(speeds, dims=3)
        if h is None:
            h = self.initial_hidden(speeds.shape[0])
        outputs = []
        for t in range(speeds.shape[1]):
            prediction, h = self.step(speeds[:, t],
                                      None if time_features is None else time_features[:, t], h,
                                      observed_t=None if observed is None else observed[:, t],
                                      profile_t=None if profile is None else profile[:, t],
                                      profile_ahead_t=None if profile_ahead is None else profile_ahead[:, t])
            outputs.append(prediction)
        return torch.stack(outputs, dim=1), h

    def step(self, speeds_t: torch.Tensor, time_features_t: torch.Tensor | None = None,
             h: torch.Tensor | None = None, *, observed_t: torch.Tensor | None = None,
             profile_t: torch.Tensor | None = None,
             profile_ahead_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one window.

        ``speeds_t``: [batch, sensors]; ``time_features_t``: [batch, 4]; ``h``:
        [batch, sensors, hidden] or None; ``observed_t``: [batch, sensors] 0/1 or None;
        ``profile_t``: [batch, sensors] and ``profile_ahead_t``: [batch, sensors, horizons]
        (with ``use_profile``). Returns predictions [batch, sensors, horizons] and the new h
        [batch, sensors, hidden].
        """
        self._check_speeds(speeds_t, dims=2)
        self._check_profile(profile_t, profile_ahead_t)
        if h is None:
            h = self.initial_hidden(speeds_t.shape[0])
        gx = self._input_projection(speeds_t, time_features_t, observed_t, profile_t)
        gh = self.hidden_gates(torch.cat([h, self._graph_conv(h)], dim=-1))
        r = self._reset_gate(gx, gh)
        z = self._update_gate(gx, gh)
        n = self._candidate_state(gx, gh, r)
        h = self._hidden_state(z, n, h)
        return self._predict(speeds_t, h, profile_ahead_t), h

    def _input_projection(self, speeds_t: torch.Tensor, time_features_t: torch.Tensor | None,
                          observed_t: torch.Tensor | None, profile_t: torch.Tensor | None) -> torch.Tensor:
        """Gate pre-activations from the inputs, [batch, sensors, 3 * hidden]."""
        x = (speeds_t / self.value_scale).unsqueeze(-1)
        if self.config.use_observed_mask:
            mask = torch.ones_like(speeds_t) if observed_t is None else observed_t.to(speeds_t.dtype)
            x = torch.cat([x, mask.unsqueeze(-1)], dim=-1)
        if profile_t is not None:
            x = torch.cat([x, ((speeds_t - profile_t) / self.value_scale).unsqueeze(-1)], dim=-1)
        gx: torch.Tensor = self.input_gates(torch.cat([x, self._graph_conv(x)], dim=-1))
        return gx + self._context_projection(time_features_t)

    def _context_projection(self, time_features_t: torch.Tensor | None) -> torch.Tensor | float:
        """Gate terms shared over the batch or the sensors: time of day/week, sensor embedding."""
        context: torch.Tensor | float = 0.0
        if self.time_gates is not None:
            if time_features_t is None:
                raise ModelError("this TrafficGRU uses time features; pass time_features")
            context = self.time_gates(time_features_t[..., :self.config.n_time_inputs]).unsqueeze(1)
        if self.node_gates is not None:
            context = context + self.node_gates(self.node_embedding)
        return context

    def _graph_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Neighbour mixing ``Â x`` of [batch, sensors, features] as one (sparse) matmul."""
        batch, sensors, features = x.shape
        flat = x.transpose(0, 1).reshape(sensors, batch * features)
        mixed = self.support @ flat
        return mixed.reshape(sensors, batch, features).transpose(0, 1)

    def _reset_gate(self, gx: torch.Tensor, gh: torch.Tensor) -> torch.Tensor:
        """r = sigmoid(W_r x + U_r h)."""
        hidden = self.config.hidden_dim
        return torch.sigmoid(gx[..., :hidden] + gh[..., :hidden])

    def _update_gate(self, gx: torch.Tensor, gh: torch.Tensor) -> torch.Tensor:
        """z = sigmoid(W_z x + U_z h)."""
        hidden = self.config.hidden_dim
        return torch.sigmoid(gx[..., hidden:2 * hidden] + gh[..., hidden:2 * hidden])

    def _candidate_state(self, gx: torch.Tensor, gh: torch.Tensor,
                         r: torch.Tensor) -> torch.Tensor:
        """n = tanh(W_n x + r * U_n h)."""
        hidden = self.config.hidden_dim
        return torch.tanh(gx[..., 2 * hidden:] + r * gh[..., 2 * hidden:])

    def _hidden_state(self, z: torch.Tensor, n: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h' = z * h + (1 - z) * n."""
        return z * h + (1 - z) * n

    def _predict(self, speeds_t: torch.Tensor, h: torch.Tensor,
                 profile_ahead_t: torch.Tensor | None) -> torch.Tensor:
        """Current value, moved towards the profile ahead (with one), plus a per-horizon change,
        [batch, sensors, horizons]."""
        current = speeds_t.unsqueeze(-1)
        change: torch.Tensor = self.value_scale.unsqueeze(-1) * self.head(h)
        if self.profile_gate is None or profile_ahead_t is None:
            return current + change
        gate: torch.Tensor = torch.sigmoid(self.profile_gate(h))
        return current + gate * (profile_ahead_t - current) + change

    def _check_profile(self, profile_t: torch.Tensor | None, profile_ahead_t: torch.Tensor | None) -> None:
        """ModelError unless the profile inputs are given exactly when the config uses them."""
        given = profile_t is not None and profile_ahead_t is not None
        if self.config.use_profile and not given:
            raise ModelError("this TrafficGRU reads the seasonal profile; pass profile and profile_ahead")
        if not self.config.use_profile and (profile_t is not None or profile_ahead_t is not None):
            raise ModelError("this TrafficGRU was built without use_profile; do not pass a profile")
        if given and profile_ahead_t.shape[-1] != len(self.config.horizons):  # type: ignore[union-attr]
            raise ModelError(f"profile_ahead must end in {len(self.config.horizons)} horizons, "
                             f"got shape {tuple(profile_ahead_t.shape)}")  # type: ignore[union-attr]

    def _check_speeds(self, speeds: torch.Tensor, *, dims: int) -> None:
        """ModelError unless ``speeds`` has ``dims`` dims and sensors last."""
        if speeds.dim() != dims or speeds.shape[-1] != self.config.n_sensors:
            expected = "[batch, time, sensors]" if dims == 3 else "[batch, sensors]"
            raise ModelError(f"speeds must be {expected} with {self.config.n_sensors} sensors, "
                             f"got shape {tuple(speeds.shape)}")


def _choose_sparse(support: torch.Tensor) -> bool:
    """Sparse only where it pays: many sensors and few edges."""
    n = support.shape[0]
    density = float((support != 0).sum()) / (n * n)
    return n >= _SPARSE_MIN_SENSORS and density <= _SPARSE_MAX_DENSITY
