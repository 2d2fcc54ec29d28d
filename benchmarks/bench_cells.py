"""Cell stage in-process, no broker: CPU µs per event of the cell pipeline on generated data, the raw
decode of the same records as the reference, and a digest of everything the stage writes.

The workload: ``--events`` generated user events of ``--users`` users (``simulation.users``, as
``bench_pipeline.py`` generates them) on ``--source-partitions`` ``user-events`` partitions (keyed by
user), cut into behavior batches of ``--batch`` events in event-time order; each batch becomes its
``cell-events`` records with ``cell_batches`` (what the behavior stage writes: one record per cell
partition, with each event's source partition and offset). The cell stage then runs as ``CellTransport``
drives it: per batch, ``_decode_cell_records`` (the transport's decode), ``CellPipeline.process`` per
partition (partitions loaded from their stores at first use), ``take_alerts``; ``flush`` (the
transport's ``before_checkpoint``) every ``--checkpoint-every`` batches (the transport checkpoints once
a second: about 20 batches of 512 at the stage's rate); at the end, every source idle, ``close_windows``
and a last flush. Settings are the defaults (windows of 300 s every 60 s, grace 60 s, H3 resolution 8).

Timed passes use plain dict stores and a fixed clock, the garbage collector tuned as the worker tunes it
(``--gc default`` for Python's), and measure ``time.process_time`` around the whole pass; the figure is
the median over the repeats. ``decode`` is the transport's decode alone over the same records: what the
stage costs beyond reading its input is ``stage - decode``.

The digest (sha256) covers, in order: every ``cell-activity`` and ``anomaly-alerts`` record (key and
value bytes), and per checkpoint the store writes it made (sorted by key: the order of the writes
within one flush follows a set of cells, which changes with the hash seed). It is computed on four
untimed passes: write-behind as timed; write-behind with every partition dropped and reloaded from
its store after the middle checkpoint (as after a rebalance); writes per batch (the Faust path's
``write_behind=False``); and write-behind with crowd scoring far more ready to alert (``SENSITIVE``:
the defaults raise about one alert on this data).

``--baseline-tree DIR`` runs the same workload, interleaved with this tree's runs, on another
checkout (e.g. ``git archive HEAD | tar -x -C /tmp/cells-base`` before a change): its µs/event in the
same run, and whether its digest matches this tree's (the outputs, alerts and state must be
byte-identical). Each run is a subprocess importing ``stream_app`` from its tree.

    .venv/bin/python benchmarks/bench_cells.py [--events 40000] [--repeats 5] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
#: Crowd scoring far more ready to alert than the defaults (the generated data raises about one alert at
#: those): a digest pass with these puts about a thousand alerts through the check.
SENSITIVE: dict[str, Any] = {"crowd_alert_alpha": 0.2, "crowd_alert_min_users": 1}


# --------------------------------------------------------------------------- workload (this tree only)

def build_workload(n_events: int, n_users: int, source_partitions: int, batch: int, seed: int) -> dict[str, Any]:
    """Cell-events records per behavior batch: {"batches": [[(cell partition, value), ...], ...], ...}."""
    from simulation.users import BehaviorConfig, generate_user_events
    from stream_app.pipelines.base import Received, partition_of
    from stream_app.pipelines.cells import cell_batches
    from stream_app.settings import Settings

    settings = Settings()
    events = generate_user_events(BehaviorConfig(n_users=n_users, n_events=n_events, seed=seed)).events
    offsets = [0] * source_partitions
    received = []
    for event in events:
        source = partition_of(event["user_id"].encode(), source_partitions)
        received.append(Received(SimpleNamespace(**event), 0.0, source, offsets[source]))
        offsets[source] += 1
    batches = []
    located = 0
    for i in range(0, len(received), batch):
        records = list(cell_batches(received[i:i + batch], settings.partitions, settings.h3_resolution))
        batches.append([(partition_of(key, settings.partitions), value) for key, value in records])
    located = sum(1 for r in received if r.value.lat is not None and r.value.lon is not None)
    return {"batches": batches, "user_events": len(events), "cell_events": located,
            "cell_partitions": settings.partitions, "source_partitions": source_partitions}


# --------------------------------------------------------------------------- one tree's runs (subprocess)

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _RecordingStore(dict[bytes, bytes]):
    """A dict store that keeps what was written to it since the last ``take``."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[bytes, bytes]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes.append((key, value))
        super().__setitem__(key, value)

    def take(self) -> list[tuple[bytes, bytes]]:
        writes, self.writes = sorted(self.writes), []
        return writes


