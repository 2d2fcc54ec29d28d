"""The validation-chosen blend of the model with a baseline: the baseline it multiplies in is the one
the validation scorer ranks, streaming equals forward with it, training chooses it on validation and
checkpoints (and refits) keep it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.next_action import training
from models.next_action.baselines import MarkovScorer, MixScorer, ProfileScorer, TargetContext, TrainingCounts
from models.next_action.datasets import ActionDataset, ActionSequence, Split
from models.next_action.evaluation import baseline_probabilities
from models.next_action.features import (
    EventRecord,
    FeatureSpec,
    Vocabulary,
    encode_events,
    encode_profiles,
)
from models.next_action.history import Profile
from models.next_action.model import EventTensors, NextActionConfig, NextActionModel, ProfileTensors
from models.next_action.training import (
    BLEND_WEIGHTS,
    apply_blend,
    load_next_action,
    model_version,
    save_next_action,
    train_next_action,
)
from stream_app.jobs.next_action import ActionData, train_actions

HOUR_MS = 3_600_000
VOCAB = Vocabulary([f"t{i}" for i in range(12)])
SPEC = FeatureSpec(lat_mean=40.7, lat_std=0.1, lon_mean=-74.0, lon_std=0.1, n_cell_buckets=32,
                   profile_size=5, profile_half_life=6.0)


def _sequences(lengths: list[int], seed: int = 0) -> list[list[EventRecord]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ts = 1_333_411_200_000 + np.cumsum(rng.integers(0, 30 * HOUR_MS, n))
        out.append([EventRecord(f"t{rng.integers(0, 15)}", int(t)) for t in ts])  # t12-t14 are out of vocabulary
    return out


def _model(**overrides: object) -> NextActionModel:
    config: dict[str, Any] = dict(vocab_size=len(VOCAB), embed_dim=8, hidden_dim=12, n_cell_buckets=32, cell_dim=4,
                                  attn_dim=6, pair_dim=5, window_size=4, window_span_s=36 * 3600.0, use_location=False)
    config.update(overrides)
    torch.manual_seed(0)
    model = NextActionModel(NextActionConfig(**config))
    model.set_transitions([encode_events(s, VOCAB, SPEC).tokens for s in _sequences([30, 20], seed=7)])
    return model.eval()


def _inputs(seqs: list[list[EventRecord]]) -> tuple[EventTensors, ProfileTensors]:
    return (EventTensors.collate([encode_events(s, VOCAB, SPEC) for s in seqs]),
            ProfileTensors.collate([encode_profiles(s, VOCAB, SPEC) for s in seqs]))


@pytest.mark.parametrize("baseline", ["user-frequency", "mix"])
def test_blended_baseline_is_what_the_validation_scorer_ranks(baseline: str) -> None:
    model = _model(blend_weight=1.0, blend_baseline=baseline)
    runs = [encode_events(s, VOCAB, SPEC).tokens for s in _sequences([30, 20], seed=7)]
    counts = TrainingCounts.fit(runs, len(VOCAB))
    np.testing.assert_array_equal(counts.popularity, model.popularity.numpy())
    seqs = _sequences([9, 1, 6], seed=2)
    batch, profile = _inputs(seqs)
    rows = [(u, t) for u, s in enumerate(seqs) for t in range(len(s))]
    r, c = torch.tensor(rows).T
    with torch.no_grad():
        ours = model._baseline_distribution(batch.tokens[r, c], profile.map(lambda x: x[r, c])).numpy()
    context = TargetContext([batch.tokens[u, :t + 1].numpy() for u, t in rows],
                            profile.ids[r, c].numpy(), profile.probs[r, c].numpy())
    own = ProfileScorer(len(VOCAB))
    scorer = own if baseline == "user-frequency" else MixScorer(MarkovScorer(counts), own)
    expected = baseline_probabilities(scorer.scores(context), counts.popularity)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("baseline", ["user-frequency", "mix"])
def test_blended_stream_equals_forward_and_a_strong_blend_ranks_as_the_baseline(baseline: str) -> None:
    model = _model(blend_weight=0.7, blend_baseline=baseline)
    seqs = _sequences([9, 3, 14], seed=1)
    batch, profile = _inputs(seqs)
    cfg = model.config
    with torch.no_grad():
        full = model(batch, profile=profile)
        h = torch.zeros(len(seqs), cfg.hidden_dim)
        profiles = [Profile(SPEC.profile_size) for _ in seqs]
        for t in range(max(map(len, seqs))):
            users = [u for u, s in enumerate(seqs) if len(s) > t]
            xs = [encode_events([seqs[u][t]], VOCAB, SPEC, prev_ts_ms=seqs[u][t - 1].ts_ms if t else None)
                  for u in users]
            windows = [encode_events(seqs[u][:t + 1][-cfg.window_size:], VOCAB, SPEC) for u in users]
            snaps = [encode_profiles([seqs[u][t]], VOCAB, SPEC, profiles[u]) for u in users]
            log_probs, h[users] = model.step(EventTensors.collate(xs).map(lambda v: v[:, 0]), h[users],
                                             EventTensors.collate(windows, align="right"), ProfileTensors.stack(snaps))
            torch.testing.assert_close(log_probs, full[users, t], atol=1e-5, rtol=0)
        targets = batch.tokens[:, 1:].clamp_min(2)
        rows, cols = batch.mask[:, 1:].nonzero(as_tuple=True)
        picked = model.target_log_probs(batch, rows, cols, targets[rows, cols], profile=profile)
        torch.testing.assert_close(picked, full[rows, cols, targets[rows, cols]], atol=1e-5, rtol=0)
        alone = replace(cfg, blend_weight=0.0)
        model.config = alone
        unblended = model(batch, profile=profile)
        model.config = replace(alone, blend_weight=60.0, blend_baseline=baseline)
        strong = model(batch, profile=profile)
        base = model._baseline_distribution(batch.tokens, profile)
    assert not torch.allclose(full, unblended, atol=1e-3)
    top2 = base.topk(2, dim=-1).values
    unique = (top2[..., 0] > top2[..., 1] * 1.5) & batch.mask
    assert unique.sum() > 5
    assert torch.equal(strong.argmax(-1)[unique], base.argmax(-1)[unique])


def _toy(n_users: int = 8) -> list[ActionSequence]:
    """Users who mostly repeat their own two favourite actions: blending in their frequency helps."""
    rng = np.random.default_rng(5)
    out = []
    for u in range(n_users):
        favourites = [f"a{(2 * u) % 9}", f"a{(2 * u + 1) % 9}"]
        ts = 1_333_411_200_000 + np.cumsum(rng.integers(60_000, 9_000_000, 14))
        events = tuple(EventRecord(favourites[rng.integers(0, 2)] if rng.random() < 0.8 else f"a{rng.integers(0, 9)}",
                                   int(t)) for t in ts)
        out.append(ActionSequence(str(u), events, (Split.TRAIN,) * 10 + (Split.VALID,) * 2 + (Split.TEST,) * 2))
    return out


TINY = NextActionConfig(vocab_size=1, embed_dim=8, hidden_dim=12, n_cell_buckets=32, cell_dim=4, attn_dim=6,
                        pair_dim=5, window_size=5, use_location=False)


def test_a_gain_within_the_noise_keeps_the_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "BLEND_MARGIN_SE", 1e9)
    model, metadata = train_next_action(_toy(60), TINY, epochs=1, seed=0, progress=False)
    assert metadata["blend"]["baseline"] is None and model.config.blend_weight == 0.0
    assert max(metadata["blend"]["validation"].values()) > metadata["blend"]["validation"]["none"]


def test_training_chooses_the_blend_on_validation_and_the_checkpoint_keeps_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "BLEND_MARGIN_SE", 0.0)  # any gain counts (the toy's validation part is small)
    model, metadata = train_next_action(_toy(60), TINY, epochs=1, seed=0, progress=False)
    blend = metadata["blend"]
    tried = blend["validation"]
    assert set(tried) == {"none"} | {f"{b}^{w:g}" for b in ("user-frequency", "mix") for w in BLEND_WEIGHTS}
    chosen = "none" if blend["baseline"] is None else f"{blend['baseline']}^{blend['weight']:g}"
    assert tried[chosen] == max(tried.values())
    assert metadata["config"]["blend_weight"] == blend["weight"] == model.config.blend_weight
    assert blend["baseline"] is not None  # these users repeat their favourites: the blend helps on validation
    save_next_action(tmp_path / "m.pt", model, metadata)
    loaded = load_next_action(tmp_path / "m.pt")
    assert loaded.model.config == model.config and loaded.version == metadata["version"]
    batch, profile = _inputs([list(s.events) for s in _toy()[:3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch, profile=profile), model(batch, profile=profile))


def test_configs_without_blend_fields_load_unblended() -> None:
    old = TINY.to_dict()
    del old["blend_weight"], old["blend_baseline"]
    assert NextActionConfig.from_dict(old).blend_weight == 0.0
    with pytest.raises(Exception, match="blend_baseline"):
        replace(TINY, blend_weight=1.0, blend_baseline="popularity")


def test_a_refit_serves_the_blend_chosen_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def choose(model: NextActionModel, prepared: object, *args: object) -> dict:
        if len(prepared.valid) == 0:  # type: ignore[attr-defined]  # the refit has no validation part
            return {"baseline": None, "weight": 0.0, "validation": {}}
        choice = {"baseline": "mix", "weight": 0.5, "validation": {}}
        apply_blend(model, choice)
        return choice

    monkeypatch.setattr(training, "_choose_blend", choose)
    data = ActionData("toy", ActionDataset("toy", tuple(_toy()), "f"), refit=True)
    model, metadata = train_actions(data, epochs=1, progress=False)
    assert metadata["blend"]["baseline"] == "mix" == model.config.blend_baseline
    assert model.config.blend_weight == metadata["blend"]["weight"] == metadata["config"]["blend_weight"]
    assert metadata["version"] == model_version(model, metadata)
    assert apply_blend(model, None) is model and model.config.blend_weight == metadata["blend"]["weight"]


def test_cross_validation_folds_hold_out_each_training_key_once() -> None:
    seqs = _toy(12)
    folds = training.cross_validation_folds(seqs, folds=5)
    assert len(folds) == 5
    held: list[str] = []
    for fold in folds:
        for original, seq in zip(seqs, fold, strict=True):
            assert seq.key == original.key and len(seq.events) == 12  # the two test events dropped
            assert seq.events == original.events[:12]
            assert seq.splits[10:] == (Split.VALID, Split.VALID)  # validation kept
            if Split.TEST in seq.splits:
                assert seq.splits[:10] == (Split.TEST,) * 10 and Split.TRAIN not in seq.splits
                held.append(seq.key)
            else:
                assert seq.splits[:10] == (Split.TRAIN,) * 10
    assert sorted(held) == sorted(s.key for s in seqs)


def test_small_data_chooses_the_blend_on_validation_and_cross_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "BLEND_MARGIN_SE", 0.0)
    seqs = _toy(30)
    n_valid = sum(len(s.target_positions(Split.VALID)) for s in seqs)
    held_out = sum(len(s.target_positions(Split.TRAIN)) for s in seqs)  # every key's training targets, once
    _, metadata = train_next_action(seqs, TINY, epochs=1, seed=0, progress=False)
    assert n_valid < training.CV_MAX_VALID_TARGETS
    assert metadata["blend"]["folds"] == training.CV_FOLDS
    assert metadata["blend"]["targets"] == n_valid + held_out
    _, alone = train_next_action(seqs, TINY, epochs=1, seed=0, progress=False, cross_validate=False)
    assert alone["blend"]["folds"] == 0 and alone["blend"]["targets"] == n_valid
    assert alone["blend"]["validation"] != metadata["blend"]["validation"]
    monkeypatch.setattr(training, "CV_MAX_VALID_TARGETS", n_valid)  # enough validation targets: no folds
    _, large = train_next_action(seqs, TINY, epochs=1, seed=0, progress=False)
    assert large["blend"]["folds"] == 0 and large["blend"]["validation"] == alone["blend"]["validation"]
