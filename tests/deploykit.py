"""The manifests of deploy/ as objects: a base or an overlay rendered the way `kubectl apply -k`
does for the few kustomize features they use (resources, strategic-merge patches of maps,
images, namespace), without kustomize itself."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes"
OVERLAY = DEPLOY / "test"
POOL = DEPLOY / "kubernetes-pool"

Object = dict[str, Any]


def documents(path: Path) -> list[Object]:
    """The YAML documents of one file, empty ones left out."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def key(obj: Object) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge as far as these manifests need it: maps merge key by key, anything
    else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            merged[name] = merge(base.get(name), value) if name in base else value
        return merged
    return copy.deepcopy(patch)


def containers(obj: Object) -> Iterator[Object]:
    """Every container and init container of a workload's pod template."""
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def render(folder: Path) -> list[Object]:
    """The objects of a kustomization folder, in its resources' order."""
    config = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[Object] = []
    for resource in config.get("resources", []):
        path = (folder / resource).resolve()
        objects += render(path) if path.is_dir() else documents(path)
    for patch in config.get("patches", []):
        for change in documents(folder / patch["path"]):
            index = [key(obj) for obj in objects].index(key(change))
            objects[index] = merge(objects[index], change)
    images = {image["name"]: image for image in config.get("images", [])}
    for obj in objects:
        if "namespace" in config and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = config["namespace"]
        for container in containers(obj):
            if (image := images.get(container["image"].split(":")[0])) is not None:
                container["image"] = f"{image['newName']}:{image['newTag']}"
    return objects


def find(objects: list[Object], kind: str, name: str) -> Object:
    """The one object of this kind and name."""
    return next(obj for obj in objects if key(obj) == (kind, name))


def env_of(objects: list[Object], container: Object) -> dict[str, str]:
    """A container's environment as Kubernetes gives it: envFrom ConfigMaps and Secrets that
    exist (optional ones may not), then env values."""
    found: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            found.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            ref = source["secretRef"]
            try:
                found.update(find(objects, "Secret", ref["name"])["stringData"])
            except StopIteration:
                assert ref.get("optional"), f"Secret {ref['name']} is missing"
    for item in container.get("env", []):
        if "value" in item:
            found[item["name"]] = str(item["value"])
    return found
