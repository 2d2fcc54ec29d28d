"""`stream-app train` and `evaluate`: checkpoints, report files that match the evaluation, errors that say the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from models.next_action.datasets import Split
from models.next_action.training import load_next_action
from simulation.users import BehaviorConfig
from stream_app.cli import cli
from stream_app.jobs.next_action import MODEL_NAME, evaluate_actions, load_action_data, load_checkpoint_for

TINY_DATA = ["--data", "generated", "--users", "20", "--events", "1500", "--data-seed", "3"]
TINY_TRAINING = ["--epochs", "1", "--hidden-dim", "8", "--threads", "1", "--device", "cpu", "--no-progress"]


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("models") / "na.pt"
    result = invoke("train", "next-action", *TINY_DATA, *TINY_TRAINING, "--out", path)
    assert result.exit_code == 0, result.output
    assert f"STREAM_APP_CHECKPOINT={path} stream-app worker" in result.output
    return path


def test_train_next_action_on_generated_data_writes_a_loadable_checkpoint(checkpoint: Path) -> None:
    loaded = load_next_action(checkpoint)
    assert loaded.version.startswith("gru-") and loaded.model.config.hidden_dim == 8
    data = loaded.metadata["data"]
    assert data["source"] == "generated" and data["generator"]["n_users"] == 20 and data["generator"]["seed"] == 3
    assert loaded.metadata["data_fingerprint"] == data["fingerprint"]


def test_evaluate_files_hold_the_evaluation_numbers(checkpoint: Path, tmp_path: Path) -> None:
    json_out, markdown_out = tmp_path / "m.json", tmp_path / "m.md"
    result = invoke("evaluate", "next-action", *TINY_DATA, "--checkpoint", checkpoint, "--threads", "1",
                    "--device", "cpu", "--json-out", json_out, "--markdown-out", markdown_out)
    assert result.exit_code == 0, result.output
    data = load_action_data("generated", generated=BehaviorConfig(n_users=20, n_events=1500, seed=3))
    model, metadata = load_checkpoint_for(checkpoint, "cpu")
    expected = evaluate_actions(data, model, metadata).result.metrics
    written = json.loads(json_out.read_text())
    assert written["model"]["version"] == metadata["version"] and written["targets"] == expected[MODEL_NAME]["n"]
    assert list(written["metrics"]) == list(expected)
    markdown = markdown_out.read_text()
    for method, values in expected.items():
        for metric in ("acc@1", "acc@5", "acc@10", "acc@20", "mrr", "nll"):
            assert written["metrics"][method][metric] == pytest.approx(values[metric], abs=1e-12)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {method} |"))
        assert f"{values['acc@1']:.3f}" in row.split("|")[2] and f"{values['mrr']:.3f}" in row.split("|")[6]
    assert "true distribution (ceiling)" in written["metrics"] and "first-order Markov" in result.output


def test_missing_data_folder_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  no_local_data: Path) -> None:
    monkeypatch.setenv("STREAM_APP_DATA_DIR", str(tmp_path / "nowhere"))
    result = invoke("train", "next-action", "--data", "foursquare", "--out", tmp_path / "x.pt")
    assert result.exit_code == 1
    assert str(tmp_path / "nowhere" / "foursquare-nyc") in result.output
    assert "NYC.npy" in result.output and "STREAM_APP_DATA_DIR" in result.output
    result = invoke("train", "traffic", "--out", tmp_path / "t.pt")
    assert result.exit_code == 1 and "los_speed.csv" in result.output and "STREAM_APP_DATA_DIR" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_wrong_file_format_names_the_fields_needed(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user,time,what\nu1,1,a\nu1,2,b\nu1,3,c\n")
    result = invoke("evaluate", "next-action", "--data", events)
    assert result.exit_code == 1
    for field in ("user_id", "ts", "action", "--action-field"):
        assert field in result.output
    events.write_text("ts,action\n1,a\n2,b\n")
    result = invoke("train", "next-action", "--data", events, "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and "'user_id'" in result.output and "ISO-8601" in result.output
    result = invoke("train", "next-action", "--data", tmp_path / "absent.jsonl", "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and "foursquare, diginetica, generated" in result.output


def test_event_file_trains(tmp_path: Path) -> None:
    rows = [{"user_id": f"u{u}", "ts": 1_700_000_000_000 + 60_000 * i, "action": "ab"[(i + u) % 2]}
            for u in range(4) for i in range(12)]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("train", "next-action", "--data", events, *TINY_TRAINING, "--out", tmp_path / "f.pt")
    assert result.exit_code == 0, result.output
    assert load_next_action(tmp_path / "f.pt").metadata["data"]["source"] == "file"


@pytest.mark.parametrize("args, message", [
    (["--data", "diginetica", "--users", "5"], "only apply to --data generated"),
    (["--data", "generated", "--action-field", "item_id"], "--action-field applies to event files"),
])
def test_option_misuse_is_explained(args: list[str], message: str, tmp_path: Path) -> None:
    result = invoke("train", "next-action", *args, "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and message in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_says_to_use_cpu(tmp_path: Path) -> None:
    result = invoke("train", "next-action", *TINY_DATA, "--device", "cuda", "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and "--device cpu" in result.output


def test_unreadable_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = invoke("evaluate", "next-action", *TINY_DATA, "--checkpoint", bad)
    assert result.exit_code == 1 and "corrupt or not a stream-app checkpoint" in result.output


@pytest.mark.data
def test_traffic_train_then_evaluate(tmp_path: Path, shared_data: Path) -> None:
    path = tmp_path / "traffic.pt"
    result = invoke("train", "traffic", "--epochs", "1", "--hidden-dim", "4", "--embedding-dim", "0",
                    "--threads", "1", "--no-progress", "--out", path)
    assert result.exit_code == 0, result.output
    assert f"STREAM_APP_TRAFFIC_CHECKPOINT={path}" in result.output
    json_out = tmp_path / "traffic.json"
    result = invoke("evaluate", "traffic", "--checkpoint", path, "--threads", "1", "--json-out", json_out)
    assert result.exit_code == 0, result.output
    scores = json.loads(json_out.read_text())["scores"]
    assert scores["persistence"]["15 min"]["rmse"] == pytest.approx(5.5428, abs=1e-4)  # the published figure
    assert set(scores["graph-GRU strict, window"]) == {"15 min", "30 min", "45 min", "60 min"}


# -- time split, options and messages ----------------------------------------------------------------

def _write_events(path: Path, events: list[dict]) -> Path:
    path.write_text("user_id,ts,action\n" + "".join(f"{e['user_id']},{e['ts']},{e['action']}\n" for e in events))
    return path


@pytest.fixture(scope="module")
def habit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulation.users import HabitConfig, habit_events

    events = habit_events(HabitConfig(n_users=40, events_per_user=60, seed=4))
    return _write_events(tmp_path_factory.mktemp("logs") / "habits.csv", events)


def test_time_split_scores_every_event_after_the_cut_from_its_whole_prefix(habit_file: Path, tmp_path: Path) -> None:
    """The test targets are exactly the events at or after the second cut (each user's first event
    aside), each predicted from the user's whole earlier stream; every baseline has the same targets."""
    import numpy as np

    from models.next_action.evaluation import target_ranks, training_counts
    from models.next_action.features import encode_events, encode_profiles
    from models.next_action.model import EventTensors, ProfileTensors

    checkpoint, json_out = tmp_path / "m.pt", tmp_path / "m.json"
    result = invoke("train", "next-action", "--data", habit_file, *TINY_TRAINING, "--out", checkpoint)
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", "next-action", "--data", habit_file, "--checkpoint", checkpoint, "--threads", "1",
                    "--device", "cpu", "--json-out", json_out)
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    rows = [line.split(",") for line in habit_file.read_text().splitlines()[1:]]
    times = sorted(int(ts) for _, ts, _ in rows)
    cut = times[int(len(times) * 0.8)]
    by_user: dict[str, list[tuple[int, str]]] = {}
    for user, ts, action in rows:
        by_user.setdefault(user, []).append((int(ts), action))
    expected = sum(1 for seq in by_user.values() for i, (ts, _) in enumerate(sorted(seq)) if i > 0 and ts >= cut)
    assert report["split"] == "time" and report["targets"] == expected
    assert {m["n"] for m in report["metrics"].values()} == {float(expected)}
    loaded = load_next_action(checkpoint)
    data = load_action_data(str(habit_file))
    popularity = training_counts(data.dataset.sequences, loaded.vocab).popularity
    ranks, frequency_hits = [], []
    for seq in data.dataset.sequences:
        events = list(seq.events)
        with torch.no_grad():
            log_probs = loaded.model(EventTensors.collate([encode_events(events, loaded.vocab, loaded.spec)]),
                                     profile=ProfileTensors.collate([encode_profiles(events, loaded.vocab,
                                                                                     loaded.spec)]))[0].numpy()
        for i in seq.target_positions(Split.TEST):
            target = loaded.vocab.encode(events[i].token)
            ranks.append(target_ranks(log_probs[i - 1:i], np.array([target]), popularity)[0])
            counts = np.bincount(loaded.vocab.encode_many(e.token for e in events[:i]), minlength=len(loaded.vocab))
            counts[:2] = -1
            frequency_hits.append(target_ranks(counts[None].astype(float), np.array([target]), popularity)[0] == 1)
    model = report["metrics"][MODEL_NAME]
    assert model["acc@1"] == pytest.approx(float(np.mean(np.array(ranks) <= 1)), abs=1e-9)
    assert model["mrr"] == pytest.approx(float(np.mean(1.0 / np.array(ranks))), abs=1e-6)
    assert report["metrics"]["user's own frequency"]["acc@1"] == pytest.approx(float(np.mean(frequency_hits)), abs=1e-9)


