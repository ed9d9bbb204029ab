"""Which model the service picks, its lineage, and serving a published package version."""

from __future__ import annotations

import json

import pytest

from flows.publishing.servable import METADATA_FILE, fetch_model
from service import source
from service.source import Choice, NoModel, choose, lineage, locate
from tests.servicekit import CLASSES, MIDS, register_tiny_model


@pytest.fixture
def isolated(monkeypatch, request) -> str:
    """A model name of this test's own: its models and promotions touch no other test."""
    name = f"sourcetest-{request.node.name.replace('_', '-')[:40]}"
    for var in ("OPENIMAGER_MODEL_PATH", "OPENIMAGER_MODEL_TAG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", name)
    return name


def test_the_choice_order_is_path_env_promoted_latest(isolated, monkeypatch, tmp_path):
    from flows.promotion.bentoml_store import promote

    name = isolated
    assert choose() == Choice("latest", tag=f"{name}:latest")
    with pytest.raises(NoModel, match=f"no model {name}:latest"):
        locate(choose())
    first = register_tiny_model(tmp_path / "a", name=name)
    register_tiny_model(tmp_path / "b", name=name)
    record = promote(first, package="me/pkg", top_hash="abc123")
    assert choose() == Choice("promoted", tag=first, promotion=record)
    monkeypatch.setenv("OPENIMAGER_MODEL_TAG", f"{name}:latest")
    assert choose().source == "env" and choose().promotion == record
    monkeypatch.setenv("OPENIMAGER_MODEL_PATH", str(tmp_path))
    assert choose() == Choice("path", path=tmp_path)


def test_lineage_takes_the_promotion_only_for_the_promoted_tag(isolated, tmp_path):
    from flows.promotion.bentoml_store import promote

    name = isolated
    first = register_tiny_model(tmp_path / "a", name=name)
    second = register_tiny_model(tmp_path / "b", name=name)
    record = promote(first, package="me/pkg", top_hash="abc123")
    served = lineage(choose(), locate(choose()), 32)
    assert served["tag"] == first and served["source"] == "promoted"
    assert served["package"] == "me/pkg" and served["top_hash"] == "abc123"
    assert served["promoted_at"] == record["promoted_at"]
    other = Choice("env", tag=second, promotion=record)
    unpromoted = lineage(other, locate(other), 32)
    assert unpromoted["tag"] == second
    assert unpromoted["promoted_at"] is None and unpromoted["package"] is None


def test_a_published_package_version_is_served_from_a_folder(registry_env, tmp_path):
    import keras
    import quilt3

    from service.swap import input_size

    model_dir = tmp_path / "trained"
    tag = register_tiny_model(model_dir)
    meta = {"classes": CLASSES, "class_mids": dict(zip(CLASSES, MIDS, strict=True)),
            "dataset_id": "tiny-dataset", "git_commit": "f" * 40, "model_tag": tag,
            "metrics": {"accuracy": 0.5, "macro_f1": 0.4, "test_examples": 6}}
    package = quilt3.Package().set_dir("model", str(model_dir)).set_meta(meta)
    pushed = package.push("test/served", registry=registry_env, force=True)
    dest = tmp_path / "served"
    fetch_model("test/served", registry_env, pushed.top_hash, dest)

    assert METADATA_FILE == source.METADATA_FILE
    choice = Choice("path", path=dest)
    located = locate(choice)
    model = keras.saving.load_model(located.file, compile=False)
    info = lineage(choice, located, input_size(model))
    assert info["tag"] == tag and info["source"] == "path" and info["image_size"] == 32
    assert info["package"] == "test/served" and info["top_hash"] == pushed.top_hash
    assert info["classes"][0] == {"name": CLASSES[0], "mid": MIDS[0]}
    assert json.loads((dest / METADATA_FILE).read_text())["registry"] == registry_env


def test_a_followed_folder_moves_to_each_new_revision(registry_env, tmp_path):
    import quilt3

    from flows.publishing.servable import follow
    from service.swap import identity_of

    dest = tmp_path / "served"
    tags, hashes = [], []
    for i in range(2):
        model_dir = tmp_path / f"trained{i}"
        tags.append(register_tiny_model(model_dir))
        meta = {"classes": CLASSES, "model_tag": tags[-1]}
        hashes.append(quilt3.Package().set_dir("model", str(model_dir)).set_meta(meta)
                      .push("test/followed", registry=registry_env, force=True).top_hash)
        follow("test/followed", registry_env, dest, 0, rounds=1)
        # what the service compares each reload interval: it changes with every revision
        assert identity_of(Choice("path", path=dest)) == f"{tags[-1]}@{hashes[-1]}"
    assert sorted(p.name for p in tmp_path.iterdir() if "incoming" in p.name) == []
    follow("test/followed", registry_env, dest, 0, rounds=1)  # nothing new: left as is
    assert json.loads((dest / METADATA_FILE).read_text())["top_hash"] == hashes[-1]


def test_a_followed_folder_follows_the_promotion_and_its_rollback(registry_env, local_s3,
                                                                  tmp_path):
    import quilt3

    from flows.publishing.s3clients import boto3_session
    from flows.publishing.servable import follow
    from model import registry_state

    package = "test/promoted-follow"
    client = boto3_session().client("s3", endpoint_url=local_s3.endpoint_url)
    client.delete_object(Bucket=registry_env[5:], Key=registry_state.state_key(package))
    dest = tmp_path / "served"
    hashes = []
    for i in range(3):
        files = tmp_path / f"files{i}"
        files.mkdir()
        (files / "model.keras").write_bytes(f"weights {i}".encode())
        hashes.append(quilt3.Package().set_dir("model", str(files))
                      .set_meta({"classes": CLASSES, "model_tag": f"m:{i}"})
                      .push(package, registry=registry_env, force=True).top_hash)

    def served() -> str:
        follow(package, registry_env, dest, 0, rounds=1)
        return json.loads((dest / METADATA_FILE).read_text())["top_hash"]

    assert served() == hashes[2]  # no promotion state: the newest revision, as before
    for i in (0, 1):
        registry_state.update(client, registry_env, package, registry_state.promote(
            {"tag": f"m:{i}", "top_hash": hashes[i], "by": "the test"}))
        assert served() == hashes[i]  # the promoted one, not the newest
    registry_state.update(client, registry_env, package, registry_state.promote(
        {"tag": "m:0", "top_hash": hashes[0], "by": "the test"}, action="rolled back to"))
    assert served() == hashes[0]
    assert (dest / "model.keras").read_bytes() == b"weights 0"
