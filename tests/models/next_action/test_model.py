"""NextActionModel: chaining step equals forward; shapes; the target-only paths agree with forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.exceptions import ModelError
from models.next_action.features import EventRecord, FeatureSpec, Vocabulary, encode_events
from models.next_action.model import EventTensors, NextActionConfig, NextActionModel

HOUR_MS = 3_600_000
VOCAB = Vocabulary([f"t{i}" for i in range(12)])
SPEC = FeatureSpec(lat_mean=40.7, lat_std=0.1, lon_mean=-74.0, lon_std=0.1, n_cell_buckets=32)


def _sequences(lengths: list[int], seed: int = 0) -> list[list[EventRecord]]:
    """Random users: tokens partly out of vocabulary, gaps up to 30 h (some 0), 70 % located."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ts = 1_333_411_200_000 + np.cumsum(rng.integers(0, 30 * HOUR_MS, n))
        ts[n // 2] = ts[n // 2 - 1] if n > 2 else ts[n // 2]            # an equal timestamp
        out.append([EventRecord(f"t{rng.integers(0, 15)}", int(t),
                                *((float(40.7 + rng.normal() * 0.05), float(-74.0 + rng.normal() * 0.05))
                                  if rng.random() < 0.7 else (None, None)))
                    for t in ts])
    return out


def _model(**overrides: object) -> NextActionModel:
    config = dict(vocab_size=len(VOCAB), embed_dim=8, hidden_dim=12, n_cell_buckets=32, cell_dim=4,
                  attn_dim=6, pair_dim=5, window_size=4, window_span_s=36 * 3600.0, dropout=0.3)
    config.update(overrides)
    torch.manual_seed(0)
    model = NextActionModel(NextActionConfig(**config))
    model.set_transitions([encode_events(s, VOCAB, SPEC).tokens for s in _sequences([30, 20], seed=7)])
    return model.eval()


def _stream(model: NextActionModel, seqs: list[list[EventRecord]], *, trim_span: bool) -> list[torch.Tensor]:
    """Feed the users event by event (users whose sequence ended drop out of the batch)."""
    cfg, h = model.config, torch.zeros(len(seqs), model.config.hidden_dim)
    outputs = [torch.zeros(len(s), cfg.vocab_size) for s in seqs]
    for t in range(max(map(len, seqs))):
        users = [u for u, s in enumerate(seqs) if len(s) > t]
        xs, windows = [], []
        for u in users:
            prev = seqs[u][t - 1] if t else None
            xs.append(encode_events([seqs[u][t]], VOCAB, SPEC, prev_ts_ms=prev and prev.ts_ms,
                                    prev_lat=prev and prev.lat, prev_lon=prev and prev.lon))
            window = seqs[u][:t + 1][-(cfg.window_size + 2):]      # more than the model keeps
            if trim_span:
                window = [e for e in window if e.ts_ms > seqs[u][t].ts_ms - cfg.window_span_s * 1000]
            windows.append(encode_events(window, VOCAB, SPEC))
        x = EventTensors.collate(xs).map(lambda v: v[:, 0])
        log_probs, h_new = model.step(x, h[users], EventTensors.collate(windows, align="right"))
        h[users] = h_new
        for row, u in enumerate(users):
            outputs[u][t] = log_probs[row]
    return outputs


@pytest.mark.parametrize("use_time, use_location, use_transitions",
                         [(True, True, True), (False, False, True), (True, False, False), (False, True, False)])
@pytest.mark.parametrize("trim_span", [False, True])
def test_step_chain_equals_forward(use_time: bool, use_location: bool, use_transitions: bool,
                                   trim_span: bool) -> None:
    model = _model(use_time=use_time, use_location=use_location, use_transitions=use_transitions)
    seqs = _sequences([9, 3, 14, 1])
    with torch.no_grad():
        full = model(EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs]))
        streamed = _stream(model, seqs, trim_span=trim_span)
    for u, s in enumerate(seqs):
        torch.testing.assert_close(streamed[u], full[u, :len(s)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("split", [0, 1, 5, 8])
def test_steps_over_a_stored_window_equal_forward(split: int) -> None:
    """Events up to ``split`` are already applied (stored window + hidden); the rest go through
    ``steps`` at once and must equal ``forward`` on the whole sequence (times do not decrease)."""
    model = _model()
    seqs = _sequences([9, 3, 14, 1, 10], seed=3)
    with torch.no_grad():
        full = model(EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs]))
        hidden = model.hidden_states(EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs]))
        users = [u for u, s in enumerate(seqs) if len(s) > split]
        h = torch.stack([hidden[u, split - 1] if split else torch.zeros(model.config.hidden_dim) for u in users])
        stored = [encode_events(seqs[u][:split][-model.config.window_size:], VOCAB, SPEC) for u in users]
        new = [encode_events(seqs[u][split:], VOCAB, SPEC, prev_ts_ms=split and seqs[u][split - 1].ts_ms,
                             prev_lat=split and seqs[u][split - 1].lat, prev_lon=split and seqs[u][split - 1].lon)
               if split else encode_events(seqs[u], VOCAB, SPEC) for u in users]
        log_probs, out = model.steps(EventTensors.collate(new), h, EventTensors.collate(stored, align="right"))
    firsts = np.cumsum([0] + [len(seqs[u]) - split for u in users])
    assert log_probs.shape == (firsts[-1], model.config.vocab_size)
    for row, u in enumerate(users):
        n = len(seqs[u]) - split
        torch.testing.assert_close(log_probs[firsts[row]:firsts[row] + n], full[u, split:len(seqs[u])],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(out[row, n - 1], hidden[u, len(seqs[u]) - 1], atol=1e-5, rtol=0)


def test_window_truncation_by_count_and_span_changes_predictions() -> None:
    seqs = _sequences([14])
    batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs])
    with torch.no_grad():
        wide = _model(window_size=14, window_span_s=1e9)(batch)
        by_count = _model(window_size=2, window_span_s=1e9)(batch)
        by_span = _model(window_size=14, window_span_s=3600.0)(batch)
    assert not torch.allclose(wide, by_count) and not torch.allclose(wide, by_span)
    torch.testing.assert_close(wide[:, :2], by_count[:, :2])        # windows equal while short


