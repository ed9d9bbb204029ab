"""Servers on 127.0.0.1 for the demo and tests: S3 (moto) and bentoml serve."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from flows.servers import lifeline

# Credentials for the local endpoint only; moto accepts any.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "openimager-local", "AWS_SECRET_ACCESS_KEY": "local",
                     "AWS_DEFAULT_REGION": "us-east-1"}
TELEMETRY_OFF = {"QUILT_DISABLE_USAGE_METRICS": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
                 "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1"}


class PortInUse(OSError):
    """The port a server was asked to listen on is taken by another program."""


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether another socket listens on host:port (one in TIME_WAIT does not count: servers
    bind with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_own_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    """Wait until url answers from process itself (its s3server header names its pid): an
    answer from another server on the same port does not count."""
    from flows.servers.s3server import SERVER_HEADER

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            answer = requests.get(url, timeout=1)
            if answer.headers.get(SERVER_HEADER) == str(process.pid):
                return
        except (requests.ConnectionError, requests.Timeout):  # starting, or a busy machine
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Wait until url answers any HTTP status, or raise with the reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except (requests.ConnectionError, requests.Timeout):  # starting, or a busy machine
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@dataclass
class LocalS3:
    """A moto S3 server in a child process; use as a context manager.

    With a state_dir, what was stored survives a restart: the server keeps its buckets and
    object versions there (see flows.servers.s3server), and a registry kept in the older
    request-log format is migrated at its first start.
    """

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    state_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # e.g. moto's own settings
    process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalS3:
        """Start the server, wait until it answers, and restore its recorded state."""
        if port_taken(self.port):
            raise PortInUse(f"port {self.port} of 127.0.0.1 is taken by another program")
        env = {**os.environ, **TELEMETRY_OFF, **self.env}
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            env["S3SERVER_STATE_DIR"] = str(self.state_dir)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = lifeline.popen(
            [sys.executable, "-m", "flows.servers.s3server", "-H", "127.0.0.1",
             "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        try:
            # The state loads before the port opens; migrating an old log can take minutes.
            wait_own_http(f"{self.endpoint_url}/moto-api/", 600 if self.state_dir else 120,
                          self.process)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self):
        """A boto3 S3 client for this endpoint."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, name: str, versioned: bool = True, public: bool = False) -> None:
        """Create a bucket if it does not exist: versioned as quilt3 registries want, or
        anonymously readable like the public CVDF image bucket."""
        s3 = self.client()
        if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=name)
        if versioned:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        if public:
            statement = {"Effect": "Allow", "Principal": "*",
                         "Action": ["s3:GetObject", "s3:ListBucket"],
                         "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]}
            policy = {"Version": "2012-10-17", "Statement": [statement]}
            s3.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))

    def upload_tree(self, bucket: str, root: Path, public: bool = False) -> int:
        """Upload every file under root to bucket, keeping relative paths; return the count.

        Public objects carry a public-read ACL too: moto answers anonymous HEADs only then.
        """
        s3 = self.client()
        extra = {"ACL": "public-read"} if public else None
        count = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket, path.relative_to(root).as_posix(), ExtraArgs=extra)
            count += 1
        return count

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class BentoServer:
    """`bentoml serve` of the classification service in a child process."""

    model_tag: str | None
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # more OPENIMAGER_* settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BentoServer:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, **TELEMETRY_OFF, **self.env}
        if self.model_tag:  # else the promoted model, or the newest
            env["OPENIMAGER_MODEL_TAG"] = self.model_tag
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = lifeline.popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Classifier",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_ready(f"{self.url}/readyz", 600, self.process)  # ends early if it dies
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process:
            # bentoml serve runs workers in child processes: stop the whole group.
            stop_group(self.process)


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """Stop a server started with start_new_session and its children: SIGTERM, then SIGKILL
    after grace seconds (a busy machine can stretch a graceful stop past any fixed bound)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(url: str, timeout: float, process: subprocess.Popen) -> None:
    """Wait until url answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was ready")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:  # refused or slow while workers start
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready within {timeout:.0f}s")
