"""Next-action model: GRU, copy over the user's recent window, training transitions and the user's
long-term profile, mixed by a learned gate."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.exceptions import ModelError
from models.next_action.features import LOCATION_DENSE, N_DENSE, OOV_ID, PAD_ID, STATIC_DENSE, TIME_DENSE
from models.next_action.tensors import EventTensors, ProfileTensors

__all__ = ["NextActionConfig", "EventTensors", "ProfileTensors", "NextActionModel", "COMPONENTS", "BLEND_BASELINES"]

logger = logging.getLogger(__name__)

_MASKED = -1e9
_MIN_PROB = 1e-12
_MS_PER_HOUR = 3_600_000.0
_EARTH_RADIUS_KM = 6371.0088
_N_PAIR = 11
COMPONENTS = ("generate", "copy", "transition", "profile")
# Baselines (``models.next_action.baselines.SERVABLE`` names) the model can blend with: computed
# from what it already reads (the profile and the transition counts).
BLEND_BASELINES = ("user-frequency", "mix")
_BASELINE_SMOOTHING = 0.01  # as ``evaluation.baseline_probabilities``: 1 % add-one popularity


@dataclass(frozen=True, kw_only=True)
class NextActionConfig:
    """Sizes and switches of a NextActionModel; the window is the last ``window_size`` events
    whose time is within ``window_span_s`` seconds of the current event (which is included)."""

    vocab_size: int
    embed_dim: int = 64
    hidden_dim: int = 128
    n_cell_buckets: int = 4096
    cell_dim: int = 16
    attn_dim: int = 64
    pair_dim: int = 16
    use_time: bool = True
    use_location: bool = True
    use_transitions: bool = True
    use_profile: bool = True
    # Never rank an action the user already did (the data show no repeats): needs the filter of
    # consumed actions (FeatureSpec.consumed_hashes > 0).
    exclude_consumed: bool = False
    window_size: int = 200
    window_span_s: float = 365 * 86_400.0
    dropout: float = 0.2
    # Units of a hidden layer between the output state and the generate logits (0: linear logits).
    head_dim: int = 0
    # The served distribution is the mixture times a servable baseline's distribution to this power
    # (renormalized; 0: none). Chosen on validation after training, never learned by gradient.
    blend_weight: float = 0.0
    blend_baseline: str = "user-frequency"

    def __post_init__(self) -> None:
        if self.cell_dim < 0:
            raise ModelError(f"NextActionConfig.cell_dim must be >= 0 (0: no cell embedding), got {self.cell_dim}")
        for name in ("vocab_size", "embed_dim", "hidden_dim", "n_cell_buckets", "attn_dim",
                     "pair_dim", "window_size"):
            if getattr(self, name) < 1:
                raise ModelError(f"NextActionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.window_span_s <= 0:
            raise ModelError(f"NextActionConfig.window_span_s must be > 0, got {self.window_span_s}")
        if self.head_dim < 0:
            raise ModelError(f"NextActionConfig.head_dim must be >= 0, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"NextActionConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.blend_weight < 0 or self.blend_baseline not in BLEND_BASELINES:
            raise ModelError(f"NextActionConfig.blend_weight must be >= 0 and blend_baseline one of {BLEND_BASELINES}, "
                             f"got {self.blend_weight} and {self.blend_baseline!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NextActionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown NextActionConfig fields {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class _WindowView:
    """Each position's window, newest first: tokens, the copy and read attention logits and
    validity [batch, time, window], and the read values [batch, time, window, embed]."""

    tokens: Tensor
    scores: Tensor
    read_scores: Tensor
    values: Tensor
    valid: Tensor

    def select(self, rows: Tensor, cols: Tensor) -> _WindowView:
        """Positions (rows[i], cols[i]) as [n, 1, window]."""
        return _WindowView(*(t[rows, cols].unsqueeze(1) for t in (self.tokens, self.scores, self.read_scores,
                                                                   self.values, self.valid)))


@dataclass(frozen=True)
class _Context:
    """What the output reads at each position besides the GRU state and the window: the profile
    snapshot [*lead, slots] and the consumed-action bits [*lead, bits] (None when unused)."""

    profile: ProfileTensors | None
    consumed: Tensor | None

    def select(self, rows: Tensor, cols: Tensor) -> _Context:
        """Positions (rows[i], cols[i]) of [batch, time, ...] as [n, 1, ...]."""
        return _Context(None if self.profile is None else self.profile.map(lambda t: t[rows, cols].unsqueeze(1)),
                        None if self.consumed is None else self.consumed[rows, cols].unsqueeze(1))


class NextActionModel(nn.Module):
    """A learned gate mixes four next-action distributions:

    - generate: a GRU over the user's events (token, cell, time and move features), read with the
      user's profile summary -> logits (a learned bias moves the user's known actions up or down:
      the repeat-versus-explore propensity of the data);
    - copy (NARM/RepeatNet style): attention of the GRU state over the user's window, scattered
      onto the window's tokens; keys come from each stored window event alone (token, time of
      day/week, place) plus pairwise terms (age, recency rank, distance, same/following token),
      so streaming state is just the window's events and the hidden vector;
    - transition: the global (token -> next token) frequencies counted on the training data;
    - profile: the user's decayed action counts over their whole history (a bounded top-N,
      ``models.next_action.history``), re-weighted by attention of the GRU state.

    The gate sees the GRU state, the profile summary, the window's size, how often the current
    token was followed in training and the profile's total count. With ``exclude_consumed`` the
    mixture is restricted to the actions the user never did (a Bloom filter over the history).

    ``forward`` runs padded sequences (each position's window emulated by a band mask);
    ``step`` advances one event per user; chained steps equal ``forward``.
    """

    dense_mask: Tensor
    transition_keys: Tensor
    transition_counts: Tensor
    transition_totals: Tensor
    popularity: Tensor
    consumed_index: Tensor

    def __init__(self, config: NextActionConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        cell_dim = c.cell_dim if c.use_location else 0
        self.token_embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=PAD_ID)
        self.cell_embedding = nn.Embedding(c.n_cell_buckets + 1, cell_dim, padding_idx=0) if cell_dim else None
        self.input_gates = nn.Linear(c.embed_dim + cell_dim + N_DENSE, 3 * c.hidden_dim)
        self.hidden_gates = nn.Linear(c.hidden_dim, 3 * c.hidden_dim)
        # Two attentions over the window share its keys' inputs: copy (scattered onto the window's
        # tokens) and read (a weighted sum of values, an input of the output state).
        self.query = nn.Linear(c.hidden_dim, 2 * c.attn_dim)
        self.key = nn.Linear(c.embed_dim + cell_dim + len(STATIC_DENSE), 2 * c.attn_dim + c.embed_dim)
        self.pair_bias = nn.Sequential(nn.Linear(_N_PAIR, c.pair_dim), nn.Tanh(), nn.Linear(c.pair_dim, 2))
        self.profile_query = nn.Linear(c.hidden_dim, c.attn_dim)
        self.profile_key = nn.Linear(c.embed_dim, c.attn_dim)
        self.profile_sharpness = nn.Parameter(torch.ones(()))
        self.profile_popularity = nn.Parameter(torch.zeros(()))
        self.repeat_bias = nn.Parameter(torch.zeros(()))
        state_dim = c.hidden_dim + 2 * c.embed_dim
        self.head_layer = nn.Sequential(nn.Linear(state_dim, c.head_dim), nn.Tanh()) if c.head_dim else None
        self.generate_head = nn.Linear(c.head_dim or state_dim, c.vocab_size)
        self.gate_layer = nn.Linear(state_dim + 3, len(COMPONENTS))
        self.dropout = nn.Dropout(c.dropout)
        self.register_buffer("dense_mask", _dense_mask(c), persistent=False)
        # Global (token -> next token) counts from the training data, sorted by token * vocab + next.
        self.register_buffer("transition_keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("transition_counts", torch.zeros(0))
        self.register_buffer("transition_totals", torch.zeros(c.vocab_size))
        # How often each token occurred in training (the popularity baseline and its tie-break).
        self.register_buffer("popularity", torch.zeros(c.vocab_size))
        # Each vocabulary id's bits in the consumed-action filter [vocab, hashes] (set_consumed_index;
        # derived from the vocabulary and the feature spec, so not saved).
        self.register_buffer("consumed_index", torch.zeros(c.vocab_size, 0, dtype=torch.long), persistent=False)
        self.filter_bits = 0

    def set_consumed_index(self, index: np.ndarray, n_bits: int) -> None:
        """The consumed-action filter: its size in bits and the bits of every vocabulary id, int64
        [vocab, hashes] (``features.consumed_index``)."""
        if index.shape[0] != self.config.vocab_size:
            raise ModelError(f"consumed index has {index.shape[0]} rows, the vocabulary {self.config.vocab_size}")
        self.consumed_index = torch.from_numpy(np.asarray(index, dtype=np.int64)).to(self.transition_totals.device)
        self.filter_bits = n_bits

    def set_transitions(self, sequences: Sequence[np.ndarray]) -> None:
        """Count the (token -> next token) pairs and the tokens of training id sequences: the
        transition component and the popularity a served baseline needs."""
        size = self.config.vocab_size
        pairs = [np.asarray(s[:-1], dtype=np.int64) * size + np.asarray(s[1:], dtype=np.int64)
                 for s in sequences if len(s) > 1]
        keys, counts = np.unique(np.concatenate(pairs) if pairs else np.zeros(0, np.int64), return_counts=True)
        totals = np.bincount(keys // size, weights=counts, minlength=size)
        device = self.transition_totals.device
        self.transition_keys = torch.from_numpy(keys).to(device)
        self.transition_counts = torch.from_numpy(counts.astype(np.float32)).to(device)
        self.transition_totals = torch.from_numpy(totals.astype(np.float32)).to(device)
        seen = [np.asarray(s, dtype=np.int64) for s in sequences if len(s)]
        popularity = np.bincount(np.concatenate(seen), minlength=size) if seen else np.zeros(size)
        self.popularity = torch.from_numpy(popularity.astype(np.float32)).to(device)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the transition table's size from the checkpoint (it depends on the training data)."""
        for name in ("transition_keys", "transition_counts"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.transition_totals.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- entry points -------------------------------------------------------------------------

    def forward(self, batch: EventTensors, h0: Tensor | None = None,
                profile: ProfileTensors | None = None) -> Tensor:
        """Log-probs of the next action after each event: [batch, time] -> [batch, time, vocab].
        ``profile`` [batch, time, slots]: the profile after each event (None: no profile)."""
        out = self.hidden_states(batch, h0)
        context = _Context(profile, self._consumed_after(batch))
        return self._log_probs(out, self._band_window(batch, out), batch.tokens, context)

    def step(self, x: EventTensors, h: Tensor | None, window: EventTensors, profile: ProfileTensors | None = None,
             consumed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One new event per user: x [batch], h [batch, hidden] or None, window [batch, window]
        right-aligned (oldest first, the new event last), profile [batch, slots] after the new
        event, consumed bool [batch, bits]: the filter before it. Returns (log-probs
        [batch, vocab], new hidden [batch, hidden])."""
        current = x.map(lambda t: t.unsqueeze(1))
        out = self.hidden_states(current, h)
        context = _Context(None if profile is None else profile.map(lambda t: t.unsqueeze(1)),
                           self._consumed_after(current, consumed))
        return self._log_probs(out, self._given_window(current, window, out), current.tokens, context)[:, 0], out[:, 0]

    def steps(self, x: EventTensors, h: Tensor | None, window: EventTensors, profile: ProfileTensors | None = None,
              consumed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Several new events per user in one call: x [batch, k] left-aligned (padding last), after
        each user's window [batch, window] right-aligned (oldest first, without the new events);
        profile [batch, k, slots] after each new event; consumed bool [batch, bits] before them.
        Returns (log-probs [n, vocab] of the n real new events in row-major order, i.e. of
        ``x.mask.nonzero()``, and the hidden state after each new event [batch, k, hidden], garbage
        at padding). Equals ``step`` chained over the new events (each event's window being its
        last ``window_size`` predecessors within the span) when event times do not decrease."""
        out = self._fused_hidden_states(x, h)
        combined = EventTensors.cat([window, x])
        rows, cols = x.mask.nonzero(as_tuple=True)
        context = _Context(profile, self._consumed_after(x, consumed)).select(rows, cols)
        at, cols = out[rows, cols], cols + window.tokens.shape[1]
        history = int(combined.mask.cumsum(1)[rows, cols].max()) if len(rows) else 1
        view = self._windows_at(combined, at, rows, cols, width=min(history, self.config.window_size))
        return self._log_probs(at.unsqueeze(1), view, combined.tokens[rows, cols].unsqueeze(1), context)[:, 0], out

    def log_probs_after(self, h: Tensor, window: EventTensors, profile: ProfileTensors | None = None,
                        consumed: Tensor | None = None) -> Tensor:
        """The prediction made after the last event of each window, again: h [batch, hidden] the
        state after it, window [batch, window] right-aligned (ending with that event), profile
        [batch, slots] and consumed bool [batch, bits] after it -> log-probs [batch, vocab], equal to
        what ``step``/``steps`` returned for that event."""
        current = window.map(lambda t: t[:, -1:])
        out = h.unsqueeze(1)
        context = _Context(None if profile is None else profile.map(lambda t: t.unsqueeze(1)),
                           None if consumed is None or self._consumed_after(current) is None
                           else consumed.bool().unsqueeze(1))
        return self._log_probs(out, self._given_window(current, window, out), current.tokens, context)[:, 0]

    def log_probs_at(self, batch: EventTensors, rows: Tensor, cols: Tensor,
                     profile: ProfileTensors | None = None) -> Tensor:
        """``forward(batch, profile=profile)[rows, cols]`` without the vocabulary-sized work
        elsewhere: [n, vocab]."""
        out = self.hidden_states(batch)
        view = self._band_window(batch, out).select(rows, cols)
        context = _Context(profile, self._consumed_after(batch)).select(rows, cols)
        return self._log_probs(out[rows, cols].unsqueeze(1), view, batch.tokens[rows, cols].unsqueeze(1), context)[:, 0]

    def target_log_probs(self, batch: EventTensors, rows: Tensor, cols: Tensor, targets: Tensor, *,
                         profile: ProfileTensors | None = None, leave_one_out: bool = False) -> Tensor:
        """``forward(batch, profile=profile)[rows, cols, targets]`` computed for the targets only: [n].

        ``leave_one_out`` (training) removes each target's own pair from the transition counts,
        so the model does not learn to trust counts that contain the answer.
        """
        out = self.hidden_states(batch)
        view = self._band_window(batch, out).select(rows, cols)
        context = _Context(profile, self._consumed_after(batch)).select(rows, cols)
        out, current = out[rows, cols].unsqueeze(1), batch.tokens[rows, cols].unsqueeze(1)
        if context.consumed is not None or self.config.blend_weight > 0:  # both renormalize over the vocabulary
            leave_out = targets[:, None] if leave_one_out else None
            mixed = self._mixture(out, view, current, context, leave_out=leave_out)
            return torch.log(mixed.gather(2, targets[:, None, None]).clamp_min(_MIN_PROB))[:, 0, 0]
        state = self._output_state(out, context.profile, view)
        logits = self._generate_logits(state, context.profile)
        p_generate = torch.softmax(logits, dim=-1).gather(2, targets[:, None, None])
        p_copy = (self._copy_weights(view) * (view.tokens == targets[:, None, None])).sum(-1, keepdim=True)
        p_transition, totals = self._transition_of(current, targets[:, None], leave_one_out)
        parts = [p_generate, p_copy, p_transition[..., None]]
        if context.profile is not None:
            weights = self._profile_weights(out, context.profile)
            parts.append((weights * (context.profile.ids == targets[:, None, None])).sum(-1, keepdim=True))
        gate = self._gate(state, view.valid, totals, context.profile)
        mixed = (gate[..., :len(parts)] * torch.cat(parts, dim=-1)).sum(-1)
        return torch.log(mixed.clamp_min(_MIN_PROB))[:, 0]

    def hidden_states(self, batch: EventTensors, h0: Tensor | None = None) -> Tensor:
        """GRU state after each event: [batch, time] -> [batch, time, hidden] (h0 [batch, hidden])."""
        h = self.initial_hidden(batch.tokens.shape[0], batch.tokens.device) if h0 is None else h0
        outputs = []
        for gates_x in self.input_gates(self._event_inputs(batch)).unbind(1):
            h = self._gru_cell(gates_x, h)
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def _fused_hidden_states(self, x: EventTensors, h0: Tensor | None) -> Tensor:
        """``hidden_states`` in one fused call (the kernel behind ``nn.GRU``; same equations and
        gate order, weights taken from ``input_gates``/``hidden_gates``): a loop of small ops per
        time step costs more than the arithmetic at serving batch sizes. Padding comes last in
        each row, so it only affects states after the row's last event."""
        n_batch = x.tokens.shape[0]
        h = self.initial_hidden(n_batch, x.tokens.device) if h0 is None else h0
        weights = [self.input_gates.weight, self.hidden_gates.weight, self.input_gates.bias, self.hidden_gates.bias]
        # Packed: each row runs over its own events only (rows differ a lot in length; padding
        # would cost as much arithmetic as events). States at padding come back 0.
        packed = nn.utils.rnn.pack_padded_sequence(self._event_inputs(x), x.mask.sum(1).clamp_min(1).cpu(),
                                                   batch_first=True, enforce_sorted=False)
        order = packed.sorted_indices
        h = (h if order is None else h.index_select(0, order)).unsqueeze(0).contiguous()
        data, _ = torch._VF.gru(packed.data, packed.batch_sizes, h, weights, True, 1, 0.0, self.training, False)
        out, _ = nn.utils.rnn.pad_packed_sequence(
            nn.utils.rnn.PackedSequence(data, packed.batch_sizes, order, packed.unsorted_indices),
            batch_first=True, total_length=x.tokens.shape[1])
        return out

    def initial_hidden(self, batch_size: int, device: torch.device | str) -> Tensor:
        """Zero hidden state [batch, hidden] on ``device``."""
        return torch.zeros(batch_size, self.config.hidden_dim, device=device)

    # -- recurrent cell (PyTorch's GRU equations) ----------------------------------------------

    def _gru_cell(self, gates_x: Tensor, h: Tensor) -> Tensor:
        """One GRU update from input gate pre-activations [batch, 3 * hidden] and h [batch, hidden]."""
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = self.hidden_gates(h).chunk(3, dim=-1)
        reset = self._reset_gate(x_r, h_r)
        update = self._update_gate(x_z, h_z)
        return (1.0 - update) * self._candidate(x_n, h_n, reset) + update * h

    def _reset_gate(self, x_r: Tensor, h_r: Tensor) -> Tensor:
        return torch.sigmoid(x_r + h_r)

    def _update_gate(self, x_z: Tensor, h_z: Tensor) -> Tensor:
        return torch.sigmoid(x_z + h_z)

    def _candidate(self, x_n: Tensor, h_n: Tensor, reset: Tensor) -> Tensor:
        return torch.tanh(x_n + reset * h_n)

    # -- inputs and windows -------------------------------------------------------------------

    def _event_inputs(self, events: EventTensors) -> Tensor:
        """GRU inputs [*lead, embed + cell + N_DENSE]."""
        parts = [self.dropout(self.token_embedding(events.tokens))]
        if self.cell_embedding is not None:
            parts.append(self.dropout(self.cell_embedding(events.cells)))
        parts.append(events.dense * self.dense_mask)
        return torch.cat(parts, dim=-1)

    def _keys(self, events: EventTensors) -> Tensor:
        """Copy keys, read keys and read values from each event alone (token, time of day/week,
        place): [*lead, 2 attn + embed]."""
        parts = [self.token_embedding(events.tokens)]
        if self.cell_embedding is not None:
            parts.append(self.cell_embedding(events.cells))
        parts.append((events.dense * self.dense_mask)[..., list(STATIC_DENSE)])
        keys: Tensor = self.key(torch.cat(parts, dim=-1))
        return keys

    def _band_window(self, batch: EventTensors, out: Tensor, first: int = 0) -> _WindowView:
        """The window of each position from ``first`` on inside the padded sequence [batch, time]
        (``out`` holds the GRU states of those positions) -> [batch, time - first, window]."""
        n_batch, n_time = batch.tokens.shape
        offset = torch.arange(min(self.config.window_size, n_time), device=out.device)
        index = torch.arange(first, n_time, device=out.device)[:, None] - offset[None, :]
        flat = index.clamp_min(0).reshape(-1)
        events = batch.map(lambda t: t[:, flat].reshape(n_batch, n_time - first, len(offset), *t.shape[2:]))
        events = replace(events, mask=events.mask & (index >= 0))
        keys, query, a = self._keys(batch), self.query(out), self.config.attn_dim
        at = index.clamp_min(0).expand(n_batch, -1, -1)
        head = [slice(h * a, (h + 1) * a) for h in range(2)]
        scores = torch.stack([(query[..., part] @ keys[..., part].transpose(1, 2)).gather(2, at) for part in head],
                             dim=-1)
        values = keys[:, flat, 2 * a:].reshape(n_batch, n_time - first, len(offset), -1)
        return self._window_view(batch.map(lambda t: t[:, first:].unsqueeze(2)), events, scores, values, offset)

    def _windows_at(self, batch: EventTensors, out: Tensor, rows: Tensor, cols: Tensor, width: int) -> _WindowView:
        """The windows of positions (rows[i], cols[i]) of the padded sequence [batch, time] as
        [n, 1, width], ``out`` [n, hidden] being the GRU state at each: ``_band_window`` for a
        few positions, without the work for the others (``width``: the longest window there).

        Windows differ a lot in length, so the scores (attention and pair terms) are computed for
        the valid (position, window event) pairs only; elsewhere they are 0, and masked as in
        ``_window_view``."""
        offset = torch.arange(width, device=out.device)
        index = cols[:, None] - offset[None, :]
        # Gathers on the flattened [batch * time] axis: index_select is several times faster than
        # indexing with two index tensors on CPU.
        n_time, n = batch.tokens.shape[1], len(rows)
        flat = (rows[:, None] * n_time + index.clamp_min(0)).reshape(-1)

        def take(t: Tensor, at: Tensor) -> Tensor:
            return t.flatten(0, 1).index_select(0, at)

        here = rows * n_time + cols
        current = batch.map(lambda t: take(t, here))
        span_ms = int(round(self.config.window_span_s * 1000.0))
        valid = take(batch.mask, flat).reshape(n, width) & (index >= 0) & current.mask[:, None] & \
            (take(batch.ts_ms, flat).reshape(n, width) > current.ts_ms[:, None] - span_ms)
        pair = valid.reshape(-1).nonzero()[:, 0]  # flat (position, offset) of the valid pairs
        at, pair_offset = pair // width, pair % width
        # The pair terms also read the next older window event: each pair's events are [P, 1, 2]
        # (the pair's, the older one), as in _window_view's window axis.
        has_older = pair_offset + 1 < width
        older = torch.where(has_older, pair + 1, pair)
        both = flat[torch.stack([pair, older], 1).reshape(-1)]
        events = batch.map(lambda t: take(t, both).reshape(len(pair), 1, 2, *t.shape[2:]))
        pair_valid = torch.stack([torch.ones_like(has_older), valid.reshape(-1)[older] & has_older], 1).unsqueeze(1)
        terms = self._pair_features(current.map(lambda t: t.index_select(0, at)[:, None, None]), events, pair_valid,
                                    torch.stack([pair_offset, pair_offset + 1], 1).unsqueeze(1))[:, 0, 0]
        # Keys of the sequence's events (not of its padding), then of each pair's window event.
        real = batch.mask.reshape(-1).nonzero()[:, 0]
        row_of = torch.zeros(batch.mask.numel(), dtype=torch.long, device=out.device)
        row_of[real] = torch.arange(len(real), device=out.device)
        keys = self._keys(batch.map(lambda t: take(t, real))).index_select(0, row_of[flat[pair]])
        a = self.config.attn_dim
        query = self.query(out).reshape(n, 2, a).index_select(0, at)
        scores = (query * keys[:, :2 * a].reshape(-1, 2, a)).sum(-1) / math.sqrt(a) + self.pair_bias(terms)
        scores = out.new_zeros(n * width, 2).index_copy_(0, pair, scores).reshape(n, 1, width, 2)
        values = out.new_zeros(n * width, keys.shape[1] - 2 * a).index_copy_(0, pair, keys[:, 2 * a:])
        return _WindowView(tokens=take(batch.tokens, flat).reshape(n, 1, width), scores=scores[..., 0],
                           read_scores=scores[..., 1], values=values.reshape(n, 1, width, -1), valid=valid.unsqueeze(1))

    def _given_window(self, current: EventTensors, window: EventTensors, out: Tensor) -> _WindowView:
        """A streaming window [batch, window] (oldest first) as a newest-first [batch, 1, window] view."""
        window = window.map(lambda t: t[:, -self.config.window_size:].flip(1).unsqueeze(1))
        keys, a = self._keys(window), self.config.attn_dim
        query = self.query(out).reshape(*out.shape[:-1], 2, a)
        scores = torch.einsum("btha,btwha->btwh", query, keys[..., :2 * a].reshape(*keys.shape[:-1], 2, a))
        offset = torch.arange(window.tokens.shape[2], device=out.device)
        return self._window_view(current.map(lambda t: t.unsqueeze(2)), window, scores, keys[..., 2 * a:], offset)

    def _window_view(self, current: EventTensors, events: EventTensors, scores: Tensor, values: Tensor,
                     offset: Tensor) -> _WindowView:
        """Current event [batch, time, 1] against its window events [batch, time, window]; scores
        [batch, time, window, 2] (copy, read) before the pairwise terms."""
        span_ms = int(round(self.config.window_span_s * 1000.0))
        valid = current.mask & events.mask & (events.ts_ms > current.ts_ms - span_ms)
        scores = scores / math.sqrt(self.config.attn_dim)
        scores = scores + self.pair_bias(self._pair_features(current, events, valid, offset))
        return _WindowView(tokens=events.tokens, scores=scores[..., 0], read_scores=scores[..., 1], values=values,
                           valid=valid)

    def _pair_features(self, current: EventTensors, events: EventTensors, valid: Tensor,
                       offset: Tensor) -> Tensor:
        """Per (position, window event): log age in hours, log offset, log km apart, both located,
        same token as the current event, its predecessor in the window was the current token
        (the user's own transition), hour-of-day and weekday similarity, log hours since its
        predecessor in the window and whether it has one there (a long pause marks the start of a
        session; only the window is read, so streaming and training see the same), and the log
        training popularity of its token (among repeats, the popular ones come back more).
        [batch, time, window, 11]."""
        age_h = (current.ts_ms - events.ts_ms).clamp_min(0).double() / _MS_PER_HOUR
        age = torch.log1p(age_h).float() * float(self.config.use_time)
        rank = torch.log1p(offset.float()).expand_as(age)
        has = LOCATION_DENSE[-1]
        located = current.dense[..., has] * events.dense[..., has] * float(self.config.use_location)
        km = torch.log1p(_haversine_km(current.lat, current.lon, events.lat, events.lon)).float() * located \
            if self.config.use_location else torch.zeros_like(located)  # (0 either way; saves the trigonometry)
        same = events.tokens == current.tokens
        followed = torch.zeros_like(same)
        followed[..., :-1] = same[..., 1:] & valid[..., 1:]
        cur, ev = current.dense * self.dense_mask, events.dense * self.dense_mask
        hour = cur[..., 0] * ev[..., 0] + cur[..., 1] * ev[..., 1]
        weekday = cur[..., 2] * ev[..., 2] + cur[..., 3] * ev[..., 3]
        has_older = torch.zeros_like(valid)
        has_older[..., :-1] = valid[..., 1:] & valid[..., :-1]
        pause_h = torch.zeros_like(age_h)
        pause_h[..., :-1] = (events.ts_ms[..., :-1] - events.ts_ms[..., 1:]).clamp_min(0).double() / _MS_PER_HOUR
        pause = torch.log1p(pause_h).float() * has_older * float(self.config.use_time)
        popular = self._log_popularity(events.tokens)
        return torch.stack([age, rank, km, located, same.float(), followed.float(), hour, weekday, pause,
                            has_older.float(), popular], dim=-1)

    def _log_popularity(self, tokens: Tensor) -> Tensor:
        """log(1 + training count) of each token, scaled to about [0, 1] by the largest."""
        scale = torch.log1p(self.popularity.max()).clamp_min(1.0)
        return torch.log1p(self.popularity[tokens]) / scale

    # -- distributions and gates --------------------------------------------------------------

    def _log_probs(self, out: Tensor, view: _WindowView, current: Tensor, context: _Context) -> Tensor:
        """out [batch, time, hidden] and current tokens [batch, time] -> log-probs [batch, time, vocab]."""
        return torch.log(self._mixture(out, view, current, context).clamp_min(_MIN_PROB))

    def _mixture(self, out: Tensor, view: _WindowView, current: Tensor, context: _Context,
                 leave_out: Tensor | None = None) -> Tensor:
        """The gated mixture of the four distributions [batch, time, vocab] (probabilities);
        ``leave_out`` [batch, time]: target ids whose own pair leaves the transition counts."""
        state = self._output_state(out, context.profile, view)
        totals = self.transition_totals[current]
        if leave_out is not None:
            totals = totals - (self._transition_count(current, leave_out) > 0).to(totals.dtype)
        gate = self._gate(state, view.valid, totals, context.profile)
        mixed = gate[..., 0:1] * torch.softmax(self._generate_logits(state, context.profile), dim=-1)
        mixed = mixed + gate[..., 1:2] * self._copy_distribution(view)
        if self.config.use_transitions:
            mixed = mixed + gate[..., 2:3] * self._transition_rows(current, leave_out)
        if context.profile is not None:
            mixed = mixed + gate[..., 3:4] * self._profile_distribution(out, context.profile)
        if self.config.blend_weight > 0:  # in log space: a strong blend must not underflow
            blended = torch.log(mixed.clamp_min(_MIN_PROB)) + self.config.blend_weight * torch.log(
                self._baseline_distribution(current, context.profile))
            mixed = torch.softmax(blended.index_fill(-1, torch.tensor([PAD_ID], device=mixed.device), _MASKED), dim=-1)
        if context.consumed is not None:
            mixed = mixed * ~self._consumed_mask(context.consumed)
            mixed = mixed / mixed.sum(-1, keepdim=True).clamp_min(_MIN_PROB)
        return mixed

    def _baseline_distribution(self, current: Tensor, profile: ProfileTensors | None) -> Tensor:
        """The blended baseline as the validation scorer serves it (``baselines.servable_baselines``
        through ``evaluation.baseline_probabilities``): the profile's counts ("user-frequency"), or
        their 0.5/0.5 mix with the transitions from the current token ("mix"), mixed with 1 %
        add-one popularity (all of it when both are empty): [*lead, vocab]."""
        size = self.config.vocab_size
        main = torch.zeros(*current.shape, size, device=current.device)
        if profile is not None:
            own = main.scatter_add(-1, profile.ids.long(), profile.probs.to(main.dtype))
            own = own / own.sum(-1, keepdim=True).clamp_min(_MIN_PROB)
            main = own if self.config.blend_baseline == "user-frequency" else 0.5 * own
        if self.config.blend_baseline == "mix":
            main = main + 0.5 * self._transition_rows(current)
        main = main.index_fill(-1, torch.tensor([PAD_ID, OOV_ID], device=main.device), 0.0)
        total = main.sum(-1, keepdim=True)
        prior = (self.popularity + 1.0).index_fill(0, torch.tensor([PAD_ID], device=main.device), 0.0)
        prior = prior / prior.sum()
        main = torch.where(total > 0, main / total.clamp_min(_MIN_PROB), prior)
        return (1.0 - _BASELINE_SMOOTHING) * main + _BASELINE_SMOOTHING * prior

    def _output_state(self, out: Tensor, profile: ProfileTensors | None, view: _WindowView) -> Tensor:
        """The GRU state with the window's read (its events' values weighted by the read
        attention) and the profile's summary (its probability-weighted token embedding):
        [*lead, hidden + 2 embed]."""
        weights = torch.softmax(view.read_scores.masked_fill(~view.valid, _MASKED), dim=-1) * view.valid
        read = (weights.unsqueeze(-1) * view.values).sum(-2)
        if profile is None:
            summary = out.new_zeros(*out.shape[:-1], self.config.embed_dim)
        else:
            summary = (profile.probs.unsqueeze(-1) * self.token_embedding(profile.ids)).sum(-2)
        return torch.cat([out, read, summary], dim=-1)

    def _generate_logits(self, state: Tensor, profile: ProfileTensors | None) -> Tensor:
        """Logits over the vocabulary from the output state [*lead, vocab]; the user's known
        actions get the learned repeat bias; padding never wins."""
        state = self.dropout(state)
        logits = self.generate_head(self.head_layer(state) if self.head_layer is not None else state)
        if profile is not None:
            known = torch.zeros_like(logits).scatter(-1, profile.ids, (profile.probs > 0).to(logits.dtype))
            logits = logits + self.repeat_bias * known
        masked: Tensor = logits.index_fill(-1, torch.tensor([PAD_ID], device=state.device), _MASKED)
        return masked

    def _copy_weights(self, view: _WindowView) -> Tensor:
        """Attention over each window: [batch, time, window], zero on invalid events."""
        return torch.softmax(view.scores.masked_fill(~view.valid, _MASKED), dim=-1) * view.valid

    def _copy_distribution(self, view: _WindowView) -> Tensor:
        """Attention weights scattered onto the window's tokens: [batch, time, vocab]."""
        weights = self._copy_weights(view)
        copy = weights.new_zeros(*weights.shape[:2], self.config.vocab_size)
        return copy.scatter_add(2, view.tokens, weights)

    def _profile_weights(self, out: Tensor, profile: ProfileTensors) -> Tensor:
        """Attention of the GRU state over the profile's slots, starting from the counts:
        softmax(sharpness * log p + query . key + w * log popularity) over the occupied slots
        [*lead, slots]."""
        valid = profile.probs > 0
        keys = self.profile_key(self.token_embedding(profile.ids))
        scores = (self.profile_query(out).unsqueeze(-2) * keys).sum(-1) / math.sqrt(self.config.attn_dim)
        scores = scores + self.profile_sharpness * torch.log(profile.probs.clamp_min(_MIN_PROB))
        scores = scores + self.profile_popularity * self._log_popularity(profile.ids)
        return torch.softmax(scores.masked_fill(~valid, _MASKED), dim=-1) * valid

    def _profile_distribution(self, out: Tensor, profile: ProfileTensors) -> Tensor:
        """The profile attention scattered onto its tokens: [*lead, vocab]."""
        weights = self._profile_weights(out, profile)
        return weights.new_zeros(*weights.shape[:-1], self.config.vocab_size).scatter_add(-1, profile.ids, weights)

    def _consumed_after(self, events: EventTensors, before: Tensor | None = None) -> Tensor | None:
        """The consumed-action filter after each event, bool [*lead, bits] ([batch, time] events:
        accumulated along time from ``before`` [batch, bits]); None unless the model excludes."""
        hashes = events.consumed.shape[-1]
        if not self.config.exclude_consumed or hashes == 0 or self.consumed_index.shape[1] == 0:
            return None
        n_bits = self.filter_bits
        if before is not None and before.shape[-1] != n_bits:
            raise ModelError(f"consumed filter has {before.shape[-1]} bits, the model reads {n_bits}")
        bits = torch.zeros(*events.consumed.shape[:-1], n_bits, dtype=torch.uint8, device=events.consumed.device)
        bits.scatter_(-1, events.consumed, events.mask.unsqueeze(-1).to(torch.uint8).expand_as(events.consumed))
        if events.tokens.dim() == 1:  # one event per row (step)
            return bits.bool() if before is None else bits.bool() | before.bool()
        if before is not None:
            bits = torch.cat([before.to(torch.uint8).unsqueeze(1), bits], dim=1)
        bits = bits.cummax(dim=1).values.bool()
        return bits[:, 1:] if before is not None else bits

    def _consumed_mask(self, consumed: Tensor) -> Tensor:
        """Which vocabulary ids the filter holds: bool [*lead, vocab] from bits [*lead, bits]."""
        index = self.consumed_index
        hit = consumed.index_select(-1, index.reshape(-1))
        return hit.reshape(*consumed.shape[:-1], *index.shape).all(-1)

    def _transition_rows(self, current: Tensor, leave_out: Tensor | None = None) -> Tensor:
        """Transition probabilities from each current token [*lead] -> [*lead, vocab] (0 when
        unseen); ``leave_out`` [*lead] removes one (current -> leave_out) pair from the counts."""
        size, flat = self.config.vocab_size, current.reshape(-1)
        start = torch.searchsorted(self.transition_keys, flat * size)
        lengths = torch.searchsorted(self.transition_keys, (flat + 1) * size) - start
        owner = torch.repeat_interleave(torch.arange(len(flat), device=flat.device), lengths)
        first = torch.repeat_interleave(start - (lengths.cumsum(0) - lengths), lengths)
        entry = first + torch.arange(len(owner), device=flat.device)
        counts = torch.zeros(len(flat), size, device=flat.device)
        counts[owner, self.transition_keys[entry] % size] = self.transition_counts[entry]
        totals = self.transition_totals[flat]
        if leave_out is not None:
            out_ids = leave_out.reshape(-1)
            found = counts.gather(1, out_ids[:, None]) > 0
            counts = counts.scatter_add(1, out_ids[:, None], -found.to(counts.dtype))
            totals = totals - found[:, 0].to(totals.dtype)
        rows = torch.where(totals[:, None] > 0, counts / totals.clamp_min(1.0)[:, None], torch.zeros_like(counts))
        return rows.reshape(*current.shape, size)

    def _transition_count(self, current: Tensor, targets: Tensor) -> Tensor:
        """How often (current -> target) occurred in training: [*lead]."""
        if len(self.transition_keys) == 0:
            return torch.zeros_like(self.transition_totals[current])
        key = current * self.config.vocab_size + targets
        index = torch.searchsorted(self.transition_keys, key).clamp_max(len(self.transition_keys) - 1)
        found = self.transition_keys[index] == key
        return torch.where(found, self.transition_counts[index], torch.zeros_like(self.transition_totals[current]))

    def _transition_of(self, current: Tensor, targets: Tensor, leave_one_out: bool) -> tuple[Tensor, Tensor]:
        """P(target | current token) from the counts, and the counts' row totals (both [*lead])."""
        totals = self.transition_totals[current]
        counts = self._transition_count(current, targets)
        if leave_one_out:
            found = (counts > 0).to(totals.dtype)
            counts, totals = counts - found, totals - found
        return torch.where(totals > 0, counts / totals.clamp_min(1.0), torch.zeros_like(totals)), totals

    def _gate(self, state: Tensor, valid: Tensor, totals: Tensor, profile: ProfileTensors | None) -> Tensor:
        """Weights of the generate, copy, transition and profile distributions from the output
        state, the window's size, how often the current token was followed in training and the
        profile's total count: [*lead, 4]."""
        window_count = torch.log1p(valid.sum(-1, keepdim=True).to(state.dtype))
        mass = profile.mass if profile is not None else torch.zeros_like(totals)
        features = [state, window_count, torch.log1p(totals)[..., None], torch.log1p(mass)[..., None]]
        logits = self.gate_layer(torch.cat(features, dim=-1))
        off = torch.stack([torch.zeros_like(totals, dtype=torch.bool)] * 2 +
                          [(totals <= 0) | (not self.config.use_transitions),
                           (mass <= 0) | (not self.config.use_profile)], dim=-1)
        return torch.softmax(logits.masked_fill(off, _MASKED), dim=-1)


def _dense_mask(config: NextActionConfig) -> Tensor:
    """1 for the dense features the config uses, 0 for the others: [N_DENSE]."""
    mask = torch.ones(N_DENSE)
    if not config.use_time:
        mask[list(TIME_DENSE)] = 0.0
    if not config.use_location:
        mask[list(LOCATION_DENSE)] = 0.0
    return mask


def _haversine_km(lat1: Tensor, lon1: Tensor, lat2: Tensor, lon2: Tensor) -> Tensor:
    """Great-circle km between degree coordinates (float64, broadcasting)."""
    p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
    dlmb = torch.deg2rad(lon2 - lon1)
    a = torch.sin((p2 - p1) / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dlmb / 2) ** 2
    return 2.0 * _EARTH_RADIUS_KM * torch.asin(a.clamp(0.0, 1.0).sqrt())