def test_forward_shapes_and_normalization() -> None:
    model = _model()
    batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in _sequences([5, 2])])
    with torch.no_grad():
        log_probs = model(batch)
        out_zero = model.hidden_states(batch)
        out_given = model.hidden_states(batch, torch.zeros(2, 12))
    assert log_probs.shape == (2, 5, len(VOCAB))
    torch.testing.assert_close(log_probs.exp().sum(-1)[0], torch.ones(5), atol=1e-5, rtol=0)
    assert out_zero.shape == (2, 5, 12)
    torch.testing.assert_close(out_zero, out_given)
    assert float(log_probs[0, :, 0].max()) < -20                     # padding is never predicted


@pytest.mark.parametrize("hidden", [None, "given"])
def test_step_shapes(hidden: str | None) -> None:
    model = _model()
    seq = _sequences([3])[0]
    x = EventTensors.collate([encode_events(seq[-1:], VOCAB, SPEC)] * 2).map(lambda v: v[:, 0])
    window = EventTensors.collate([encode_events(seq, VOCAB, SPEC)] * 2, align="right")
    h = None if hidden is None else torch.randn(2, 12)
    with torch.no_grad():
        log_probs, h_new = model.step(x, h, window)
    assert log_probs.shape == (2, len(VOCAB)) and h_new.shape == (2, 12)


def test_target_paths_agree_with_forward() -> None:
    model = _model()
    seqs = _sequences([7, 4])
    batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs])
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 5, 2])
    targets = torch.tensor([3, 4, 1])
    with torch.no_grad():
        full = model(batch)
        at = model.log_probs_at(batch, rows, cols)
        picked = model.target_log_probs(batch, rows, cols, targets)
    torch.testing.assert_close(at, full[rows, cols])
    torch.testing.assert_close(picked, full[rows, cols, targets], atol=1e-5, rtol=0)


def test_transition_component_counts_and_leave_one_out() -> None:
    model = _model(window_size=1)
    model.set_transitions([np.array([2, 3, 2, 3, 2, 4])])      # 2->3 twice, 2->4 once, 3->2 twice
    rows = model._transition_rows(torch.tensor([[2, 3, 5]]))
    torch.testing.assert_close(rows[0, 0, [3, 4]], torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(rows[0, 1, 2], torch.tensor(1.0))
    assert float(rows[0, 2].sum()) == 0.0
    p, totals = model._transition_of(torch.tensor([2, 2, 5]), torch.tensor([3, 6, 3]), leave_one_out=False)
    torch.testing.assert_close(p, torch.tensor([2 / 3, 0.0, 0.0]))
    p, totals = model._transition_of(torch.tensor([2, 3]), torch.tensor([4, 2]), leave_one_out=True)
    torch.testing.assert_close(p, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(totals, torch.tensor([2.0, 1.0]))


def test_transition_table_survives_state_dict_round_trip() -> None:
    model = _model()
    fresh = NextActionModel(model.config)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.transition_keys, model.transition_keys)
    batch = EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in _sequences([6])])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(batch), model(batch))


def test_config_validation_and_round_trip() -> None:
    config = NextActionConfig(vocab_size=10, use_time=False)
    assert NextActionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError):
        NextActionConfig(vocab_size=0)
    with pytest.raises(ModelError):
        NextActionConfig(vocab_size=5, dropout=1.0)
    with pytest.raises(ModelError):
        NextActionConfig.from_dict({**config.to_dict(), "surprise": 1})
