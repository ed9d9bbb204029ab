"""Fail fast: check the settings a worker container needs before any work starts.

A broken setting otherwise surfaces late: a registry without credentials fails at publish, after
the download and the training. The worker image's entrypoint runs this first:

    python -m flows.run.preflight [--reach] [--exec] [--] [COMMAND ...]

--exec then runs COMMAND (a `python -m flows` subcommand, `prefect ...` or `bentoml ...`; a
`prefect worker start` gets --with-healthcheck), --reach also asks PREFECT_API_URL for its
health and, when the container's main process is a Prefect worker, the worker's own health
server whether it still polls the API (the image's HEALTHCHECK), and, for train and retrain,
whether the ImageNet weights are in the Keras cache or can be downloaded. Problems exit with
EX_CONFIG (78).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# `python -m flows` registers the check command from here: the settings and urllib load only
# when it runs, not for every other command.
if TYPE_CHECKING:
    from flows.settings import Settings

EX_CONFIG = 78  # sysexits.h: configuration error
SKIP_VARIABLE = "OPENIMAGER_PREFLIGHT"  # "off": start without checking
# Commands run as they are; anything else is a `python -m flows` subcommand (note that
# `install` is one, and also a coreutils binary: no PATH lookup decides this).
PASSTHROUGH = ("prefect", "bentoml", "python", "python3", "sh", "bash")
# A Prefect worker's health server (`--with-healthcheck`): /health fails once it stops polling.
WORKER_HEALTH_FLAG = "--with-healthcheck"
MAIN_PROCESS = Path("/proc/1/cmdline")  # in a container, the command the entrypoint exec'd
# What `python -m flows` flags override in the settings the check sees.
FLAG_SETTINGS = ("registry", "workspace", "architecture")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
CREDENTIAL_VARIABLES = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def load_settings(overrides: Mapping[str, str] | None = None) -> tuple[Settings | None, list[str]]:
    """Settings from OPENIMAGER_* variables (and overrides), or why they cannot be read."""
    from pydantic import ValidationError

    from flows.settings import Settings

    try:
        return Settings(**(overrides or {})), []
    except ValidationError as error:
        return None, [_validation_message(item) for item in error.errors()]


def _validation_message(item: Mapping) -> str:
    name = f"OPENIMAGER_{str(item['loc'][0]).upper()}" if item["loc"] else "settings"
    return f"{name}: {item['msg']} (got {item.get('input')!r})"


def flag_overrides(argv: Sequence[str]) -> dict[str, str]:
    """The settings that a `python -m flows` command line sets with flags, e.g. --registry."""
    if not argv or argv[0] in PASSTHROUGH:
        return {}
    parser = argparse.ArgumentParser(add_help=False)
    for name in FLAG_SETTINGS:
        parser.add_argument(f"--{name}")
    known, _ = parser.parse_known_args(argv[1:])
    return {name: value for name, value in vars(known).items() if value is not None}


def workspace_problem(workspace: Path) -> str | None:
    """Why the workspace cannot be created or written, if it cannot."""
    path = workspace.absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"workspace {path}: {existing} is not a folder"
    # access() also answers EROFS for root, so a read-only mount is caught too.
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"workspace {path} is not writable for uid {os.getuid()} ({existing}): "
                "mount a writable volume there or set OPENIMAGER_WORKSPACE")
    return None


def registry_problems(registry: str, env: Mapping[str, str], home: Path) -> list[str]:
    """An s3:// registry must name a bucket and have credentials; 'embedded' needs neither."""
    if registry == "embedded":
        return []
    if not registry.startswith("s3://"):
        return [f"OPENIMAGER_REGISTRY must be 'embedded' or s3://BUCKET, got {registry!r}"]
    bucket = registry[5:].split("/", 1)[0]
    if not bucket:
        return [f"OPENIMAGER_REGISTRY {registry!r} names no bucket: use s3://BUCKET"]
    found = [] if BUCKET_NAME.fullmatch(bucket) else [
        f"OPENIMAGER_REGISTRY {registry!r}: {bucket!r} is not a valid S3 bucket name"]
    return found + credential_problems(registry, env, home) + endpoint_problems(env)


