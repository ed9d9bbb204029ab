"""Publishing bundles to S3 registries and installing them back by top hash."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pandas as pd
import pytest
import quilt3

from flows.publish import publish_line
from flows.publishing.bundle import PublishError, install, publish, stage_bundle
from flows.publishing.lineage import (
    ENV_FILES,
    PROJECT_ROOT,
    LineageError,
    UncommittedChanges,
    git_commit,
)
from flows.publishing.registries import RegistryError, check_registry, opened
from flows.publishing.secretscan import SecretFound, find_secrets
from flows.servers.local import LocalS3

META = {
    "package": "test/bundle", "registry": "s3://test-registry", "classes": ["Car", "Hamburger"],
    "class_mids": {"Car": "/m/0k4j", "Hamburger": "/m/0cdn1"},
    "crops_per_class": {"Car": 1, "Hamburger": 1}, "dataset_id": "abc",
    "metrics": {"accuracy": 0.5, "macro_f1": 0.5, "test_examples": 2},
    "git_commit": git_commit(), "model_tag": "openimager-classifier:test",
}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                          check=True).stdout.decode()


def make_run(tmp_path, files: int = 3):
    data, model = tmp_path / "dataset", tmp_path / "model"
    (data / "crops" / "Car").mkdir(parents=True)
    for i in range(files):
        (data / "crops" / "Car" / f"a_{i}.jpg").write_bytes(os.urandom(4096))
    pd.DataFrame({"CropPath": ["Car/a_0.jpg"], "Author": ["Ann Example"],
                  "License": ["https://creativecommons.org/licenses/by/2.0/"],
                  "OriginalLandingURL": ["https://x.invalid/p/1"]}).to_parquet(
        data / "crops.parquet")
    model.mkdir()
    (model / "model.keras").write_bytes(b"weights")
    (model / "metrics.json").write_text(json.dumps(META["metrics"]))
    return data, model


def test_publish_then_install_each_version(registry_env, tmp_path):
    data, model = make_run(tmp_path)
    first = publish(data, model, META, "test/bundle", registry_env, "first")
    (model / "model.keras").write_bytes(b"better weights")
    second = publish(data, model, META, "test/bundle", registry_env, "second")
    assert first.top_hash != second.top_hash and first.pushed and second.pushed

    old = tmp_path / "old"
    assert install("test/bundle", registry_env, first.top_hash, old) == first.top_hash
    assert (old / "model" / "model.keras").read_bytes() == b"weights"  # not the latest
    assert (old / "code" / "COMMIT").read_text().strip() == git_commit()
    assert (old / "code" / "flows" / "publishing" / "bundle.py").exists()
    assert (old / "env" / "requirements.lock").exists()
    assert (old / "env" / "python-version.txt").read_text().startswith("3.11")
    readme = (old / "README.md").read_text()
    assert "Open Images Dataset, Google" in readme
    assert "| Ann Example | https://creativecommons.org/licenses/by/2.0/ |" in readme
    newest = tmp_path / "newest"
    assert install("test/bundle", registry_env, None, newest) == second.top_hash
    assert (newest / "model" / "model.keras").read_bytes() == b"better weights"

    pkg = quilt3.Package.browse("test/bundle", registry=registry_env, top_hash=second.top_hash)
    assert pkg.meta["model_tag"] == META["model_tag"] and len(pkg.meta["lock_sha256"]) == 64


def test_an_unchanged_bundle_is_not_pushed_again(registry_env, tmp_path):
    data, model = make_run(tmp_path)
    first = publish(data, model, META, "test/same", registry_env, "one")
    again = publish(data, model, META, "test/same", registry_env, "two")
    assert not again.pushed and again.top_hash == first.top_hash
    versions = quilt3.list_package_versions("test/same", registry=registry_env)
    assert [hash_ for name, hash_ in versions if name != "latest"] == [first.top_hash]


def test_secrets_are_never_published(registry_env, tmp_path):
    data, model = make_run(tmp_path)
    (data / ".env").write_text("TOKEN=x\n")
    # Assembled at run time, so this file itself carries nothing the scan would flag.
    (data / "notes.txt").write_text("key " + "AKIA" + "ABCDEFGHIJKLMNOP here\n")
    (model / "deploy.pem").write_text("-----BEGIN RSA " + "PRIVATE KEY-----\n")
    with pytest.raises(SecretFound) as error:
        publish(data, model, META, "test/secret", registry_env, "leak")
    message = str(error.value)
    assert "data/.env" in message and "data/notes.txt: contains an AWS access key id" in message
    assert not list(quilt3.list_packages(registry=registry_env).__iter__()) or (
        "test/secret" not in list(quilt3.list_packages(registry=registry_env)))
    assert find_secrets(tmp_path / "model") == ["deploy.pem: a credentials file by its name"]


def test_the_embedded_registry_survives_a_restart(tmp_path):
    data, model = make_run(tmp_path)
    state = tmp_path / "registry"
    with opened("embedded", state) as registry:
        first = publish(data, model, META, "test/kept", registry, "one")
        (model / "model.keras").write_bytes(b"v2")
        second = publish(data, model, META, "test/kept", registry, "two")
    with opened("embedded", state) as registry:  # a new server process, replayed
        install("test/kept", registry, first.top_hash, tmp_path / "a")
        install("test/kept", registry, second.top_hash, tmp_path / "b")
    assert (tmp_path / "a" / "model" / "model.keras").read_bytes() == b"weights"
    assert (tmp_path / "b" / "model" / "model.keras").read_bytes() == b"v2"


def test_an_endpoint_dying_mid_push_leaves_no_version_and_a_retry_completes(tmp_path,
                                                                           monkeypatch):
    data, model = make_run(tmp_path, files=60)
    state = tmp_path / "state"
    s3 = LocalS3(state_dir=state).start()
    s3.create_bucket("dying")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    uploads = []

    def kill_after_some_uploads(request, **_):
        if request.method == "PUT" and "/crops/" in request.url:
            uploads.append(request.url)
            if len(uploads) == 5:
                threading.Thread(target=s3.process.kill).start()

    from botocore.session import Session
    original = Session.create_client

    def hooked(self, *args, **kwargs):
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-send.s3", kill_after_some_uploads)
        return client

    monkeypatch.setattr(Session, "create_client", hooked)
    with pytest.raises(PublishError, match="no version was recorded, run the publish again"):
        publish(data, model, META, "test/dying", "s3://dying", "first try")
    monkeypatch.setattr(Session, "create_client", original)
    s3.process.wait()
    restarted = LocalS3(state_dir=state).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", restarted.endpoint_url)
        assert not list(quilt3.list_package_versions("test/dying", registry="s3://dying"))
        done = publish(data, model, META, "test/dying", "s3://dying", "retry")
        install("test/dying", "s3://dying", done.top_hash, tmp_path / "got")
        assert len(list((tmp_path / "got" / "data" / "crops" / "Car").iterdir())) == 60
    finally:
        restarted.stop()


def test_registry_problems_are_one_clear_error(local_s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    with pytest.raises(RegistryError, match="bucket 'no-such-bucket' does not exist"):
        check_registry("s3://no-such-bucket")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RegistryError, match="no AWS credentials"):
        check_registry("s3://test-registry")
    with pytest.raises(RegistryError, match="not an s3:// URL"):
        check_registry("/tmp/registry")


def test_wrong_credentials_are_one_clear_error(monkeypatch):
    # moto checks signatures once its free actions are used up: none here.
    with LocalS3(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as strict:
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-known-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(RegistryError, match=r"access to s3://some-bucket denied \("):
            check_registry("s3://some-bucket")


def test_code_is_the_commit_the_model_was_trained_at(registry_env, tmp_path):
    data, model = make_run(tmp_path)
    trained_at = git("rev-parse", "HEAD~1").strip()  # not the checkout's HEAD
    meta = {**META, "git_commit": trained_at}
    done = publish(data, model, meta, "test/lineage", registry_env, "at HEAD~1")
    got = tmp_path / "got"
    install("test/lineage", registry_env, done.top_hash, got)
    assert (got / "code" / "COMMIT").read_text().strip() == trained_at
    assert f"the code at commit `{trained_at}`" in (got / "README.md").read_text()
    pkg = quilt3.Package.browse("test/lineage", registry=registry_env, top_hash=done.top_hash)
    assert pkg.meta["git_commit"] == trained_at and not pkg.meta.get("dirty")
    for path in ("flows/publishing/bundle.py", "flows/pipeline/stages.py"):
        assert (got / "code" / path).read_text() == git("show", f"{trained_at}:{path}")
    assert (got / "env" / "requirements.lock").read_text() == git(
        "show", f"{trained_at}:requirements.lock")
    assert not (got / "code" / "UNCOMMITTED.md").exists()


def test_a_commit_the_checkout_lacks_is_one_clear_error(registry_env, tmp_path):
    data, model = make_run(tmp_path)
    with pytest.raises(LineageError, match="trained at commit 0123456789ab, which the checkout"):
        publish(data, model, {**META, "git_commit": "0123456789ab" * 3 + "0123"},
                "test/nocommit", registry_env, "x")


def test_the_bundle_leaves_out_what_retraining_does_not_need(tmp_path):
    data, model = make_run(tmp_path)
    staged = stage_bundle(data, model, META, tmp_path / "staged")
    code = staged / "code"
    for gone in ("data/sample", "tests", "benchmarks", "docs/sample-card", *ENV_FILES):
        assert not (code / gone).exists(), gone
    for kept in ("flows/__main__.py", "model/train.py", "service/service.py", "Makefile"):
        assert (code / kept).exists(), kept
    assert sorted(p.name for p in (staged / "env").iterdir()) == sorted(
        [*ENV_FILES, "python-version.txt"])


def test_a_model_trained_on_a_dirty_tree_is_marked_and_can_be_refused(registry_env,
                                                                      tmp_path):
    data, model = make_run(tmp_path)
    meta = {**META, "dirty": True, "git_changes": ["model/train.py"]}
    with pytest.raises(UncommittedChanges, match=r"uncommitted changes \(model/train.py\)"):
        publish(data, model, meta, "test/dirty", registry_env, "x", allow_dirty=False)
    assert "test/dirty" not in list(quilt3.list_packages(registry=registry_env))

    done = publish(data, model, meta, "test/dirty", registry_env, "dirty")
    pkg = quilt3.Package.browse("test/dirty", registry=registry_env, top_hash=done.top_hash)
    assert pkg.meta["dirty"] is True and pkg.meta["git_commit"] == META["git_commit"]
    got = tmp_path / "got"
    install("test/dirty", registry_env, done.top_hash, got)
    assert "`model/train.py`" in (got / "code" / "UNCOMMITTED.md").read_text()
    assert "code/UNCOMMITTED.md" in (got / "README.md").read_text()


def test_retrain_refuses_uncommitted_changes_before_any_work(tmp_path, monkeypatch):
    import flows.publishing.lineage
    from flows.retrain import retrain

    monkeypatch.setattr(flows.publishing.lineage, "git_changes", lambda root: ["flows/x.py"])
    monkeypatch.setenv("OPENIMAGER_PUBLISH_UNCOMMITTED", "false")
    workspace = tmp_path / "ws"
    # An unreachable mirror: had the flow gone on, it would fail on the download instead.
    with pytest.raises(UncommittedChanges, match=r"uncommitted changes in .*\(flows/x.py\)"):
        retrain.fn(workspace=str(workspace), metadata_url="http://127.0.0.1:9/none",
                   registry="s3://not-reached")
    assert not workspace.exists()


def test_source_photos_go_along_only_when_asked_and_count_in_the_fingerprint(registry_env,
                                                                             tmp_path):
    data, model = make_run(tmp_path)
    store = tmp_path / "images" / "train"
    store.mkdir(parents=True)
    pd.DataFrame({"CropPath": ["Car/a_0.jpg"], "ImageID": ["0000000000000001"], "Author": "a",
                  "License": "l", "OriginalLandingURL": "u"}).to_parquet(data / "crops.parquet")
    (store / "0000000000000001.jpg").write_bytes(b"source photo")
    (store / "a_0.jpg").write_bytes(b"photo")  # no crop comes from this one
    plain = publish(data, model, META, "test/fp", registry_env, "no photos")
    photos = publish(data, model, META, "test/fp", registry_env, "photos",
                     image_dir=tmp_path / "images")
    assert photos.pushed and photos.top_hash != plain.top_hash
    install("test/fp", registry_env, plain.top_hash, tmp_path / "a")
    install("test/fp", registry_env, photos.top_hash, tmp_path / "b")
    assert not (tmp_path / "a" / "data" / "images").exists()
    assert [p.name for p in (tmp_path / "b" / "data" / "images" / "train").iterdir()] == [
        "0000000000000001.jpg"]
    again = publish(data, model, META, "test/fp", registry_env, "photos again",
                    image_dir=tmp_path / "images")
    assert not again.pushed and again.top_hash == photos.top_hash
    (store / "0000000000000001.jpg").write_bytes(b"another photo")
    assert publish(data, model, META, "test/fp", registry_env, "new photo",
                   image_dir=tmp_path / "images").pushed


def test_published_is_said_only_when_a_revision_was_pushed():
    done = {"name": "a/b", "registry": "s3://r", "top_hash": "f" * 64}
    assert publish_line({**done, "pushed": True}).startswith(f"published a/b@{'f' * 64}")
    line = publish_line({**done, "pushed": False})
    assert line.startswith(f"unchanged: {'f' * 64}") and "published" not in line


def test_training_records_the_commit_and_its_uncommitted_changes(tmp_path):
    from flows.publishing.lineage import code_state

    repo = tmp_path / "repo"
    repo.mkdir()
    run = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*run, "init", "-q"], check=True)
    (repo / "train.py").write_text("a = 1\n")
    subprocess.run([*run, "add", "train.py"], check=True)
    subprocess.run([*run, "commit", "-q", "-m", "one"], check=True)
    commit = git_commit(repo)
    assert code_state(repo) == {"git_commit": commit, "git_dirty": False, "git_changes": []}
    (repo / "train.py").write_text("a = 2\n")
    (repo / "scratch.txt").write_text("untracked files are not the code that ran\n")
    assert code_state(repo) == {"git_commit": commit, "git_dirty": True,
                                "git_changes": ["train.py"]}
    assert code_state(tmp_path / "elsewhere") == {"git_commit": "unknown", "git_dirty": None,
                                                  "git_changes": []}


def doc_commands() -> list[str]:
    """The command lines of docs/publishing.md's code blocks."""
    text = (PROJECT_ROOT / "docs" / "publishing.md").read_text()
    blocks = text.split("```")[1::2]
    return [line for block in blocks for line in block.splitlines()
            if line.startswith((".venv/bin/python ", "cp ", ".venv/bin/quilt3 "))]


