"""The registry decides what is promoted, for every process: retrains in fresh containers (each
with its own BENTOML_HOME, HOME, TMPDIR and workspace) that share only the S3 endpoint and the
Prefect API gate against the registry's promoted revision, two retrains started together
give exactly one promotion, and two API replicas in fresh homes follow that promotion live,
then a rollback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from model import registry_state
from tests.conftest import REGISTRY_BUCKET
from tests.servicekit import Load, encoded, picture, replica_env, replicas, wait_for
from tests.test_promotion_loop import result_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "truth/classifier"
REGISTRY = f"s3://{REGISTRY_BUCKET}"


def container(root: Path, s3_url: str, prefect_api: str, **settings: str) -> dict[str, str]:
    """The environment of a fresh container: its own homes, temp folder and stores; only the
    S3 endpoint and the Prefect API are shared."""
    for folder in ("home", "tmp"):
        (root / folder).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENIMAGER_", "PREFECT_", "AWS_ENDPOINT_URL", "BENTOML_",
                                "XDG_"))}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"),
               BENTOML_HOME=str(root / "home" / "bentoml"),
               XDG_DATA_HOME=str(root / "home" / "data"),
               PREFECT_HOME=str(root / "home" / "prefect"), PREFECT_API_URL=prefect_api,
               AWS_ENDPOINT_URL=s3_url, OPENIMAGER_IMAGE_SIZE="48",
               OPENIMAGER_BATCH_SIZE="32", OPENIMAGER_CROP_WORKERS="1", **settings)
    return env


def retrain(root: Path, env: dict[str, str], mirror_url: str, s3_url: str, epochs: int,
            *extra: str) -> subprocess.Popen:
    """`python -m flows retrain` in its own process group, its output in root."""
    args = ["--workspace", str(root / "workspace"), "--metadata-url", mirror_url,
            "--image-endpoint-url", s3_url, "--classes", "Hamburger", "Car",
            "--max-images-per-class", "60", "--epochs", str(epochs), "--architecture",
            "seed-cnn", "--registry", REGISTRY, "--package-name", PACKAGE, *extra]
    return subprocess.Popen([sys.executable, "-m", "flows", "retrain", *args], cwd=ROOT,
                            env=env, stdout=(root / "out").open("w"),
                            stderr=(root / "err").open("w"), start_new_session=True)


def finished(root: Path, process: subprocess.Popen) -> dict:
    """The run's result once it exited 0."""
    try:
        code = process.wait(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert code == 0, (root / "err").read_text()[-4000:]
    return result_of((root / "out").read_text())


def state(local_s3) -> dict:
    return registry_state.read(local_s3.client(), REGISTRY, PACKAGE)[0]


def test_the_registry_decides_for_every_container(tmp_path, local_s3, mirror, prefect_api):
    s3 = local_s3.endpoint_url

    def run(name: str, epochs: int, *extra: str, **settings: str) -> subprocess.Popen:
        env = container(tmp_path / name, s3, prefect_api, **settings)
        return retrain(tmp_path / name, env, mirror.url, s3, epochs, *extra)

    # A promotes and publishes its model (enough epochs to beat an untrained one clearly).
    a = finished(tmp_path / "a", run("a", 10))
    assert a["train"]["metrics"]["macro_f1"] > 0.5, a["train"]["metrics"]  # a constant: 0.35
    assert a["train"]["promoted"] and a["publish"]["pushed"]
    promoted = state(local_s3)["promoted"]
    assert promoted["tag"] == a["train"]["model_tag"]
    assert promoted["top_hash"] == a["publish"]["top_hash"] and "flow run" in promoted["by"]

    # B, in a container that has never seen the package, trains a worse model: it is scored
    # against A's model fetched from the registry and not promoted.
    b = finished(tmp_path / "b", run("b", 1, OPENIMAGER_LEARNING_RATE="1e-7"))
    assert not b["train"]["promoted"], b["train"]["promotion_reason"]
    assert a["train"]["model_tag"] in b["train"]["promotion_reason"]
    assert a["publish"]["top_hash"][:12] in b["train"]["promotion_reason"]
    assert b["train"]["promotion"]["incumbent_score"] is not None  # A was scored here
    assert b["publish"] is None
    after_b = state(local_s3)
    assert after_b["promoted"] == promoted
    assert after_b["history"][-1]["action"] == "rejected"
    assert after_b["history"][-1]["tag"] == b["train"]["model_tag"]

    # Two API replicas in fresh homes serve A's revision, then follow the race's promotion
    # live, then a rollback from yet another container, with no failed request on the way.
    envs = [replica_env(tmp_path / f"replica{i}", REGISTRY, PACKAGE, s3) for i in range(2)]
    with replicas(envs, tmp_path) as servers:
        loads = [Load(server.url, 1, encoded(picture(5))) for server in servers]
        for load in loads:
            load.__enter__()
        try:
            for load in loads:
                wait_for(lambda load=load: any(a.top_hash == promoted["top_hash"]
                                               for a in load.answers), "answers from A")
            final = race(tmp_path, run, local_s3, a)
            for load in loads:
                wait_for(lambda load=load: any(a.top_hash == final["top_hash"]
                                               for a in load.answers), "the winner's answers")
            env = container(tmp_path / "operator", s3, prefect_api)
            rolled = subprocess.run(
                [sys.executable, "-m", "flows", "rollback", "--workspace",
                 str(tmp_path / "operator" / "workspace"), "--registry", REGISTRY,
                 "--package", PACKAGE], cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=300, check=False)
            assert rolled.returncode == 0, rolled.stdout + rolled.stderr
            marks = [len(load.answers) for load in loads]
            for load, mark in zip(loads, marks, strict=True):
                wait_for(lambda load=load, mark=mark: any(
                    a.top_hash == promoted["top_hash"] for a in load.answers[mark:]),
                    "answers from A's revision after the rollback", 240)
        finally:
            for load in loads:
                load.__exit__()
    for load in loads:
        assert [a for a in load.answers if a.status != 200] == []
        assert {a.model for a in load.answers} == {final["tag"], promoted["tag"]}
        hashes = [a.top_hash for a in load.answers]  # A, then the winner, then A again
        assert hashes[0] == promoted["top_hash"] and hashes[-1] == promoted["top_hash"]
        assert final["top_hash"] in hashes
    back = state(local_s3)
    assert back["promoted"]["tag"] == promoted["tag"]
    assert back["rolled_back"][-1]["tag"] == final["tag"]


def race(tmp_path: Path, run, local_s3, a: dict) -> dict:
    """C and D start together (forced, so each would replace A): both pass the gate before
    either publishes, and exactly one promotion is written; the other names the winner.
    Return the promoted entry of the state."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    hold = {"OPENIMAGER_TEST_BARRIER": f"train:{barrier}:2"}
    runs = {name: run(name, 1, "--force-promote", **hold) for name in ("c", "d")}
    results = {name: finished(tmp_path / name, process) for name, process in runs.items()}
    winners = [n for n, r in results.items() if r["promotion"]]
    assert len(winners) == 1, {n: (r["promotion"], r["lost_to"]) for n, r in results.items()}
    (loser,) = set(results) - set(winners)
    won = results[winners[0]]
    final = state(local_s3)["promoted"]
    assert final["tag"] == won["train"]["model_tag"]
    assert final["top_hash"] == won["publish"]["top_hash"]
    assert final["replaced"]["tag"] == a["train"]["model_tag"]
    assert results[loser]["lost_to"]["tag"] == final["tag"]
    said = (tmp_path / loser / "out").read_text() + (tmp_path / loser / "err").read_text()
    assert "NOT promoted: lost to " + final["tag"] in said
    actions = [h["action"] for h in state(local_s3)["history"]]
    assert actions.count("promoted") == 2 and actions[-1] == "lost"
    return final


def test_a_promotion_a_killed_container_published_is_finished_by_a_fresh_one(
        tmp_path, local_s3, mirror, prefect_api, registry_env):
    import quilt3

    s3, package = local_s3.endpoint_url, "pending/classifier"

    def run(name: str, kill_at: str) -> str:
        """A retrain in a fresh container, killed at kill_at; its stdout and stderr."""
        env = container(tmp_path / name, s3, prefect_api, OPENIMAGER_TEST_KILL_AT=kill_at)
        process = retrain(tmp_path / name, env, mirror.url, s3, 1, "--package-name", package,
                          "--classes", "Hamburger", "Sandwich", "--max-images-per-class", "15")
        try:
            code = process.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):  # what the killed run left
                os.killpg(process.pid, signal.SIGKILL)
        said = (tmp_path / name / "out").read_text() + (tmp_path / name / "err").read_text()
        assert code == -signal.SIGKILL, f"{name} was not killed at {kill_at}:\n{said[-4000:]}"
        return said

    # The first decides, publishes, and dies before the promotion is written.
    run("first", "publish")
    decided = registry_state.read(local_s3.client(), REGISTRY, package)[0]
    assert decided["promoted"] is None
    (tag,) = decided["pending"]
    pending = decided["pending"][tag]
    assert pending["against"] is None and "first model" in pending["details"]["reason"]
    assert "flow run" in pending["by"]
    (_, top_hash), = [v for v in quilt3.list_package_versions(package, registry=REGISTRY)
                      if v[0] != "latest"]
    assert quilt3.Package.browse(package, registry=REGISTRY,
                                 top_hash=top_hash).meta["model_tag"] == tag

    # The second, in homes that never saw the model, finishes it from the registry first
    # thing (and is stopped right after).
    said = run("second", "refresh")
    assert f"finished the promotion of {tag}" in said
    state = registry_state.read(local_s3.client(), REGISTRY, package)[0]
    promoted = state["promoted"]
    assert (promoted["tag"], promoted["top_hash"]) == (tag, top_hash)
    assert promoted["decided_by"] == pending["by"] != promoted["by"]
    assert promoted["reason"] == pending["details"]["reason"] and state["pending"] == {}
    assert [h["action"] for h in state["history"]] == ["promoted"]
    second_home = tmp_path / "second" / "home" / "bentoml"
    assert not (second_home / "models" / tag.split(":")[0]).exists()  # never fetched
