"""Rebuilding a published model from its bundle: same data, code, settings and seed."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from flows.publishing.bundle import install, latest_meta
from flows.publishing.registries import EMBEDDED, RegistryError, opened


class ReproduceError(ValueError):
    """The reproduction cannot start as asked (a folder in the way); the message says why."""


class NotReproduced(RuntimeError):
    """The bundle's code could not retrain the model; the message says where it stopped."""


@dataclass
class Reproduction:
    """What a reproduce run found."""

    top_hash: str
    dest: Path
    environment: list[str] = field(default_factory=list)  # differences from the bundled lock
    published: dict = field(default_factory=dict)
    reproduced: dict = field(default_factory=dict)
    tolerance: float = 0.02
    paired: dict | None = None  # both models on the bundle's test crops (see paired())

    @property
    def accuracy_gap(self) -> float:
        return abs(self.reproduced["accuracy"] - self.published["accuracy"])

    @property
    def ok(self) -> bool:
        """Within the tolerance, or, where both models answered the bundle's test crops, a
        paired difference whose interval holds 0: on a small test split one crop moves
        accuracy by more than a fixed tolerance, and a difference the interval holds is no
        evidence of another model. The published figure's own interval is no test of that:
        it is about other photos, not another model on these."""
        bounds = (self.paired or {}).get("interval")
        inside = bounds is not None and bounds[0] <= 0 <= bounds[1]
        return self.accuracy_gap <= self.tolerance or inside

    def report(self) -> str:
        """A human summary: pass or fail, with the numbers and the environment differences."""
        verdict = "REPRODUCED" if self.ok else "NOT REPRODUCED"
        lines = [
            f"{verdict}: test accuracy {self.reproduced['accuracy']:.4f} vs published "
            f"{self.published['accuracy']:.4f} (gap {self.accuracy_gap:.4f}, tolerance "
            f"{self.tolerance:.4f}); macro F1 {self.reproduced['macro_f1']:.4f} vs "
            f"{self.published['macro_f1']:.4f}",
        ]
        if self.paired:
            low, high = self.paired["interval"] or (float("nan"), float("nan"))
            lines.append(
                f"on the same {self.paired['crops']} test crops of {self.paired['photos']} "
                f"photos: reproduced minus published accuracy {self.paired['difference']:+.4f} "
                f"(95 % interval [{low:+.4f}, {high:+.4f}], paired bootstrap over photos); "
                f"the two answer {self.paired['agreement']:.1%} of the crops alike")
        lines.append(f"bundle {self.top_hash} in {self.dest}")
        if self.environment:
            lines.append("environment differs from the bundled lock:")
            lines += [f"  {line}" for line in self.environment]
        else:
            lines.append("environment matches the bundled lock")
        return "\n".join(lines)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment_differences(lock: Path, python_version: Path | None = None) -> list[str]:
    """Each pinned package whose installed version differs, and the Python version."""
    installed = {_normal(d.metadata["Name"]): d.version for d in metadata.distributions()}
    found = []
    for line in lock.read_text().splitlines():
        pin = line.split("#", 1)[0].strip()
        if "==" not in pin:
            continue
        name, version = (part.strip() for part in pin.split("==", 1))
        name = name.split("[", 1)[0]
        have = installed.get(_normal(name))
        if have != version:
            found.append(f"{name}: bundled {version}, installed {have or 'none'}")
    if python_version and python_version.exists():
        wanted = python_version.read_text().strip()
        if wanted != platform.python_version():
            found.append(f"python: bundled {wanted}, running {platform.python_version()}")
    return found


def retrain_bundle(bundle: Path, out: Path) -> dict:
    """Train again from the bundle's data with its own code and recorded settings."""
    bundle, out = bundle.resolve(), out.resolve()  # the child runs in bundle/code
    config = json.loads((bundle / "model" / "metrics.json").read_text())["config"]
    done = subprocess.run(
        [sys.executable, "-m", "flows", "train-dataset", "--dataset-dir", str(bundle / "data"),
         "--out", str(out), "--config", json.dumps(config)],
        cwd=bundle / "code", check=False,
    )
    if done.returncode != 0:
        raise NotReproduced(f"retraining with the bundled code in {bundle / 'code'} exited "
                            f"with {done.returncode} (its output is above)")
    return json.loads((out / "metrics.json").read_text())


def paired(bundle: Path, reproduced: Path, image_size: int, batch_size: int = 32) -> dict:
    """The published model and the reproduced one on the bundle's test crops: the reproduced
    minus published accuracy with its paired-bootstrap interval over photos, and the share
    of crops both answer with the same class."""
    import keras
    import pandas as pd

    from flows.openimages.dataset import crops_root
    from model.evaluate import outcome_of
    from model.intervals import compare

    table = pd.read_parquet(bundle / "data" / "crops.parquet")
    names = sorted(table.Class.unique())  # the order training gives the outputs
    test = table[table.Split == "test"]
    root = crops_root(bundle / "data", test)
    outcomes = [outcome_of(keras.saving.load_model(folder / "model.keras", compile=False),
                           names, test, root, image_size, batch_size)
                for folder in (reproduced, bundle / "model")]
    found = compare(*outcomes, "accuracy")
    alike = outcomes[0].probs.argmax(axis=1) == outcomes[1].probs.argmax(axis=1)
    return {"difference": found.difference, "interval": found.interval,
            "photos": found.photos, "crops": len(test), "agreement": float(alike.mean())}


def fresh_dest(base: Path, name: str) -> Path:
    """A new folder for one reproduction under base: <name>-<UTC time>, never reused."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return base / f"{name.replace('/', '_')}-{stamp}"


def prepare_dest(dest: Path, force: bool = False) -> Path:
    """dest, absolute and empty: with force an existing one is emptied, else it must be."""
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise ReproduceError(f"{dest} is not empty: pass another --dest, or --force to "
                                 "replace what is there")
        shutil.rmtree(dest)
    return dest


def require_package(name: str, registry: str, url: str, state_dir: Path) -> None:
    """Fail in one line, naming the registry and what to pass, when it has no such package."""
    if latest_meta(name, url) is not None:
        return
    if registry == EMBEDDED:
        raise RegistryError(f"the embedded registry in {state_dir} has no package {name}: pass "
                            "--workspace of the run that published it, or --registry s3://BUCKET")
    raise RegistryError(f"{registry} has no package {name}: check the name and --registry")


def reproduce(name: str, registry: str, top_hash: str | None, dest: Path, state_dir: Path,
              tolerance: float = 0.02, force: bool = False) -> Reproduction:
    """Install a package version into dest (fresh), retrain from it and compare metrics."""
    dest = prepare_dest(dest, force)
    with opened(registry, state_dir.resolve()) as url:
        require_package(name, registry, url, state_dir.resolve())
        top_hash = install(name, url, top_hash, dest)
    published = json.loads((dest / "model" / "metrics.json").read_text())
    result = Reproduction(top_hash, dest, tolerance=tolerance, published=published)
    result.environment = environment_differences(dest / "env" / "requirements.lock",
                                                 dest / "env" / "python-version.txt")
    result.reproduced = retrain_bundle(dest, dest / "reproduced")
    config = published.get("config") or {}
    if config.get("image_size") and (dest / "model" / "model.keras").exists():
        result.paired = paired(dest, dest / "reproduced", int(config["image_size"]),
                               int(config.get("batch_size") or 32))
    return result
