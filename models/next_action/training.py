"""Training of the next-action model (Adam, early stopping on all validation targets), the choice
between the model and the baselines it must beat, and checkpoints."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoint import load_checkpoint, save_checkpoint
from models.exceptions import CheckpointError, ModelError
from models.next_action.baselines import SERVABLE, TrainingCounts, servable_baselines
from models.next_action.datasets import ActionDataset, ActionSequence, Split
from models.next_action.defaults import DataShape, Recipe, choose_half_life, recipe_for
from models.next_action.evaluation import (
    TargetSet,
    batch_target_log_probs,
    build_targets,
    length_batches,
    model_ranks,
    scorer_ranks,
    summarize,
    training_counts,
    training_runs,
)
from models.next_action.features import FeatureSpec, Vocabulary, consumed_index
from models.next_action.model import BLEND_BASELINES, NextActionConfig, NextActionModel

__all__ = ["CHECKPOINT_KIND", "STOP_METRICS", "LoadedNextAction", "train_next_action", "model_version",
           "save_next_action", "load_next_action", "prepare_model", "apply_blend", "BLEND_WEIGHTS",
           "cross_validation_folds"]

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "next-action"
# Early-stopping criteria: higher MRR or lower NLL over all validation targets.
STOP_METRICS = ("mrr", "nll")
_MIN_LOG_PROB = math.log(1e-11)  # below: a target the exclusion of consumed actions makes impossible
# Powers of a baseline's distribution tried as a blend with the trained model (on validation).
BLEND_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
# A blend must beat the model alone by this many standard errors of the paired difference.
BLEND_MARGIN_SE = 2.0
# Small data: with fewer validation targets than this (and at most CV_MAX_TRAINING_TARGETS training
# targets) the blend is chosen on the validation targets plus CV_FOLDS-fold cross-validation over
# the keys (users, sessions) of the training part: a few hundred targets cannot tell close blends apart.
CV_MAX_VALID_TARGETS = 1_000
CV_MAX_TRAINING_TARGETS = 10_000
CV_FOLDS = 5


@dataclass(frozen=True)
class LoadedNextAction:
    """A checkpoint read back: the model in eval mode and what its inputs need."""

    model: NextActionModel
    vocab: Vocabulary
    spec: FeatureSpec
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def serves(self) -> str:
        """"model", or the SERVABLE baseline that beat the model on validation."""
        return str(self.metadata.get("serve", "model"))


@dataclass(frozen=True)
class _Prepared:
    """What training derives from the sequences before fitting."""

    vocab: Vocabulary
    spec: FeatureSpec
    config: NextActionConfig
    train: TargetSet
    valid: TargetSet
    counts: TrainingCounts
    runs: list[np.ndarray]
    shape: DataShape
    recipe: Recipe


def train_next_action(sequences: ActionDataset | Sequence[ActionSequence], config: NextActionConfig | None = None, *,
                      epochs: int | None = None, lr: float | None = None, lr_decay: float | None = None,
                      patience: int | None = None, seed: int = 0, device: torch.device | str = "cpu",
                      progress: bool = True, max_batch_events: int | None = None, weight_decay: float = 0.0,
                      grad_clip: float = 5.0, h3_resolution: int = 8, min_count: int = 1,
                      fingerprint: str | None = None, stop_metric: str = "mrr",
                      features: dict[str, Any] | None = None,
                      model_overrides: dict[str, Any] | None = None,
                      cross_validate: bool | None = None) -> tuple[NextActionModel, dict[str, Any]]:
    """Fit a NextActionModel on the TRAIN targets with Adam (learning rate multiplied by
    ``lr_decay`` after each epoch) and keep the epoch with the best ``stop_metric`` over all
    validation targets; then score the servable baselines on the same targets and record which of
    them (or the model) a worker should serve.

    Anything not given comes from ``models.next_action.defaults.recipe_for`` the data's shape:
    ``config`` (its ``vocab_size`` is replaced by the vocabulary's size), ``features`` (profile and
    consumed-filter settings of the FeatureSpec), ``epochs``, ``patience``, ``lr`` and
    ``max_batch_events``; ``model_overrides`` replaces some fields of the recipe's config (the
    window, the hidden size...). The vocabulary (tokens seen ``min_count`` times), the location
    normalization, the transition counts and the data shape come from the training events only.
    Early stopping after ``patience`` epochs without a better validation score; without
    validation targets every epoch runs and the last is kept. Returns the model (eval mode, on
    ``device``) and the metadata a checkpoint stores (history entry 0 is the untrained model).

    ``cross_validate`` (None: by the data's size, see CV_MAX_VALID_TARGETS): choose the blend on the
    validation targets plus the held-out targets of CV_FOLDS models trained the same way, each
    without one fold of the training keys (``cross_validation_folds``).
    """
    if epochs is not None and epochs < 1:
        raise ModelError(f"epochs must be >= 1, got {epochs}")
    if stop_metric not in STOP_METRICS:
        raise ModelError(f"stop_metric must be one of {STOP_METRICS}, got {stop_metric!r}")
    dataset = sequences if isinstance(sequences, ActionDataset) else None
    seqs: tuple[ActionSequence, ...] = dataset.sequences if dataset is not None else tuple(
        sequences if not isinstance(sequences, ActionDataset) else ())
    prepared = _prepare(seqs, config, features, model_overrides,
                        h3_resolution=h3_resolution, min_count=min_count)
    plan = {"lr_decay": 1.0, **prepared.recipe.training,
            **{k: v for k, v in dict(epochs=epochs, lr=lr, patience=patience, max_batch_events=max_batch_events,
                                     lr_decay=lr_decay).items() if v is not None}}
    torch.manual_seed(seed)
    model = prepare_model(prepared.config, prepared.vocab, prepared.spec, prepared.runs)
    mixture = _start_from_baselines(model, prepared.train, prepared.counts)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=plan["lr"], weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=plan["lr_decay"])
    started = time.monotonic()
    history, best_epoch = _fit(model, optimizer, scheduler, prepared, np.random.default_rng(seed),
                               epochs=plan["epochs"], patience=plan["patience"], device=device, progress=progress,
                               max_batch_events=plan["max_batch_events"], grad_clip=grad_clip, stop_metric=stop_metric)
    seconds = time.monotonic() - started
    folds: list[_Fold] = []
    if cross_validate or (cross_validate is None and 0 < len(prepared.valid) < CV_MAX_VALID_TARGETS
                          and len(prepared.train) <= CV_MAX_TRAINING_TARGETS):
        folds = _cross_validate(seqs, config, features, model_overrides, plan, seed=seed, device=device,
                                weight_decay=weight_decay, grad_clip=grad_clip, h3_resolution=h3_resolution,
                                min_count=min_count, stop_metric=stop_metric)
    blend = _choose_blend(model, prepared, device, stop_metric, folds)
    choice = _choose_server(model, prepared, device, stop_metric)
    metadata = _metadata(model, prepared, history, best_epoch, seed=seed, lr=plan["lr"], lr_decay=plan["lr_decay"],
                         epochs=plan["epochs"], patience=plan["patience"], max_batch_events=plan["max_batch_events"],
                         stop_metric=stop_metric, fingerprint=fingerprint or (dataset.fingerprint if dataset else None),
                         dataset=dataset.name if dataset else None, seconds=seconds, initial_mixture=mixture,
                         blend=blend, **choice)
    return model, metadata


def prepare_model(config: NextActionConfig, vocab: Vocabulary, spec: FeatureSpec,
                  runs: Sequence[np.ndarray] = ()) -> NextActionModel:
    """A fresh model with its non-learned parts: transition counts from ``runs`` (training id
    sequences) and the consumed-action filter index of ``vocab`` under ``spec``."""
    model = NextActionModel(config)
    model.set_transitions(runs)
    model.set_consumed_index(consumed_index(vocab, spec), spec.consumed_bits)
    return model


def _start_from_baselines(model: NextActionModel, train: TargetSet, counts: TrainingCounts) -> dict[str, float]:
    """Start the model as the best static mixture of what needs no training: the generate head
    at the training popularity, the gate at the weights (fitted by EM on the training targets) of
    popularity, the transition counts (each target's own pair left out) and the user's profile
    (shared with the window copy, the other repeat source). Learning then starts from a model
    about as good as the baselines' best mix, instead of from a random one."""
    owner, before = train.owners()
    current = np.array([train.encoded[s].tokens[i] for s, i in zip(owner.tolist(), before.tolist(), strict=True)],
                       dtype=np.int64)
    targets = train.targets
    size = counts.vocab_size
    popularity = (counts.popularity + 1.0) / (counts.popularity.sum() + size)
    p_pop = popularity[targets]
    pair = np.zeros(len(targets))
    totals = np.zeros(len(targets))
    for i, (c, t) in enumerate(zip(current.tolist(), targets.tolist(), strict=False)):
        row = counts._transitions.get(c)
        if row:
            pair[i], totals[i] = row.get(t, 0), sum(row.values())
    found = (pair > 0).astype(float)
    p_trans = np.where(totals - found > 0, (pair - found) / np.maximum(totals - found, 1.0), 0.0)
    p_prof = np.array([float(train.profiles[s].probs[i][train.profiles[s].ids[i] == t].sum()) if
                       train.profiles[s].ids.shape[1] else 0.0
                       for s, i, t in zip(owner.tolist(), before.tolist(), targets.tolist(), strict=False)])
    parts = np.stack([p_pop, p_trans, p_prof], axis=1)
    weights = np.full(3, 1 / 3)
    for _ in range(50):
        joint = parts * weights
        weights = (joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)).mean(axis=0)
    weights = np.maximum(weights, 1e-3)
    w_pop, w_trans, w_prof = weights / weights.sum()
    gate = np.log(np.array([w_pop, w_prof / 2, w_trans, w_prof / 2]))
    with torch.no_grad():
        model.generate_head.bias.copy_(torch.from_numpy(np.log(popularity)).float())
        model.generate_head.weight.mul_(0.1)
        model.gate_layer.bias.copy_(torch.from_numpy(gate - gate.mean()).float())
        model.gate_layer.weight.mul_(0.1)
    return {"popularity": float(w_pop), "transition": float(w_trans), "repeat": float(w_prof)}


def _prepare(seqs: Sequence[ActionSequence], config: NextActionConfig | None, features: dict[str, Any] | None,
             model_overrides: dict[str, Any] | None, *, h3_resolution: int, min_count: int) -> _Prepared:
    training = [e for s in seqs for e, x in zip(s.events, s.splits, strict=False) if x == Split.TRAIN]
    vocab = Vocabulary.build((e.token for e in training), min_count=min_count)
    runs = training_runs(seqs, vocab)
    shape = DataShape.of(seqs, len(vocab))
    recipe = recipe_for(shape)
    config = NextActionConfig(vocab_size=len(vocab), **recipe.model) if config is None \
        else replace(config, vocab_size=len(vocab))
    if model_overrides:
        config = replace(config, **model_overrides)
    chosen = dict(recipe.features, profile_half_life=choose_half_life(runs, config.window_size))
    if not config.exclude_consumed:
        chosen.update(consumed_bits=0, consumed_hashes=0)
    chosen.update(features or {})
    recipe = Recipe(config.to_dict(), chosen, recipe.training)
    spec = FeatureSpec.fit(training, h3_resolution=h3_resolution, n_cell_buckets=config.n_cell_buckets, **chosen)
    train = build_targets(seqs, vocab, spec, Split.TRAIN)
    if len(train) == 0:
        raise ModelError("no training targets: a training target is an event whose user has an earlier event, "
                         "both before the validation part; every user has fewer than 2 training events")
    return _Prepared(vocab, spec, config, train, build_targets(seqs, vocab, spec, Split.VALID),
                     TrainingCounts.fit(runs, len(vocab)), runs, shape, recipe)


def _fit(model: NextActionModel, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, prepared: _Prepared, rng: np.random.Generator, *,
         epochs: int, patience: int, device: torch.device | str, progress: bool, max_batch_events: int,
         grad_clip: float, stop_metric: str) -> tuple[list[dict[str, float]], int]:
    """Epoch loop with early stopping; leaves the best epoch's weights in ``model`` (eval mode)."""
    has_valid = len(prepared.valid) > 0
    sign = 1.0 if stop_metric == "mrr" else -1.0
    history = [{"epoch": 0.0, **_validate(model, prepared, device)}] if has_valid else []
    # The starting point (the baselines' best static mix) is a candidate too: training that never
    # beats it on validation leaves it in place.
    best_score = sign * history[0][f"valid_{stop_metric}"] if has_valid else -math.inf
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        started = time.monotonic()
        loss = _train_epoch(model, optimizer, prepared.train, rng, device=device, grad_clip=grad_clip,
                            max_batch_events=max_batch_events, progress=progress, label=f"{epoch}/{epochs}")
        scheduler.step()
        record = {"epoch": float(epoch), "train_loss": loss, "seconds": time.monotonic() - started,
                  **(_validate(model, prepared, device) if has_valid else {})}
        history.append(record)
        _report(record, progress)
        score = sign * record[f"valid_{stop_metric}"] if has_valid else float(epoch)
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience and has_valid:
            logger.info("early stop after epoch %d (best %d)", epoch, best_epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


def _report(record: dict[str, float], progress: bool) -> None:
    logger.info("epoch %d: %s", record["epoch"], {k: round(v, 4) for k, v in record.items()})
    if progress:
        valid = "".join(f" valid {k} {record[f'valid_{k}']:.4f}" for k in ("mrr", "acc@1", "acc@10", "nll")
                        if f"valid_{k}" in record)
        tqdm.write(f"epoch {int(record['epoch'])}: train loss {record['train_loss']:.4f}{valid} "
                   f"({record['seconds']:.0f} s)")


def _train_epoch(model: NextActionModel, optimizer: torch.optim.Optimizer, train: TargetSet,
                 rng: np.random.Generator, *, device: torch.device | str, max_batch_events: int,
                 grad_clip: float, progress: bool, label: str) -> float:
    """One pass over the training targets (transition counts leave each target out); mean NLL.
    Targets the exclusion of consumed actions makes impossible (the few repeats of data that
    "never repeat") carry no gradient."""
    model.train()
    total, count = 0.0, 0
    batches = length_batches([len(e) for e in train.encoded], max_batch_events, rng)
    with tqdm(batches, desc=f"epoch {label}", disable=not progress, leave=False) as bar:
        for rows in bar:
            log_probs = batch_target_log_probs(model, train, rows, device, leave_one_out=True)
            if model.config.exclude_consumed:
                log_probs = log_probs[log_probs > _MIN_LOG_PROB]
                if len(log_probs) == 0:
                    continue
            loss = -log_probs.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total, count = total + loss.item() * len(log_probs), count + len(log_probs)
            bar.set_postfix(loss=f"{total / max(1, count):.3f}")
    return total / max(1, count)


def _validate(model: NextActionModel, prepared: _Prepared, device: torch.device | str) -> dict[str, float]:
    """Validation metrics over all validation targets (prefixed ``valid_``), without standard errors."""
    ranks, nll = model_ranks(model, prepared.valid, prepared.counts.popularity, device=device)
    return {f"valid_{k}": v for k, v in summarize(ranks, nll).items() if not k.endswith("_se") and k != "n"}


@dataclass(frozen=True)
class _Fold:
    """A model trained without one fold of the training keys, and that fold's targets."""

    model: NextActionModel
    targets: TargetSet
    popularity: np.ndarray


def cross_validation_folds(sequences: Sequence[ActionSequence],
                           folds: int = CV_FOLDS) -> list[tuple[ActionSequence, ...]]:
    """``folds`` data sets made from the training part of ``sequences``: test events dropped (with
    whatever follows them), and in data set k every ``folds``-th key with training targets
    (starting at the k-th) has its training events relabelled TEST: held out, predicted from their
    own earlier events by a model trained on the other keys; validation is kept as it is."""
    kept = []
    for seq in sequences:
        end = seq.splits.index(Split.TEST) if Split.TEST in seq.splits else len(seq.splits)
        kept.append(ActionSequence(seq.key, seq.events[:end], seq.splits[:end]))
    with_targets = [i for i, seq in enumerate(kept) if seq.target_positions(Split.TRAIN)]
    out = []
    for k in range(folds):
        held = set(with_targets[k::folds])
        out.append(tuple(ActionSequence(s.key, s.events, tuple(Split.TEST if x == Split.TRAIN else x for x in s.splits))
                         if i in held else s for i, s in enumerate(kept)))
    return out


def _cross_validate(seqs: Sequence[ActionSequence], config: NextActionConfig | None,
                    features: dict[str, Any] | None, model_overrides: dict[str, Any] | None,
                    plan: dict[str, Any], *, seed: int, device: torch.device | str, weight_decay: float,
                    grad_clip: float, h3_resolution: int, min_count: int, stop_metric: str) -> list[_Fold]:
    """Train one model per ``cross_validation_folds`` data set, as the main one is trained (same
    recipe rules, plan and seed, early stopping on the same validation targets)."""
    folds = []
    for k, fold in enumerate(cross_validation_folds(seqs)):
        model, metadata = train_next_action(
            fold, config, epochs=plan["epochs"], lr=plan["lr"], lr_decay=plan["lr_decay"],
            patience=plan["patience"], seed=seed, device=device, progress=False,
            max_batch_events=plan["max_batch_events"], weight_decay=weight_decay, grad_clip=grad_clip,
            h3_resolution=h3_resolution, min_count=min_count, stop_metric=stop_metric, features=features,
            model_overrides=model_overrides, cross_validate=False)
        vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
        targets = build_targets(fold, vocab, spec, Split.TEST)
        logger.info("cross-validation fold %d/%d: best epoch %d, %d held-out targets", k + 1, CV_FOLDS,
                    metadata["best_epoch"], len(targets))
        if len(targets):
            folds.append(_Fold(model, targets, training_counts(fold, vocab).popularity))
    return folds


def _choose_blend(model: NextActionModel, prepared: _Prepared, device: torch.device | str,
                  stop_metric: str, folds: Sequence[_Fold] = ()) -> dict[str, Any]:
    """Blend the trained model with a baseline it can compute (``BLEND_BASELINES``: the mixture
    times the baseline's distribution to a power, renormalized) when that scores better by
    ``stop_metric`` on the validation targets than the model alone: the model keeps the best
    (``model.config.blend_weight`` / ``blend_baseline``, 0 when none helps). With ``folds``
    (small data) each candidate is also scored by every fold's model on its held-out targets, and
    the choice is made on all these targets together. Returns the choice, each candidate's score
    and the number of targets it was chosen on."""
    if len(prepared.valid) == 0:
        return {"baseline": None, "weight": 0.0, "validation": {}}
    sign = 1.0 if stop_metric == "mrr" else -1.0
    scored = [(model, prepared.valid, prepared.counts.popularity)] + [(f.model, f.targets, f.popularity) for f in folds]

    def per_target(weight: float, baseline: str | None = None) -> np.ndarray:
        """The stop metric's per-target values over all scored targets, signed so that higher is better."""
        values = []
        for scorer, targets, popularity in scored:
            scorer.config = replace(scorer.config, blend_weight=weight,
                                    **({"blend_baseline": baseline} if baseline else {}))
            ranks, nll = model_ranks(scorer, targets, popularity, device=device)
            values.append(1.0 / ranks if stop_metric == "mrr" else -nll)
        return np.concatenate(values)

    alone = replace(model.config, blend_weight=0.0)
    reference = per_target(0.0)
    tried = {"none": float(sign * reference.mean())}
    best, best_config = 0.0, alone
    for baseline in BLEND_BASELINES:
        for weight in BLEND_WEIGHTS:
            config = replace(alone, blend_weight=weight, blend_baseline=baseline)
            gain = per_target(weight, baseline) - reference
            tried[f"{baseline}^{weight:g}"] = float(sign * (reference + gain).mean())
            # Only a gain beyond the noise of the paired difference: a blend changes every
            # prediction (and the surprisals anomaly scoring reads), so a tie keeps the model alone.
            margin = BLEND_MARGIN_SE * float(gain.std(ddof=1)) / math.sqrt(len(gain)) if len(gain) > 1 else 0.0
            if gain.mean() > max(best, margin):
                best, best_config = float(gain.mean()), config
    model.config = best_config
    logger.info("blend on %d targets (%d folds) by %s: %s; chose %s", len(reference), len(folds), stop_metric,
                {k: round(v, 4) for k, v in tried.items()},
                f"{best_config.blend_baseline}^{best_config.blend_weight:g}" if best_config.blend_weight else "none")
    return {"baseline": best_config.blend_baseline if best_config.blend_weight > 0 else None,
            "weight": best_config.blend_weight, "validation": tried, "targets": len(reference),
            "folds": len(folds)}


def apply_blend(model: NextActionModel, blend: dict[str, Any] | None) -> NextActionModel:
    """Give ``model`` the blend a ``_choose_blend`` record names (e.g. chosen before a refit)."""
    if blend and blend.get("baseline"):
        model.config = replace(model.config, blend_weight=float(blend["weight"]), blend_baseline=str(blend["baseline"]))
    return model


def _choose_server(model: NextActionModel, prepared: _Prepared, device: torch.device | str,
                   stop_metric: str) -> dict[str, Any]:
    """Score the servable baselines on the validation targets beside the model: the checkpoint
    serves the best by ``stop_metric`` (the model unless a baseline beats it), and records the
    surprisal (-log p of each validation target) of what it serves, the population reference of
    behavior anomaly scoring."""
    valid, popularity = prepared.valid, prepared.counts.popularity
    if len(valid) == 0:
        return {"serve": "model", "baselines": {}, "surprisal": {}}
    scored = {"model": model_ranks(model, valid, popularity, device=device)}
    for key, scorer in servable_baselines(prepared.counts, exclude_consumed=prepared.config.exclude_consumed).items():
        scored[key] = scorer_ranks(scorer, valid, popularity)
    metrics = {key: {k: v for k, v in summarize(r, n).items() if not k.endswith("_se")}
               for key, (r, n) in scored.items()}
    sign = 1.0 if stop_metric == "mrr" else -1.0
    serve = max(scored, key=lambda key: (sign * metrics[key][stop_metric], key == "model"))
    if serve != "model":
        logger.warning("baseline %s beats the model on validation %s (%.4f vs %.4f): the checkpoint serves it",
                       serve, stop_metric, metrics[serve][stop_metric], metrics["model"][stop_metric])
    surprisal = scored[serve][1]
    return {"serve": serve, "baselines": {k: v for k, v in metrics.items() if k != "model"},
            "surprisal": _distribution(surprisal)}


def _distribution(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and quantiles of per-target surprisals (nats)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {}
    quantiles = np.percentile(finite, [50, 90, 99])
    return {"n": float(finite.size), "mean": float(finite.mean()), "std": float(finite.std()),
            "q50": float(quantiles[0]), "q90": float(quantiles[1]), "q99": float(quantiles[2])}


def _metadata(model: NextActionModel, prepared: _Prepared, history: list[dict[str, float]],
              best_epoch: int, **extra: Any) -> dict[str, Any]:
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    metadata = {
        "config": model.config.to_dict(),
        "vocabulary": prepared.vocab.to_list(),
        "features": prepared.spec.to_dict(),
        "best_epoch": best_epoch,
        "validation": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
        "validation_targets": len(prepared.valid),
        "training_targets": len(prepared.train),
        "history": history,
        "data_shape": prepared.shape.to_dict(),
        "recipe": prepared.recipe.to_dict(),
        "data_fingerprint": extra.pop("fingerprint"),
        **extra,
    }
    metadata["version"] = model_version(model, metadata)
    return metadata


def model_version(model: NextActionModel, metadata: dict[str, Any]) -> str:
    """"gru-" + a digest of the weights, config, vocabulary and feature normalization."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for key in ("config", "vocabulary", "features"):
        digest.update(json.dumps(metadata[key], sort_keys=True).encode())
    return f"gru-{digest.hexdigest()[:12]}"


def save_next_action(path: str | os.PathLike[str], model: NextActionModel, metadata: dict[str, Any]) -> Path:
    """Write weights + metadata (plain types only) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=state, metadata=metadata)


def load_next_action(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> LoadedNextAction:
    """Read a checkpoint written by ``save_next_action``; the model comes back in eval mode."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND)
    metadata = payload["metadata"]
    try:
        config = NextActionConfig.from_dict(metadata["config"])
        vocab = Vocabulary.from_list(metadata["vocabulary"])
        spec = FeatureSpec.from_dict(metadata["features"])
        model = prepare_model(config, vocab, spec)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ModelError) as exc:
        raise CheckpointError(f"checkpoint {path} does not hold a usable next-action model "
                              f"({exc.__class__.__name__}: {exc}); retrain it with this release "
                              "(stream-app train next-action)") from exc
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: vocabulary has {len(vocab)} ids, model expects "
                              f"{config.vocab_size}")
    serve = metadata.get("serve", "model")
    if serve != "model" and serve not in SERVABLE:
        raise CheckpointError(f"checkpoint {path} serves {serve!r}, which is none of model, {', '.join(SERVABLE)}")
    metadata.setdefault("version", model_version(model, metadata))
    return LoadedNextAction(model.to(device).eval(), vocab, spec, metadata)
