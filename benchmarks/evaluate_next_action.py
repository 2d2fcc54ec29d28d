"""Train the next-action model on a shared data set and compare it with the baselines on test."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.next_action.datasets import ActionDataset, Split, load_diginetica, load_foursquare, merge_validation
from models.next_action.evaluation import (EvaluationResult, evaluate_next_action, markdown_table, paired_bootstrap,
                               training_runs)
from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig, NextActionModel
from models.next_action.training import load_next_action, save_next_action, train_next_action

__all__ = ["CONFIGS", "main"]

logger = logging.getLogger(__name__)

MODEL = "GRU + window copy + transitions (trained)"
UNTRAINED = "same model untrained (epoch 0)"
CONFIGS = {
    "foursquare": (NextActionConfig(vocab_size=1, embed_dim=64, hidden_dim=128, n_cell_buckets=4096, cell_dim=16,
                                    window_size=200, window_span_s=365 * 86_400.0, dropout=0.2),
                   dict(epochs=5, lr=2e-3, patience=2)),
    "diginetica": (NextActionConfig(vocab_size=1, embed_dim=32, hidden_dim=64, attn_dim=32, use_location=False,
                                    window_size=50, window_span_s=86_400.0, dropout=0.3),
                   dict(epochs=30, lr=3e-3, patience=5)),
}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config, train_args = CONFIGS[args.dataset]
    if args.epochs is not None:
        train_args = {**train_args, "epochs": args.epochs}
    started = time.monotonic()
    if args.dataset == "foursquare":
        data = load_foursquare(args.data_dir / "foursquare-nyc" if args.data_dir else None)
    else:
        data = load_diginetica(args.data_dir / "diginetica-sample" if args.data_dir else None)
    if args.load:
        loaded = load_next_action(args.load)
        model, metadata = loaded.model, loaded.metadata
        data = merge_validation(data) if args.dataset == "diginetica" else data
    elif args.dataset == "foursquare":
        model, metadata = _train(data, config, train_args, args)
    else:
        model, metadata, data = _train_then_refit(data, config, train_args, args)
    result = _evaluate(data, model, metadata, args.seed)
    seconds = time.monotonic() - started
    print(_report(args.dataset, result, metadata, seconds))
    if args.checkpoint:
        save_next_action(args.checkpoint, model, metadata)
    if args.json:
        args.json.write_text(json.dumps({"metrics": result.metrics, "seconds": seconds,
                                         "best_epoch": metadata["best_epoch"], "version": metadata["version"]},
                                        indent=2))
    return 0


def _evaluate(data: ActionDataset, model: NextActionModel, metadata: dict[str, Any], seed: int) -> EvaluationResult:
    """Test metrics of the baselines, the model, and the same model before training (its epoch 0)."""
    vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
    result = evaluate_next_action(data.sequences, vocab, spec, Split.TEST, model=model, model_name=MODEL)
    torch.manual_seed(seed)  # the initialization train_next_action starts from
    untrained = NextActionModel(NextActionConfig.from_dict(metadata["config"]))
    untrained.set_transitions(training_runs(data.sequences, vocab))
    extra = evaluate_next_action(data.sequences, vocab, spec, Split.TEST, model=untrained.eval(),
                                 model_name=UNTRAINED, baselines=False)
    result.add(UNTRAINED, extra.ranks[UNTRAINED], extra.nll[UNTRAINED])
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--epochs", type=int, default=None, help="override the data set's epoch budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding foursquare-nyc/ and diginetica-sample/ "
                             "(default: $STREAM_APP_DATA_DIR, else ../shared/data)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="also save the trained model here")
    parser.add_argument("--load", type=Path, default=None,
                        help="evaluate this checkpoint (written by --checkpoint) instead of training")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _train(data: ActionDataset, config: NextActionConfig, train_args: dict[str, Any],
           args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    return train_next_action(data, config, seed=args.seed, progress=not args.no_progress, **train_args)


def _train_then_refit(data: ActionDataset, config: NextActionConfig, train_args: dict[str, Any],
                      args: argparse.Namespace) -> tuple[Any, dict[str, Any], ActionDataset]:
    """Pick the epoch count on validation, then refit on train + validation (SR-GNN's training part)."""
    _, first = _train(data, config, train_args, args)
    merged = merge_validation(data)
    refit_args = {**train_args, "epochs": max(1, first["best_epoch"])}
    model, metadata = _train(merged, config, refit_args, args)
    metadata["validation"], metadata["selection_history"] = first["validation"], first["history"]
    return model, metadata, merged


def _report(dataset: str, result: EvaluationResult, metadata: dict[str, Any], seconds: float) -> str:
    lines = [f"## {dataset}: test split, {int(result.metrics[MODEL]['n'])} targets "
             f"(model {metadata['version']}, best epoch {metadata['best_epoch']}, {seconds:.0f} s)", "",
             markdown_table(result.metrics, with_se=dataset == "diginetica"), "",
             "Paired bootstrap (10,000 resamples, 95 %) of model minus baseline:"]
    for baseline in result.metrics:
        if baseline == MODEL:
            continue
        cells = []
        for metric in ("acc@1", "acc@10", "acc@20", "mrr", "mrr@20"):
            diff, low, high = paired_bootstrap(result.ranks[MODEL], result.ranks[baseline], metric=metric)
            cells.append(f"{metric} {diff:+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"- vs {baseline}: " + "; ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
