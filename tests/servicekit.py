"""Helpers for the service tests: a tiny registered model, test images, multipart bodies."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["Circle", "Square", "Triangle"]
MIDS = ["/m/circle", "/m/square", "/m/triangle"]
IMAGE_SIZE = 32


def wait_for(check, what: str, timeout: float = 120, every: float = 0.2):
    """Poll check() until it returns something truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def register_tiny_model(workdir: Path, classes: list[str] = CLASSES,
                        image_size: int = IMAGE_SIZE, name: str = "openimager-classifier",
                        extra: dict | None = None) -> str:
    """Save an untrained seed CNN with metrics and register it like training does."""
    from flows.promotion.bentoml_store import register_model
    from model.architectures import seed_cnn

    workdir.mkdir(parents=True, exist_ok=True)
    seed_cnn(image_size, len(classes)).save(workdir / "model.keras")
    metrics = {"split": "test", "accuracy": 0.5, "macro_f1": 0.4, "test_examples": 6}
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    metadata = {
        "class_names": list(classes), "class_mids": MIDS[: len(classes)],
        "image_size": image_size, "architecture": "seed_cnn", "dataset_id": "tiny-dataset",
        "openimages_version": "v7", "git_commit": "0" * 40,
        "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "test_examples")},
        "train_seconds": 0.0, "trained_at": "2026-01-01T00:00:00+00:00", "config": {},
        **(extra or {}),
    }
    labels = {"dataset": "tiny-dataset", "commit": "0" * 12, "architecture": "seed_cnn"}
    return register_model(workdir, name, metadata, labels)


def picture(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small picture with a coloured shape, different for each seed."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:] = rng.integers(0, 120, 3)
    y, x = np.mgrid[: size[1], : size[0]]
    cx, cy, r = size[0] // 2, size[1] // 2, min(size) // 3
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(120, 255, 3)
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """Image bytes in a format."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "openimagerXbound"
              ) -> tuple[bytes, str]:
    """A hand-made multipart body from (field, filename or None, content); and its type."""
    out = io.BytesIO()
    for name, filename, content in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode())
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class Served:
    """A running classification server of the tiny model."""

    url: str
    tag: str
    model_file: Path
    log: Path


@contextmanager
def serve_tiny_model(workdir: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Register the tiny model and run `bentoml serve` on it until the block ends."""
    import bentoml

    from flows.servers.local import BentoServer

    tag = register_tiny_model(workdir / "model")
    model_file = Path(bentoml.models.get(tag).path_of("model.keras"))
    log = workdir / "bentoml.log"
    try:
        # The prediction log goes beside the test's files, never into the repository.
        settings = {"OPENIMAGER_PREDICTION_LOG_DIR": str(workdir / "predictions"), **(env or {})}
        with BentoServer(tag, log_path=log, env=settings) as server:
            yield Served(server.url, tag, model_file, log)
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{error}; server log:\n{log.read_text()[-3000:]}") from error


@dataclass
class Answer:
    """One request of a load run: when it ran, how it ended, which model answered."""

    start: float
    end: float
    status: int | None  # None: no HTTP answer
    model: str | None = None
    code: str | None = None  # the error code of a JSON error body
    error: str | None = None  # the connection error's kind when status is None
    top_hash: str | None = None  # the revision of the answering model, when published
    form: str = "form"  # how the image was sent: "form" (multipart) or "raw" (the body)


class Load:
    """Closed-loop clients posting one image to /classify until stopped, each client
    alternating the multipart form and the raw body."""

    def __init__(self, url: str, clients: int, image: bytes, timeout: float = 30) -> None:
        import threading

        self.url, self.image, self.timeout = url, image, timeout
        self.answers: list[Answer] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True)
                        for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)

    def client(self) -> None:
        import time

        import requests

        session = requests.Session()
        sent = 0
        while not self.stopped.is_set():
            start = time.monotonic()
            form = ("form", "raw")[sent % 2]
            sent += 1
            try:
                if form == "raw":
                    reply = session.post(f"{self.url}/classify", timeout=self.timeout,
                                         data=self.image,
                                         headers={"Content-Type": "image/jpeg"})
                else:
                    reply = session.post(f"{self.url}/classify", timeout=self.timeout,
                                         files={"image": ("x.jpg", self.image, "image/jpeg")})
            except requests.RequestException as error:
                kind = "refused" if isinstance(error, requests.ConnectionError) and \
                    "refused" in str(error).lower() else type(error).__name__
                self.answers.append(Answer(start, time.monotonic(), None, error=kind,
                                           form=form))
                session = requests.Session()
                time.sleep(0.05)
                continue
            body = reply.json() if reply.headers.get("content-type", "").startswith(
                "application/json") else {}
            self.answers.append(Answer(start, time.monotonic(), reply.status_code,
                                       body.get("model"), body.get("code"),
                                       top_hash=body.get("top_hash"), form=form))
            if reply.status_code == 503:
                time.sleep(float(reply.headers.get("Retry-After", "0.2")) / 5)


DEMO_CLASSES = ["Car", "Hamburger", "Sandwich"]  # the demo's (flows/demo.py), sorted