@pytest.mark.integration
@pytest.mark.slow
def test_the_documented_install_and_reproduce_commands_work(sample_workspace, tmp_path):
    import sys

    from flows.openimages.dataset import crops_root
    from model.train import TrainConfig, train

    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    config = TrainConfig(architecture="seed-cnn", weights=None, image_size=32, epochs=1,
                         tensorboard=False)
    result = train(table, crops_root(sample_workspace / "dataset", table), tmp_path / "model",
                   config)
    workspace = tmp_path / "workspace"
    meta = {**META, "package": "openimager/classifier", "classes": result.class_names,
            "class_mids": dict.fromkeys(result.class_names, "/m/x"), "metrics": result.metrics}
    with opened("embedded", workspace / "registry") as registry:
        done = publish(sample_workspace / "dataset", tmp_path / "model", meta,
                       "openimager/classifier", registry, "docs")
    commands = doc_commands()
    run = [c for c in commands if not c.startswith(".venv/bin/quilt3 ")]  # the one needing AWS
    assert len(run) == 3 and len(commands) == 4
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    # As written, in a folder with the project's .venv, relative folders included: the
    # workspace is tmp_path/workspace.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    for command in run:
        line = command.replace("<hash>", done.top_hash)
        out = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
    assert (workspace / "bundle" / "code" / "requirements.lock").exists()
    assert "REPRODUCED: test accuracy" in out.stdout
    assert "test crops of" in out.stdout and "paired bootstrap over photos" in out.stdout
    assert (workspace / "reproduced" / "reproduced" / "model.keras").exists()


