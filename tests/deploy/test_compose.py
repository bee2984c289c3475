"""deploy/compose: the stack is wired together and each service's files work where they are mounted.

There is no Docker engine here, so each service's bind mounts are laid out in a temporary root
filesystem and the real tools read them there: ``saga-sidecar check`` for the sidecar and
migrate services (with exactly the environment Compose gives them), ``promtool check config``
for Prometheus, and the provisioning files for Grafana.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from deploy.dockerfile import parse_dockerfile
from deploy.manifests import host_path
from deploy.promql import job_selectors, rule_expressions
from deploy.tools import DEPLOY, REPO_ROOT, clean_env, require_tool, run
from proxy.cli import build_parser
from proxy.config import SidecarConfig, load_config, split_hostport
from yamlconfig.units import parse_duration

COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` interpolation with an empty environment (defaults apply)."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    return value


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The Compose services, interpolated."""
    compose = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    result: dict[str, Any] = compose["services"]
    return result


def mount(service: dict[str, Any], rootfs: Path) -> None:
    """Copy the service's bind mounts into ``rootfs`` at their container paths."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith("."):
            continue  # a named volume
        origin = (COMPOSE_FILE.parent / source).resolve()
        destination = host_path(rootfs, target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, destination)
        else:
            shutil.copy(origin, destination)


def container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of the service's published ports."""
    return {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}


def sidecar_config(service: dict[str, Any], rootfs: Path) -> tuple[PurePosixPath, SidecarConfig]:
    """The config path of the service's command and the config it loads there."""
    mount(service, rootfs)
    path = PurePosixPath(str(build_parser().parse_args(service["command"]).config))
    return path, load_config(host_path(rootfs, path), env=service["environment"]).config


def test_images_are_built_from_the_dockerfile_targets(services: dict[str, Any]) -> None:
    stages = {stage.name for stage in parse_dockerfile(DEPLOY / "Dockerfile").stages}
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(built) == {"app", "migrate", "sidecar"}
    for build in built.values():
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO_ROOT
        assert (REPO_ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["target"] in stages
    assert services["sidecar"]["image"] == services["migrate"]["image"]


@pytest.mark.parametrize("name", ["sidecar", "migrate"])
def test_sidecar_services_pass_saga_sidecar_check(
    services: dict[str, Any], name: str, tmp_path: Path
) -> None:
    service = services[name]
    mount(service, tmp_path)
    args = build_parser().parse_args(service["command"])
    config = host_path(tmp_path, PurePosixPath(str(args.config)))
    env = clean_env(service["environment"])
    result = run([require_tool("saga-sidecar"), "check", "--config", str(config)], env=env)
    assert result.returncode == 0, result.stderr
    assert "ok (1 saga definition)" in result.stdout


def test_sidecar_reaches_the_app_and_the_stores_by_service_name(
    services: dict[str, Any], tmp_path: Path
) -> None:
    _, config = sidecar_config(services["sidecar"], tmp_path)
    demo_ports = {
        int(port)
        for expose in parse_dockerfile(DEPLOY / "Dockerfile").stage("demo").all("EXPOSE")
        for port in expose.value.split()
    }
    for url in (config.upstream.url, *config.services.values()):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port in demo_ports) == ("app", True), url
    assert services["app"]["environment"]["DEMO_HOST"] == "0.0.0.0"
    assert urlsplit(config.idempotency.store).hostname == "redis"
    assert config.sagas is not None
    store = urlsplit(config.sagas.store)
    postgres = services["postgres"]["environment"]
    assert store.hostname == "postgres"
    assert (store.username, store.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert store.path == "/" + postgres["POSTGRES_DB"]


def test_sidecar_publishes_its_listeners_and_protects_the_admin_api(
    services: dict[str, Any], tmp_path: Path
) -> None:
    service = services["sidecar"]
    _, config = sidecar_config(service, tmp_path)
    public_port = split_hostport(config.listen)[1]
    admin_host, admin_port = split_hostport(config.admin.listen)
    assert container_ports(service) == {public_port, admin_port}
    assert admin_host == "0.0.0.0"
    assert config.admin.token
    assert parse_duration(service["stop_grace_period"]) > config.shutdown_grace


def test_services_start_in_dependency_order(services: dict[str, Any]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    sidecar_deps = services["sidecar"]["depends_on"]
    assert sidecar_deps["migrate"]["condition"] == "service_completed_successfully"
    assert sidecar_deps["redis"]["condition"] == "service_healthy"
    for store in ("redis", "postgres"):
        assert services[store]["healthcheck"]["test"][0] == "CMD"


def test_prometheus_config_passes_promtool_and_scrapes_the_admin_port(
    services: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = services["prometheus"]
    mount(prometheus, tmp_path / "prometheus")
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_file = host_path(tmp_path / "prometheus", flag.split("=", 1)[1])
    result = run([require_tool("promtool"), "check", "config", str(config_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "saga-sidecar.rules.yaml" in result.stdout
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout
    _, sidecar = sidecar_config(services["sidecar"], tmp_path / "sidecar")
    (job,) = yaml.safe_load(config_file.read_text())["scrape_configs"]
    assert {job["job_name"]} == job_selectors(rule_expressions())
    assert job["metrics_path"] == "/metrics"
    admin_port = split_hostport(sidecar.admin.listen)[1]
    assert job["static_configs"] == [{"targets": [f"sidecar:{admin_port}"]}]


def test_grafana_provisions_prometheus_and_the_dashboard(
    services: dict[str, Any], tmp_path: Path
) -> None:
    grafana = services["grafana"]
    mount(grafana, tmp_path)
    provisioning = host_path(tmp_path, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert url.port in container_ports(services["prometheus"])
    assert source["type"] == "prometheus" and source["isDefault"] is True
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "saga-sidecar.yaml").read_text())[
        "providers"
    ]
    dashboards = host_path(tmp_path, provider["options"]["path"])
    assert (dashboards / "saga-sidecar.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(tmp_path, home).is_file()