def credential_problems(registry: str, env: Mapping[str, str], home: Path) -> list[str]:
    """Credentials as boto3 finds them, without asking any server (no instance metadata)."""
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and not secret:
        return [f"AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not (registry {registry})"]
    if secret and not key:
        return [f"AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not (registry {registry})"]
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE", str(home / ".aws" / "credentials")),
             env.get("AWS_CONFIG_FILE", str(home / ".aws" / "config")))
    if key or any(env.get(name) for name in CREDENTIAL_VARIABLES) or any(
            Path(file).is_file() for file in files):
        return []
    return [f"no AWS credentials for registry {registry}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a mounted ~/.aws (an instance role is "
            f"not checked here: set {SKIP_VARIABLE}=off to rely on one)"]


def endpoint_problems(env: Mapping[str, str]) -> list[str]:
    """A custom S3 endpoint (a local or non-AWS S3) must be a URL."""
    url = env.get("AWS_ENDPOINT_URL")
    if url and not url.startswith(("http://", "https://")):
        return [f"AWS_ENDPOINT_URL must be an http(s) URL, got {url!r}"]
    return []


TRAINING_COMMANDS = ("train", "retrain")
WEIGHTS_HINT = ("put that file in the Keras cache, set OPENIMAGER_WEIGHTS to a local "
                ".weights.h5 of the backbone (or none), or use --architecture seed-cnn "
                "(as a flow parameter, architecture: seed-cnn)")


def weights_problems(settings: Settings, env: Mapping[str, str], reach: bool = False,
                     timeout: float = 5.0) -> list[str]:
    """The weights a transfer model starts from: a local file must exist; with reach, the
    ImageNet weights must be in the Keras cache or their URL must answer (a HEAD request)."""
    from model.pretrained import imagenet_problem, local_problem

    if settings.architecture != "transfer" or settings.weights is None:
        return []
    if str(settings.weights) != "imagenet":
        problem = local_problem(settings.weights)
        return [problem] if problem else []
    problem = imagenet_problem(settings.backbone, env, timeout) if reach else None
    return [problem] if problem else []


def require_weights(settings: Settings, env: Mapping[str, str] | None = None) -> None:
    """The weights a transfer model starts from, checked before any work: training otherwise
    fails only after the refresh and the crop. A missing local file raises WeightsMissing;
    ImageNet weights neither in the Keras cache nor downloadable raise WeightsUnreachable,
    whose text also says what to do, as a flow run's failure shows nothing else. Asks the
    weights' URL (HEAD) at most."""
    from model.pretrained import WeightsMissing, WeightsUnreachable

    found = weights_problems(settings, os.environ if env is None else env, reach=True)
    if not found:
        return
    if str(settings.weights) != "imagenet":
        raise WeightsMissing(found[0])
    raise WeightsUnreachable(f"{found[0]}\n  {WEIGHTS_HINT}")


def is_worker(argv: Sequence[str]) -> bool:
    """A Prefect worker: it polls the API for flow runs and runs them from the project dir."""
    return list(argv[:2]) == ["prefect", "worker"]


def worker_problems(env: Mapping[str, str]) -> list[str]:
    """What prefect.yaml's deployments need from a worker's environment."""
    found = []
    api = env.get("PREFECT_API_URL")
    if not api:
        found.append("PREFECT_API_URL is not set: a worker needs the Prefect server's API, "
                     "e.g. http://prefect-server:4200/api")
    elif not api.startswith(("http://", "https://")):
        found.append(f"PREFECT_API_URL must be an http(s) URL, got {api!r}")
    project = env.get("OPENIMAGER_PROJECT_DIR")
    if not project or not (Path(project) / "prefect.yaml").is_file():
        found.append(f"OPENIMAGER_PROJECT_DIR ({project or 'not set'}) must be the folder with "
                     "prefect.yaml: the deployments' pull step runs the flows from there")
    return found


def problems(settings: Settings, env: Mapping[str, str], argv: Sequence[str] = (),
             home: Path | None = None) -> list[str]:
    """Everything wrong with these settings for running argv; empty when it may start."""
    home = home or Path(env.get("HOME", "~")).expanduser()
    found = registry_problems(settings.registry, env, home)
    if (workspace := workspace_problem(settings.workspace)) is not None:
        found.append(workspace)
    if is_worker(argv):
        found += worker_problems(env)
    if argv[:1] and argv[0] in TRAINING_COMMANDS:
        found += weights_problems(settings, env)
    return found


def reach_problems(env: Mapping[str, str], timeout: float = 5.0) -> list[str]:
    """Whether the Prefect API answers its health endpoint, when one is configured."""
    api = env.get("PREFECT_API_URL")
    if not api:
        return []
    url = api.rstrip("/") + "/health"
    error = unhealthy(url, timeout)
    return [f"the Prefect API does not answer at {url}: {error}"] if error else []