def demo_like_project(sample_workspace: Path, project: Path, name: str) -> tuple[str, dict]:
    """A project folder as `make demo` leaves it: the sample's dataset in ./workspace, the
    project's .venv, and a promoted model of the demo's classes in the BentoML store (a tiny
    one under name, so other tests' promotions in this store do not matter). Returns its tag
    and the environment of a new shell there (no OPENIMAGER_* but the model's name)."""
    import os
    import shutil
    import sys

    from flows.promotion.bentoml_store import promote
    from flows.servers.local import TELEMETRY_OFF

    root = Path(__file__).resolve().parent.parent
    dataset = project / "workspace" / "dataset"
    dataset.mkdir(parents=True)
    shutil.copy(sample_workspace / "dataset" / "crops.parquet", dataset)
    (dataset / "shards").symlink_to(sample_workspace / "dataset" / "shards")
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)
    import pandas as pd

    from model.evaluate import drift_reference

    # Like a trained model, it records its test split's reference (confident answers here).
    test = pd.read_parquet(dataset / "crops.parquet").query("Split == 'test'")
    reference = drift_reference([0.9] * len(test), test.Width.tolist(), test.Height.tolist())
    tag = register_tiny_model(project.parent / f"{name}-model", DEMO_CLASSES, name=name,
                              extra={"drift_reference": reference})
    promote(tag)
    venv = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGER_")}
    env.update(TELEMETRY_OFF, PYTHONPATH=str(root), OPENIMAGER_MODEL_NAME=name,
               PATH=":".join(p for p in os.environ["PATH"].split(":") if p != venv))
    return tag, env


@contextmanager
def served_as_documented(project: Path, env: dict[str, str], log: Path,
                         line: str | None = None) -> Iterator[str]:
    """The README's `bentoml serve` line (or line) run as written in project (on a free
    port) until the block ends with a SIGTERM, which writes the open prediction log part;
    yields its URL."""
    import shlex
    import subprocess

    from flows.servers.local import free_port, stop_group, wait_ready

    root = Path(__file__).resolve().parent.parent
    line = line or next(line for line in (root / "README.md").read_text().splitlines()
                        if line.startswith(".venv/bin/bentoml serve "))
    port = free_port()
    with log.open("ab") as out:
        server = subprocess.Popen([*shlex.split(line.split("   #")[0]), "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=project, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 300, server)
        yield f"http://127.0.0.1:{port}"
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{error}; log:\n{log.read_text()[-3000:]}") from error
    finally:
        stop_group(server)


def publish_tiny_model(workdir: Path, package: str, registry: str, tag: str,
                       classes: list[str] = CLASSES, image_size: int = IMAGE_SIZE) -> str:
    """Push a revision of package holding an untrained seed CNN as model/model.keras, with the
    metadata the service reads (classes, their MIDs, the model tag); return its top hash."""
    import quilt3

    from model.architectures import seed_cnn

    folder = workdir / "model"
    folder.mkdir(parents=True, exist_ok=True)
    seed_cnn(image_size, len(classes)).save(folder / "model.keras")
    meta = {"classes": list(classes), "class_mids": {c: f"/m/{c.lower()}" for c in classes},
            "model_tag": tag, "dataset_id": f"{tag.split(':')[-1]}-data", "git_commit": "0" * 40,
            "openimages_version": "v7",
            "metrics": {"accuracy": 0.5, "macro_f1": 0.4, "test_examples": 6}}
    package_ = quilt3.Package().set_dir("model", str(folder)).set_meta(meta)
    with contextlib.redirect_stdout(io.StringIO()):  # quilt3 prints what it pushed
        return package_.push(package, registry=registry, force=True,
                             message=f"{tag} for the tests").top_hash


def replica_env(workdir: Path, registry: str, package: str, endpoint: str,
                reload_seconds: float = 1) -> dict[str, str]:
    """The environment of one API replica that follows a registry: a home, BentoML store,
    temporary folder, quilt3 cache and workspace of its own; only the S3 endpoint is shared."""
    from flows.servers.local import TELEMETRY_OFF

    folders = {name: workdir / name for name in ("home", "bentoml", "tmp", "data", "workspace")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(folders["home"]), "BENTOML_HOME": str(folders["bentoml"]),
            "TMPDIR": str(folders["tmp"]), "XDG_DATA_HOME": str(folders["data"]),
            "OPENIMAGER_WORKSPACE": str(folders["workspace"]),
            "OPENIMAGER_PREDICTION_LOG_DIR": str(folders["workspace"] / "predictions"),
            "AWS_ENDPOINT_URL": endpoint, "OPENIMAGER_REGISTRY": registry,
            "OPENIMAGER_PACKAGE": package, "OPENIMAGER_RELOAD_SECONDS": f"{reload_seconds:g}",
            **TELEMETRY_OFF}


@contextmanager
def replicas(envs: list[dict[str, str]], workdir: Path) -> Iterator[list]:
    """`bentoml serve` once per environment (over this process's), started side by side, each
    on its own port and ready; all stopped when the block ends."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.servers.local import BentoServer

    servers = [BentoServer(None, log_path=workdir / f"replica{i}.log", env=env)
               for i, env in enumerate(envs)]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            errors = [f.exception() for f in [pool.submit(s.__enter__) for s in servers]]
        if failed := [(s, e) for s, e in zip(servers, errors, strict=True) if e]:
            raise RuntimeError("; ".join(
                f"{s.log_path.name}: {e}\n{s.log_path.read_text()[-3000:]}" for s, e in failed))
        yield servers
    finally:
        for server in servers:
            server.__exit__()
