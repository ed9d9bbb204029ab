"""Where packages are published: any S3 bucket, or the embedded local registry, checked first."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def check_registry(registry: str) -> None:
    """Fail with one clear message when credentials are missing or wrong or the bucket absent."""
    import boto3  # only the commands that reach a registry pay for boto3
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    bucket = bucket_of(registry)
    try:
        # A fresh session: the default one caches credentials resolved earlier.
        boto3.session.Session().client("s3").head_bucket(Bucket=bucket)
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
def opened(registry: str, state_dir: Path) -> Iterator[str]:
    """Yield an s3:// registry URL ready for quilt3; "embedded" starts the local one.

    The embedded registry is a local S3 endpoint whose state lives in state_dir and survives
    restarts; while it runs, the standard AWS variables point quilt3 at it.
    """
    if registry != EMBEDDED:
        check_registry(registry)
        yield registry
        return
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", *LOCAL_CREDENTIALS)}
    with LocalS3(log_path=state_dir / "s3.log", state_file=state_dir / "s3-state.jsonl") as s3:
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