def test_k_window_and_split_options_reach_the_report_and_the_checkpoint(habit_file: Path, tmp_path: Path) -> None:
    json_out, markdown_out = tmp_path / "k.json", tmp_path / "k.md"
    result = invoke("evaluate", "next-action", "--data", habit_file, *TINY_TRAINING, "--k", "3,1",
                    "--window-events", "7", "--window-span", "2h", "--split", "last", "--json-out", json_out,
                    "--markdown-out", markdown_out)
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    assert report["ks"] == [1, 3] and report["split"] == "last" and report["targets"] == 40
    assert "acc@3" in report["metrics"][MODEL_NAME] and "acc@5" not in report["metrics"][MODEL_NAME]
    assert set(report["model_minus"]["first-order Markov"]) == {"acc@1", "acc@3", "mrr"}
    assert report["model"]["config"]["window_size"] == 7 and report["model"]["config"]["window_span_s"] == 7200.0
    for words in (report["model"]["version"], "best epoch", "training", "40 test targets"):
        assert words in result.output and words in markdown_out.read_text()
    assert "not yet consumed" in result.output
    result = invoke("evaluate", "next-action", "--data", habit_file, "--k", "0,x")
    assert result.exit_code == 1 and "--k" in result.output


def test_too_few_events_say_what_is_needed(tmp_path: Path) -> None:
    events = tmp_path / "short.csv"
    events.write_text("user_id,ts,action\n" + "".join(f"u{u},{u * 10 + i},a{i}\n" for u in range(5) for i in range(3)))
    result = invoke("train", "next-action", "--data", events, "--split", "last", "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and "no train targets" in result.output and "needs 4 events" in result.output
    events.write_text("user_id,ts,action\nu1,1,a\nu2,2,b\nu3,3,c\n")
    result = invoke("train", "next-action", "--data", events, "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and "--split time" in result.output and "2 events of one user" in result.output
