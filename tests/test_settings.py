"""The settings read their OPENIMAGER_* variables themselves, as pydantic-settings did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.settings import Settings, environment

ROOT = Path(__file__).resolve().parent.parent


def test_variables_are_read_when_settings_are_made_in_any_case(monkeypatch):
    monkeypatch.setenv("OPENIMAGER_EPOCHS", "3")
    monkeypatch.setenv("openimager_check_upstream", "false")
    monkeypatch.setenv("OpenImager_Workspace", "/data/ws")
    settings = Settings()
    assert (settings.epochs, settings.check_upstream, settings.workspace) == (
        3, False, Path("/data/ws"))
    assert {"epochs", "check_upstream", "workspace"} <= settings.model_fields_set
    assert "classes" not in settings.model_fields_set  # the demo tells given from default
    monkeypatch.setenv("OPENIMAGER_EPOCHS", "4")
    assert Settings().epochs == 4


def test_given_values_win_and_unknown_names_are_ignored(monkeypatch):
    monkeypatch.setenv("OPENIMAGER_CLASSES", "Car")
    monkeypatch.setenv("OPENIMAGER_NO_SUCH_SETTING", "1")
    monkeypatch.setenv("IMAGER_EPOCHS", "1")
    assert Settings(classes=["Dog", "Cat"]).classes == ["Dog", "Cat"]
    assert Settings().classes == ["Car"]
    assert Settings().epochs == 10
    assert environment({"OPENIMAGER_CLASSES": "Car", "OPENIMAGER_X": "1", "PATH": "/bin"}) == {
        "classes": "Car"}


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("OPENIMAGER_EPOCHS", "many", "epochs"),
    ("OPENIMAGER_MAX_IMAGES_PER_CLASS", "", "max_images_per_class"),
    ("OPENIMAGER_DEPICTION", "maybe", "depiction"),
    ("OPENIMAGER_CROP_MIN_DETAIL", "0.3", "crop_min_detail"),
    ("OPENIMAGER_IMAGE_FALLBACK_SOURCES", "flickr,ftp", "image_fallback_sources"),
    ("OPENIMAGER_CLASSES", '["Car"', "classes"),
])
def test_a_bad_variable_is_a_validation_error_naming_its_field(variable, value, field,
                                                               monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert raised.value.errors()[0]["loc"][0] == field


def test_defaults_are_validated_as_given_values_are():
    assert Settings().splits == ["train", "validation", "test"]
    assert Settings.model_config["validate_default"]


def test_settings_load_pydantic_but_not_pydantic_settings():
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from flows.settings import Settings; Settings(); "
                               "print(sorted({m.split('.')[0] for m in sys.modules} & "
                               "{'pydantic', 'pydantic_settings', 'asyncio', 'dotenv'}))"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['pydantic']"
