"""Next-action model against its baselines on the shared data sets, and event logs of other kinds.

    python benchmarks/evaluate_next_action.py --data foursquare [--split time|last] [--json F] [--markdown F]
    python benchmarks/evaluate_next_action.py --derive categories --out fsq-categories.csv
    python benchmarks/evaluate_next_action.py --derive first-visits --out fsq-first-visits.csv
    python benchmarks/evaluate_next_action.py --derive habits --out habits.csv
    python benchmarks/evaluate_next_action.py --derive ratings --out ratings.csv
    python benchmarks/evaluate_next_action.py --data diginetica --folds    # held-out training targets only

Training and scoring are `stream-app evaluate next-action` (the same job, defaults chosen from the
data's shape); this script adds the same architecture at a random initialization (transition
counts filled, no training, not started from the baselines' mix) as a reference row, and writes
the logs of other kinds the defaults are checked on, derived from Foursquare or simulated:
check-in categories (a POI's id bucketed into 10 categories, its place kept), first visits only
(every check-in a POI the user never visited before: a log that never repeats), and
``simulation.users.habit_events`` logs (10 habitual actions with bursts; ratings never repeated).
``--folds`` reads no test split: it trains the cross-validation models the blend choice of small
data uses (``training.cross_validation_folds``) and scores the model alone, each blend candidate
and the servable baselines on their held-out training targets, pooled.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.next_action.baselines import servable_baselines
from models.next_action.datasets import Split, load_foursquare
from models.next_action.evaluation import (
    build_targets,
    evaluate_next_action,
    markdown_table,
    model_ranks,
    scorer_ranks,
    summarize,
    training_counts,
    training_runs,
)
from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import BLEND_BASELINES, NextActionConfig
from models.next_action.training import (
    BLEND_WEIGHTS,
    cross_validation_folds,
    load_next_action,
    prepare_model,
    save_next_action,
    train_next_action,
)
from simulation.users import HabitConfig, habit_events
from stream_app.jobs import shared_folder
from stream_app.jobs.next_action import evaluate_actions, load_action_data, parse_ks, train_actions

__all__ = ["main", "derive"]

logger = logging.getLogger(__name__)

UNTRAINED = "same model, random initialization"
DERIVED = ("categories", "first-visits", "habits", "ratings")
_CATEGORIES = 10


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.derive:
        rows = derive(args.derive, args.data_dir)
        _write_csv(args.out, rows)
        print(f"wrote {len(rows)} events of {len({r['user_id'] for r in rows})} users to {args.out}")
        return 0
    started = time.monotonic()
    data = load_action_data(args.data, data_dir=args.data_dir, split=args.split, action_field=args.action_field)
    if args.folds:
        print(fold_scores(data.dataset.sequences, seed=args.seed, ks=parse_ks(args.k)))
        print(f"{time.monotonic() - started:.0f} s in all")
        return 0
    if args.load:
        loaded = load_next_action(args.load)
        model, metadata = loaded.model, loaded.metadata
    else:
        model, metadata = train_actions(data, seed=args.seed, epochs=args.epochs, progress=not args.no_progress)
    report = evaluate_actions(data, model, metadata, ks=parse_ks(args.k))
    untrained = _untrained(data, metadata, args.seed)
    report.result.add(UNTRAINED, untrained.ranks[UNTRAINED], untrained.nll[UNTRAINED])
    seconds = time.monotonic() - started
    print(report.markdown())
    print(f"{seconds:.0f} s in all")
    if args.checkpoint:
        save_next_action(args.checkpoint, model, metadata)
    if args.json:
        args.json.write_text(json.dumps({**report.as_json(), "seconds_all": seconds}, indent=2))
    if args.markdown:
        args.markdown.write_text(report.markdown())
    return 0


def _untrained(data, metadata: dict, seed: int):  # type: ignore[no-untyped-def]
    """The architecture at a random initialization (the seed's), transition counts filled; training
    itself starts from the baselines' best static mix instead (its validation is history entry 0)."""
    vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
    torch.manual_seed(seed)
    model = prepare_model(NextActionConfig.from_dict(metadata["config"]), vocab, spec,
                          training_runs(data.dataset.sequences, vocab)).eval()
    return evaluate_next_action(data.scored.sequences, vocab, spec, model=model, model_name=UNTRAINED,
                                baselines=False)


def fold_scores(sequences, *, seed: int, ks: tuple[int, ...]) -> str:  # type: ignore[no-untyped-def]
    """Markdown table: the fold models alone, each blend candidate and the servable baselines on the
    pooled held-out training targets of ``cross_validation_folds`` (items seen only in the held-out
    keys are misses for every method); no test event is read."""
    ranks: dict[str, list[np.ndarray]] = {}
    for fold in cross_validation_folds(sequences):
        model, metadata = train_next_action(fold, seed=seed, progress=False, cross_validate=False)
        vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
        targets = build_targets(fold, vocab, spec, Split.TEST)
        counts = training_counts(fold, vocab)
        alone = replace(model.config, blend_weight=0.0)
        for baseline, weight in [(None, 0.0)] + [(b, w) for b in BLEND_BASELINES for w in BLEND_WEIGHTS]:
            model.config = replace(alone, blend_weight=weight, **({"blend_baseline": baseline} if baseline else {}))
            name = "model alone" if baseline is None else f"model x {baseline}^{weight:g}"
            ranks.setdefault(name, []).append(model_ranks(model, targets, counts.popularity)[0])
        for key, scorer in servable_baselines(counts).items():
            ranks.setdefault(key, []).append(scorer_ranks(scorer, targets, counts.popularity)[0])
    metrics = {name: summarize(np.concatenate(parts), ks=ks) for name, parts in ranks.items()}
    n = int(next(iter(metrics.values()))["n"])
    columns = tuple(f"acc@{k}" for k in ks) + ("mrr", "mrr@20")
    return f"{n} held-out training targets\n\n" + markdown_table(metrics, columns=columns, with_se=True)


def derive(kind: str, data_dir: Path | None = None) -> list[dict]:
    """The events of a derived log (see the module doc), in time order."""
    if kind in ("habits", "ratings"):
        config = HabitConfig(n_users=600, events_per_user=80, seed=7) if kind == "habits" else \
            HabitConfig(n_users=600, events_per_user=60, n_actions=3_000, favourites=3, repeat=False, seed=7)
        return [{"user_id": e["user_id"], "ts": e["ts"], "action": e["action"]} for e in habit_events(config)]
    dataset = load_foursquare(shared_folder("foursquare", data_dir), split="time")
    rows = []
    for seq in dataset.sequences:
        seen: set[str] = set()
        for event in seq.events:
            if kind == "first-visits" and event.token in seen:
                continue
            seen.add(event.token)
            action = f"category-{int(event.token) % _CATEGORIES}" if kind == "categories" else event.token
            rows.append({"user_id": seq.key, "ts": event.ts_ms, "action": action, "lat": event.lat, "lon": event.lon})
    return sorted(rows, key=lambda r: (r["ts"], r["user_id"]))


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["user_id", "ts", "action"] + (["lat", "lon"] if rows and "lat" in rows[0] else [])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="foursquare, diginetica, generated or an event file")
    parser.add_argument("--split", choices=["time", "last"], default="time")
    parser.add_argument("--action-field", default="action", choices=["action", "item_id", "category"])
    parser.add_argument("--k", default="1,5,10,20", help="Acc@k cut-offs (default 1,5,10,20)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epoch budget of the defaults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding foursquare-nyc/ and diginetica-sample/ (default: the app's search path)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="also save the trained model here")
    parser.add_argument("--load", type=Path, default=None, help="evaluate this checkpoint instead of training")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--derive", choices=DERIVED, default=None, help="write a derived event log instead")
    parser.add_argument("--out", type=Path, default=None, help="with --derive: the CSV file to write")
    parser.add_argument("--folds", action="store_true",
                        help="score the cross-validation folds' held-out training targets instead (no test split)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each epoch")
    args = parser.parse_args(argv)
    if args.derive and args.out is None:
        parser.error("--derive needs --out FILE")
    if not args.derive and args.data is None:
        parser.error("give --data (or --derive KIND --out FILE)")
    return args


if __name__ == "__main__":
    sys.exit(main())
