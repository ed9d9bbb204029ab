"""Publishing data, model, code and environment as one quilt3 package, and installing it."""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flows.openimages.card import REAL_RUN
from flows.publishing.lineage import (
    PROJECT_ROOT,
    UncommittedChanges,
    export_source,
    sha256_file,
    sha256_text,
    tree_digest,
)
from flows.publishing.s3clients import boto3_session, quilt3_module
from flows.publishing.secretscan import refuse_secrets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """A package version in a registry; pushed is false when an identical one was there."""

    name: str
    registry: str
    top_hash: str
    pushed: bool = True


def stage_bundle(dataset_dir: Path, model_dir: Path, meta: dict, staging: Path,
                 root: Path = PROJECT_ROOT, image_dir: Path | None = None) -> Path:
    """Lay out data/, model/, code/, env/ and README.md under staging; return staging.

    code/ and env/ come from the commit the model was trained at (meta's git_commit); with
    image_dir, the source photos of the crops go along under data/images/. The dataset goes as
    its shards and tables (hard links where the file system allows), not per-crop files.
    """
    shutil.copytree(dataset_dir, staging / "data", dirs_exist_ok=True, copy_function=_link,
                    ignore=lambda folder, names: ["crops"] if Path(folder) == dataset_dir
                    and (dataset_dir / "shards").is_dir() else [])
    if image_dir is not None:
        copy_source_images(dataset_dir, image_dir, staging / "data" / "images")
    (staging / "model").mkdir(parents=True, exist_ok=True)
    for path in [model_dir / "model.keras", model_dir / "metrics.json",
                 *sorted(model_dir.glob("*.png"))]:
        shutil.copy2(path, staging / "model" / path.name)
    env = staging / "env"
    export_source(staging / "code", meta["git_commit"], root, env=env,
                  changes=meta.get("git_changes") if meta.get("dirty") else None)
    (env / "python-version.txt").write_text(platform.python_version() + "\n")
    (staging / "README.md").write_text(readme(meta) + attribution(dataset_dir))
    return staging


def _link(src: str, dst: str) -> None:
    """Hard-link a file into the staging folder, or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def readme(meta: dict) -> str:
    """The package README: what is inside, how well it scored, how to rebuild it."""
    from model.intervals import holdout_line, stated

    # The embedded registry lives in the workspace that published to it.
    where = f" --workspace {shlex.quote(meta['workspace'])}" if meta.get("workspace") else ""
    reproduce = f".venv/bin/python -m flows reproduce {meta['package']}"
    metrics = meta["metrics"]
    per_class = metrics.get("per_class") or {}
    bounds = (metrics.get("intervals") or {}).get("per_class") or {}

    def f1(name: str) -> str:
        value, ci = (per_class.get(name) or {}).get("f1"), (bounds.get(name) or {}).get("f1")
        return f"{value} ({ci[0]:.4g}-{ci[1]:.4g})" if value is not None and ci else str(value)

    counts = "\n".join(f"| {c} | {meta['class_mids'][c]} | {n} | {f1(c)} |"
                       for c, n in meta["crops_per_class"].items())
    dirty = (" (trained with uncommitted changes to it, listed in `code/UNCOMMITTED.md`)"
             if meta.get("dirty") else "")
    photos = (metrics.get("intervals") or {}).get("photos", "?")
    return f"""# {meta['package']}

An image classifier for Open Images classes {', '.join(meta['classes'])}, published with the
data it was trained on, the code at commit `{meta['git_commit']}`{dirty} and its pinned
environment.

| class | MID | crops | test F1 (95 % CI) |
|---|---|---|---|
{counts}

Held-out test accuracy: **{stated(metrics, 'accuracy')}** (macro F1
{stated(metrics, 'macro_f1')}) on {metrics['test_examples']} crops of {photos} photos never
seen in training; each interval is a 95 % percentile bootstrap over those photos (all crops
of a photo resampled together), so it says how far the figure could move on another test
split of the same kind. {what_it_is(meta)}
{f"Holdout{holdout_line(metrics).removeprefix('holdout')}." if holdout_line(metrics) else ""}
{calibrated(metrics)}
Dataset id `{meta['dataset_id']}`; BentoML model `{meta['model_tag']}`.

## Contents
- `data/`: `shards/*.parquet`, the crops (an `image` column of JPEG `bytes` and `path`, with
  each crop's class, split, box, source image, author and licence), `crops.parquet` (the live
  table: which `Shard` and `Row` are the dataset), `skipped.parquet` (the selected boxes
  that are not in it, and why).
  pandas, pyarrow, DuckDB and Hugging Face `datasets` read the shards as they are:
  `duckdb.sql("SELECT Class, count(*) FROM 'data/shards/*.parquet' GROUP BY Class")`,
  `datasets.load_dataset("parquet", data_files="data/shards/*.parquet")`
- `model/`: `model.keras` (takes raw RGB pixels), `metrics.json`
- `code/`: the project source at that commit (`COMMIT`), without its tests, benchmarks and
  synthetic sample
