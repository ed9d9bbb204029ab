"""Where packages are published: any S3 bucket, or the embedded local registry, checked first."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.publishing.s3clients import boto3_session
from flows.servers.local import LOCAL_CREDENTIALS, LocalS3

EMBEDDED = "embedded"
EMBEDDED_BUCKET = "openimager-registry"


class RegistryError(RuntimeError):
    """The registry cannot be used; the message says why and what to do."""


def bucket_of(registry: str) -> str:
    """The bucket of an s3:// registry URL."""
    if not registry.startswith("s3://"):
        raise RegistryError(f"registry {registry!r} is not an s3:// URL or {EMBEDDED!r}")
    return registry[5:].split("/", 1)[0]


def refuse_embedded_bucket(registry: str) -> None:
    """Refuse the embedded registry's bucket when no endpoint points at a local server: the
    request would go to the AWS bucket of that name, which is somebody else's."""
    if registry.startswith(f"s3://{EMBEDDED_BUCKET}") and not os.environ.get("AWS_ENDPOINT_URL"):
        from flows.run.shell import flows_command

        raise RegistryError(f"{registry} is the embedded registry: run "
                            f"`{flows_command('registry')}` and set the AWS_ENDPOINT_URL it "
                            "prints")


def check_registry(registry: str) -> None:
    """Fail with one clear message when credentials are missing or wrong or the bucket absent."""
    refuse_embedded_bucket(registry)
    from botocore.exceptions import (  # only the commands that reach a registry pay for boto3
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    bucket = bucket_of(registry)
    try:
        # A fresh session: the default one caches credentials resolved earlier.
        boto3_session().client("s3").head_bucket(Bucket=bucket)
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise RegistryError(f"no AWS credentials for {registry}: set AWS_PROFILE, or "
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from error
    except EndpointConnectionError as error:
        raise RegistryError(f"cannot reach the S3 endpoint of {registry}: {error}") from error
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchBucket"}:
            raise RegistryError(f"registry bucket {bucket!r} does not exist") from error
        if code in {"403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
            raise RegistryError(f"access to {registry} denied ({code}): check the AWS "
                                "credentials and the bucket policy") from error
        raise RegistryError(f"{registry}: {error}") from error


@contextmanager
def opened(registry: str, state_dir: Path, port: int | None = None) -> Iterator[str]:
    """Yield an s3:// registry URL ready for quilt3; "embedded" starts the local one.

    The embedded registry is a local S3 endpoint whose state lives in state_dir and survives
    restarts; when `python -m flows registry` already serves that folder, its server is used.
    While it runs, the standard AWS variables point quilt3 at it.
    """
    if registry != EMBEDDED:
        check_registry(registry)
        yield registry
        return
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", *LOCAL_CREDENTIALS)}
    with embedded_server(state_dir, port) as s3:
        s3.create_bucket(EMBEDDED_BUCKET)
        os.environ.update(LOCAL_CREDENTIALS, AWS_ENDPOINT_URL=s3.endpoint_url)
        try:
            yield f"s3://{EMBEDDED_BUCKET}"
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def embedded_server(state_dir: Path, port: int | None = None) -> Iterator[LocalS3]:
    """The server of the embedded registry in state_dir: the running one, or a new one."""
    if url := running_endpoint(state_dir):
        yield LocalS3(port=int(url.rsplit(":", 1)[1]))
        return
    options = {"port": port} if port else {}
    log = state_dir / "s3.log"
    try:
        s3 = LocalS3(log_path=log, state_dir=state_dir, **options).start()
    except RuntimeError as error:  # the server exited: its last words say why
        said = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise RegistryError(f"the embedded registry in {state_dir} did not start: "
                            f"{said[0].removeprefix('error: ') if said else error}") from error
    try:
        yield s3
    finally:
        s3.stop()


def running_endpoint(state_dir: Path) -> str | None:
    """The endpoint of a server that holds state_dir now, if one does."""
    lock, endpoint = state_dir / "lock", state_dir / "endpoint"
    if not lock.exists() or not endpoint.exists():
        return None
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return endpoint.read_text().strip()
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def access_lines(endpoint_url: str, packages: dict[str, str], dest: str = "installed",
                 registry: str = f"s3://{EMBEDDED_BUCKET}") -> list[str]:
    """Shell lines that reach a local registry: its environment, then quilt3 commands (CLI and
    Python) that install each package version named in packages (name -> top hash). The
    programs are named by their path in this environment, so they run in a new shell."""
    from flows.run.shell import program

    env = {"AWS_ENDPOINT_URL": endpoint_url, **LOCAL_CREDENTIALS,
           "QUILT_DISABLE_USAGE_METRICS": "true"}
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    for name, top_hash in packages.items():
        folder = f"{dest}/{name.replace('/', '_')}"
        lines.append(f"{program('quilt3')} install {name} --registry {registry} "
                     f"--top-hash {top_hash} --dest {folder}")
        code = (f"import quilt3; quilt3.Package.install({json.dumps(name)}, "
                f"registry={json.dumps(registry)}, top_hash={json.dumps(top_hash)}, "
                f"dest={json.dumps(folder)})")
        lines.append(f"{program('python')} -c {shlex.quote(code)}")
    if not packages:
        lines.append(f"# no package yet: publish one with --registry {registry} while this runs")
    return lines
