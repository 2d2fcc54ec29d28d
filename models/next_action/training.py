"""Training of the next-action model (Adam, early stopping on validation) and its checkpoints."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from models.next_action.baselines import TrainingCounts
from models.checkpoint import load_checkpoint, save_checkpoint
from models.next_action.datasets import ActionDataset, ActionSequence, Split
from models.next_action.evaluation import (TargetSet, batch_target_log_probs, build_targets, length_batches,
                               model_log_probs, summarize, target_ranks, training_runs)
from models.exceptions import CheckpointError, ModelError
from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig, NextActionModel

__all__ = ["CHECKPOINT_KIND", "LoadedNextAction", "train_next_action", "model_version",
           "save_next_action", "load_next_action"]

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "next-action"
_STOP_METRIC = "mrr"


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


@dataclass(frozen=True)
class _Prepared:
    """What training derives from the sequences before fitting."""

    vocab: Vocabulary
    spec: FeatureSpec
    config: NextActionConfig
    train: TargetSet
    valid: TargetSet
    popularity: np.ndarray
    runs: list[np.ndarray]


def train_next_action(sequences: ActionDataset | Sequence[ActionSequence], config: NextActionConfig, *,
                      epochs: int = 10, lr: float = 2e-3, lr_decay: float = 1.0, patience: int = 2, seed: int = 0,
                      device: torch.device | str = "cpu", progress: bool = True,
                      max_batch_events: int = 4096, weight_decay: float = 0.0, grad_clip: float = 5.0,
                      h3_resolution: int = 8, min_count: int = 1,
                      fingerprint: str | None = None) -> tuple[NextActionModel, dict[str, Any]]:
    """Fit a NextActionModel on the TRAIN targets with Adam (learning rate multiplied by
    ``lr_decay`` after each epoch), keep the epoch with the best validation MRR.

    The vocabulary (tokens seen ``min_count`` times in training), the location normalization and
    the transition counts come from the training events only; ``config.vocab_size`` is replaced
    by the vocabulary's size. Early stopping after ``patience`` epochs without a better validation
    MRR; without validation targets every epoch runs and the last is kept. Returns the model
    (eval mode, on ``device``) and the metadata a checkpoint stores (history entry 0 is the
    untrained model).
    """
    if epochs < 1:
        raise ModelError(f"epochs must be >= 1, got {epochs}")
    dataset = sequences if isinstance(sequences, ActionDataset) else None
    prepared = _prepare(tuple(dataset.sequences if dataset else sequences), config,
                        h3_resolution=h3_resolution, min_count=min_count)
    torch.manual_seed(seed)
    model = NextActionModel(prepared.config)
    model.set_transitions(prepared.runs)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    started = time.monotonic()
    history, best_epoch = _fit(model, optimizer, scheduler, prepared, np.random.default_rng(seed),
                               epochs=epochs, patience=patience, device=device, progress=progress,
                               max_batch_events=max_batch_events, grad_clip=grad_clip)
    metadata = _metadata(model, prepared, history, best_epoch, seed=seed, lr=lr, lr_decay=lr_decay,
                         fingerprint=fingerprint or (dataset.fingerprint if dataset else None),
                         dataset=dataset.name if dataset else None, seconds=time.monotonic() - started)
    return model, metadata


def _prepare(seqs: Sequence[ActionSequence], config: NextActionConfig, *, h3_resolution: int,
             min_count: int) -> _Prepared:
    training = [e for s in seqs for e, x in zip(s.events, s.splits) if x == Split.TRAIN]
    vocab = Vocabulary.build((e.token for e in training), min_count=min_count)
    spec = FeatureSpec.fit(training, h3_resolution=h3_resolution, n_cell_buckets=config.n_cell_buckets)
    train = build_targets(seqs, vocab, spec, Split.TRAIN)
    if len(train) == 0:
        raise ModelError("no training targets: a sequence needs 2+ consecutive events marked TRAIN")
    runs = training_runs(seqs, vocab)
    return _Prepared(vocab, spec, replace(config, vocab_size=len(vocab)), train,
                     build_targets(seqs, vocab, spec, Split.VALID),
                     TrainingCounts.fit(runs, len(vocab)).popularity, runs)


def _fit(model: NextActionModel, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, prepared: _Prepared, rng: np.random.Generator, *,
         epochs: int, patience: int, device: torch.device | str, progress: bool, max_batch_events: int,
         grad_clip: float) -> tuple[list[dict[str, float]], int]:
    """Epoch loop with early stopping; leaves the best epoch's weights in ``model`` (eval mode)."""
    has_valid = len(prepared.valid) > 0
    history = [{"epoch": 0.0, **_validate(model, prepared, device)}] if has_valid else []
    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        loss = _train_epoch(model, optimizer, prepared.train, rng, device=device, grad_clip=grad_clip,
                            max_batch_events=max_batch_events, progress=progress, label=f"{epoch}/{epochs}")
        scheduler.step()
        record = {"epoch": float(epoch), "train_loss": loss, **(_validate(model, prepared, device) if has_valid else {})}
        history.append(record)
        _report(record, progress)
        score = record.get(f"valid_{_STOP_METRIC}", float(epoch))
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
        valid = "".join(f" valid {k} {record[f'valid_{k}']:.4f}" for k in (_STOP_METRIC, "acc@1", "acc@10", "nll")
                        if f"valid_{k}" in record)
        tqdm.write(f"epoch {int(record['epoch'])}: train loss {record['train_loss']:.4f}{valid}")


