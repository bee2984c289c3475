"""The Kubernetes manifests render, validate, and agree with the CLI, the config and each other.

Everything is read from the rendered manifests (container args, ports, probes, the ConfigMap'd
config, the Secret) and checked against the real CLI parser, ``saga-sidecar check`` and the
sidecar's config loader, rather than restated here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml

from deploy.conftest import rendered_overlay
from deploy.dockerfile import parse_dockerfile
from deploy.manifests import (
    KUBERNETES,
    Obj,
    Rendered,
    all_containers,
    command_container,
    config_path,
    container_env,
    container_port,
    host_path,
    mount_configmaps,
    pod_spec,
    render,
    sleep_seconds,
)
from deploy.promql import job_selectors, rule_expressions
from deploy.tools import DEPLOY, REPO_ROOT, clean_env, require_tool, run
from proxy.config import LoadedConfig, load_config, split_hostport

# Oldest Kubernetes each overlay supports (native sidecars need 1.29), and the newest schema.
MIN_VERSIONS = {"example": "1.27.0", "native-sidecar": "1.29.0"}
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
SHUTDOWN_MARGIN = 5.0


def load_sidecar_config(rendered: Rendered, tmp_path: Path) -> LoadedConfig:
    """The config the sidecar container would load: its ConfigMap files and its environment."""
    spec = pod_spec(rendered.workload())
    _, sidecar = command_container(spec, "serve")
    mount_configmaps(rendered, spec, sidecar, tmp_path)
    path = host_path(tmp_path, config_path(sidecar))
    return load_config(path, env=container_env(rendered, sidecar))


def kustomization_dirs() -> list[Path]:
    """Every directory under deploy/kubernetes that kustomize can build on its own."""
    dirs = []
    for file in sorted(KUBERNETES.rglob("kustomization.yaml")):
        if yaml.safe_load(file.read_text())["kind"] == "Kustomization":
            dirs.append(file.parent)
    return dirs


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda d: d.name)
def test_every_kustomization_builds(directory: Path) -> None:
    rendered = render(directory)
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_objects_validate_against_the_kubernetes_schemas(overlay: str, rendered: Rendered) -> None:
    checked = 0
    for version in (MIN_VERSIONS[overlay], kv.latest_version()):
        for obj in rendered.objects:
            if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
                continue
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {path}: {exc}")
            checked += 1
    assert checked >= 2 * 8


def test_only_prometheus_operator_kinds_go_unvalidated(rendered: Rendered) -> None:
    unknown = set()
    for obj in rendered.objects:
        try:
            kv.validate(obj, kv.latest_version(), strict=True)
        except kv.SchemaNotFoundError:
            unknown.add((obj["apiVersion"], obj["kind"]))
    assert unknown == CUSTOM_KINDS


def test_the_configmap_config_passes_saga_sidecar_check(rendered: Rendered, tmp_path: Path) -> None:
    spec = pod_spec(rendered.workload())
    for command in ("serve", "migrate"):
        _, container = command_container(spec, command)
        rootfs = tmp_path / command
        mount_configmaps(rendered, spec, container, rootfs)
        path = host_path(rootfs, config_path(container))
        # Only what the manifests provide: a variable the Secret lacks must make check fail.
        env = clean_env(container_env(rendered, container))
        result = run([require_tool("saga-sidecar"), "check", "--config", str(path)], env=env)
        assert result.returncode == 0, result.stderr
        assert "ok (1 saga definition)" in result.stdout


def test_check_fails_without_the_secret(rendered: Rendered, tmp_path: Path) -> None:
    spec = pod_spec(rendered.workload())
    _, sidecar = command_container(spec, "serve")
    mount_configmaps(rendered, spec, sidecar, tmp_path)
    path = host_path(tmp_path, config_path(sidecar))
    result = run([require_tool("saga-sidecar"), "check", "--config", str(path)], env=clean_env())
    assert result.returncode == 2
    assert "REDIS_URL is not set" in result.stderr
    assert "DATABASE_URL is not set" in result.stderr


def test_ports_match_the_listeners_and_the_app_is_reachable_only_through_the_sidecar(
    rendered: Rendered, tmp_path: Path
) -> None:
    config = load_sidecar_config(rendered, tmp_path).config
    spec = pod_spec(rendered.workload())
    _, sidecar = command_container(spec, "serve")
    ports = {item["containerPort"]: item for item in sidecar["ports"]}
    public_port = split_hostport(config.listen)[1]
    admin_host, admin_port = split_hostport(config.admin.listen)
    assert public_port in ports
    assert admin_port in ports
    assert admin_host == "0.0.0.0", "probes and Prometheus connect to the pod IP"
    assert config.admin.token, "an admin listener on all interfaces needs a token"
    service = rendered.get("Service", rendered.workload()["metadata"]["name"])
    target_ports = {container_port(sidecar, p["targetPort"]) for p in service["spec"]["ports"]}
    assert target_ports == {public_port}
    assert urlsplit(config.upstream.url).hostname in ("127.0.0.1", "localhost", "::1")


def test_probes_target_the_admin_listener(rendered: Rendered, tmp_path: Path) -> None:
    config = load_sidecar_config(rendered, tmp_path).config
    _, sidecar = command_container(pod_spec(rendered.workload()), "serve")
    admin_port = split_hostport(config.admin.listen)[1]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = sidecar[probe]["httpGet"]
        assert container_port(sidecar, get["port"]) == admin_port, probe
    assert (
        sidecar["livenessProbe"]["httpGet"]["path"] != sidecar["readinessProbe"]["httpGet"]["path"]
    ), "liveness must not depend on the stores that readiness checks"


def test_app_probe_goes_through_the_sidecar_port(rendered: Rendered, tmp_path: Path) -> None:
    config = load_sidecar_config(rendered, tmp_path).config
    spec = pod_spec(rendered.workload())
    _, app = next((f, c) for f, c in all_containers(spec) if c["name"] == "app")
    assert app["readinessProbe"]["httpGet"]["port"] == split_hostport(config.listen)[1]
    assert {"name": "DEMO_HOST", "value": "127.0.0.1"} in app["env"]


def test_termination_grace_covers_pre_stop_and_shutdown_grace(
    rendered: Rendered, tmp_path: Path
) -> None:
    config = load_sidecar_config(rendered, tmp_path).config
    spec = pod_spec(rendered.workload())
    field, sidecar = command_container(spec, "serve")
    _, app = next((f, c) for f, c in all_containers(spec) if c["name"] == "app")
    sidecar_done = sleep_seconds(sidecar) + config.shutdown_grace
    assert spec["terminationGracePeriodSeconds"] >= sidecar_done + SHUTDOWN_MARGIN
    # The app must keep answering while the sidecar drains requests into it.
    assert sleep_seconds(app) >= sidecar_done
    if field == "initContainers":
        assert sleep_seconds(sidecar) == 0, "a native sidecar stops after the app: no preStop"


def test_migrations_run_in_an_init_container_before_the_sidecar(
    rendered: Rendered, tmp_path: Path
) -> None:
    loaded = load_sidecar_config(rendered, tmp_path)
    assert loaded.config.sagas is not None
    spec = pod_spec(rendered.workload())
    field, migrate = command_container(spec, "migrate")
    _, sidecar = command_container(spec, "serve")
    assert field == "initContainers"
    assert migrate.get("restartPolicy") is None, "migrate must run to completion"
    assert config_path(migrate) == config_path(sidecar)
    assert migrate["envFrom"] == sidecar["envFrom"]
    assert loaded.config.sagas.migrate is False, "serve need not migrate again"
    names = [c["name"] for c in spec["initContainers"]]
    if sidecar in spec["initContainers"]:
        assert names.index(migrate["name"]) < names.index(sidecar["name"])


def test_native_sidecar_overlay_makes_the_sidecar_a_restartable_init_container() -> None:
    native = pod_spec(rendered_overlay("native-sidecar").workload())
    classic = pod_spec(rendered_overlay("example").workload())
    field, sidecar = command_container(native, "serve")
    assert field == "initContainers"
    assert sidecar["restartPolicy"] == "Always"
    assert "startupProbe" in sidecar, "the app starts once the sidecar's startupProbe passes"
    _, classic_sidecar = command_container(classic, "serve")
    moved = {k: v for k, v in sidecar.items() if k not in ("restartPolicy", "lifecycle")}
    assert moved == {k: v for k, v in classic_sidecar.items() if k != "lifecycle"}
    assert [c["name"] for c in native["containers"]] == ["app"]


def test_every_container_has_resources_and_a_restricted_security_context(
    rendered: Rendered,
) -> None:
    spec = pod_spec(rendered.workload())
    assert spec["securityContext"]["runAsNonRoot"] is True
    for _, container in all_containers(spec):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


def test_pod_runs_as_the_user_the_image_creates(rendered: Rendered) -> None:
    spec = pod_spec(rendered.workload())
    user = parse_dockerfile(DEPLOY / "Dockerfile").inherited("runtime", "USER").value
    uid, _, gid = user.partition(":")
    assert spec["securityContext"]["runAsUser"] == int(uid)
    assert spec["securityContext"]["runAsGroup"] == int(gid)


def test_selectors_match_the_pod_labels(rendered: Rendered) -> None:
    workload = rendered.workload()
    labels = workload["spec"]["template"]["metadata"]["labels"]

    def selects(selector: Obj) -> bool:
        return bool(selector.items() <= labels.items())

    assert selects(workload["spec"]["selector"]["matchLabels"])
    assert selects(rendered.get("Service", workload["metadata"]["name"])["spec"]["selector"])
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"])
    for monitor in rendered.of_kind("PodMonitor"):
        assert selects(monitor["spec"]["selector"]["matchLabels"])
        assert monitor["metadata"]["namespace"] == workload["metadata"]["namespace"]


def test_pod_monitor_scrapes_the_admin_metrics_as_the_job_the_rules_select(
    rendered: Rendered, tmp_path: Path
) -> None:
    config = load_sidecar_config(rendered, tmp_path).config
    _, sidecar = command_container(pod_spec(rendered.workload()), "serve")
    (monitor,) = rendered.of_kind("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert container_port(sidecar, endpoint["port"]) == split_hostport(config.admin.listen)[1]
    assert endpoint["path"] == "/metrics"
    (relabel,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert job_selectors(rule_expressions()) == {relabel["replacement"]}


def test_prometheus_rule_carries_the_rules_file_unchanged(rendered: Rendered) -> None:
    (rule,) = rendered.of_kind("PrometheusRule")
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "saga-sidecar.rules.yaml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]


def test_example_saga_files_are_the_ones_in_config() -> None:
    deployed = sorted((KUBERNETES / "base" / "sagas").glob("*.yaml"))
    assert deployed
    for file in deployed:
        assert file.read_text() == (REPO_ROOT / "config" / "sagas" / file.name).read_text()


def test_example_secret_points_at_the_example_stores() -> None:
    rendered = rendered_overlay("example")
    _, sidecar = command_container(pod_spec(rendered.workload()), "serve")
    env = container_env(rendered, sidecar)
    redis, database = urlsplit(env["REDIS_URL"]), urlsplit(env["DATABASE_URL"])
    for url in (redis, database):
        service = rendered.get("Service", str(url.hostname))
        assert url.port in {port["port"] for port in service["spec"]["ports"]}
    (postgres,) = [c for _, c in all_containers(pod_spec(rendered.get("Deployment", "postgres")))]
    credentials = container_env(rendered, postgres)
    assert database.username == credentials["POSTGRES_USER"]
    assert database.password == credentials["POSTGRES_PASSWORD"]
    assert database.path == "/" + credentials["POSTGRES_DB"]
