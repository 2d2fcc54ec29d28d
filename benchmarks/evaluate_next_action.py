"""Next-action model against its baselines on the shared data sets, and event logs of other kinds.

    python benchmarks/evaluate_next_action.py --data foursquare [--split time|last] [--json F] [--markdown F]
    python benchmarks/evaluate_next_action.py --derive categories --out fsq-categories.csv
    python benchmarks/evaluate_next_action.py --derive first-visits --out fsq-first-visits.csv
    python benchmarks/evaluate_next_action.py --derive habits --out habits.csv
    python benchmarks/evaluate_next_action.py --derive ratings --out ratings.csv

Training and scoring are `stream-app evaluate next-action` (the same job, defaults chosen from the
data's shape); this script adds the same architecture at a random initialization (transition
counts filled, no training, not started from the baselines' mix) as a reference row, and writes
the logs of other kinds the defaults are checked on, derived from Foursquare or simulated:
check-in categories (a POI's id bucketed into 10 categories, its place kept), first visits only
(every check-in a POI the user never visited before: a log that never repeats), and
``simulation.users.habit_events`` logs (10 habitual actions with bursts; ratings never repeated).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import torch

from models.next_action.datasets import load_foursquare
from models.next_action.evaluation import evaluate_next_action, training_runs
from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig
from models.next_action.training import load_next_action, prepare_model, save_next_action
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