def _train_epoch(model: NextActionModel, optimizer: torch.optim.Optimizer, train: TargetSet,
                 rng: np.random.Generator, *, device: torch.device | str, max_batch_events: int,
                 grad_clip: float, progress: bool, label: str) -> float:
    """One pass over the training targets (transition counts leave each target out); mean NLL."""
    model.train()
    total, count = 0.0, 0
    batches = length_batches([len(e) for e in train.encoded], max_batch_events, rng)
    with tqdm(batches, desc=f"epoch {label}", disable=not progress, leave=False) as bar:
        for rows in bar:
            log_probs = batch_target_log_probs(model, train, rows, device, leave_one_out=True)
            loss = -log_probs.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total, count = total + loss.item() * len(log_probs), count + len(log_probs)
            bar.set_postfix(loss=f"{total / count:.3f}")
    return total / count


def _validate(model: NextActionModel, prepared: _Prepared, device: torch.device | str) -> dict[str, float]:
    """Validation metrics (prefixed ``valid_``) without standard errors."""
    valid = prepared.valid
    log_probs = model_log_probs(model, valid, device=device)
    ranks = target_ranks(log_probs, valid.targets, prepared.popularity)
    nll = -log_probs[np.arange(len(valid)), valid.targets].astype(np.float64)
    return {f"valid_{k}": v for k, v in summarize(ranks, nll).items() if not k.endswith("_se") and k != "n"}


def _metadata(model: NextActionModel, prepared: _Prepared, history: list[dict[str, float]],
              best_epoch: int, **extra: Any) -> dict[str, Any]:
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    metadata = {
        "config": model.config.to_dict(),
        "vocabulary": prepared.vocab.to_list(),
        "features": prepared.spec.to_dict(),
        "best_epoch": best_epoch,
        "validation": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
        "history": history,
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


def save_next_action(path: str | os.PathLike, model: NextActionModel, metadata: dict[str, Any]) -> Path:
    """Write weights + metadata (plain types only) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=state, metadata=metadata)


def load_next_action(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LoadedNextAction:
    """Read a checkpoint written by ``save_next_action``; the model comes back in eval mode."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND)
    metadata = payload["metadata"]
    try:
        config = NextActionConfig.from_dict(metadata["config"])
        vocab = Vocabulary.from_list(metadata["vocabulary"])
        spec = FeatureSpec.from_dict(metadata["features"])
        model = NextActionModel(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ModelError) as exc:
        raise CheckpointError(f"checkpoint {path} does not hold a usable next-action model "
                              f"({exc.__class__.__name__}: {exc})") from exc
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: vocabulary has {len(vocab)} ids, model expects "
                              f"{config.vocab_size}")
    metadata.setdefault("version", model_version(model, metadata))
    return LoadedNextAction(model.to(device).eval(), vocab, spec, metadata)
