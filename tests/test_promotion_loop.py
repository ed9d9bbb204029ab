"""The serving loop: a model is promoted only once it is published, through crashes; an operator
promotes (or rolls back) by hand; the Bento follows a promotion.

The invariant: after any retrain run, completed or killed, the promotion record (what the
service loads next) names the model of the package's newest revision, or nothing was promoted
yet. The one exception is the instant between a push and the record's write, which no order
of two writes to two stores avoids: there the record still names the previous revision's model
and the pending marker the new one, and the next run finishes that promotion first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flows.commands.main import main
from model.promotion import Decision

ROOT = Path(__file__).resolve().parent.parent


def stored_model(workdir: Path, name: str, classes: tuple[str, ...] = ("A", "B")) -> str:
    """A model in the BentoML store without TensorFlow: the promotion code never opens it."""
    from flows.promotion.bentoml_store import register_model

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "model.keras").write_bytes(b"not opened by these tests")
    (workdir / "metrics.json").write_text("{}")
    return register_model(workdir, name, {"class_names": list(classes), "dataset_id": "d1"},
                          {"dataset": "d1"})


def trained(tag: str, decision: Decision) -> dict:
    """The parts of a train summary the promotion reads."""
    return {"model_tag": tag, "dataset_id": "d1", "promoted": decision.promote,
            "promotion": decision.as_dict()}


def published(top_hash: str, name: str = "loop/pkg") -> dict:
    return {"name": name, "registry": "s3://loop-registry", "top_hash": top_hash,
            "pushed": True}


def never(*_):
    raise AssertionError("no model is scored here")


def test_the_gate_only_decides_and_the_record_waits_for_the_publish(tmp_path):
    from flows.pipeline.release import record_promotion
    from flows.promotion.bentoml_store import gate, pending, promoted, promotion_file

    name = "order-classifier"
    tag = stored_model(tmp_path, name)
    decision = gate(tag, ["A", "B"], "macro_f1", 0.5, never, promote_now=False,
                    dataset_id="d1")
    assert decision.promote and "first model" in decision.reason
    assert promoted(name) is None  # nothing is served before the publish
    marker = pending(name)
    assert marker["tag"] == tag and marker["replaces"] is None
    assert (promotion_file(name).parent / f"{name}.pending.json").is_file()  # for operators

    record = record_promotion(trained(tag, decision), published("h" * 64))
    assert promoted(name) == record and pending(name) is None
    assert (record["tag"], record["top_hash"], record["package"]) == (tag, "h" * 64, "loop/pkg")
    assert record["replaced"] is None and record["reason"] == decision.reason

    # A rerun: already the promoted model; recording it again keeps when and why.
    again = gate(tag, ["A", "B"], "macro_f1", 0.5, never, promote_now=False)
    assert again.promote and "already the promoted model" in again.reason
    assert pending(name) is None
    kept = record_promotion(trained(tag, again), published("h" * 64))
    assert kept == record


def test_a_pending_promotion_is_finished_only_if_its_model_was_published(tmp_path):
    from flows.promotion.bentoml_store import finish_pending, gate, pending, promote, promoted

    name = "pending-classifier"
    first = stored_model(tmp_path / "first", name)
    second = stored_model(tmp_path / "second", name, ("A", "B", "C"))
    promote(first, package="loop/pkg", top_hash="1" * 64)

    def decide_second():  # other classes: not scored, promoted only by force
        gate(second, ["A", "B", "C"], "macro_f1", 0.9, never, force=True, promote_now=False)
        assert pending(name)["tag"] == second and pending(name)["replaces"] == first

    decide_second()
    # The run stopped before its push: the newest revision is still the first model's.
    assert finish_pending(name, ("1" * 64, {"model_tag": first}), "loop/pkg", "s3://r") is None
    assert pending(name) is None and promoted(name)["tag"] == first
    decide_second()
    assert finish_pending(name, None, "loop/pkg", "s3://r") is None  # nothing published at all
    assert promoted(name)["tag"] == first
    decide_second()
    # The push went through, the record was not written: finished now, with the gate's reason.
    record = finish_pending(name, ("2" * 64, {"model_tag": second}), "loop/pkg", "s3://r")
    assert record == promoted(name) and pending(name) is None
    assert (record["tag"], record["top_hash"], record["replaced"]) == (second, "2" * 64, first)
    assert "forced promotion" in record["reason"]


def test_a_promotion_by_hand_after_the_gate_is_not_overwritten(tmp_path):
    from flows.pipeline.release import record_promotion
    from flows.promotion.bentoml_store import gate, promote, promoted

    name = "race-classifier"
    first, second = (stored_model(tmp_path / str(i), name) for i in (1, 2))
    third = stored_model(tmp_path / "3", name, ("A", "B", "C"))  # other classes: not scored
    promote(second)
    decision = gate(third, ["A", "B", "C"], "macro_f1", 0.9, never, force=True,
                    promote_now=False)
    promote(first)  # an operator rolls back while the run publishes
    assert record_promotion(trained(third, decision), published("3" * 64)) is None
    assert promoted(name)["tag"] == first


def test_promote_command_promotes_rolls_back_and_refuses_unknown_tags(tmp_path, capsys):
    from flows.pipeline.release import record_promotion
    from flows.promotion.bentoml_store import gate, promoted

    name = "cli-promote-classifier"
    first = stored_model(tmp_path / "first", name)
    second = stored_model(tmp_path / "second", name, ("A", "B", "C"))  # not scored

    assert main(["promote", first, "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"promoted {first} (nothing was promoted before)" in out
    assert "no published package revision of it is known" in out
    # The flow publishes the first, then a second model replaces it.
    record_promotion(trained(first, Decision(True, "x", "macro_f1", 0.5, first, 0.5)),
                     published("1" * 64))
    decision = gate(second, ["A", "B", "C"], "macro_f1", 0.6, never, force=True,
                    promote_now=False)
    record_promotion(trained(second, decision), published("2" * 64))
    assert promoted(name)["tag"] == second

    # Rolling back: the older tag is served again, with the revision it was published in.
    assert main(["promote", first, "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"promoted {first} (replaced {second})" in out
    assert f"published as loop/pkg@{'1' * 12} in s3://loop-registry" in out
    record = promoted(name)
    assert (record["tag"], record["replaced"], record["top_hash"]) == (first, second, "1" * 64)
    assert "by hand" in record["reason"]

    assert main(["promote", first, "--workspace", str(tmp_path)]) == 0
    assert "it already was the promoted model" in capsys.readouterr().out

    for unknown in (f"{name}:nosuchversion", "no-such-classifier", "Not A Tag!"):
        assert main(["promote", unknown, "--workspace", str(tmp_path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("error: no model") and captured.err.count("\n") == 1
    assert promoted(name) == record  # untouched


def test_a_failed_bento_build_leaves_the_promotion(tmp_path, monkeypatch):
    import flows.promotion.bentoml_store
    from flows.pipeline import release
    from flows.promotion.bentoml_store import promoted
    from flows.settings import Settings

    def broken(tag, root):
        raise RuntimeError("bentoml build exited with 1: disk full")

    name = "bentofail-classifier"
    tag = stored_model(tmp_path / "m", name)
    monkeypatch.setattr(flows.promotion.bentoml_store, "build_bento", broken)
    decision = Decision(True, "first model of this name: nothing was promoted yet", "macro_f1",
                        0.5)
    summary = release.promote_published(Settings(workspace=tmp_path, build_bento=True),
                                       trained(tag, decision), published("b" * 64))
    assert summary["bento"] == {"tag": None,
                                "error": "bentoml build exited with 1: disk full"}
    assert promoted(name)["tag"] == tag and "bento" not in promoted(name)
    on_disk = json.loads((tmp_path / "summaries" / "promote.json").read_text())
    assert on_disk["bento"]["error"] and on_disk["promotion"]["tag"] == tag


@pytest.mark.integration
@pytest.mark.slow
def test_the_bento_of_a_promotion_is_built_and_recorded(tmp_path):
    import bentoml

    from flows.pipeline import release
    from flows.promotion.bentoml_store import promoted
    from flows.settings import Settings
    from tests.servicekit import register_tiny_model

    name = "bentoloop-classifier"
    tag = register_tiny_model(tmp_path / "model", name=name)
    decision = Decision(True, "first model of this name: nothing was promoted yet", "macro_f1",
                        0.4)
    started = time.monotonic()
    summary = release.promote_published(Settings(workspace=tmp_path, build_bento=True),
                                       trained(tag, decision), published("c" * 64))
    print(f"\nbentoml build: {time.monotonic() - started:.1f} s")
    bento_tag = summary["bento"]["tag"]
    assert bento_tag, summary["bento"]["error"]
    assert summary["promotion"]["bento"] == bento_tag == promoted(name)["bento"]
    assert promoted(name)["top_hash"] == "c" * 64
    bento = bentoml.bentos.get(bento_tag)
    assert [str(m.tag) for s in bento.info.services for m in s.models] == [tag]


# --- the retrain flow killed at each stage boundary, and rerun ---------------------------

MODEL = "loop-classifier"
PACKAGE = "loop/classifier"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class Loop:
    """`python -m flows retrain` runs on one workspace, each in its own process group."""

    workspace: Path
    env: dict[str, str]
    args: list[str]
    logs: Path
    seconds: list[tuple[str, float]] = field(default_factory=list)

    def run(self, seed: int, kill_at: str | None = None, force: bool = True
            ) -> tuple[int, int, str]:
        """Run retrain (seed picks a new model); return its exit code, pid and stdout."""
        env = {**self.env, "OPENIMAGER_SEED": str(seed)}
        if kill_at:
            env["OPENIMAGER_TEST_KILL_AT"] = kill_at
        name = f"seed{seed}-{kill_at or 'rerun'}"
        started = time.monotonic()
        with (self.logs / f"{name}.out").open("w") as out, \
                (self.logs / f"{name}.err").open("w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "flows", "retrain", *self.args,
                 *(["--force-promote"] if force else [])],
                cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
            try:
                code = process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
        self.seconds.append((name, round(time.monotonic() - started, 1)))
        stdout = (self.logs / f"{name}.out").read_text()
        assert code in (0, -signal.SIGKILL), \
            f"{name} exited with {code}:\n{(self.logs / f'{name}.err').read_text()[-4000:]}"
        return code, process.pid, stdout

    def state(self) -> tuple[dict | None, tuple[str, dict] | None, dict | None]:
        """The promotion record, the package's newest revision (top hash, metadata) and the
        pending marker; checks that a promoted model is one the registry holds."""
        import quilt3

        from flows.promotion.bentoml_store import pending, promoted
        from flows.publishing.bundle import latest_meta
        from flows.publishing.registries import opened

        record = promoted(MODEL)
        with opened("embedded", self.workspace / "registry") as registry:
            newest = latest_meta(PACKAGE, registry)
            if record is not None:  # the served model is always a published one
                revision = quilt3.Package.browse(PACKAGE, registry=registry,
                                                 top_hash=record["top_hash"])
                assert revision.meta["model_tag"] == record["tag"]
        return record, newest, pending(MODEL)


def result_of(stdout: str) -> dict:
    """The run's result, the JSON the command prints last (after Keras' progress lines)."""
    return json.loads(stdout[stdout.index("{\n"):] if stdout.startswith("{\n")
                      else stdout[stdout.index("\n{\n") + 1:])


def assert_invariant(record: dict | None, newest: tuple[str, dict] | None,
                     marker: dict | None, killed_at: str | None) -> None:
    """The record names the newest revision's model, or nothing was promoted; or, killed
    between the push and the record, the pending marker names the newest revision's model and
    the record the model it replaces."""
    newest_tag = newest[1]["model_tag"] if newest else None
    if record is None or record["tag"] == newest_tag:
        if record is not None:
            assert record["top_hash"] == newest[0]
        return
    assert killed_at == "publish", (record, newest_tag, marker)
    assert marker is not None and marker["tag"] == newest_tag
    assert marker["replaces"] == record["tag"]


# Runs on one seed (one new model) killed at these boundaries in turn, then a rerun: the kills
# before training share one rerun, as each run already gets past where the one before it died.
KILLS = ((1, ("refresh", "build")), (2, ("train",)), (3, ("publish",)))


@pytest.mark.integration
@pytest.mark.slow
def test_the_promotion_follows_the_publish_through_kills(tmp_path, local_s3, mirror,
                                                        prefect_api):
    logs = tmp_path / "logs"
    logs.mkdir()
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENIMAGER_", "PREFECT_", "AWS_ENDPOINT_URL"))}
    env.update(PREFECT_HOME=str(home), OPENIMAGER_MODEL_NAME=MODEL,
               OPENIMAGER_IMAGE_SIZE="32", OPENIMAGER_BATCH_SIZE="32",
               OPENIMAGER_CROP_WORKERS="1")
    # One Prefect server for every run of the loop, as a worker's runs have, instead of a
    # local one started by each.
    env["PREFECT_API_URL"] = prefect_api
    loop = Loop(tmp_path / "workspace", env, [
        "--workspace", str(tmp_path / "workspace"), "--metadata-url", mirror.url,
        "--image-endpoint-url", local_s3.endpoint_url, "--classes", "Hamburger",
        "Sandwich", "--max-images-per-class", "15", "--epochs", "1", "--architecture",
        "seed-cnn", "--registry", "embedded", "--package-name", PACKAGE], logs)
    run_the_loop(loop)


def run_the_loop(loop: Loop) -> None:
    """Kill the runs at each stage boundary, rerun, and check the invariant after each run."""
    import bentoml

    from flows.promotion.bentoml_store import promoted

    def stored() -> set[str]:
        try:
            return {str(m.tag) for m in bentoml.models.list(MODEL)}
        except bentoml.exceptions.NotFound:
            return set()

    for seed, boundaries in KILLS:  # a new seed: a new model
        before, killed = promoted(MODEL), []
        for boundary in boundaries:
            models = stored()
            code, pid, _ = loop.run(seed, kill_at=boundary)
            assert code == -signal.SIGKILL, f"the run was not killed at {boundary}"
            killed.append(pid)
            record, newest, marker = loop.state()
            assert_invariant(record, newest, marker, boundary)
            assert record == before  # a killed run never moves what the service loads
            new = stored() - models
            if boundary in ("refresh", "build"):
                assert new == set() and marker is None
            else:
                (candidate,) = new
                assert marker["tag"] == candidate  # an operator sees what is pending
                published_tag = newest[1]["model_tag"] if newest else None
                assert (published_tag == candidate) == (boundary == "publish")
        leftovers = [m for pid in killed for m in group_members(pid)]  # e.g. the registry's

        # The rerun, with the killed runs' processes still there. After a kill past the push
        # it runs without --force-promote: the promotion the killed run published is finished
        # first, whatever this run's gate would say.
        code, _, stdout = loop.run(seed, force=boundary != "publish")
        for member in [m for pid in killed for m in group_members(pid)]:
            os.kill(member, signal.SIGKILL)
        assert code == 0
        result = result_of(stdout)
        record, newest, marker = loop.state()
        assert_invariant(record, newest, marker, None)
        tag = result["train"]["model_tag"]
        assert record["tag"] == newest[1]["model_tag"] == tag and marker is None
        assert record["replaced"] == (before["tag"] if before else None)
        assert result["promotion"] == record and result["train"]["promoted"]
        assert result["train"]["reused"] == (boundary in ("train", "publish"))
        if boundary == "publish":
            assert "already the promoted model" in result["train"]["promotion_reason"]
            assert not result["publish"]["pushed"]  # the killed run's revision, found again
            assert result["publish"]["top_hash"] == newest[0]
        else:
            assert result["publish"]["pushed"] and "forced" in record["reason"]
        print(f"killed at {boundaries}: {len(leftovers)} process(es) left during the rerun")

    # A run with nothing new changes nothing.
    code, _, stdout = loop.run(len(KILLS), force=False)
    result = result_of(stdout)
    assert code == 0 and result["promotion"] == record and not result["publish"]["pushed"]
    assert loop.state()[0] == record
    print(f"run times: {loop.seconds}")
