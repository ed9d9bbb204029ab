"""The promotion state in the registry: conditional writes against a real S3 endpoint (moto),
one winner among concurrent promotions, rollback, and the commands that write it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from flows.commands.main import main
from model import registry_state
from model.registry_state import Conflict, Lost

PACKAGE = "state/classifier"


@pytest.fixture
def client(local_s3, registry_env):
    from flows.publishing.s3clients import boto3_session

    s3 = boto3_session().client("s3", endpoint_url=local_s3.endpoint_url)
    s3.delete_object(Bucket=registry_env[5:], Key=registry_state.state_key(PACKAGE))
    return s3


def entry(n: int, **details) -> dict:
    return {"tag": f"m:{n}", "top_hash": f"{n}" * 64, "by": f"run {n}", **details}


def test_the_second_writer_of_one_read_gets_a_conflict(client, registry_env):
    state, etag = registry_state.read(client, registry_env, PACKAGE)
    assert etag is None and state["promoted"] is None
    first = registry_state.write(client, registry_env, PACKAGE, {**state, "generation": 1}, etag)
    with pytest.raises(Conflict):  # If-None-Match: * on an object that exists now
        registry_state.write(client, registry_env, PACKAGE, {**state, "generation": 1}, etag)
    registry_state.write(client, registry_env, PACKAGE, {**state, "generation": 2}, first)
    with pytest.raises(Conflict):  # If-Match on the ETag that was replaced
        registry_state.write(client, registry_env, PACKAGE, {**state, "generation": 3}, first)
    assert registry_state.read(client, registry_env, PACKAGE)[0]["generation"] == 2


def test_concurrent_promotions_against_one_incumbent_give_exactly_one(client, registry_env):
    results: dict[int, object] = {}
    start = threading.Barrier(6)

    def contend(n: int) -> None:
        start.wait()
        try:
            results[n] = registry_state.update(client, registry_env, PACKAGE,
                                               registry_state.promote(entry(n), expected=None))
        except Lost as lost:
            results[n] = lost

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [n for n, r in results.items() if isinstance(r, dict)]
    lost = [r for r in results.values() if isinstance(r, Lost)]
    assert len(won) == 1 and len(lost) == 5
    state = registry_state.read(client, registry_env, PACKAGE)[0]
    assert state["promoted"]["tag"] == f"m:{won[0]}" and state["generation"] == 1
    for loser in lost:  # each names the winner
        assert loser.winner["tag"] == f"m:{won[0]}" and f"m:{won[0]}" in str(loser)


def test_rollback_marks_the_model_and_the_gate_refuses_its_data_unless_forced(
        client, registry_env, tmp_path):
    from flows.promotion.bentoml_store import registry_decision
    from flows.promotion.registry import Registry, rollback

    registry = Registry(registry_env, PACKAGE, client)
    registry.update(registry_state.promote(entry(1, dataset_id="d0"), expected=None))
    registry.update(registry_state.promote(entry(2, dataset_id="d1"), expected="1" * 64))
    new, old = rollback(registry)
    assert (new["tag"], old["tag"]) == ("m:1", "m:2")
    state = registry.state()[0]
    assert state["promoted"]["replaced"] == {"tag": "m:2", "top_hash": "2" * 64}
    assert [h["action"] for h in state["history"]] == ["promoted", "promoted", "rolled back to"]
    assert state["rolled_back"][0]["tag"] == "m:2"

    def never(*_):
        raise AssertionError("a refused model is not scored")

    refused = registry_decision("m:3", ["A", "B"], "macro_f1", 0.9, never, False, registry,
                                tmp_path, "d1")
    assert not refused.promote and "m:2" in refused.reason and "rolled back" in refused.reason
    assert refused.incumbent_top_hash == "1" * 64
    history = registry.state()[0]["history"]
    assert history[-1]["action"] == "rejected" and history[-1]["tag"] == "m:3"


def test_promoting_an_older_revision_by_hand_rolls_back_the_promoted_one(
        client, registry_env, tmp_path, capsys):
    from flows.promotion.bentoml_store import register_model, registry_decision
    from flows.promotion.registry import Registry

    (tmp_path / "model.keras").write_bytes(b"never opened: its classes differ")
    (tmp_path / "metrics.json").write_text("{}")
    old = register_model(tmp_path, "byhand", {"class_names": ["A", "B", "C"]}, {})
    registry = Registry(registry_env, PACKAGE, client)
    registry.update(registry_state.promote(entry(1, tag=old, dataset_id="d0"), expected=None))
    registry.update(registry_state.promote(entry(2, dataset_id="d1"), expected="1" * 64))
    flags = ["--workspace", str(tmp_path / "ws"), "--registry", registry_env,
             "--package", PACKAGE]
    assert main(["promote", old, *flags]) == 0
    assert f"promoted {old}" in capsys.readouterr().out
    state = registry.state()[0]
    assert state["promoted"]["tag"] == old and state["history"][-1]["action"] == "rolled back to"
    assert state["rolled_back"][-1] | {"at": 0, "by": 0} == {
        "tag": "m:2", "top_hash": "2" * 64, "dataset_id": "d1", "at": 0, "by": 0}

    def never(*_):
        raise AssertionError("a refused model is not scored")

    for tag in ("m:2", "m:3"):  # the replaced model itself, and a retrain on its data
        refused = registry_decision(tag, ["A", "B"], "macro_f1", 0.9, never, False, registry,
                                    tmp_path, "d1")
        assert not refused.promote and "m:2" in refused.reason and "rolled back" in refused.reason
    forced = registry_decision("m:2", ["A", "B"], "macro_f1", 0.9, never, True, registry,
                               tmp_path, "d1")
    assert forced.promote and forced.incumbent_tag == old

    # Promoting the newer one again by hand is no rollback, and lifts its mark.
    assert main(["promote", "m:2", *flags]) == 0
    state = registry.state()[0]
    assert state["history"][-1]["action"] == "promoted" and state["rolled_back"] == []
    assert registry_state.rolled_back(state, "m:4", "d1") is None


def test_a_pending_decision_waits_for_its_publish_and_yields_to_another_promotion(
        client, registry_env):
    from flows.promotion.registry import Registry, finish_decided, mark_pending

    registry = Registry(registry_env, PACKAGE, client)
    registry.update(registry_state.promote(entry(1), expected=None))
    mark_pending(registry, "m:2", registry_state.now(), "1" * 64,
                 {"reason": "forced promotion", "dataset_id": "d2"})
    decided = registry.state()[0]["pending"]["m:2"]
    assert decided["against"] == "1" * 64 and decided["generation"] == 1
    assert decided["package"] == PACKAGE and decided["details"]["dataset_id"] == "d2"
    assert finish_decided(registry) == []  # not published: its run may still be at it
    assert list(registry.state()[0]["pending"]) == ["m:2"]

    registry.update(registry_state.promote(entry(3)))  # an operator promotes another
    assert finish_decided(registry) == []
    state = registry.state()[0]
    assert state["pending"] == {} and state["promoted"]["tag"] == "m:3"
    last = state["history"][-1]
    assert (last["action"], last["tag"], last["against"]) == ("superseded", "m:2", "1" * 64)
    assert "m:3 is promoted now" in last["reason"]

    # A run that loses its race, or whose promotion is written, leaves nothing pending.
    for n, change in ((4, registry_state.note("lost", entry(4))),
                      (5, registry_state.promote(entry(5), expected="3" * 64))):
        mark_pending(registry, f"m:{n}", registry_state.now(), "3" * 64, {})
        registry.update(change)
        assert registry.state()[0]["pending"] == {}


def test_the_commands_promote_roll_back_and_list(client, registry_env, tmp_path, capsys):
    registry = ["--workspace", str(tmp_path), "--registry", registry_env, "--package", PACKAGE]
    assert main(["promotions", *registry]) == 0
    assert "nothing promoted" in capsys.readouterr().out
    assert main(["rollback", *registry]) == 2
    assert "nothing is promoted" in capsys.readouterr().err

    for n in (1, 2):
        registry_state.update(client, registry_env, PACKAGE, registry_state.promote(entry(n)))
    assert main(["rollback", *registry]) == 0
    out = capsys.readouterr().out
    assert "promoted m:1" in out and "replaced m:2" in out
    # an older revision by its short top hash, found in the history
    assert main(["promote", "2222222", *registry]) == 0
    assert "promoted m:2" in capsys.readouterr().out
    state = registry_state.read(client, registry_env, PACKAGE)[0]
    assert state["promoted"]["tag"] == "m:2" and "by hand" in state["promoted"]["reason"]
    assert main(["promotions", *registry]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].startswith(f"{PACKAGE} in {registry_env}: promoted m:2")
    assert "rolled back to m:1" in listing
    assert main(["promote", "m:99", *registry]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no ") and err.count("\n") <= 2


def test_the_state_is_plain_json_where_the_docs_say(client, registry_env):
    registry_state.update(client, registry_env, PACKAGE, registry_state.promote(entry(5)))
    raw = client.get_object(Bucket=registry_env[5:],
                            Key=f".openimager/promotion/{PACKAGE}.json")["Body"].read()
    assert json.loads(raw)["promoted"]["top_hash"] == "5" * 64


def test_a_workspace_without_a_registry_keeps_the_local_promotion(tmp_path):
    from flows.promotion.registry import has_registry
    from flows.settings import Settings

    settings = Settings(workspace=tmp_path)
    assert not has_registry(settings)
    (tmp_path / "registry").mkdir()
    assert not has_registry(settings)
    (tmp_path / "registry" / "lock").touch()
    assert has_registry(settings)
    assert has_registry(Settings(workspace=Path("/nonexistent"), registry="s3://bucket"))


def test_a_refusal_by_shadow_replay_is_written_to_the_history_with_its_figures(
        client, registry_env, tmp_path):
    from dataclasses import replace

    import numpy as np

    from flows.promotion.bentoml_store import registry_decision
    from flows.promotion.registry import Registry
    from model.intervals import Outcome
    from tests.servicekit import register_tiny_model

    tag = register_tiny_model(tmp_path / "old", ["A", "B"], 32)
    registry = Registry(registry_env, PACKAGE, client)
    registry.update(registry_state.promote(entry(1, tag=tag), expected=None))
    since = registry.state()[0]["promoted"]["promoted_at"]
    photos = tuple(f"p{i}" for i in range(40))
    truth = np.zeros(40, dtype=int)

    def answers(right: int) -> Outcome:
        probs = np.array([[0.9, 0.1]] * right + [[0.1, 0.9]] * (40 - right))
        return Outcome(photos, truth, probs, ("A", "B"))

    seen = []

    def shadow(decision, theirs):
        seen.append((theirs.tag, theirs.image_size, theirs.promoted_at, theirs.model is not None))
        return replace(decision, promote=False, reason="shadow replay on 50 kept uploads: ...",
                       shadow={"images": 50, "confident_agreement": 0.4, "passes": False,
                               "flips": {"A": {"B": 30}}})

    decision = registry_decision("m:2", ["A", "B"], "accuracy", 0.95,
                                 lambda model, meta: answers(10), False, registry, tmp_path,
                                 "d2", candidate=answers(38), shadow=shadow)
    assert seen == [(tag, 32, since, True)]  # replayed against the loaded incumbent
    assert not decision.promote and decision.shadow["confident_agreement"] == 0.4
    last = registry.state()[0]["history"][-1]
    assert last["action"] == "rejected" and last["tag"] == "m:2"
    assert last["shadow"] == {"images": 50, "confident_agreement": 0.4, "passes": False}
    assert registry.state()[0]["promoted"]["tag"] == tag

    passed = registry_decision("m:3", ["A", "B"], "accuracy", 0.95,
                               lambda model, meta: answers(10), False, registry, tmp_path,
                               "d3", candidate=answers(10), shadow=shadow)
    assert not passed.promote and len(seen) == 1  # the test split refused: no replay


def test_the_shadow_command_replays_against_the_registrys_promoted_model(
        client, registry_env, tmp_path, capsys):
    from tests.servicekit import register_tiny_model

    ours = register_tiny_model(tmp_path / "old", ["A", "B"], 32, name="shadowcmd")
    theirs = register_tiny_model(tmp_path / "new", ["B", "A"], 40, name="shadowcmd")
    from flows.promotion.registry import Registry

    Registry(registry_env, PACKAGE, client).update(
        registry_state.promote(entry(1, tag=ours), expected=None))
    log = tmp_path / "log"
    code = main(["shadow", "--candidate", theirs, "--workspace", str(tmp_path / "ws"),
                 "--registry", registry_env, "--package", PACKAGE, "--log-dir", str(log)])
    said = capsys.readouterr().out
    assert code == 0, said
    assert f"shadow replay of {theirs} against the promoted {ours} on 0 kept uploads" in said
    assert main(["shadow", "--candidate", "shadowcmd:nosuchtag", "--workspace",
                 str(tmp_path / "ws"), "--registry", registry_env, "--package", PACKAGE,
                 "--log-dir", str(log)]) == 2


@pytest.mark.integration
@pytest.mark.parametrize("kept", [False, True], ids=["stateless", "state-dir"])
def test_the_built_in_server_lets_one_writer_of_a_read_win(tmp_path, kept):
    """Threads read-modify-write one state object with compare-and-swap on the built-in
    server, as the embedded registry and the tests run it. Each object is spilled to a file
    (moto's buffer of 1 byte), so a write gives up the GIL between moto's check and its store,
    where another thread's check would see the old version."""
    from collections import Counter

    from flows.servers.local import LocalS3

    bucket, writers, writes = "cas-stress", 8, 5
    server = LocalS3(env={"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": "1"},
                     state_dir=tmp_path / "state" if kept else None)
    with server:
        server.create_bucket(bucket)
        s3 = server.client()
        registry = f"s3://{bucket}"
        registry_state.write(s3, registry, PACKAGE, {"count": 0}, None)
        won: Counter[str] = Counter()  # the ETag each successful write replaced
        start = threading.Barrier(writers)

        def contend(n: int) -> None:
            start.wait()
            done = 0
            while done < writes:
                state, etag = registry_state.read(s3, registry, PACKAGE)
                try:
                    registry_state.write(s3, registry, PACKAGE,
                                         {**state, "count": state["count"] + 1, "by": n}, etag)
                except Conflict:
                    continue
                won[etag] += 1
                done += 1

        threads = [threading.Thread(target=contend, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = registry_state.read(s3, registry, PACKAGE)[0]["count"]
    assert [etag for etag, n in won.items() if n > 1] == []  # two winners of one read
    assert final == writers * writes  # no update lost
