"""Los-loop evaluation of the traffic graph-GRU against persistence, time-of-day and window-mean baselines.

Two protocols, one test split (the last 20 % of steps, T-GCN's), T-GCN's windows and metrics:

- strict: train on the first 64 %, early stopping on the next 16 % (validation), test once;
- tgcn: train on the first 80 % for the number of epochs the strict run chose on validation.

The model is scored twice: "window" (zero state, the 12 input steps only: T-GCN-comparable) and
"stream" (state carried over every step from the start of the data, as the worker runs it).

    .venv/bin/python benchmarks/evaluate_traffic.py [--epochs 12] [--out artifacts]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from models.traffic.model import TrafficConfig
from models.traffic.data import EVAL_HORIZONS, TrafficSeries, load_los_loop, strict_split, tgcn_split
from models.traffic.evaluation import baseline_scores, format_validation, markdown_tables, model_scores
from models.traffic.training import TrainConfig, TrainResult, save_traffic_checkpoint, train_traffic

__all__ = ["main"]

logger = logging.getLogger(__name__)

def train_both(series: TrafficSeries, model_config: TrafficConfig, train_config: TrainConfig,
               out: Path) -> tuple[TrainResult, TrainResult]:
    """Strict run with early stopping, then the 80 % refit for the epochs it chose."""
    strict = strict_split(series.n_steps)
    started = time.perf_counter()
    strict_result = train_traffic(series, strict, model_config, train_config)
    strict_minutes = (time.perf_counter() - started) / 60
    save_traffic_checkpoint(out / "traffic-los-loop-strict.pt", strict_result, series, strict,
                            train_config, protocol="strict")
    refit_config = replace(train_config, stop_after=strict_result.best_epoch)
    started = time.perf_counter()
    tgcn_result = train_traffic(series, tgcn_split(series.n_steps), model_config, refit_config)
    tgcn_minutes = (time.perf_counter() - started) / 60
    save_traffic_checkpoint(out / "traffic-los-loop.pt", tgcn_result, series,
                            tgcn_split(series.n_steps), refit_config, protocol="tgcn",
                            strict_val_metrics=strict_result.val_metrics)
    print(f"strict: best epoch {strict_result.best_epoch} of {len(strict_result.history) - 1} "
          f"run, validation {format_validation(strict_result.val_metrics)}, {strict_minutes:.1f} min; "
          f"tgcn refit: {tgcn_result.best_epoch} epochs, {tgcn_minutes:.1f} min")
    return strict_result, tgcn_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="Los-loop folder "
                        "(default: $STREAM_APP_DATA_DIR/los-loop, else ../shared/data/los-loop)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epoch budget")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units per sensor")
    parser.add_argument("--embedding", type=int, default=8, help="per-sensor embedding size")
    parser.add_argument("--time-features", action="store_true",
                        help="feed time of day and day of week (overfits Los-loop's 4.5 training days)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="checkpoint folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    series = load_los_loop(args.data)
    train_part = series.speeds[strict_split(series.n_steps).train]
    model_config = TrafficConfig(n_sensors=series.network.n_sensors, hidden_dim=args.hidden,
                                 horizons=tuple(range(1, max(EVAL_HORIZONS) + 1)),
                                 speed_scale=float(train_part.max()),
                                 node_embedding_dim=args.embedding,
                                 use_time_features=args.time_features)
    train_config = TrainConfig(epochs=args.epochs, seed=args.seed)
    strict_result, tgcn_result = train_both(series, model_config, train_config, args.out)
    scores = baseline_scores(series)
    scores.update(model_scores(strict_result, series, "graph-GRU strict"))
    scores.update(model_scores(tgcn_result, series, "graph-GRU tgcn"))
    print(markdown_tables(scores, series.step_ms // 60_000))


if __name__ == "__main__":
    main()