- `env/`: that commit's `requirements.lock`, `pyproject.toml`, `Dockerfile` and
  `bentofile.yaml` (copy them into `code/` for a full checkout), and the Python version

## Reproduce
From a checkout of this project with its environment (`make venv`; the retrain itself runs
this bundle's `code/`):
```
{reproduce} --registry {meta['registry']}{where} --top-hash <hash>
```
installs this version afresh, checks the environment against `env/requirements.lock`,
retrains from `data/` with the recorded settings and seed, and compares the test accuracy.

## Attribution
Annotations: Open Images Dataset, Google (CC BY 4.0; Kuznetsova et al., IJCV 2020). Each crop's
photo author and licence are listed in `data/crops.parquet` (Author, License, OriginalLandingURL):
CC BY 2.0 requires crediting them when you redistribute.
"""


def what_it_is(meta: dict) -> str:
    """What was trained, on what, in plain words: the figure means nothing more."""
    config = meta.get("train_config") or {}
    size = config.get("image_size", "?")
    if config.get("architecture") == "seed-cnn":
        model = f"a small CNN trained from scratch (the seed CNN) at {size} px"
    elif config.get("weights") in (None, "none", ""):
        model = f"{config.get('backbone', 'a backbone')} trained from scratch at {size} px"
    else:
        model = (f"transfer learning: {config.get('backbone', 'a backbone')} on ImageNet "
                 f"weights with a new head, at {size} px")
    data = ("the bundled SYNTHETIC scenes (generated shapes in Open Images layouts, not "
            "photos): the accuracy says the pipeline works, not how well real photos are "
            "classified" if meta.get("synthetic") else "Open Images photos")
    real = f" {REAL_RUN}" if config.get("architecture") == "seed-cnn" else ""
    return f"The model is {model}, trained and tested on {data}.{real}"


def calibrated(metrics: dict) -> str:
    """Temperature scaling in one sentence, or nothing when it was not measured."""
    from model.report import NOT_FITTED

    found = metrics.get("calibration")
    if not found:
        return ""
    if not found.get("identifiable", True):
        return (f"Probabilities are not calibrated ({NOT_FITTED}): the temperature inside "
                f"`model.keras` stays T = {found['temperature']}; expected calibration error on "
                f"the test split {found['ece_before']}.\n")
    return (f"Probabilities are calibrated by temperature scaling (T = {found['temperature']}, "
            f"fitted on the validation split, inside `model.keras`): expected calibration "
            f"error on the test split {found['ece_before']} before, {found['ece_after']} "
            "after.\n")


class PublishError(RuntimeError):
    """A push did not complete; nothing in the registry points at what it left behind."""


def fingerprint(staging: Path, name: str) -> str:
    """What makes a bundle different: every file staged to publish (the README included).

    Not the metadata: the publish flow rebuilds parts of it (the filters) from its own
    settings, which would make a new revision of the same files.
    """
    return sha256_text(f"{name}\0{tree_digest(staging)}")


def latest_package(name: str, registry: str) -> object | None:
    """The newest version of a package (its manifest), or None.

    On S3 it reads the two objects a browse needs, the latest pointer and the manifest it
    names: quilt3's browse adds four HEADs (which S3 client to use, the manifest's version),
    a fixed cost every publish pays."""
    quilt3 = quilt3_module()
    from botocore.exceptions import ClientError
    from quilt3.util import QuiltException

    try:
        if not registry.startswith("s3://"):
            return quilt3.Package.browse(name, registry=registry)
        bucket = registry.removeprefix("s3://").split("/", 1)[0]
        client = boto3_session().client("s3")
        pointer = client.get_object(Bucket=bucket, Key=f".quilt/named_packages/{name}/latest")
        top_hash = pointer["Body"].read().decode().strip()
        manifest = client.get_object(Bucket=bucket, Key=f".quilt/packages/{top_hash}")
        return quilt3.Package.load(io.BytesIO(manifest["Body"].read()))
    except (QuiltException, ClientError, FileNotFoundError):
        return None


def latest_meta(name: str, registry: str) -> tuple[str, dict] | None:
    """The top hash and metadata of the newest version of a package, or None."""
    package = latest_package(name, registry)
    return None if package is None else (package.top_hash, package.meta)


def reuse_unchanged(package: object, previous: object) -> int:
    """Point every entry whose content the previous version already holds at that version's
    object, so the push neither checks nor sends it; return how many. A shard's name is a hash
    of its content: one of the same name and size is the same. Other files are hashed here."""
    old = dict(previous.walk())  # type: ignore[attr-defined]
    reused = 0

    def same(key: str, entry: object) -> object | None:
        before = old.get(key)
        return before if before is not None and before.size == entry.size else None

    for key, entry in list(package.walk()):  # type: ignore[attr-defined]
        if key.startswith("data/shards/") and (before := same(key, entry)) is not None:
            package.set(key, before)  # type: ignore[attr-defined]
            reused += 1
    package._calculate_missing_hashes()  # type: ignore[attr-defined]  # local files only
    for key, entry in list(package.walk()):  # type: ignore[attr-defined]
        before = same(key, entry)
        if before is not None and before is not entry and before.hash == entry.hash:
            package.set(key, before)  # type: ignore[attr-defined]
            reused += 1
    return reused


# Photos credited in the README itself; past this the README names the table that credits
# them, or it would grow with every crop and be sent again whole by every publish.
CREDITS_INLINE = 500


def attribution(dataset_dir: Path, inline: int = CREDITS_INLINE) -> str:
    """The photo authors and licences of the crops, as CC BY 2.0 asks: a table in the README
    for up to `inline` photos, else where the credits are."""
    table = dataset_dir / "crops.parquet"
    if not table.exists():
        return ""
    credits = pd.read_parquet(table, columns=["Author", "License", "OriginalLandingURL"])
    credits = credits.drop_duplicates().sort_values(["Author", "OriginalLandingURL"])
    if len(credits) > inline:
        return (f"\n## Photo credits\n\nThe {len(credits):,} photos, by "
                f"{credits.Author.nunique():,} authors, are credited in `data/crops.parquet` "
                "(columns Author, License, OriginalLandingURL), one row per crop.\n")
    rows = [f"| {r.Author} | {r.License} | {r.OriginalLandingURL} |"
            for r in credits.itertuples()]
    return "\n".join(["\n## Photo credits\n", "| author | licence | photo |", "|---|---|---|",
                      *rows, ""])


def copy_source_images(dataset_dir: Path, image_dir: Path, dest: Path) -> int:
    """Copy the photos the crops come from, in the store's layout; return how many."""
    wanted = set(pd.read_parquet(dataset_dir / "crops.parquet", columns=["ImageID"]).ImageID)
    copied = 0
    for path in sorted(image_dir.glob("*/*.jpg")):
        if path.stem in wanted:
            (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.parent.name / path.name)
            copied += 1
    return copied


