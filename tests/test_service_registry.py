"""API replicas follow the registry's promotion state: two `bentoml serve` processes, each with
its own home and empty BentoML store, sharing only the S3 endpoint (moto), serve the promoted
revision, swap to a promotion and back on a rollback with no failed request, and keep serving
when the state cannot be read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from flows.servers import lifeline
from flows.servers.local import TELEMETRY_OFF, free_port, stop_group
from model import registry_state
from model.predictions import read_log
from tests.servicekit import (
    Load,
    encoded,
    picture,
    publish_tiny_model,
    replica_env,
    replicas,
    wait_for,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
IMAGE = encoded(picture(5))
SWAP_TIMEOUT = 240  # generous: two replicas load TensorFlow models on two shared cores


def model_of(url: str) -> dict:
    return requests.get(f"{url}/model", timeout=30).json()


def answers_with(load: Load, tag: str, since: int = 0) -> bool:
    return any(a.model == tag for a in load.answers[since:])


def test_two_replicas_follow_promotions_and_rollbacks(local_s3, registry_env, tmp_path):
    from flows.publishing.s3clients import boto3_session

    package = "follow/two-replicas"
    client = boto3_session().client("s3", endpoint_url=local_s3.endpoint_url)
    client.delete_object(Bucket=registry_env[5:], Key=registry_state.state_key(package))
    tags = ["registry-follow:one", "registry-follow:two"]
    hashes = [publish_tiny_model(tmp_path / "one", package, registry_env, tags[0]),
              publish_tiny_model(tmp_path / "two", package, registry_env, tags[1],
                                 ["Ant", "Bee", "Cat", "Dog"])]
    registry_state.update(client, registry_env, package, registry_state.promote(
        {"tag": tags[0], "top_hash": hashes[0], "by": "the test"}))
    envs = [replica_env(tmp_path / f"replica{i}", registry_env, package,
                        local_s3.endpoint_url) for i in range(2)]
    with replicas(envs, tmp_path) as servers:
        for server in servers:
            info = model_of(server.url)
            assert (info["tag"], info["top_hash"], info["source"]) == (tags[0], hashes[0],
                                                                       "registry")
            assert info["registry"] == registry_env and info["package"] == package
            assert info["follows_promotions"] and info["promoted_at"]
        loads = [Load(server.url, 2, IMAGE) for server in servers]
        for load in loads:
            load.__enter__()
        try:
            for load in loads:
                wait_for(lambda load=load: len(load.answers) > 5, "answers from revision one")
            registry_state.update(client, registry_env, package, registry_state.promote(
                {"tag": tags[1], "top_hash": hashes[1], "by": "the test"}))
            for load in loads:
                wait_for(lambda load=load: answers_with(load, tags[1]),
                         "answers from the promoted revision", SWAP_TIMEOUT)
            marks = [len(load.answers) for load in loads]
            rolled = subprocess.run(
                [sys.executable, "-m", "flows", "rollback", "--workspace",
                 str(tmp_path / "ws"), "--registry", registry_env, "--package", package],
                cwd=ROOT, env={**os.environ, **TELEMETRY_OFF}, capture_output=True,
                text=True, timeout=300, check=False)
            assert rolled.returncode == 0, rolled.stdout + rolled.stderr
            assert f"promoted {tags[0]}" in rolled.stdout
            for load, mark in zip(loads, marks, strict=True):
                wait_for(lambda load=load, mark=mark: answers_with(load, tags[0], mark),
                         "answers from the revision rolled back to", SWAP_TIMEOUT)
            back = registry_state.read(client, registry_env, package)[0]["promoted"]
            for server in servers:  # the kept model, swapped back, with its new promotion
                info = model_of(server.url)
                assert (info["tag"], info["promoted_at"]) == (tags[0], back["promoted_at"])
            # A state that cannot be read keeps the served model, and says why.
            client.put_object(Bucket=registry_env[5:], Key=registry_state.state_key(package),
                              Body=b"not json")
            for server in servers:
                broken = wait_for(lambda url=server.url: (i := model_of(url))
                                  ["last_reload_error"] and i, "a failed reload", 60)
                assert "not JSON" in broken["last_reload_error"]["error"]
                assert broken["tag"] == tags[0]
            settled = [len(load.answers) for load in loads]
            for load, mark in zip(loads, settled, strict=True):
                wait_for(lambda load=load, mark=mark: len(load.answers) > mark + 5,
                         "answers after the failed reload")
        finally:
            for load in loads:
                load.__exit__()
    for load in loads:
        assert [a for a in load.answers if a.status != 200] == []
        assert {(a.model, a.top_hash) for a in load.answers} == set(zip(tags, hashes,
                                                                         strict=True))
        assert all(a.model == tags[0] for a in load.answers[settled[loads.index(load)]:])
    for n in range(2):  # every row of each replica's prediction log names the revision too
        rows = read_log(tmp_path / f"replica{n}" / "workspace" / "predictions")
        assert len(rows) and set(zip(rows["model"], rows["top_hash"], strict=True)) == \
            set(zip(tags, hashes, strict=True))


def test_a_replica_without_its_registry_is_not_ready_and_says_why(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGER_")},
           **replica_env(tmp_path, "s3://nowhere", "follow/absent", dead)}
    port = free_port()
    with (tmp_path / "serve.log").open("ab") as log:
        process = lifeline.popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Classifier", "--host",
             "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def failed() -> dict | None:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                reply = requests.get(f"{url}/readyz", timeout=10)
            except requests.RequestException:  # not listening yet
                return None
            assert reply.status_code == 503
            return reply.json() if reply.json().get("error") else None

        body = wait_for(failed, "a load error in /readyz", 180)
        assert "cannot read the promotion state of follow/absent in s3://nowhere" in \
            body["error"]
        assert requests.get(f"{url}/model", timeout=10).status_code == 503
    finally:
        stop_group(process)


def test_a_pinned_revision_is_served_and_not_followed(local_s3, registry_env, tmp_path):
    from flows.publishing.s3clients import boto3_session

    package = "follow/pinned"
    client = boto3_session().client("s3", endpoint_url=local_s3.endpoint_url)
    pinned = publish_tiny_model(tmp_path / "one", package, registry_env, "registry-pin:one")
    newer = publish_tiny_model(tmp_path / "two", package, registry_env, "registry-pin:two")
    registry_state.update(client, registry_env, package, registry_state.promote(
        {"tag": "registry-pin:two", "top_hash": newer, "by": "the test"}))
    env = {**replica_env(tmp_path / "replica", registry_env, package, local_s3.endpoint_url),
           "OPENIMAGER_TOP_HASH": pinned}
    with replicas([env], tmp_path) as (server,):
        info = model_of(server.url)
    assert (info["tag"], info["top_hash"], info["source"]) == ("registry-pin:one", pinned,
                                                               "revision")
    assert not info["follows_promotions"] and info["promoted_at"] is None
    # imported into the replica's own store before it started, as `bentoml build` packs it
    assert list((tmp_path / "replica" / "bentoml" / "models" / "registry-pin").iterdir())


def test_a_registry_gone_while_serving_keeps_the_model_and_says_why(tmp_path, monkeypatch):
    from flows.publishing.s3clients import boto3_session
    from flows.servers.local import LocalS3

    package, tag = "follow/gone", "registry-gone:one"
    with LocalS3(log_path=tmp_path / "s3.log") as own:  # this test's own, stopped below
        own.create_bucket("gone-registry")
        registry = "s3://gone-registry"
        monkeypatch.setenv("AWS_ENDPOINT_URL", own.endpoint_url)  # for quilt3's push
        top = publish_tiny_model(tmp_path / "one", package, registry, tag)
        client = boto3_session().client("s3", endpoint_url=own.endpoint_url)
        registry_state.update(client, registry, package, registry_state.promote(
            {"tag": tag, "top_hash": top, "by": "the test"}))
        env = replica_env(tmp_path / "replica", registry, package, own.endpoint_url)
        with replicas([env], tmp_path) as (server,), Load(server.url, 2, IMAGE) as load:
            wait_for(lambda: len(load.answers) > 5, "answers")
            own.stop()
            info = wait_for(lambda: (i := model_of(server.url))["last_reload_error"] and i,
                            "a failed reload", 120)
            mark = len(load.answers)
            wait_for(lambda: len(load.answers) > mark + 5, "answers with the registry gone")
            ready = requests.get(f"{server.url}/readyz", timeout=10)
    assert "cannot read the promotion state of follow/gone" in \
        info["last_reload_error"]["error"]
    assert (info["tag"], info["top_hash"]) == (tag, top) and ready.status_code == 200
    assert [a for a in load.answers if a.status != 200] == []
    assert {a.model for a in load.answers} == {tag}