def _run(workload: dict[str, Any], checkpoint_every: int, *, digest: hashlib._Hash | None = None,
         write_behind: bool = True, reload_at: int | None = None, **overrides: Any) -> dict[str, int]:
    """One pass of the cell stage over the workload (see the module doc); counts of what it wrote."""
    from stream_app.agents.cells import _decode_cell_records
    from stream_app.metrics import Metrics
    from stream_app.pipelines.cells import CellPipeline
    from stream_app.settings import Settings

    settings, clock = Settings(**overrides), _Clock()
    pipeline = CellPipeline(settings, Metrics(), clock=clock, sources=workload["source_partitions"],
                            write_behind=write_behind)
    stores: dict[int, dict[bytes, bytes]] = {
        p: _RecordingStore() if digest is not None else {} for p in range(workload["cell_partitions"])}
    windows = alerts = 0

    def emit(records: list[tuple[bytes, bytes]]) -> None:
        if digest is not None:
            for key, value in records:
                digest.update(b"%d:%b%d:%b" % (len(key), key, len(value), value))

    def checkpoint() -> None:
        pipeline.flush()
        if digest is not None:
            for p in sorted(stores):
                emit(stores[p].take())  # type: ignore[attr-defined]

    def outputs(closed: list[tuple[bytes, bytes]]) -> None:
        nonlocal windows, alerts
        raised = pipeline.take_alerts()
        windows += len(closed)
        alerts += len(raised)
        emit(closed)
        emit(raised)

    for i, batch in enumerate(workload["batches"]):
        by_partition: dict[int, list[SimpleNamespace]] = {}
        for partition, value in batch:
            by_partition.setdefault(partition, []).append(SimpleNamespace(value=value))
        closed: list[tuple[bytes, bytes]] = []
        for partition, records in by_partition.items():
            if partition not in pipeline.partitions:
                pipeline.load(partition, stores[partition])
            closed += pipeline.process(partition, _decode_cell_records(records))
        outputs(closed)
        if (i + 1) % checkpoint_every == 0:
            checkpoint()
            if reload_at is not None and i + 1 >= reload_at:
                pipeline.drop(list(pipeline.partitions))  # rebuilt from their stores at next use
                reload_at = None
    clock.now = 1e6  # every source idle: the furthest one sets the watermark
    for partition in stores:
        if partition not in pipeline.partitions:
            pipeline.load(partition, stores[partition])
    outputs(pipeline.close_windows())
    checkpoint()
    return {"windows": windows, "alerts": alerts}


def _decode_only(workload: dict[str, Any]) -> None:
    from stream_app.agents.cells import _decode_cell_records

    for batch in workload["batches"]:
        _decode_cell_records([SimpleNamespace(value=value) for _, value in batch])


def _cpu(fn: Any) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def worker(path: Path, repeats: int, checkpoint_every: int, profile: str | None, gc_mode: str) -> dict[str, Any]:
    """This process's tree on the workload at ``path``: CPU seconds per pass, digest, counts."""
    workload = msgspec.msgpack.decode(path.read_bytes())
    if gc_mode == "worker":
        from stream_app.worker import tune_garbage_collector
        tune_garbage_collector()
    digest = hashlib.sha256()
    counts = _run(workload, checkpoint_every, digest=digest)
    middle = len(workload["batches"]) // 2
    counts_reload = _run(workload, checkpoint_every, digest=digest, reload_at=middle)
    _run(workload, checkpoint_every, digest=digest, write_behind=False)
    counts_sensitive = _run(workload, checkpoint_every, digest=digest, **SENSITIVE)
    if profile:
        import cProfile
        cProfile.runctx("_run(workload, checkpoint_every)", globals(), {**locals(), "_run": _run}, profile)
    stage, decode = [], []
    for _ in range(repeats):
        decode.append(_cpu(lambda: _decode_only(workload)))
        stage.append(_cpu(lambda: _run(workload, checkpoint_every)))
    import stream_app
    return {"tree": str(Path(stream_app.__file__).resolve().parent.parent), "stage_s": stage, "decode_s": decode,
            "digest": digest.hexdigest(), **counts, "windows_with_reload": counts_reload["windows"],
            "alerts_sensitive": counts_sensitive["alerts"]}