def test_the_package_readme_names_the_workspace_of_an_embedded_registry() -> None:
    """Its reproduce command must work as written from any folder: the embedded registry lives
    in the workspace that published to it."""
    from flows.publishing.bundle import readme

    embedded = readme({**META, "registry": "embedded", "workspace": "/srv/my ws"})
    assert ("python -m flows reproduce test/bundle --registry embedded --workspace '/srv/my ws' "
            "--top-hash <hash>") in embedded
    s3 = readme({**META, "registry": "s3://bucket"})
    assert "--workspace" not in s3 and "--registry s3://bucket --top-hash" in s3


def test_photo_credits_are_listed_in_the_readme_up_to_a_limit_then_pointed_at(tmp_path):
    from flows.publishing.bundle import attribution

    pd.DataFrame({"Author": ["ann", "bob", "ann", "cy"], "License": "CC BY 2.0",
                  "OriginalLandingURL": ["u/1", "u/2", "u/1", "u/3"]}).to_parquet(
        tmp_path / "crops.parquet")
    listed = attribution(tmp_path, inline=3)
    assert "| ann | CC BY 2.0 | u/1 |" in listed and listed.count("| u/") == 3
    pointed = attribution(tmp_path, inline=2)
    assert "| ann |" not in pointed
    assert "The 3 photos, by 3 authors, are credited in `data/crops.parquet`" in pointed
    assert attribution(tmp_path / "missing") == ""
