"""Expected failures of `python -m flows`: which exit code each error type means, and the one or
two lines a user sees instead of a traceback (`--debug` shows the traceback)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import NamedTuple

NOT_REPRODUCED = 1  # also: some images failed to download (rerun to retry them)
BAD_INPUT = 2  # bad input or settings: fix the command line or the OPENIMAGER_* variable
UPSTREAM = 3  # an unreachable or failing upstream (metadata mirror, image source, registry)
INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the command line or the workspace that the command itself found."""


class Expected(NamedTuple):
    """One kind of expected failure: where its class lives, its exit code, what to do."""

    module: str
    name: str
    code: int
    hint: str | Callable[[BaseException], str] = ""
    applies: Callable[[BaseException], bool] = lambda error: True


def _http_hint(error: BaseException) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 404:
        return ("the server has no such file: check --metadata-url and --openimages-version, "
                "or leave the split out with --splits (OPENIMAGER_SPLITS)")
    return "the server refused the request: check --metadata-url, or try again later"


def _class_hint(error: BaseException) -> str:
    if "," in getattr(error, "name", ""):
        return ("class names are separated by spaces, not commas: --classes Hamburger Sandwich "
                "(quote a name with a space: \"Ice cream\"); `python -m flows classes TEXT` "
                "searches them")
    return "`python -m flows classes TEXT` searches the class names"


# The project's own packages: a module missing among these is a bug, not a missing dependency.
OWN_PACKAGES = ("flows", "model", "service", "benchmarks", "tests")
DEPENDENCY_HINT = ("`make venv` installs the dependencies into .venv; then run "
                   "`.venv/bin/python -m flows ...`, or `source .venv/bin/activate` first")


def _missing_dependency(error: BaseException) -> bool:
    name = getattr(error, "name", None) or ""
    return bool(name) and name.split(".")[0] not in OWN_PACKAGES


def missing_dependency_text(error: BaseException) -> str:
    """What a missing dependency means: this Python is not the project's environment."""
    return (f"the module {error.name!r} is missing from this Python ({sys.executable}): it "
            "lacks the project's dependencies")


def _connection_text(error: BaseException) -> str:
    url = getattr(getattr(error, "request", None), "url", None)
    return f"cannot reach {url}" if url else f"cannot connect: {error}"


# Looked up in order, first match wins. A class is imported only if its module is already
# loaded: an error of a module that never loaded cannot have been raised, and a failing
# command loads nothing new.
EXPECTED: tuple[Expected, ...] = (
    Expected("flows.commands.errors", "UsageError", BAD_INPUT),
    Expected("builtins", "ModuleNotFoundError", BAD_INPUT, DEPENDENCY_HINT,
             _missing_dependency),
    Expected("pydantic_core", "ValidationError", BAD_INPUT,
             "fix the flag or the OPENIMAGER_* variable; lists may be written a,b or as JSON"),
    Expected("pydantic_settings", "SettingsError", BAD_INPUT,
             "lists are comma-separated or JSON, e.g. OPENIMAGER_CLASSES=Hamburger,Sandwich"),
    Expected("flows.openimages.ontology", "UnknownClassError", BAD_INPUT, _class_hint),
    Expected("flows.openimages.select", "EmptySelection", BAD_INPUT,
             "choose other classes or loosen the box filters"),
    Expected("flows.publishing.secretscan", "SecretFound", BAD_INPUT),
    Expected("flows.promotion.bentoml_store", "UnknownModel", BAD_INPUT),
    Expected("flows.promotion.registry", "NoRevision", BAD_INPUT),
    Expected("flows.promotion.registry", "NothingToRollBack", BAD_INPUT),
    Expected("model.registry_state", "StateError", UPSTREAM,
             "check the registry's endpoint and credentials, then run the command again"),
    Expected("flows.watching.datachecks", "DataAnomaly", BAD_INPUT,
             "if the change is meant, rerun with --accept-anomalies (OPENIMAGER_ACCEPT_ANOMALIES)"),
    Expected("flows.publishing.reproduce", "ReproduceError", BAD_INPUT),
    # Uncommitted changes refused, or the training commit missing from this checkout.
    Expected("flows.publishing.lineage", "LineageError", BAD_INPUT),
    Expected("flows.servers.local", "PortInUse", BAD_INPUT, "pass another --port"),
    Expected("flows.publishing.reproduce", "NotReproduced", NOT_REPRODUCED),
    Expected("flows.publishing.registries", "RegistryError", UPSTREAM),
    Expected("flows.publishing.bundle", "PublishError", UPSTREAM),
    Expected("flows.openimages.csvread", "MetadataError", UPSTREAM,
             "the upstream file is malformed: fix or replace it on the mirror, then rerun"),
    Expected("flows.openimages.fetch", "ChecksumError", UPSTREAM,
             "the download did not verify; rerun, or check the mirror's copy"),
    # Their text says what to do too (flows/run/preflight.py require_weights).
    Expected("model.pretrained", "WeightsMissing", BAD_INPUT),
    Expected("model.pretrained", "WeightsUnreachable", UPSTREAM),
    Expected("requests", "HTTPError", UPSTREAM, _http_hint),
    Expected("requests", "ConnectionError", UPSTREAM,
             "check --metadata-url (OPENIMAGER_METADATA_URL) and the network"),
    Expected("requests", "Timeout", UPSTREAM, "the server did not answer in time; try again"),
)


