"""Splits written as a,b; the table of expected errors; the command table."""

from __future__ import annotations

import pytest
import requests
from pydantic import ValidationError

from flows.commands.errors import BAD_INPUT, UPSTREAM, UsageError, expected, guarded, message
from flows.commands.main import main, parser
from flows.openimages.ontology import UnknownClassError
from flows.publishing.lineage import UncommittedChanges
from flows.settings import Settings


@pytest.mark.parametrize(("text", "splits"), [
    ("train", ["train"]),
    ("train,validation", ["train", "validation"]),
    (" validation , test ", ["validation", "test"]),
    ('["test"]', ["test"]),
])
def test_splits_from_the_environment(text, splits, monkeypatch):
    monkeypatch.setenv("OPENIMAGER_SPLITS", text)
    assert Settings().splits == splits


@pytest.mark.parametrize("text", ["", "train,tests", "[train"])
def test_bad_splits_are_a_validation_error(text, monkeypatch):
    monkeypatch.setenv("OPENIMAGER_SPLITS", text)
    with pytest.raises(ValidationError):
        Settings()


def test_errors_map_to_their_exit_codes():
    assert expected(UnknownClassError("x")).code == BAD_INPUT
    assert expected(UsageError("x")).code == BAD_INPUT
    assert expected(requests.ConnectionError("x")).code == UPSTREAM
    assert expected(UncommittedChanges("uncommitted changes: ...")).code == BAD_INPUT
    assert expected(RuntimeError("uncommitted changes: ...")) is None
    assert expected(RuntimeError("something else")) is None
    assert expected(KeyError("a bug")) is None


def test_a_404_names_the_url_and_the_way_out():
    response = requests.Response()
    response.status_code = 404
    error = requests.HTTPError("404 Client Error: Not Found for url: http://m/v5/x.csv",
                               response=response)
    text = message(error, expected(error))
    assert text.splitlines()[0] == "error: 404 Client Error: Not Found for url: http://m/v5/x.csv"
    assert "--splits" in text.splitlines()[1]


def test_unexpected_errors_keep_their_traceback(capsys):
    def bug() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        guarded(bug)
    assert guarded(lambda: (_ for _ in ()).throw(UsageError("no"))) == BAD_INPUT
    assert capsys.readouterr().err == "error: no\n"


def test_every_subcommand_knows_its_runner_and_takes_debug():
    sub = parser()._subparsers._group_actions[0]
    for name, command in sub.choices.items():
        assert callable(command.get_default("run")), name
        assert "--debug" in command._option_string_actions, name


def test_a_usage_error_is_two_lines(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["select", "--splits", "tests"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: argument --splits: 'tests': splits are among train, validation, test, e.g. "
        "--splits train,validation",
        "  see `python -m flows select --help`"]


def test_logged_expected_errors_lose_their_traceback_not_their_message(caplog):
    import logging

    guarded(lambda: 0)
    log = logging.getLogger("prefect.task_runs")
    for error in (UnknownClassError("unknown Open Images class 'X'"), KeyError("a bug")):
        try:
            raise error
        except Exception:
            log.error("Task run failed with exception: %r", error, exc_info=True)
    quiet, loud = caplog.records[-2:]
    assert quiet.exc_info is None and "unknown Open Images class" in quiet.getMessage()
    assert loud.exc_info is not None


@pytest.mark.parametrize(("variable", "text", "expected"), [
    ("OPENIMAGER_CLASSES", "Hamburger, Ice cream", ["Hamburger", "Ice cream"]),
    ("OPENIMAGER_CLASSES", '["Hamburger", "Ice cream"]', ["Hamburger", "Ice cream"]),
    ("OPENIMAGER_EXCLUDE_CLASSES", "Submarine sandwich", ["Submarine sandwich"]),
    ("OPENIMAGER_IMAGE_FALLBACK_SOURCES", "flickr,thumbnail", ["flickr", "thumbnail"]),
])
def test_every_list_setting_takes_commas_or_json(variable, text, expected, monkeypatch):
    monkeypatch.setenv(variable, text)
    field = variable.removeprefix("OPENIMAGER_").lower()
    assert getattr(Settings(), field) == expected
