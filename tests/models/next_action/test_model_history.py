"""The model's long-term parts: profile and consumed-action filter; streaming equals forward with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.next_action.features import (
    EventRecord,
    FeatureSpec,
    Vocabulary,
    consumed_index,
    encode_events,
    encode_profiles,
)
from models.next_action.history import ConsumedFilter, Profile
from models.next_action.model import EventTensors, NextActionConfig, NextActionModel, ProfileTensors

HOUR_MS = 3_600_000
VOCAB = Vocabulary([f"t{i}" for i in range(12)])
SPEC = FeatureSpec(lat_mean=40.7, lat_std=0.1, lon_mean=-74.0, lon_std=0.1, n_cell_buckets=32,
                   profile_size=5, profile_half_life=6.0, consumed_bits=64, consumed_hashes=2)


def _sequences(lengths: list[int], seed: int = 0) -> list[list[EventRecord]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ts = 1_333_411_200_000 + np.cumsum(rng.integers(0, 30 * HOUR_MS, n))
        out.append([EventRecord(f"t{rng.integers(0, 15)}", int(t),
                                *((float(40.7 + rng.normal() * 0.05), float(-74.0 + rng.normal() * 0.05))
                                  if rng.random() < 0.7 else (None, None))) for t in ts])
    return out


def _model(**overrides: object) -> NextActionModel:
    config = dict(vocab_size=len(VOCAB), embed_dim=8, hidden_dim=12, n_cell_buckets=32, cell_dim=4,
                  attn_dim=6, pair_dim=5, window_size=4, window_span_s=36 * 3600.0, dropout=0.3)
    config.update(overrides)
    torch.manual_seed(0)
    model = NextActionModel(NextActionConfig(**config))
    model.set_transitions([encode_events(s, VOCAB, SPEC).tokens for s in _sequences([30, 20], seed=7)])
    model.set_consumed_index(consumed_index(VOCAB, SPEC), SPEC.consumed_bits)
    with torch.no_grad():  # a visible repeat bias and sharpness, so both paths must use them
        model.repeat_bias.fill_(0.7)
        model.profile_sharpness.fill_(1.3)
    return model.eval()


def _forward(model: NextActionModel, seqs: list[list[EventRecord]]) -> torch.Tensor:
    batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs])
    profile = ProfileTensors.collate([encode_profiles(s, VOCAB, SPEC) for s in seqs])
    return model(batch, profile=profile)


def _stream(model: NextActionModel, seqs: list[list[EventRecord]]) -> list[torch.Tensor]:
    """Event by event, each user's profile and filter kept as a worker keeps them."""
    cfg, h = model.config, torch.zeros(len(seqs), model.config.hidden_dim)
    profiles = [Profile(SPEC.profile_size) for _ in seqs]
    filters = [ConsumedFilter(SPEC.consumed_bits, SPEC.consumed_hashes) for _ in seqs]
    outputs = [torch.zeros(len(s), cfg.vocab_size) for s in seqs]
    for t in range(max(map(len, seqs))):
        users = [u for u, s in enumerate(seqs) if len(s) > t]
        xs, windows, snaps, before = [], [], [], []
        for u in users:
            prev = seqs[u][t - 1] if t else None
            xs.append(encode_events([seqs[u][t]], VOCAB, SPEC, prev_ts_ms=prev and prev.ts_ms,
                                    prev_lat=prev and prev.lat, prev_lon=prev and prev.lon))
            windows.append(encode_events(seqs[u][:t + 1][-cfg.window_size:], VOCAB, SPEC))
            snaps.append(encode_profiles([seqs[u][t]], VOCAB, SPEC, profiles[u]))
            before.append(torch.from_numpy(filters[u].bits.copy()))
            filters[u].add(seqs[u][t].token)
        x = EventTensors.collate(xs).map(lambda v: v[:, 0])
        log_probs, h_new = model.step(x, h[users], EventTensors.collate(windows, align="right"),
                                      ProfileTensors.stack(snaps), torch.stack(before))
        h[users] = h_new
        for row, u in enumerate(users):
            outputs[u][t] = log_probs[row]
    return outputs


