"""Rendered Kubernetes manifests and what the deploy tests read from them.

``render`` runs kustomize on a directory of ``deploy/kubernetes`` and returns the objects. The
helpers find the sidecar and migrate containers by the CLI command they run (not by name),
resolve a container's environment from the rendered Secrets, and lay a container's ConfigMap
volumes out in a temporary "root filesystem" so the CLI can read the files at the paths the
container would see.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from deploy.tools import DEPLOY, kustomize_command, run
from proxy.cli import build_parser

KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("example", "native-sidecar")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """The objects one kustomization renders to."""

    source: Path
    objects: tuple[Obj, ...]

    def of_kind(self, kind: str) -> list[Obj]:
        """Every object of ``kind``."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        """The object of ``kind`` named ``name`` (generated names may carry a hash suffix)."""
        for obj in self.of_kind(kind):
            actual = obj["metadata"]["name"]
            if actual == name or re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{10}}", actual):
                return obj
        raise AssertionError(f"no {kind} named {name!r} in {self.source}")

    def workload(self) -> Obj:
        """The Deployment whose pod runs ``saga-sidecar serve``."""
        found = [d for d in self.of_kind("Deployment") if find_command(pod_spec(d), "serve")]
        assert len(found) == 1, f"expected one Deployment running the sidecar, got {len(found)}"
        return found[0]


def render(directory: Path) -> Rendered:
    """Run kustomize on ``directory``; fails the test with kustomize's message on an error."""
    result = run(kustomize_command(directory))
    assert result.returncode == 0, f"kustomize failed on {directory}:\n{result.stderr}"
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return Rendered(directory, objects)


def pod_spec(workload: Obj) -> Obj:
    """The pod template spec of a Deployment."""
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    """``("initContainers" | "containers", container)`` for every container of a pod spec."""
    for field in ("initContainers", "containers"):
        for container in spec.get(field, []):
            yield field, container


def cli_args(container: Obj) -> list[str]:
    """The container's arguments to the ``saga-sidecar`` entrypoint ([] for other images)."""
    args: list[str] = container.get("args", [])
    command: list[str] = container.get("command", [])
    if command:
        return args if PurePosixPath(command[-1]).name == "saga-sidecar" else []
    return args


def find_command(spec: Obj, command: str) -> tuple[str, Obj] | None:
    """The container whose ``saga-sidecar`` sub-command is ``command``, with its list name."""
    for field, container in all_containers(spec):
        args = cli_args(container)
        if args and args[0] == command:
            return field, container
    return None


def command_container(spec: Obj, command: str) -> tuple[str, Obj]:
    """Like ``find_command`` but the container must exist."""
    found = find_command(spec, command)
    assert found is not None, f"no container runs `saga-sidecar {command}`"
    return found


def config_path(container: Obj) -> PurePosixPath:
    """The ``--config`` path of the container's command, as parsed by the real CLI parser."""
    parsed = build_parser().parse_args(cli_args(container))
    return PurePosixPath(str(parsed.config))


def local_args(container: Obj, rootfs: Path) -> list[str]:
    """The container's CLI arguments with its ``--config`` path moved under ``rootfs``."""
    args = cli_args(container)
    flag = next(i for i, arg in enumerate(args) if arg in ("--config", "-c"))
    return [*args[: flag + 1], str(host_path(rootfs, args[flag + 1])), *args[flag + 2 :]]


def decode_secret(secret: Obj) -> dict[str, str]:
    """A Secret's data, decoded (``stringData`` included)."""
    values = {
        key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()
    }
    values.update(secret.get("stringData", {}))
    return values


def container_env(rendered: Rendered, container: Obj) -> dict[str, str]:
    """The environment a container gets from ``envFrom`` and ``env`` (Secrets and ConfigMaps)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            env.update(decode_secret(rendered.get("Secret", source["secretRef"]["name"])))
        if "configMapRef" in source:
            env.update(rendered.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"].get("secretKeyRef")
        assert ref is not None, f"unsupported valueFrom in {item}"
        env[item["name"]] = decode_secret(rendered.get("Secret", ref["name"]))[ref["key"]]
    return env


def host_path(rootfs: Path, path: PurePosixPath | str) -> Path:
    """Where container path ``path`` lives inside the emulated root filesystem ``rootfs``."""
    return rootfs / str(path).lstrip("/")


def mount_configmaps(rendered: Rendered, spec: Obj, container: Obj, rootfs: Path) -> None:
    """Write every ConfigMap volume the container mounts under ``rootfs``, key by key."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        data = rendered.get("ConfigMap", volume["configMap"]["name"]).get("data", {})
        target = host_path(rootfs, mount["mountPath"])
        target.mkdir(parents=True, exist_ok=True)
        for key, text in data.items():
            (target / key).write_text(text, encoding="utf-8")


def sleep_seconds(container: Obj) -> float:
    """The duration of a ``preStop`` hook that only sleeps (0 without a preStop hook)."""
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    words = shlex.split(command[-1]) if command[0] in ("sh", "/bin/sh") else command
    assert words[0] == "sleep", f"preStop does more than sleep: {command}"
    return float(words[1])


def container_port(container: Obj, port: int | str) -> int:
    """Resolve a probe or Service port (a number or a port name) against a container's ports."""
    if isinstance(port, int):
        return port
    for item in container.get("ports", []):
        if item.get("name") == port:
            return int(item["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``256Mi``, ``1Gi``, ``500M``, ``1024``) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert match, f"unsupported quantity {quantity!r}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)
