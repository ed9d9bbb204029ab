"""The worker's fail-fast start: which settings are refused, and what the entrypoint runs."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.commands.main import main as flows_main
from flows.run import preflight
from flows.servers.local import free_port
from flows.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


def problems(tmp_path: Path, env: dict[str, str] | None = None, argv: tuple = (),
             **settings: object) -> list[str]:
    return preflight.problems(Settings(workspace=tmp_path / "ws", **settings), env or {},
                              argv, home=tmp_path)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the test session (conftest sets local ones), a bare home."""
    for name in (*KEYS, "AWS_PROFILE", "PREFECT_API_URL", "OPENIMAGER_PROJECT_DIR",
                 preflight.SKIP_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENIMAGER_WORKSPACE", str(tmp_path / "ws"))


def test_defaults_pass(tmp_path: Path) -> None:
    assert problems(tmp_path) == []


@pytest.mark.parametrize(("registry", "expected"), [
    ("s3://", "names no bucket"),
    ("s3:///path", "names no bucket"),
    ("s3://Bad_Bucket", "not a valid S3 bucket name"),
    ("gs://bucket", "must be 'embedded' or s3://BUCKET"),
    ("local", "must be 'embedded' or s3://BUCKET"),
])
def test_malformed_registry_is_refused(tmp_path: Path, registry: str, expected: str) -> None:
    found = problems(tmp_path, KEYS, registry=registry)
    assert len(found) == 1 and expected in found[0]


def test_s3_registry_needs_credentials(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, registry="s3://test-registry")
    assert "no AWS credentials for registry s3://test-registry" in found
    assert "AWS_ACCESS_KEY_ID" in found


@pytest.mark.parametrize("env", [
    KEYS, {"AWS_PROFILE": "registry"}, {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"},
    {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials"},
])
def test_any_credential_source_is_enough(tmp_path: Path, env: dict[str, str]) -> None:
    assert problems(tmp_path, env, registry="s3://test-registry/prefix") == []


def test_a_shared_credentials_file_is_enough(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert problems(tmp_path, registry="s3://test-registry") == []


def test_half_a_key_is_named(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, {"AWS_ACCESS_KEY_ID": "id"}, registry="s3://test-registry")
    assert "AWS_SECRET_ACCESS_KEY is not" in found


def test_endpoint_must_be_a_url(tmp_path: Path) -> None:
    env = {**KEYS, "AWS_ENDPOINT_URL": "127.0.0.1:9000"}
    (found,) = problems(tmp_path, env, registry="s3://test-registry")
    assert "AWS_ENDPOINT_URL must be an http(s) URL" in found


def test_embedded_registry_needs_no_credentials(tmp_path: Path) -> None:
    assert problems(tmp_path, {"AWS_ENDPOINT_URL": "not checked"}, registry="embedded") == []


def test_workspace_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    found = preflight.problems(Settings(workspace=tmp_path / "file" / "ws"), {}, home=tmp_path)
    assert found == [f"workspace {tmp_path}/file/ws: {tmp_path}/file is not a folder"]


def test_unwritable_workspace_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # access() says yes to root for a mode-0 folder, so the answer is stubbed.
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
    (found,) = problems(tmp_path)
    assert "is not writable for uid" in found and "OPENIMAGER_WORKSPACE" in found


def test_worker_needs_the_api_and_the_project(tmp_path: Path) -> None:
    argv = ("prefect", "worker", "start", "--pool", "openimager")
    found = problems(tmp_path, argv=argv)
    assert [p.split(" ")[0] for p in found] == ["PREFECT_API_URL", "OPENIMAGER_PROJECT_DIR"]
    env = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "OPENIMAGER_PROJECT_DIR": str(ROOT)}
    assert problems(tmp_path, env, argv=argv) == []
    assert "http(s) URL" in problems(tmp_path, {**env, "PREFECT_API_URL": "4200"}, argv=argv)[0]


def test_other_commands_need_no_api(tmp_path: Path) -> None:
    assert problems(tmp_path, argv=("retrain", "--classes", "Hamburger")) == []


def test_unreadable_settings_are_named(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENIMAGER_EPOCHS", "many")
    monkeypatch.setenv("OPENIMAGER_ARCHITECTURE", "resnet")
    settings, found = preflight.load_settings()
    assert settings is None
    assert [p.split(":")[0] for p in found] == ["OPENIMAGER_ARCHITECTURE", "OPENIMAGER_EPOCHS"]
    assert "'many'" in found[1]


def test_list_settings_take_commas_and_name_a_bad_item(clean_env: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENIMAGER_CLASSES", "Hamburger,Ice cream")
    settings, found = preflight.load_settings()
    assert found == [] and settings.classes == ["Hamburger", "Ice cream"]
    monkeypatch.setenv("OPENIMAGER_IMAGE_FALLBACK_SOURCES", "flickr,ftp")
    _, (found,) = preflight.load_settings()
    assert "OPENIMAGER_IMAGE_FALLBACK_SOURCES" in found and "ftp" in found


def test_flags_override_the_environment(clean_env: None) -> None:
    argv = ["retrain", "--registry", "s3://test-registry", "--epochs", "1"]
    assert preflight.flag_overrides(argv) == {"registry": "s3://test-registry"}
    assert preflight.flag_overrides(["prefect", "--registry", "x"]) == {}
    (found,) = preflight.check(argv, os.environ)
    assert "no AWS credentials" in found


def test_every_problem_is_reported_at_once(clean_env: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENIMAGER_REGISTRY", "s3://test-registry")
    found = preflight.check(["prefect", "worker", "start"], os.environ)
    assert len(found) == 3
    message = preflight.report(["prefect", "worker", "start"], found)
    assert message.startswith("openimager: not starting 'prefect worker start': 3 problem(s)")
    assert "OPENIMAGER_PREFLIGHT=off" in message


@pytest.mark.parametrize(("argv", "expected"), [
    ([], [sys.executable, "-m", "flows", "--help"]),
    (["retrain", "--epochs", "1"], [sys.executable, "-m", "flows", "retrain", "--epochs", "1"]),
    (["install", "bundle"], [sys.executable, "-m", "flows", "install", "bundle"]),
    (["prefect", "worker", "start"], ["prefect", "worker", "start", "--with-healthcheck"]),
    (["prefect", "worker", "start", "--with-healthcheck"],
     ["prefect", "worker", "start", "--with-healthcheck"]),
    (["prefect", "server", "start"], ["prefect", "server", "start"]),
    (["bentoml", "serve", "service.service:Classifier"],
     ["bentoml", "serve", "service.service:Classifier"]),
    (["/bin/sh", "-c", "id"], ["/bin/sh", "-c", "id"]),
])
def test_command_line(argv: list[str], expected: list[str]) -> None:
    assert preflight.command_line(argv) == expected


def test_split_options_leaves_the_command_alone() -> None:
    assert preflight.split_options(["--exec", "--", "--help"]) == ({"--exec"}, ["--help"])
    assert preflight.split_options(["--reach"]) == ({"--reach"}, [])
    assert preflight.split_options(["retrain", "--exec"]) == (set(), ["retrain", "--exec"])


def test_main_refuses_with_ex_config(clean_env: None, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("OPENIMAGER_REGISTRY", "s3://")
    assert preflight.main(["--exec", "--", "retrain"]) == preflight.EX_CONFIG
    assert "names no bucket" in capsys.readouterr().err
    monkeypatch.setenv(preflight.SKIP_VARIABLE, "off")
    assert preflight.main(["retrain"]) == 0


def test_flows_check_subcommand(clean_env: None, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    assert flows_main(["check"]) == 0
    assert "ok" in capsys.readouterr().out
    assert flows_main(["check", "--", "prefect", "worker", "start"]) == preflight.EX_CONFIG
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


@pytest.fixture
def health_api() -> Iterator[str]:
    """A stand-in Prefect API on 127.0.0.1 whose /api/health answers."""
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()


def test_reach_asks_the_api_for_its_health(health_api: str) -> None:
    assert preflight.reach_problems({}) == []
    assert preflight.reach_problems({"PREFECT_API_URL": health_api}) == []
    closed = f"http://127.0.0.1:{free_port()}/api"
    (found,) = preflight.reach_problems({"PREFECT_API_URL": closed}, timeout=2)
    assert found.startswith(f"the Prefect API does not answer at {closed}/health")


def entrypoint(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The image's ENTRYPOINT, as a process: it must exec the command or exit 78."""
    return subprocess.run([sys.executable, "-m", "flows.run.preflight", "--exec", "--", *argv],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_entrypoint_execs_the_command(clean_env: None) -> None:
    done = entrypoint(["python", "-c", "import os; print('pid', os.getpid())"], dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pid ")


def test_entrypoint_fails_fast(clean_env: None) -> None:
    env = {**os.environ, "OPENIMAGER_REGISTRY": "s3://test-registry"}
    done = entrypoint(["python", "-c", "print('must not run')"], env)
    assert done.returncode == preflight.EX_CONFIG
    assert "must not run" not in done.stdout
    assert "no AWS credentials for registry s3://test-registry" in done.stderr


MOBILENET_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"


def test_imagenet_weights_in_the_keras_cache_need_no_network(no_internet: dict[str, str],
                                                              tmp_path: Path) -> None:
    settings = Settings(workspace=tmp_path / "ws")
    (found,) = preflight.weights_problems(settings, no_internet, reach=True, timeout=2)
    assert MOBILENET_FILE in found and "storage.googleapis.com" in found
    cached = tmp_path / "keras" / "models" / MOBILENET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert preflight.weights_problems(settings, no_internet, reach=True, timeout=2) == []


def test_a_weights_url_that_answers_404_is_named(tmp_path: Path) -> None:
    from flows.servers.mirror import StaticHTTP
    from model.pretrained import imagenet_problem

    (tmp_path / "www").mkdir()
    with StaticHTTP(tmp_path / "www") as server:
        url = f"{server.url}/{MOBILENET_FILE}"
        found = imagenet_problem("MobileNetV3Small", {"KERAS_HOME": str(tmp_path)}, 2, url)
    assert found.endswith(f"cannot be downloaded from {url}: HTTP 404 Not Found")


def test_weights_are_checked_for_training_commands_only(clean_env: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "backbone.weights.h5"
    monkeypatch.setenv("OPENIMAGER_WEIGHTS", str(missing))
    (found,) = preflight.check(["train"], os.environ)
    assert found.startswith(f"OPENIMAGER_WEIGHTS: the weights file {missing} does not exist")
    assert preflight.check(["retrain", "--architecture", "transfer"], os.environ) == [found]
    assert preflight.check(["retrain", "--architecture", "seed-cnn"], os.environ) == []
    assert preflight.check(["select"], os.environ) == []
    monkeypatch.setenv("OPENIMAGER_ARCHITECTURE", "seed-cnn")
    assert preflight.check(["train"], os.environ) == []


def test_reach_asks_whether_the_imagenet_weights_can_be_downloaded(
        clean_env: None, no_internet: dict[str, str]) -> None:
    assert preflight.check(["train"], os.environ) == []  # no network without --reach
    (found,) = preflight.check(["train"], os.environ, reach=True)
    assert "not in the Keras cache" in found and "cannot be downloaded" in found


@pytest.fixture
def worker_health() -> Iterator[tuple[int, list[int]]]:
    """A stand-in for a Prefect worker's health server: /health answers with status[0]."""
    status = [200]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()


def main_process(tmp_path: Path, *argv: str) -> Path:
    path = tmp_path / "cmdline"
    path.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return path


def test_the_healthcheck_asks_a_worker_whether_it_is_alive(
        tmp_path: Path, worker_health: tuple[int, list[int]]) -> None:
    port, status = worker_health
    env = {"PREFECT_WORKER_WEBSERVER_PORT": str(port)}
    worker = main_process(tmp_path, "/opt/venv/bin/python", "/opt/venv/bin/prefect", "worker",
                          "start", "--pool", "openimager", "--with-healthcheck")
    assert preflight.alive_problems(env, worker) == []
    status[0] = 503  # Prefect's answer once the worker stopped polling the API
    assert "the Prefect worker is not alive" in preflight.alive_problems(env, worker)[0]
    closed = {"PREFECT_WORKER_WEBSERVER_PORT": str(free_port())}
    assert "not alive" in preflight.alive_problems(closed, worker)[0]
    blind = main_process(tmp_path, "prefect", "worker", "start", "--pool", "x")
    assert "without --with-healthcheck" in preflight.alive_problems(env, blind)[0]


def test_the_healthcheck_asks_nothing_of_other_commands(tmp_path: Path) -> None:
    closed = {"PREFECT_WORKER_WEBSERVER_PORT": str(free_port())}
    for argv in (("python", "-m", "flows", "retrain"), ("bentoml", "serve", "x"),
                 ("prefect", "server", "start")):
        assert preflight.alive_problems(closed, main_process(tmp_path, *argv)) == []
    assert preflight.alive_problems(closed, tmp_path / "no-such-process") == []
