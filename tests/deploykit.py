"""The manifests of deploy/ as objects: a base or an overlay rendered the way `kubectl apply -k`
does for the few kustomize features they use (resources, strategic-merge patches of maps,
images, namespace), without kustomize itself."""

from __future__ import annotations

import copy
import os
import subprocess
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


# ---- Playing the test overlay with podman (tests/test_deploy.py) ----

HAPROXY_IMAGE = "localhost/openimager-haproxy:test"
PREFIX = "oi-deploy-"  # every pod and volume the test makes, so cleaning up touches no other
LABEL = "openimager-test=deploy"
# The Services of the overlay, as the pods reach them on the host network.
SERVICES = {"s3": ("s3", 9000), "prefect-server": ("prefect", 4200)}
API_SLOTS = 4  # two replicas and, during a rolling restart, their two successors


class Played:
    """The overlay's workloads as podman pods on the host network, each server on its own
    loopback port; `play` and `down` by stage, one YAML file per stage."""

    def __init__(self, workdir: Path, objects: list[Object]) -> None:
        from flows.servers.local import free_port

        self.workdir, self.objects = workdir, objects
        self.ports = {name: free_port() for name in ("s3", "prefect", "worker", "haproxy",
                                                     "stats")}
        self.ports.update({f"api{i}": free_port() for i in range(API_SLOTS)})
        self.files: list[Path] = []
        self.pod_claims: list[Object] = []  # the volumes of pods made since the last play
        self.first: dict | None = None
        # podman's default rlimits exceed what runc may set here (tests/containerkit.py)
        conf = workdir / "containers.conf"
        limits = ", ".join(f'"{flag}"' for flag in containerkit_ulimits())
        conf.write_text(f"[containers]\ndefault_ulimits = [{limits}]\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    # where the servers answer
    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def prefect_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def worker_health_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['worker']}"

    @property
    def haproxy_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['haproxy']}"

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ports[f'api{i}']}" for i in range(API_SLOTS)]

    def api_name(self, index: int) -> str:
        return f"{PREFIX}openimager-api-{index}"

    # the objects, translated
    def rewrite(self, value: str, port: int | None = None, own: int | None = None) -> str:
        """Service addresses to loopback ports; the workload's own port to its own."""
        for service, (slot, default) in SERVICES.items():
            value = value.replace(f"://{service}:{default}",
                                  f"://127.0.0.1:{self.ports[slot]}")
        if own is not None and port is not None and value == str(own):
            return str(port)
        return "127.0.0.1" if value == "0.0.0.0" else value

    def pod(self, workload: str, name: str | None = None, port: str | None = None,
            extra_env: dict[str, str] | None = None) -> Object:
        """One pod of a Deployment of the overlay, on the host network."""
        deployment = find(self.objects, "Deployment", workload)
        spec = copy.deepcopy(deployment["spec"]["template"]["spec"])
        spec["hostNetwork"] = True
        init = spec.pop("initContainers", None)
        if name is not None and name.endswith("-init"):
            spec["initContainers"] = init
        slot = port or {"s3": "s3", "prefect-server": "prefect", "haproxy": "haproxy"}.get(
            workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            own = (container.get("ports") or [{}])[0].get("containerPort")
            env = {**env_of(self.objects, container), **(extra_env or {})}
            if workload == "retrain-worker":
                env.update(PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
                           PREFECT_WORKER_WEBSERVER_PORT=str(self.ports["worker"]))
            container["env"] = [{"name": k, "value": self.rewrite(v)} for k, v in env.items()]
            container.pop("envFrom", None)
            container["args"] = [self.rewrite(str(a), slot and self.ports[slot], own)
                                 for a in container.get("args", [])]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                container.pop(probe, None)  # the test asks the same URLs itself
            container.pop("ports", None)  # the host's network: nothing to publish
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                claim["claimName"] = PREFIX + claim["claimName"]
            if "emptyDir" in volume:  # a volume of this pod alone, removed with the test's
                volume.pop("emptyDir")
                claim = f"{name or PREFIX + workload}-{volume['name']}"
                volume["persistentVolumeClaim"] = {"claimName": claim}
                self.pod_claims.append(self.claim(claim, {"accessModes": ["ReadWriteOnce"],
                                                          "resources": {"requests": {
                                                              "storage": "1Gi"}}}))
            if "configMap" in volume:
                volume["configMap"]["name"] = PREFIX + volume["configMap"]["name"]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name or PREFIX + workload,
                             "labels": {"openimager-test": "deploy",
                                        **deployment["spec"]["template"]["metadata"]["labels"]}},
                "spec": spec}

    def init_pod(self, workload: str, **kwargs) -> Object:
        """The workload's init containers as a pod of their own that runs once: podman 4.3's
        own init containers race with their removal, so the test runs them to completion
        before it plays the pod (Kubernetes's order)."""
        pod = self.pod(workload, f"{PREFIX}{workload}-init", **kwargs)
        pod["spec"]["containers"] = pod["spec"].pop("initContainers")
        pod["spec"]["restartPolicy"] = "Never"
        return pod

    def run_init(self, workload: str, timeout: float = 600, **kwargs) -> None:
        """Play the init pod, wait for its containers to exit, and fail unless all said 0."""
        pod = self.init_pod(workload, **kwargs)
        self.play(f"{workload}-init", [pod])
        for container in pod["spec"]["containers"]:
            name = f"{pod['metadata']['name']}-{container['name']}"
            code = self.podman("wait", name, timeout=timeout).stdout.strip()
            if code != "0":
                logs = self.podman("logs", name, check=False)
                raise RuntimeError(f"init container {name} exited {code}:\n"
                                   f"{(logs.stdout + logs.stderr)[-4000:]}")

    def api_pod(self, index: int) -> Object:
        return self.pod("openimager-api", self.api_name(index), f"api{index}")

    def haproxy(self) -> list[Object]:
        """haproxy's pod and its configuration, checking the API pods' loopback ports; a stats
        page on its own port says which it sees up."""
        config = find(self.objects, "ConfigMap", "haproxy")["data"]["haproxy.cfg"]
        head, found, _ = config.partition("  server-template")
        assert found, config
        servers = "".join(f"  server api{i} 127.0.0.1:{self.ports[f'api{i}']} check\n"
                          for i in range(API_SLOTS))
        stats = (f"listen stats\n  bind 127.0.0.1:{self.ports['stats']}\n"
                 "  stats enable\n  stats uri /stats\n")
        text = (head + servers + stats).replace("bind :8080",
                                                f"bind 127.0.0.1:{self.ports['haproxy']}")
        configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": PREFIX + "haproxy"}, "data": {"haproxy.cfg": text}}
        return [configmap, self.pod("haproxy")]

    @staticmethod
    def claim(name: str, spec: Object) -> Object:
        """A claim as podman makes it: a named volume, owned by the image's user as fsGroup
        makes it on Kubernetes."""
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "labels": {"openimager-test": "deploy"},
                             "annotations": {"volume.podman.io/uid": "10001",
                                             "volume.podman.io/gid": "10001"}},
                "spec": spec}

    def claims(self) -> list[Object]:
        return [self.claim(PREFIX + obj["metadata"]["name"], obj["spec"])
                for obj in self.objects if obj["kind"] == "PersistentVolumeClaim"]

    # podman
    def podman(self, *argv: str, timeout: float = 300, check: bool = True
               ) -> subprocess.CompletedProcess:
        done = subprocess.run(["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                               *argv], capture_output=True, text=True, timeout=timeout,
                              env=self.env)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(argv[:3])} exited {done.returncode}:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def play(self, stage: str, objects: list[Object]) -> None:
        path = self.workdir / f"{stage}.yaml"
        claims, self.pod_claims = self.pod_claims, []
        path.write_text(yaml.safe_dump_all([*claims, *objects], sort_keys=False))
        self.files.append(path)
        self.podman("kube", "play", str(path), timeout=600)

    def answers(self, url: str) -> bool:
        import requests

        try:
            return requests.get(url, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def haproxy_servers(self) -> dict[str, dict[str, str]]:
        """haproxy's statistics of each API server, by its CSV columns (status, wretr, ...);
        empty while its stats page does not answer."""
        import requests

        try:
            csv = requests.get(f"http://127.0.0.1:{self.ports['stats']}/stats;csv",
                               timeout=5).text
        except requests.RequestException:
            return {}
        lines = [line for line in csv.splitlines() if line]
        if not lines:
            return {}
        columns = lines[0].removeprefix("# ").split(",")
        rows = [dict(zip(columns, line.split(","), strict=True)) for line in lines[1:]]
        return {row["svname"]: row for row in rows
                if row["pxname"] == "replicas" and row["svname"].startswith("api")}

    def haproxy_up(self) -> set[str]:
        """The API servers haproxy sees up."""
        return {name for name, row in self.haproxy_servers().items() if row["status"] == "UP"}

    def haproxy_counts(self, *columns: str) -> dict[str, int]:
        """Counters summed over the API servers: wretr (retried connections), wredis
        (requests sent to another server), econ and eresp (failed connections, responses)."""
        rows = self.haproxy_servers().values()
        return {column: sum(int(row[column] or 0) for row in rows) for column in columns}

    def stop_pod(self, name: str) -> int:
        """SIGTERM to the pod's containers, as Kubernetes sends it, with the manifest's grace
        period; the API container's exit code."""
        grace = find(self.objects, "Deployment", "openimager-api")["spec"]["template"][
            "spec"]["terminationGracePeriodSeconds"]
        self.podman("pod", "stop", "--time", str(grace), name, timeout=grace + 120)
        done = self.podman("inspect", "--format", "{{.State.ExitCode}}", f"{name}-api")
        return int(done.stdout.strip())

    def exec(self, workload: str, argv: list[str]) -> subprocess.CompletedProcess:
        container = f"{PREFIX}{workload}-{find(self.objects, 'Deployment', workload)['spec']['template']['spec']['containers'][0]['name']}"  # noqa: E501
        return self.podman("exec", container, *argv, timeout=600, check=False)

    def logs(self, workload: str) -> str:
        done = self.podman("pod", "logs", "--tail", "200", PREFIX + workload, check=False)
        return (done.stdout + done.stderr)[-6000:]

    def kube_down(self, check: bool = False) -> dict[str, list[str]]:
        """podman kube down of every stage played, the last first; what is left right after,
        before anything is removed by force."""
        for path in reversed(self.files):
            self.podman("kube", "down", str(path), check=check, timeout=300)
        return self.leftovers()

    def volume_names(self) -> list[str]:
        """The volumes the played stages make: one per claim (the emptyDirs the test made
        claims of included) and one per ConfigMap, which podman mounts as a volume of its
        name."""
        return sorted(doc["metadata"]["name"] for path in self.files for doc in documents(path)
                      if doc["kind"] in ("PersistentVolumeClaim", "ConfigMap"))

    def down(self) -> None:
        """podman kube down of every stage played, then removal of anything left with the
        test's prefix (a killed earlier run), and the volumes: the claims outlive pods, as on
        Kubernetes, so the test removes them."""
        self.kube_down()
        for pod in self.leftovers()["pods"]:
            self.podman("pod", "rm", "--force", "--time", "5", pod, check=False)
        for volume in self.leftovers()["volumes"]:
            self.podman("volume", "rm", "--force", volume, check=False)

    def leftovers(self) -> dict[str, list[str]]:
        def names(*argv: str) -> list[str]:
            out = self.podman(*argv, check=False).stdout.split()
            return sorted(n for n in out if n.startswith(PREFIX))

        return {"pods": names("pod", "ps", "--format", "{{.Name}}"),
                "containers": names("ps", "--all", "--format", "{{.Names}}"),
                "volumes": names("volume", "ls", "--format", "{{.Name}}")}


def containerkit_ulimits() -> list[str]:
    """The ulimits of tests/containerkit.py as containers.conf values."""
    from tests import containerkit

    flags = containerkit.ulimits()
    return [flags[i + 1] for i in range(0, len(flags), 2)]
