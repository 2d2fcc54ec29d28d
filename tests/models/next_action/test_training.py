"""Training, checkpoints and evaluation of the next-action model (a small Foursquare slice)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.exceptions import CheckpointError
from models.next_action.datasets import ActionDataset, ActionSequence, Split, load_foursquare
from models.next_action.evaluation import evaluate_next_action, markdown_table, paired_bootstrap
from models.next_action.features import EventRecord, FeatureSpec, Vocabulary, encode_events
from models.next_action.model import EventTensors, NextActionConfig
from models.next_action.serving import ActionEvent, GRUPredictor, UserState
from models.next_action.training import load_next_action, save_next_action, train_next_action

TINY = NextActionConfig(vocab_size=1, embed_dim=16, hidden_dim=24, n_cell_buckets=256, cell_dim=4, attn_dim=8,
                        pair_dim=8, window_size=30, window_span_s=120 * 86_400.0, dropout=0.1)


@pytest.fixture(scope="module")
def foursquare_slice(shared_data: Path) -> ActionDataset:
    """120 users, each cut to its last 100 check-ins (splits kept: last = test, one before = valid)."""
    data = load_foursquare(shared_data / "foursquare-nyc")
    cut = tuple(ActionSequence(s.key, s.events[-100:], s.splits[-100:]) for s in data.sequences[:120])
    return ActionDataset("foursquare-slice", cut, data.fingerprint)


@pytest.fixture(scope="module")
def trained(foursquare_slice: ActionDataset) -> tuple:
    torch.set_num_threads(1)
    return train_next_action(foursquare_slice, TINY, epochs=2, lr=1e-2, patience=3, seed=0, progress=False)


@pytest.mark.data
def test_training_keeps_the_best_validation_epoch(trained: tuple) -> None:
    model, metadata = trained
    history = metadata["history"]
    assert history[0]["epoch"] == 0 and len(history) == 3         # epoch 0 = before training
    # epoch 0 is already the best static mix of popularity, transitions and the profile (fitted on
    # the training targets); early stopping keeps it unless an epoch does better on validation
    assert sum(metadata["initial_mixture"].values()) == pytest.approx(1.0, abs=1e-6)
    assert metadata["validation"]["mrr"] == max(h["valid_mrr"] for h in history)
    assert history[2]["train_loss"] < history[1]["train_loss"]
    assert metadata["version"].startswith("gru-")
    assert metadata["config"]["vocab_size"] == len(metadata["vocabulary"]) + 2
    assert not model.training


@pytest.mark.data
def test_checkpoint_round_trip_same_predictions(trained: tuple, foursquare_slice: ActionDataset,
                                                tmp_path: Path) -> None:
    model, metadata = trained
    path = save_next_action(tmp_path / "na.pt", model, metadata)
    loaded = load_next_action(path)
    assert loaded.version == metadata["version"] and loaded.metadata["data_fingerprint"] == metadata["data_fingerprint"]
    events = foursquare_slice.sequences[0].events[:20]
    batch = EventTensors.collate([encode_events(events, loaded.vocab, loaded.spec)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch), model(batch), rtol=0, atol=0)
    predictor = GRUPredictor.from_checkpoint(path)
    state = UserState()
    top = predictor.predict([state], [ActionEvent(events[0].token, events[0].ts_ms, events[0].lat, events[0].lon)], k=5)
    assert len(top[0]) == 5 and state.model_version == metadata["version"]


@pytest.mark.data
def test_evaluation_model_and_baselines_on_the_same_targets(trained: tuple, foursquare_slice: ActionDataset) -> None:
    model, metadata = trained
    vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
    result = evaluate_next_action(foursquare_slice.sequences, vocab, spec, Split.TEST, model=model)
    assert set(result.metrics) == {"popularity", "popularity, not yet consumed", "first-order Markov",
                                   "first-order Markov, not yet consumed", "user's own frequency",
                                   "0.5 Markov + 0.5 user frequency", "user's decayed frequency (profile)",
                                   "0.5 Markov + 0.5 decayed frequency", "GRU + window copy"}
    assert {m["n"] for m in result.metrics.values()} == {120.0}
    for metrics in result.metrics.values():
        assert 0 <= metrics["acc@1"] <= metrics["acc@5"] <= metrics["acc@10"] <= metrics["acc@20"] <= 1
        assert math.isfinite(metrics["nll"])
    table = markdown_table(result.metrics, with_se=True)
    assert table.count("\n") == 10 and "± " in table
    diff, low, high = paired_bootstrap(result.ranks["GRU + window copy"], result.ranks["popularity"], n_resamples=200)
    assert low <= diff <= high


def _toy() -> list[ActionSequence]:
    rng = np.random.default_rng(3)
    out = []
    for u in range(6):
        ts = 1_333_411_200_000 + np.cumsum(rng.integers(60_000, 9_000_000, 12))
        events = tuple(EventRecord(f"a{rng.integers(0, 5)}", int(t)) for t in ts)
        out.append(ActionSequence(str(u), events, (Split.TRAIN,) * 10 + (Split.VALID, Split.TEST)))
    return out


def test_training_is_reproducible_and_config_checked() -> None:
    config = replace(TINY, use_location=False, window_size=5)
    first, meta_a = train_next_action(_toy(), config, epochs=2, seed=4, progress=False)
    second, meta_b = train_next_action(_toy(), config, epochs=2, seed=4, progress=False)
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(tensor, second.state_dict()[name], rtol=0, atol=0)
    assert meta_a["version"] == meta_b["version"] and meta_a["data_fingerprint"] is None
    with pytest.raises(Exception, match="epochs"):
        train_next_action(_toy(), config, epochs=0)


def test_load_rejects_missing_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        load_next_action(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "other.pt", kind="traffic", state_dict={}, metadata={})
    with pytest.raises(CheckpointError):
        load_next_action(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "broken.pt", kind="next-action", state_dict={}, metadata={"config": {}})
    with pytest.raises(CheckpointError):
        load_next_action(tmp_path / "broken.pt")