def unhealthy(url: str, timeout: float) -> Exception | None:
    """Why a GET of a health URL failed, or None when it answered."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        return error
    return None


def worker_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `prefect worker start` when argv runs a Prefect worker (as a
    process's command line shows it: `python .../prefect worker start ...`), else None."""
    for index, word in enumerate(argv):
        if Path(word).name == "prefect":
            return list(argv[index + 3:]) if list(argv[index + 1:index + 3]) == [
                "worker", "start"] else None
    return None


def alive_problems(env: Mapping[str, str], main_process: Path = MAIN_PROCESS,
                   timeout: float = 10.0) -> list[str]:
    """When the container's main process is a Prefect worker: whether its health server says
    it is alive (it polled the API lately). Any other command: nothing to ask."""
    try:
        argv = [w.decode() for w in main_process.read_bytes().split(b"\0") if w]
    except OSError:
        return []
    rest = worker_argv(argv)
    if rest is None:
        return []
    if WORKER_HEALTH_FLAG not in rest:
        return [f"the Prefect worker runs without {WORKER_HEALTH_FLAG}: nothing says whether "
                "it is alive"]
    port = env.get("PREFECT_WORKER_WEBSERVER_PORT") or "8080"
    url = f"http://127.0.0.1:{port}/health"
    error = unhealthy(url, timeout)
    return [f"the Prefect worker is not alive: {url} answered {error}"] if error else []


def check(argv: Sequence[str], env: Mapping[str, str], reach: bool = False) -> list[str]:
    """Load the settings as argv would see them and list every problem."""
    settings, found = load_settings(flag_overrides(argv))
    if settings is not None:
        found = problems(settings, env, argv)
    if reach:
        found += reach_problems(env) + alive_problems(env)
        if settings is not None and argv[:1] and argv[0] in TRAINING_COMMANDS:
            found += [problem for problem in weights_problems(settings, env, reach=True)
                      if problem not in found]
    return found


def report(argv: Sequence[str], found: Sequence[str]) -> str:
    """The message printed before refusing to start."""
    command = " ".join(argv) or "the container"
    lines = [f"openimager: not starting {command!r}: {len(found)} problem(s) with the settings"]
    lines += [f"  - {problem}" for problem in found]
    lines.append(f"(fix them, or set {SKIP_VARIABLE}=off to start anyway)")
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> list[str]:
    """What to exec for argv: itself when it names a program (a Prefect worker with its health
    server), else `python -m flows argv`."""
    if argv and (argv[0] in PASSTHROUGH or "/" in argv[0]):
        rest = worker_argv(argv)
        if rest is not None and WORKER_HEALTH_FLAG not in rest:
            return [*argv, WORKER_HEALTH_FLAG]
        return list(argv)
    return [sys.executable, "-m", "flows", *(argv or ["--help"])]


def split_options(argv: Sequence[str]) -> tuple[set[str], list[str]]:
    """Leading --reach/--exec, then the command; not argparse, so `--help` reaches flows."""
    rest = list(argv)
    options = set()
    while rest and rest[0] in ("--reach", "--exec"):
        options.add(rest.pop(0))
    if rest[:1] == ["--"]:
        rest.pop(0)
    return options, rest


def run(argv: Sequence[str], reach: bool = False) -> int:
    """Check, print the verdict, and return the exit status."""
    if os.environ.get(SKIP_VARIABLE) == "off":
        return 0
    found = check(argv, os.environ, reach=reach)
    if found:
        print(report(argv, found), file=sys.stderr)
        return EX_CONFIG
    return 0


def add_check_command(sub: argparse._SubParsersAction) -> None:
    """`python -m flows check [--reach] [COMMAND ...]`."""
    check_cmd = sub.add_parser("check", help="check the settings a worker needs (exit 78 if not)")
    check_cmd.add_argument("--reach", action="store_true",
                           help="also ask PREFECT_API_URL for its health, and whether "
                                "train's ImageNet weights can be downloaded")
    check_cmd.add_argument("argv", nargs=argparse.REMAINDER,
                           help="the command to check for, e.g. prefect worker start")


def run_check_command(args: argparse.Namespace) -> int:
    """Run `python -m flows check`; print ok or the problems."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    status = run(argv, reach=args.reach)
    if status == 0:
        print("ok: the settings are complete")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The container entrypoint: check, then exec the command with --exec."""
    options, command = split_options(sys.argv[1:] if argv is None else argv)
    status = run(command, reach="--reach" in options)
    if status or "--exec" not in options:
        return status
    target = command_line(command)
    os.execvp(target[0], target)
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
