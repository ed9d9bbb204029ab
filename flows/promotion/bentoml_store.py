"""The BentoML model store: registering trained models with lineage, which one is promoted (the
gate, the promotion record and its pending marker), and building the Bento of the promoted one."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer

from model.atomic import write_json
from model.intervals import Outcome
from model.promotion import (
    DEFAULT_RULE,
    Decision,
    Incumbent,
    Rule,
    append_history,
    clear_pending,
    decide,
    read_history,
    read_pending,
    read_record,
    record_file,
    write_pending,
    write_record,
)
from model.registry_state import storable
from model.shadow import recorded

if TYPE_CHECKING:
    import keras

    from flows.promotion.registry import Registry

log = logging.getLogger(__name__)

MODEL_FILES = ("model.keras", "metrics.json")
REPORT_FILES = ("training_curves.png", "confusion_matrix.png", "reliability.png",
                "drift.png")  # when present
SUMMARY = "openimager.json"  # the whole training summary; BentoML metadata drops None values


def register_model(model_dir: Path, name: str, metadata: dict, labels: dict[str, str]) -> str:
    """Copy a trained model (and its report PNGs) into the BentoML store and return its tag."""
    with bentoml.models.create(name, labels=labels, metadata=storable(metadata)) as stored:
        for file in MODEL_FILES:
            shutil.copy2(model_dir / file, stored.path_of(file))
        for file in REPORT_FILES:
            if (model_dir / file).exists():
                shutil.copy2(model_dir / file, stored.path_of(file))
        write_json(Path(stored.path_of(SUMMARY)), metadata)
    return str(stored.tag)


def find_trained(name: str, label: str, value: str) -> tuple[str, dict] | None:
    """The newest stored model of name whose label equals value, with its training summary."""
    try:
        models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:  # nothing of this name yet
        return None
    found = sorted((m for m in models if m.info.labels.get(label) == value
                    and Path(m.path_of(SUMMARY)).exists()),
                   key=lambda m: m.info.creation_time, reverse=True)
    if not found:
        return None
    return str(found[0].tag), json.loads(Path(found[0].path_of(SUMMARY)).read_text())


def restore_model(tag: str, model_dir: Path) -> None:
    """Put a stored model's files back in model_dir, where publishing takes them from."""
    stored = bentoml.models.get(tag)
    model_dir.mkdir(parents=True, exist_ok=True)
    for old in model_dir.glob("*.png"):
        old.unlink()
    for file in (*MODEL_FILES, *REPORT_FILES):
        if Path(stored.path_of(file)).exists():
            shutil.copy2(stored.path_of(file), model_dir / file)


def load_model(tag: str) -> tuple[keras.Model, dict]:
    """A stored model, ready to predict, with its metadata."""
    import keras  # TensorFlow loads only when a model is needed

    stored = bentoml.models.get(tag)
    model = keras.saving.load_model(stored.path_of("model.keras"), compile=False)
    return model, dict(stored.info.metadata)


def bentoml_home() -> Path:
    """BentoML's home folder, where the store and the promotion records live."""
    return Path(BentoMLContainer.bentoml_home.get())


def promotion_file(name: str) -> Path:
    """Where the promoted version of a model is recorded, beside BentoML's own store."""
    return record_file(bentoml_home(), name)


def promoted(name: str) -> dict | None:
    """The promotion record of a model name ({"tag", "promoted_at", ...}), or None."""
    return read_record(bentoml_home(), name)