# --------------------------------------------------------------------------- driver

def _spawn(tree: Path, path: Path, args: argparse.Namespace, profile: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), "--repeats", "1",
               "--checkpoint-every", str(args.checkpoint_every), "--gc", args.gc]
    if profile:
        command += ["--profile", profile]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run on {tree} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["tree"]) != tree.resolve():
        raise SystemExit(f"the run meant for {tree} imported stream_app from {result['tree']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--events", type=int, default=40_000, help="generated user events (default 40000)")
    parser.add_argument("--users", type=int, default=5_000, help="simulated users (default 5000, as bench_pipeline)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--source-partitions", type=int, default=4, help="user-events partitions (default 4)")
    parser.add_argument("--batch", type=int, default=512, help="user events per behavior batch (default 512)")
    parser.add_argument("--checkpoint-every", type=int, default=20, help="batches between flushes (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per tree, interleaved (default 5)")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout to run and compare against")
    parser.add_argument("--gc", choices=("worker", "default"), default="worker",
                        help="the garbage collector as the worker tunes it (frozen start, young generation "
                             "collected every 10,000 allocations; default) or Python's defaults")
    parser.add_argument("--profile", help="also write a cProfile of one pass of this tree to this file")
    parser.add_argument("--json-out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--save-workload", type=Path, help="write the workload here (for --worker) and stop")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, args.checkpoint_every, args.profile, args.gc)))
        return

    workload = build_workload(args.events, args.users, args.source_partitions, args.batch, args.seed)
    print(f"workload: {workload['user_events']:,} user events, {workload['cell_events']:,} located (cell events), "
          f"{len(workload['batches'])} batches of {args.batch}, {sum(map(len, workload['batches'])):,} "
          f"cell-events records", flush=True)
    if args.save_workload:
        args.save_workload.write_bytes(msgspec.msgpack.encode(workload))
        return
    trees = {"this": ROOT}
    if args.baseline_tree:
        trees["baseline"] = args.baseline_tree.resolve()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workload.msgpack"
        path.write_bytes(msgspec.msgpack.encode(workload))
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                profile = args.profile if repeat == 0 and name == "this" else None
                runs[name].append(_spawn(tree, path, args, profile))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{name} {runs[name][-1]['stage_s'][0] * 1e6 / workload['user_events']:.1f}" for name in trees)
                + " us/user event", flush=True)
    report: dict[str, Any] = {"user_events": workload["user_events"], "cell_events": workload["cell_events"]}
    print(f"\n{'tree':<9} {'stage us/user ev':>16} {'us/cell ev':>10} {'decode us/user ev':>17} "
          f"{'windows':>8} {'alerts':>6}  digest")
    for name, results in runs.items():
        stage = statistics.median(r["stage_s"][0] for r in results)
        decode = statistics.median(r["decode_s"][0] for r in results)
        digests = {r["digest"] for r in results}
        first, users, cells = results[0], workload["user_events"], workload["cell_events"]
        print(f"{name:<9} {stage * 1e6 / users:>16.2f} {stage * 1e6 / cells:>10.2f} {decode * 1e6 / users:>17.2f} "
              f"{first['windows']:>8,} {first['alerts']:>6} {first['alerts_sensitive']:>9}  {first['digest'][:16]}"
              f"{'' if len(digests) == 1 else ' (differs between runs!)'}")
        report[name] = {"tree": str(trees[name]), "stage_us_per_user_event": stage * 1e6 / workload["user_events"],
                        "stage_us_per_cell_event": stage * 1e6 / workload["cell_events"],
                        "decode_us_per_user_event": decode * 1e6 / workload["user_events"],
                        "stage_s": [r["stage_s"][0] for r in results], "decode_s": [r["decode_s"][0] for r in results],
                        "windows": first["windows"], "alerts": first["alerts"], "digest": first["digest"]}
    if "baseline" in runs:
        same = report["this"]["digest"] == report["baseline"]["digest"]
        ratio = report["baseline"]["stage_us_per_user_event"] / report["this"]["stage_us_per_user_event"]
        print(f"\nthis tree vs baseline: {ratio:.2f}x faster (medians); outputs, alerts and state "
              f"{'byte-identical' if same else 'DIFFER'}")
        report["identical"], report["speedup"] = same, ratio
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    if "baseline" in runs and not report["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