def expected(error: BaseException) -> Expected | None:
    """The table's entry for an error, or None for an unexpected one."""
    for entry in EXPECTED:
        module = sys.modules.get(entry.module)
        kind = getattr(module, entry.name, None) if module else None
        if kind is not None and isinstance(error, kind) and entry.applies(error):
            return entry
    return None


def message(error: BaseException, entry: Expected) -> str:
    """What went wrong (and where) on the first line, what to do on the second."""
    if entry.name == "ValidationError":
        text = "bad setting: " + "; ".join(_setting_problem(item) for item in error.errors())
    elif entry.name == "ModuleNotFoundError":
        text = missing_dependency_text(error)
    elif entry.name == "ConnectionError":
        text = _connection_text(error)
    else:
        text = str(error) or type(error).__name__
    hint = entry.hint(error) if callable(entry.hint) else entry.hint
    return f"error: {text}" + (f"\n  {hint}" if hint else "")


def _setting_problem(item: dict) -> str:
    field = str(item["loc"][0]) if item["loc"] else ""
    where = (f"OPENIMAGER_{field.upper()} / --{field.replace('_', '-')}" if field
             else "settings")
    text = item["msg"].removeprefix("Value error, ")  # pydantic's prefix of a validator's own
    return f"{where}: {text} (got {item.get('input')!r})"


def quiet_tracebacks() -> None:
    """Drop the traceback from log records of expected errors (Prefect logs each failed task
    run with one); the record's message, which names the error, stays."""
    make = logging.getLogRecordFactory()
    if getattr(make, "quiets_expected", False):  # main() may run many times in one process
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.exc_info and record.exc_info[1] is not None and expected(record.exc_info[1]):
            record.exc_info = None
        return record

    factory.quiets_expected = True
    logging.setLogRecordFactory(factory)


def guarded(command: Callable[[], int], debug: bool = False) -> int:
    """Run a command; an expected error prints its lines and returns its exit code."""
    if not debug:
        quiet_tracebacks()
    try:
        return command()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        entry = expected(error)
        if entry is None or debug:
            raise
        print(message(error, entry), file=sys.stderr)
        return entry.code


def start(argv: list[str] | None = None) -> int:
    """`python -m flows`: the command line, or one line when this Python cannot even load it
    (its dependencies are missing: the parser's own modules need pydantic)."""
    try:
        from flows.commands.main import main
    except ModuleNotFoundError as error:
        args = sys.argv[1:] if argv is None else argv
        if "--debug" in args or not _missing_dependency(error):
            raise
        print(f"error: {missing_dependency_text(error)}\n  {DEPENDENCY_HINT}", file=sys.stderr)
        return BAD_INPUT
    return main(argv)