@pytest.mark.parametrize("exclude", [False, True], ids=["repeats", "exclude-consumed"])
@pytest.mark.parametrize("use_profile", [True, False])
def test_step_chain_equals_forward_with_profile_and_filter(exclude: bool, use_profile: bool) -> None:
    model = _model(exclude_consumed=exclude, use_profile=use_profile)
    seqs = _sequences([9, 3, 14, 1])
    with torch.no_grad():
        full = _forward(model, seqs)
        streamed = _stream(model, seqs)
    for u, s in enumerate(seqs):
        torch.testing.assert_close(streamed[u], full[u, :len(s)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("split", [0, 1, 5, 8])
@pytest.mark.parametrize("exclude", [False, True], ids=["repeats", "exclude-consumed"])
def test_steps_from_a_stored_state_equal_forward(split: int, exclude: bool) -> None:
    model = _model(exclude_consumed=exclude)
    seqs = _sequences([9, 3, 14, 1, 10], seed=3)
    users = [u for u, s in enumerate(seqs) if len(s) > split]
    with torch.no_grad():
        full = _forward(model, seqs)
        hidden = model.hidden_states(EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs]))
        h = torch.stack([hidden[u, split - 1] if split else torch.zeros(model.config.hidden_dim) for u in users])
        stored, new, snaps, before = [], [], [], []
        for u in users:
            profile, consumed = Profile(SPEC.profile_size), ConsumedFilter(SPEC.consumed_bits, SPEC.consumed_hashes)
            encode_profiles(seqs[u][:split], VOCAB, SPEC, profile)
            for event in seqs[u][:split]:
                consumed.add(event.token)
            stored.append(encode_events(seqs[u][:split][-model.config.window_size:], VOCAB, SPEC))
            prev = seqs[u][split - 1] if split else None
            new.append(encode_events(seqs[u][split:], VOCAB, SPEC, prev_ts_ms=prev and prev.ts_ms,
                                     prev_lat=prev and prev.lat, prev_lon=prev and prev.lon))
            snaps.append(encode_profiles(seqs[u][split:], VOCAB, SPEC, profile))
            before.append(torch.from_numpy(consumed.bits))
        log_probs, _ = model.steps(EventTensors.collate(new), h, EventTensors.collate(stored, align="right"),
                                   ProfileTensors.collate(snaps), torch.stack(before))
    firsts = np.cumsum([0] + [len(seqs[u]) - split for u in users])
    for row, u in enumerate(users):
        n = len(seqs[u]) - split
        torch.testing.assert_close(log_probs[firsts[row]:firsts[row] + n], full[u, split:len(seqs[u])],
                                   atol=1e-5, rtol=0)


def test_target_paths_agree_with_forward_with_profile_and_filter() -> None:
    for exclude in (False, True):
        model = _model(exclude_consumed=exclude)
        seqs = _sequences([7, 4])
        batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs])
        profile = ProfileTensors.collate([encode_profiles(s, VOCAB, SPEC) for s in seqs])
        rows, cols, targets = torch.tensor([0, 0, 1]), torch.tensor([0, 5, 2]), torch.tensor([3, 4, 5])
        with torch.no_grad():
            full = model(batch, profile=profile)
            at = model.log_probs_at(batch, rows, cols, profile)
            picked = model.target_log_probs(batch, rows, cols, targets, profile=profile)
        torch.testing.assert_close(at, full[rows, cols], atol=1e-6, rtol=0)
        torch.testing.assert_close(picked, full[rows, cols, targets], atol=1e-5, rtol=0)


def test_excluding_consumed_actions_never_ranks_one_first() -> None:
    model = _model(exclude_consumed=True)
    seqs = _sequences([12, 9], seed=4)
    with torch.no_grad():
        probs = _forward(model, seqs).exp()
    for u, seq in enumerate(seqs):
        for t in range(len(seq)):
            done = {VOCAB.encode(e.token) for e in seq[:t + 1]} - {1}
            assert all(float(probs[u, t, i]) < 1e-9 for i in done), (u, t)
        assert torch.allclose(probs[u, :len(seq)].sum(-1), torch.ones(len(seq)), atol=1e-5)


def test_profile_component_is_off_without_a_profile() -> None:
    model = _model()
    seqs = _sequences([6])
    batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs])
    empty = ProfileTensors.collate([encode_profiles(s, VOCAB, FeatureSpec(n_cell_buckets=32)) for s in seqs])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(batch, profile=empty))
        assert not torch.allclose(model(batch), _forward(model, seqs))


@pytest.mark.parametrize("exclude", [False, True], ids=["repeats", "exclude-consumed"])
def test_leave_one_out_equals_counts_without_the_targets_pair(exclude: bool) -> None:
    """Training's leave-one-out equals scoring with that one (current -> target) pair removed from
    the transition table, on the gathered path and on the excluding path's full mixture alike."""
    model = _model(exclude_consumed=exclude)
    seq = [EventRecord(t, 1_333_411_200_000 + i * HOUR_MS) for i, t in enumerate(["t2", "t3", "t2", "t4", "t2"])]
    model.set_transitions([VOCAB.encode_many(e.token for e in seq)])      # 2->3, 3->2, 2->4, 4->2
    batch = EventTensors.collate([encode_events(seq, VOCAB, SPEC)])
    profile = ProfileTensors.collate([encode_profiles(seq, VOCAB, SPEC)])
    rows, cols = torch.tensor([0]), torch.tensor([2])                     # current t2, target t4
    target = batch.tokens[rows, cols + 1]
    with torch.no_grad():
        left_out = model.target_log_probs(batch, rows, cols, target, profile=profile, leave_one_out=True)
        key = int(VOCAB.encode("t2")) * len(VOCAB) + int(VOCAB.encode("t4"))
        entry = int((model.transition_keys == key).nonzero()[0, 0])
        model.transition_counts[entry] -= 1
        model.transition_totals[VOCAB.encode("t2")] -= 1
        removed = model.target_log_probs(batch, rows, cols, target, profile=profile)
    torch.testing.assert_close(left_out, removed, atol=1e-6, rtol=0)
