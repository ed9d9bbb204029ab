"""The refresh flow retries what a retry can mend (the network) and nothing else."""

from __future__ import annotations

import shutil

import pytest
import requests

from flows.openimages.csvread import MetadataError
from flows.servers.mirror import StaticHTTP
from tests.conftest import SAMPLE

pytestmark = pytest.mark.integration


@pytest.fixture
def attempts(monkeypatch):
    """Counts calls of the refresh stage, with the retry delays cut to nothing."""
    import flows.refresh

    calls: list[int] = []
    real = flows.refresh.stages.refresh

    def counted(settings, run_chunks=None):
        calls.append(1)
        return real(settings, run_chunks)

    monkeypatch.setattr(flows.refresh.stages, "refresh", counted)
    monkeypatch.setattr(flows.refresh.refresh_task, "retry_delay_seconds", [0, 0])
    return calls


def test_a_malformed_csv_fails_the_run_on_its_first_attempt(harness, attempts, tmp_path):
    from flows.refresh import refresh

    root = tmp_path / "upstream"
    shutil.copytree(SAMPLE / "openimages", root)
    boxes = root / "v5" / "validation-annotations-bbox.csv"
    lines = boxes.read_text().splitlines(keepends=True)
    lines[5] = lines[5][:20] + "\n"
    boxes.write_text("".join(lines))
    with StaticHTTP(root) as mirror:
        state = refresh(classes=["Hamburger"], workspace=str(tmp_path / "ws"),
                        metadata_url=mirror.url, return_state=True)
    assert state.is_failed()
    with pytest.raises(MetadataError, match=r"validation-annotations-bbox\.csv from .* line 6"):
        state.result()
    assert len(attempts) == 1


def test_a_network_error_is_retried(harness, attempts, tmp_path, monkeypatch):
    import flows.refresh

    failures = iter([requests.ConnectionError("connection reset by peer"),
                     MetadataError("x.csv: line 3: expected 13 columns, got 4")])

    def flaky(settings, run_chunks=None):
        attempts.append(1)
        raise next(failures)

    monkeypatch.setattr(flows.refresh.stages, "refresh", flaky)
    monkeypatch.setattr(flows.refresh.stages, "validate_classes", lambda settings: ["/m/0cdn1"])
    state = flows.refresh.refresh(classes=["Hamburger"], workspace=str(tmp_path),
                                  return_state=True)
    with pytest.raises(MetadataError):
        state.result()
    assert len(attempts) == 2  # the reset was retried, the malformed file was not
