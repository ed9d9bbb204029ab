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


def test_the_registry_comes_after_path_and_tag_and_before_the_record(isolated, monkeypatch,
                                                                      tmp_path):
    from flows.promotion.bentoml_store import promote
    from service.registry import Followed

    name = isolated
    promote(register_tiny_model(tmp_path / "a", name=name))
    monkeypatch.setenv("OPENIMAGER_REGISTRY", "s3://bucket")
    assert choose().source == "promoted"  # the pipeline's registry alone: not followed
    monkeypatch.setenv("OPENIMAGER_PACKAGE", "user/name")
    assert choose() == Choice("registry", followed=Followed("s3://bucket", "user/name"))
    assert source.declared_model() is None  # nothing to pack: it changes while serving
    monkeypatch.setenv("OPENIMAGER_TOP_HASH", "AB" * 32)
    assert choose() == Choice("revision", followed=Followed("s3://bucket", "user/name",
                                                            "ab" * 32))
    assert isinstance(source.declared_model(), source.RegistryModel)  # resolved lazily
    monkeypatch.setenv("OPENIMAGER_MODEL_TAG", f"{name}:latest")
    assert choose().source == "env"
    monkeypatch.delenv("OPENIMAGER_MODEL_TAG")
    for variable, value, message in [
            ("OPENIMAGER_TOP_HASH", "abc", "not a top hash"),
            ("OPENIMAGER_REGISTRY", "embedded", "needs OPENIMAGER_REGISTRY=s3://BUCKET"),
            ("OPENIMAGER_PACKAGE", "nameonly", "not a package name")]:
        with monkeypatch.context() as patched:
            patched.setenv(variable, value)
            with pytest.raises(ValueError, match=message):
                choose()


def test_the_promoted_revision_is_fetched_once_into_a_folder_of_its_top_hash(
        isolated, registry_env, local_s3, monkeypatch, tmp_path):
    import quilt3

    from flows.publishing.s3clients import boto3_session
    from model import registry_state
    from service import registry
    from service.registry import RegistryError
    from service.swap import identity_of

    package = "test/fetched"
    client = boto3_session().client("s3", endpoint_url=local_s3.endpoint_url)
    client.delete_object(Bucket=registry_env[5:], Key=registry_state.state_key(package))
    files = tmp_path / "files"
    files.mkdir()
    (files / "model.keras").write_bytes(b"weights")
    meta = {"classes": CLASSES, "class_mids": dict(zip(CLASSES, MIDS, strict=True)),
            "model_tag": "m:1"}
    top = quilt3.Package().set_dir("model", str(files)).set_meta(meta).push(
        package, registry=registry_env, force=True).top_hash
    monkeypatch.setenv("OPENIMAGER_REGISTRY", registry_env)
    monkeypatch.setenv("OPENIMAGER_PACKAGE", package)
    with pytest.raises(RegistryError, match="nothing is promoted for test/fetched"):
        source.resolved(choose())
    registry_state.update(client, registry_env, package, registry_state.promote(
        {"tag": "m:1", "top_hash": top, "by": "the test", "reason": "a test"}))
    choice = source.resolved(choose())
    assert identity_of(choice) == f"m:1@{top}" and not choice.path.exists()
    located = locate(choice)
    assert located.file.read_bytes() == b"weights" and choice.path.name == top
    assert sorted(p.name for p in choice.path.parent.iterdir()) == [top]  # no temporary left
    info = lineage(choice, located, 32)
    assert (info["source"], info["tag"], info["top_hash"]) == ("registry", "m:1", top)
    assert (info["registry"], info["package"]) == (registry_env, package)
    assert info["promoted_at"] and info["classes"][0] == {"name": CLASSES[0], "mid": MIDS[0]}
    monkeypatch.setattr(registry, "fetch_into", lambda *a: pytest.fail("fetched twice"))
    assert locate(source.resolved(choose())).file == located.file
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    registry.client.cache_clear()
    with pytest.raises(RegistryError, match="cannot read the promotion state"):
        source.resolved(choose())
    registry.client.cache_clear()