def promote(tag: str, **details: object) -> dict:
    """Record tag as the promoted (served) version of its model name: the one function that
    writes the record, for the flows and `python -m flows promote` alike.

    The record names the tag it replaced. Recording the promoted tag again (a rerun, a later
    publish of the same model) keeps its promotion time and what it replaced, and updates the
    rest with details. The pending marker of the name is cleared: this decision supersedes it.
    """
    home = bentoml_home()
    name = tag.split(":", 1)[0]
    before = read_record(home, name)
    again = before is not None and before["tag"] == tag
    if again:
        record = {**before, **details}
    else:
        record = {"tag": tag, "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "replaced": before["tag"] if before else None, **details}
    write_record(home, record)
    clear_pending(home, name)
    append_history(home, record)
    log.info("%s %s (replaced %s)", "recorded the promoted" if again else "promoted", tag,
             record.get("replaced"))
    return record


class UnknownModel(LookupError):
    """A tag that names no model in the BentoML store; the message says where it looked."""


def promote_stored(tag: str) -> tuple[dict, dict | None]:
    """Promote a stored model by hand (an older tag rolls back): check that tag is in the store,
    carry over where it was last published (from the promotion history), and record it.
    Returns the new record and the record it replaced (None if nothing was promoted)."""
    try:
        stored = bentoml.models.get(tag)
    except (bentoml.exceptions.BentoMLException, ValueError) as error:
        raise UnknownModel(f"no model {tag!r} in the BentoML store under {bentoml_home()}: "
                           "`bentoml models list` shows the stored tags") from error
    tag = str(stored.tag)  # "name:latest" resolved
    name = tag.split(":", 1)[0]
    before = promoted(name)
    published = next((r for r in reversed(read_history(bentoml_home(), name))
                      if r.get("tag") == tag and r.get("top_hash")), {})
    carried = {k: published[k] for k in ("package", "registry", "top_hash", "bento")
               if k in published}
    reason = "promoted by hand with python -m flows promote"
    return promote(tag, reason=reason, **carried), before


def pending(name: str) -> dict | None:
    """The promotion the gate decided for name but no publish has completed yet, or None."""
    return read_pending(bentoml_home(), name)


def finish_pending(name: str, newest: tuple[str, dict] | None, package: str,
                   registry: str) -> dict | None:
    """Finish a promotion that a run decided and published but was stopped before recording.

    newest is the package's newest revision (top hash, metadata) in the registry. If it holds
    the pending model, the publish happened: its record is written now. Otherwise the publish
    never completed and the marker is void (the next gate decides afresh). Returns the record
    written, or None.
    """
    marker = pending(name)
    if marker is None:
        return None
    if newest is not None and newest[1].get("model_tag") == marker["tag"]:
        log.warning("%s was published as %s@%s but its run stopped before recording the "
                    "promotion: recording it now", marker["tag"], package, newest[0][:12])
        return promote(marker["tag"], **marker["details"], package=package, registry=registry,
                       top_hash=newest[0])
    log.info("the pending promotion of %s was never published: dropped", marker["tag"])
    clear_pending(bentoml_home(), name)
    return None


Score = Callable[["keras.Model", dict], Outcome]  # a model's answers on the candidate's test split
# Shadow replay of a decision to promote against the incumbent: the decision it stands as.
Shadow = Callable[[Decision, Incumbent], Decision]


def incumbent(name: str, class_names: list[str], score: Score) -> Incumbent | None:
    """The promoted model of name, with its answers score(model, metadata) on the candidate's
    test split if its classes match."""
    record = promoted(name)
    if record is None:
        return None
    try:
        stored = bentoml.models.get(record["tag"])
    except bentoml.exceptions.NotFound:
        return Incumbent(record["tag"], (), None, missing=True)
    theirs = tuple(stored.info.metadata.get("class_names", ()))
    if set(theirs) != set(class_names):
        return Incumbent(str(stored.tag), theirs, None)  # not comparable: decide() says why
    model, metadata = load_model(record["tag"])
    return Incumbent(str(stored.tag), theirs, None, outcome=score(model, metadata),
                     model=model, image_size=metadata.get("image_size"),
                     promoted_at=record.get("promoted_at"))


def annotate_promotion(tag: str, **details: object) -> dict | None:
    """Add details learnt after the promotion (the Bento built of it) to the promotion record
    of tag's name if it still names tag; return the record, or None if tag is not the promoted
    one."""
    record = promoted(tag.split(":", 1)[0])
    if record is None or record["tag"] != tag:
        return None
    record = {**record, **details}
    write_record(bentoml_home(), record)
    append_history(bentoml_home(), record)
    return record


def gate(tag: str, class_names: list[str], metric: str, candidate_score: float | None,
         score: Score, force: bool = False, promote_now: bool = True,
         registry: Registry | None = None, cache: Path | None = None,
         candidate: Outcome | None = None, rule: Rule = DEFAULT_RULE,
         shadow: Shadow | None = None, **details: object) -> Decision:
    """Decide whether tag replaces the promoted model of its name.

    score(model, metadata) gives the promoted model's answers on the candidate's test split,
    crop by crop with their photos; candidate holds the candidate's own on the same crops, and
    rule says by how much and how surely the candidate must be better (model/promotion.py).
    A candidate that passes is then replayed by shadow, if given, on the uploads the service
    kept since the incumbent's promotion, which may refuse it (flows/watching/shadow.py).

    With a registry, the incumbent is the registry's promoted revision, whichever host trained
    it: its model comes from this host's store if it is there, else from the registry (into
    cache). A model trained on the data of a rolled-back one is refused unless forced, and a
    refusal is written to the registry's history. Without a registry (an embedded one never
    started), the promotion record beside this host's store decides, as on one machine.

    With promote_now, a promotion is recorded at once in the local record (the train flow,
    which publishes nothing; the registry learns of it only from a publish). Without, the
    decision is only marked pending beside the record, and in the registry's state when there
    is one: the retrain flow writes the promotion once the model is published, so nothing is
    served that the registry does not hold.
    """
    name = tag.split(":", 1)[0]
    if registry is not None:
        decision = registry_decision(tag, class_names, metric, candidate_score, score, force,
                                     registry, cache or bentoml_home() / "openimager" / "cache",
                                     details.get("dataset_id"), candidate, rule, shadow)
    else:
        record = promoted(name)
        if record is not None and record["tag"] == tag:  # a resumed run, the same model again
            return Decision(True, f"{tag} is already the promoted model", metric,
                            candidate_score, tag, candidate_score)
        theirs = incumbent(name, class_names, score)
        decision = shadowed(decide(metric, candidate_score, class_names, theirs, force,
                                   candidate, rule), theirs, shadow)
    if decision.promote:
        what = {"metric": metric, "score": candidate_score, "reason": decision.reason,
                **decision.figures(), **details}
        if decision.shadow is not None:
            what["shadow"] = recorded(decision.shadow)
        if promote_now:
            promote(tag, **what)
        else:
            decided_at = datetime.now(UTC).isoformat(timespec="seconds")
            write_pending(bentoml_home(), {
                "tag": tag, "decided_at": decided_at, "replaces": decision.incumbent_tag,
                "replaces_top_hash": decision.incumbent_top_hash, "details": what})
            if registry is not None and decision.incumbent_tag != tag:
                # In the registry too: a fresh container finishes it if this one dies
                # between its publish and the promotion's write.
                from flows.promotion.registry import mark_pending

                mark_pending(registry, tag, decided_at, decision.incumbent_top_hash, what)
    log.info("%s %s: %s", tag, "promoted" if decision.promote else "not promoted",
             decision.reason)
    return decision


def shadowed(decision: Decision, theirs: Incumbent | None, shadow: Shadow | None) -> Decision:
    """decision after shadow replay against theirs, when it promotes over a loaded model."""
    if not decision.promote or shadow is None or theirs is None or theirs.model is None:
        return decision
    return shadow(decision, theirs)


def registry_decision(tag: str, class_names: list[str], metric: str,
                      candidate_score: float | None, score: Score, force: bool,
                      registry: Registry, cache: Path, dataset_id: object,
                      candidate: Outcome | None = None, rule: Rule = DEFAULT_RULE,
                      shadow: Shadow | None = None) -> Decision:
    """The gate against the registry's promoted revision (see gate)."""
    from flows.promotion.registry import registry_incumbent, run_name
    from model import registry_state

    state, _ = registry.state()
    current = state.get("promoted")
    against = current.get("top_hash") if current else None
    if current is not None and current.get("tag") == tag:
        return Decision(True, f"{tag} is already the promoted model", metric, candidate_score,
                        tag, candidate_score, against)
    gone = registry_state.rolled_back(state, tag, str(dataset_id) if dataset_id else None)
    if gone and not force:
        decision = Decision(False, (
            f"{gone['tag']}, trained on the same data, was rolled back "
            f"({gone.get('at')}, {gone.get('by')}); promote it with force_promote "
            "(OPENIMAGER_FORCE_PROMOTE=true) if that is meant"), metric, candidate_score,
            current and current.get("tag"), None, against)
    else:
        theirs = registry_incumbent(registry, current, class_names, cache, score) \
            if current else None
        decision = shadowed(decide(metric, candidate_score, class_names, theirs, force,
                                   candidate, rule), theirs, shadow)
        where = f" (revision {against[:12]} in {registry.url})" if against else ""
        decision = replace(decision, reason=decision.reason + where,
                           incumbent_top_hash=against)
    if not decision.promote:
        registry.update(registry_state.note("rejected", {
            "tag": tag, "metric": metric, "score": candidate_score, "reason": decision.reason,
            **decision.figures(), "dataset_id": dataset_id,
            "by": registry_state.actor(run_name())},
            against=against, **({"shadow": recorded(decision.shadow)} if decision.shadow
                                else {})))
    return decision


def stored_model_file(tag: str) -> tuple[Path, dict] | None:
    """The model file and metadata of tag in this host's store, or None if it is not here."""
    try:
        stored = bentoml.models.get(tag)
    except (bentoml.exceptions.BentoMLException, ValueError):
        return None
    return Path(stored.path_of("model.keras")), dict(stored.info.metadata)


BENTO_BUILD_SECONDS = 900


def build_bento(tag: str, root: Path) -> str:
    """`bentoml build` the service in root with the promoted model packed; return the Bento's
    tag. Raises RuntimeError (with the end of the build's output) if it failed or packed
    another model than tag, e.g. because tag is no longer the promoted one."""
    # The promotion record picks the model (service/source.py): no variable may override it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENIMAGER_MODEL_PATH", "OPENIMAGER_MODEL_TAG")}
    env.update(OPENIMAGER_MODEL_NAME=tag.split(":", 1)[0], BENTOML_DO_NOT_TRACK="true")
    try:
        done = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                              cwd=root, env=env, capture_output=True, text=True,
                              timeout=BENTO_BUILD_SECONDS, check=False)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"bentoml build took over {BENTO_BUILD_SECONDS} s") from error
    found = re.search(r"__tag__:(\S+)", done.stdout)
    if done.returncode != 0 or not found:
        tail = (done.stdout + done.stderr).strip()[-1500:]
        raise RuntimeError(f"bentoml build exited with {done.returncode}: {tail}")
    bento = bentoml.bentos.get(found.group(1))
    packed = [str(m.tag) for service in bento.info.services for m in service.models]
    if packed != [tag]:
        raise RuntimeError(f"the Bento {bento.tag} packs {packed}, not {tag}")
    return str(bento.tag)
