"""Publishing a bundle to the local S3 registry and installing it back by top hash."""

import json

import quilt3

from flows.bundle import install, publish
from flows.lineage import git_commit

META = {
    "package": "test/bundle", "registry": "s3://test-registry", "classes": ["Car", "Hamburger"],
    "class_mids": {"Car": "/m/0k4j", "Hamburger": "/m/0cdn1"},
    "crops_per_class": {"Car": 1, "Hamburger": 1}, "dataset_id": "abc",
    "metrics": {"accuracy": 0.5, "macro_f1": 0.5, "test_examples": 2},
    "git_commit": "x", "model_tag": "openimager-classifier:test",
}


def make_run(tmp_path):
    data, model = tmp_path / "dataset", tmp_path / "model"
    (data / "crops" / "Car").mkdir(parents=True)
    (data / "crops" / "Car" / "a_1.jpg").write_bytes(b"jpeg bytes")
    (data / "crops.parquet").write_bytes(b"table")
    model.mkdir()
    (model / "model.keras").write_bytes(b"weights")
    (model / "metrics.json").write_text(json.dumps(META["metrics"]))
    return data, model


def test_publish_then_install_round_trip(registry_env, tmp_path):
    data, model = make_run(tmp_path)
    first = publish(data, model, META, "test/bundle", registry_env, "first")
    (model / "model.keras").write_bytes(b"better weights")
    second = publish(data, model, META, "test/bundle", registry_env, "second")
    assert first.top_hash != second.top_hash

    dest = install("test/bundle", registry_env, first.top_hash, tmp_path / "installed")
    assert (dest / "model" / "model.keras").read_bytes() == b"weights"
    assert (dest / "data" / "crops" / "Car" / "a_1.jpg").read_bytes() == b"jpeg bytes"
    assert (dest / "code" / "COMMIT").read_text().strip() == git_commit()
    assert (dest / "code" / "flows" / "bundle.py").exists()
    assert (dest / "env" / "requirements.lock").exists()
    assert (dest / "env" / "python-version.txt").read_text().startswith("3.11")
    assert "Open Images Dataset, Google" in (dest / "README.md").read_text()

    pkg = quilt3.Package.browse("test/bundle", registry=registry_env, top_hash=second.top_hash)
    assert pkg.meta["model_tag"] == META["model_tag"]
    assert len(pkg.meta["lock_sha256"]) == 64
