"""Build and run the worker image offline: a debootstrapped bookworm base, buildah, podman.

"Offline" means no image registry: the base is made here from Debian's packages, and the
image's pip install reaches PyPI. Every step is cached, so a rerun only rebuilds what changed:
the base by its inputs (suite, packages, the host's trust store), the venv layer by
requirements.lock (buildah --layers).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORAGE = Path("/var/lib/containers") if Path("/var/lib/containers").exists() else Path("/var")
CACHE = Path(os.environ.get("OPENIMAGER_CONTAINER_CACHE", ROOT / "workspace" / "container-cache"))
TOOLS = ("debootstrap", "buildah", "podman", "runc")
SUITE = "bookworm"  # ships Python 3.11, as requirements.lock wants
PACKAGES = ("python3", "python3-venv", "ca-certificates")
MIRROR = os.environ.get("OPENIMAGER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_REPO = "localhost/openimager-base"
WORKER = "localhost/openimager-worker:test"
TRUST_IN_BASE = "/etc/ssl/certs/host-trust.pem"
# runc as such, cgroupfs without systemd: what works in this sandbox, whatever containers.conf
# says. Both are global flags of podman and buildah.
CONTAINERS = ("--cgroup-manager", "cgroupfs")
RUNTIME = ("--runtime", "runc")
# podman's default rlimits (nofile 1048576) exceed what a process without CAP_SYS_RESOURCE may
# set, and runc then refuses to start; explicit values at or under the host's limits do.
NOFILE, NPROC = 16384, 32768


def cannot_run(reason: str | None) -> None:
    """Skip the caller's tests for reason (no root, tools or disk here); under CI (CI=true)
    fail instead, as a CI run whose image and deploy tests skipped tested neither."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def missing_tools() -> list[str]:
    """The container tools not on PATH (`make test-container` installs them)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def host_trust() -> Path | None:
    """The CA bundle this host's pip trusts; the base carries it, as a company base image
    carries its proxy's CA, so the image's pip reaches PyPI the same way."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def base_tag(trust: Path | None) -> str:
    """The base image's tag, naming its inputs, so a change of any of them builds a new one."""
    digest = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)}".encode())
    if trust is not None:
        digest.update(trust.read_bytes())
    return f"{BASE_REPO}:{SUITE}-{digest.hexdigest()[:12]}"


def ulimits() -> list[str]:
    """--ulimit flags within the host's hard limits."""
    nofile = min(NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(NPROC, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run(argv: Sequence[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a tool, capturing its output; raise with that output if it fails."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {done.returncode}:\n"
                           f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def image_exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image]).returncode == 0


def debootstrap(tarball: Path, trust: Path | None) -> None:
    """A minimal bookworm with Python, packed as a rootfs tarball for `podman import`."""
    rootfs = tarball.with_suffix(".tmp")
    shutil.rmtree(rootfs, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
         str(rootfs), MIRROR], timeout=1800)
    shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    if trust is not None:
        shutil.copyfile(trust, rootfs / TRUST_IN_BASE.lstrip("/"))
    partial = tarball.with_suffix(".partial")
    run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
    partial.rename(tarball)  # complete or absent: an interrupted run leaves no half tarball
    shutil.rmtree(rootfs)


def base_image(cache: Path = CACHE) -> tuple[str, dict[str, float]]:
    """The local base image, made (debootstrap, import) only when missing; and the times."""
    trust = host_trust()
    tag = base_tag(trust)
    times: dict[str, float] = {}
    if image_exists(tag):
        return tag, times
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"rootfs-{tag.rsplit(':', 1)[1]}.tar"
    if not tarball.exists():
        start = time.monotonic()
        debootstrap(tarball, trust)
        times["debootstrap"] = time.monotonic() - start
    start = time.monotonic()
    changes = ["--change", "CMD [\"/bin/bash\"]"]
    if trust is not None:
        changes += ["--change", f"ENV PIP_CERT={TRUST_IN_BASE}"]
    run(["podman", *CONTAINERS, "import", *changes, str(tarball), tag], timeout=600)
    times["import"] = time.monotonic() - start
    return tag, times


def build_worker(base: str, tag: str = WORKER, context: Path = ROOT) -> float:
    """buildah bud of the project's Dockerfile on base; return the seconds it took."""
    start = time.monotonic()
    run(["buildah", *CONTAINERS, "bud", *RUNTIME, "--layers", "--format", "docker",
         "--network", "host", *ulimits(), "--build-arg", f"BASE_IMAGE={base}", "-t", tag,
         "-f", str(context / "Dockerfile"), str(context)], timeout=3600)
    return time.monotonic() - start


def podman_run(image: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
               timeout: float = 900) -> subprocess.CompletedProcess:
    """Run argv in a fresh container on the host's network (the local servers are on
    127.0.0.1); returns whatever the container exited with."""
    flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
    return subprocess.run(
        ["podman", *RUNTIME, *CONTAINERS, "run", "--rm", "--network", "host", *ulimits(),
         *flags, image, *argv],
        capture_output=True, text=True, timeout=timeout)


def health(image: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK, run once in an idle container (podman's own timer needs
    systemd, which this machine does not run: it logs that and goes on)."""
    flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
    started = run(["podman", *RUNTIME, *CONTAINERS, "run", "--detach", "--network", "host",
                   *ulimits(), *flags, image, "sh", "-c", "sleep 300"], timeout=120)
    container = started.stdout.strip().splitlines()[-1]
    try:
        return subprocess.run(["podman", *RUNTIME, *CONTAINERS, "healthcheck", "run", container],
                              capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "0", container],
                       capture_output=True, timeout=120)


def inspect(image: str, template: str) -> str:
    """One field of the image's configuration, by Go template."""
    done = run(["podman", "image", "inspect", "--format", template, image], timeout=60)
    return done.stdout.strip()