def publish(dataset_dir: Path, model_dir: Path, meta: dict, name: str, registry: str,
            message: str, allow_dirty: bool = True, image_dir: Path | None = None
            ) -> Published:
    """Push the bundle to an S3 registry and return its top hash; when the newest version
    has the same fingerprint, push nothing and return that version (pushed false)."""
    quilt3 = quilt3_module()
    from botocore.exceptions import BotoCoreError, ClientError
    from quilt3.util import QuiltException

    if meta.get("dirty"):
        changes = ", ".join(meta.get("git_changes") or []) or "files not recorded"
        if not allow_dirty:
            raise UncommittedChanges(
                f"{meta['model_tag']} was trained with uncommitted changes ({changes}); train "
                "it again from a clean checkout, or set OPENIMAGER_PUBLISH_UNCOMMITTED=true to "
                "publish it marked dirty")
        log.warning("UNCOMMITTED CHANGES: %s was trained with changes to %s; code/ holds "
                    "commit %s without them (see code/UNCOMMITTED.md)", meta["model_tag"],
                    changes, meta["git_commit"][:12])
    with tempfile.TemporaryDirectory(prefix="openimager-bundle-") as tmp:
        staging = stage_bundle(dataset_dir, model_dir, meta, Path(tmp), image_dir=image_dir)
        refuse_secrets(staging)
        lock = staging / "env" / "requirements.lock"
        meta = {**meta, "lock_sha256": sha256_file(lock) if lock.exists() else None,
                "model_sha256": sha256_file(staging / "model" / "model.keras")}
        meta["fingerprint"] = fingerprint(staging, name)
        latest = latest_package(name, registry)
        if latest is not None and latest.meta.get("fingerprint") == meta["fingerprint"]:
            log.info("%s is unchanged since %s: nothing pushed", name, latest.top_hash[:12])
            return Published(name, registry, latest.top_hash, pushed=False)
        package = quilt3.Package().set_dir("/", staging).set_meta(json.loads(json.dumps(meta)))
        try:
            if latest is not None:
                log.info("%s: %d files unchanged since %s, not sent again", name,
                         reuse_unchanged(package, latest), latest.top_hash[:12])
            pushed = push(package, name, registry, message)
        except (BotoCoreError, ClientError, QuiltException, OSError) as error:
            raise PublishError(f"pushing {name} to {registry} failed ({error}); no version "
                               "was recorded, run the publish again") from error
    return Published(name, registry, pushed.top_hash)


def push(package: object, name: str, registry: str, message: str) -> object:
    """quilt3's push without its printing: the lines it prints cost two LIST requests (a
    short form of the top hash) and would interleave with the command's own output."""
    return package._push(  # type: ignore[attr-defined]
        name, registry=registry, message=message, workflow=..., print_info=False, force=True,
        dedupe=False)


def install(name: str, registry: str, top_hash: str | None, dest: Path) -> str:
    """Install one package version (the newest without a top hash) into dest; return its hash."""
    quilt3 = quilt3_module()
    package = quilt3.Package.browse(name, registry=registry, top_hash=top_hash)
    quilt3.Package.install(name, registry=registry, top_hash=package.top_hash, dest=str(dest))
    return package.top_hash
