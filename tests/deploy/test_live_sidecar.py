"""The deployed configuration run for real: probes, admin token, the metrics rules and panels read.

The example overlay's sidecar runs on this machine against the real Redis and PostgreSQL with
its ConfigMap, Secret and command (see ``deploy.live``). Traffic through it creates every
labelled series, so the scrape can be compared with what the rules and the dashboard query.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.conftest import rendered_overlay
from deploy.dockerfile import parse_dockerfile
from deploy.live import LiveDeployment, Process, demo_apps, drive, http
from deploy.manifests import decode_secret, quantity_bytes
from deploy.promql import (
    SYNTHETIC_METRICS,
    TARGET_LABELS,
    dashboard_expressions,
    parse_query,
    recorded_labels,
    rule_expressions,
)
from deploy.tools import DEPLOY
from proxy.config import load_config

if TYPE_CHECKING:
    from conftest import Upstream


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    app_in_thread: Callable[..., Upstream],
    free_port: Callable[[], int],
    redis_url: str,
    database_url: str,
) -> Iterator[LiveDeployment]:
    """The example overlay's sidecar, healthy and with Redis unreachable, after ``drive``."""
    deployment = LiveDeployment(
        rendered=rendered_overlay("example"),
        rootfs=tmp_path_factory.mktemp("pod"),
        env={},
        free_port=free_port,
        redis_url=redis_url,
        database_url=database_url,
    )
    upstreams = {name: app_in_thread(app).url for name, app in demo_apps().items()}
    try:
        deployment.prepare(upstreams)
        healthy = deployment.start("healthy")
        broken = deployment.start("redis-down", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        deployment.replies = drive(healthy, broken)
        yield deployment
    finally:
        deployment.close()


def scrape(process: Process) -> dict[str, list[dict[str, str]]]:
    """``{sample name: [labels, ...]}`` from the process's /metrics."""
    text = http("GET", process.admin_url + "/metrics").body.decode()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


@pytest.fixture(scope="module")
def exported(live: LiveDeployment) -> dict[str, set[str]]:
    """Every sample name the two sidecars export, with the label names seen on it."""
    names: dict[str, set[str]] = {}
    for process in live.processes:
        for name, label_sets in scrape(process).items():
            names.setdefault(name, set()).update(k for labels in label_sets for k in labels)
    return names


def probe_paths(live: LiveDeployment) -> dict[str, str]:
    """``{probe kind: path}`` of the sidecar container."""
    return {
        kind: live.sidecar[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }


def test_traffic_through_the_deployed_config_behaves(live: LiveDeployment) -> None:
    replies = live.replies
    assert replies["pass_through"].status == 200
    assert replies["first"].status == 201
    assert replies["replay"].status == 201
    assert replies["replay"].headers["Idempotent-Replayed"] == "true"
    assert replies["completed"].status == 201
    assert replies["compensated"].json()["saga_status"] == "compensated"
    assert replies["failed"].json()["saga_status"] == "failed"
    assert replies["store_down"].status == 503


def test_migrate_prepares_the_schema_that_serve_uses_without_migrating(
    live: LiveDeployment,
) -> None:
    assert "applied migrations" in live.migrate_output
    loaded = load_config(live.config_file, env=live.env)
    assert loaded.config.sagas is not None and loaded.config.sagas.migrate is False
    assert live.replies["completed"].headers.get("Saga-Id")


def test_probes_and_metrics_answer_without_the_admin_token(live: LiveDeployment) -> None:
    healthy = live.processes[0]
    (monitor,) = live.rendered.of_kind("PodMonitor")
    paths = [*probe_paths(live).values(), monitor["spec"]["podMetricsEndpoints"][0]["path"]]
    for path in paths:
        assert http("GET", healthy.admin_url + path).status == 200, path


def test_readiness_fails_naming_redis_while_liveness_passes(live: LiveDeployment) -> None:
    broken = live.processes[1]
    paths = probe_paths(live)
    assert http("GET", broken.admin_url + paths["livenessProbe"]).status == 200
    assert http("GET", broken.admin_url + paths["startupProbe"]).status == 200
    ready = http("GET", broken.admin_url + paths["readinessProbe"])
    assert ready.status == 503
    assert "idempotency_store" in ready.json()["detail"]


def test_admin_api_needs_the_token_from_the_secret(live: LiveDeployment) -> None:
    healthy = live.processes[0]
    (source,) = live.sidecar["envFrom"]
    token = decode_secret(live.rendered.get("Secret", source["secretRef"]["name"]))["ADMIN_TOKEN"]
    assert http("GET", healthy.admin_url + "/sagas").status == 401
    authorized = {"Authorization": f"Bearer {token}"}
    listing = http("GET", healthy.admin_url + "/sagas", headers=authorized)
    assert listing.status == 200
    assert listing.json()


def test_every_metric_the_rules_and_dashboard_read_is_exported(
    exported: dict[str, set[str]],
) -> None:
    recorded = recorded_labels()
    for expr in rule_expressions() + dashboard_expressions():
        for name in parse_query(expr).metric_names:
            if ":" in name:
                assert name in recorded, f"{name} is not a recording rule ({expr})"
            else:
                assert name in exported or name in SYNTHETIC_METRICS, f"{name} is not exported"


def test_every_label_the_rules_and_dashboard_use_exists(exported: dict[str, set[str]]) -> None:
    recorded = recorded_labels()
    for expr in rule_expressions() + dashboard_expressions():
        query = parse_query(expr)
        available = set(TARGET_LABELS)
        for selector in query.selectors:
            labels = recorded.get(selector.name) or exported.get(selector.name, set())
            assert selector.labels <= labels | TARGET_LABELS, f"{selector} in {expr}"
            available |= labels
        assert query.grouping <= available, f"grouping by unknown labels in {expr}"


def test_saga_duration_count_is_the_number_of_finished_sagas(live: LiveDeployment) -> None:
    # saga_sidecar:sagas_finished:rate5m relies on it.
    text = http("GET", live.processes[0].admin_url + "/metrics").body.decode()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "saga" in sample.labels:
                values[(sample.name, sample.labels["saga"])] = sample.value
    for saga in ("payment", "doomed"):
        terminal = sum(
            values.get((f"saga_{status}_total", saga), 0.0)
            for status in ("completed", "compensated", "failed")
        )
        assert values[("saga_duration_seconds_count", saga)] == terminal > 0


def test_docker_healthcheck_passes_on_a_live_sidecar_and_fails_on_a_dead_port(
    live: LiveDeployment,
) -> None:
    runtime = parse_dockerfile(DEPLOY / "Dockerfile").stage("runtime")
    command = runtime.last("HEALTHCHECK").exec_form()
    default = urlsplit(runtime.env()["SIDECAR_HEALTH_URL"])
    assert default.path == probe_paths(live)["livenessProbe"]
    healthy = live.processes[0].admin_url + default.path
    dead = f"http://127.0.0.1:{live.free_port()}{default.path}"
    assert command[0] == "python", "the image's venv python (no curl in a slim image)"
    for url, expected in ((healthy, 0), (dead, 1)):
        result = subprocess.run(
            [sys.executable, *command[1:]],
            env={"SIDECAR_HEALTH_URL": url},
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == expected, result.stderr


def test_memory_stays_well_inside_the_container_limit(live: LiveDeployment) -> None:
    limit = quantity_bytes(live.sidecar["resources"]["limits"]["memory"])
    for process in live.processes:
        assert process.peak_rss_bytes() < limit / 2


def test_sigterm_stops_the_sidecar_within_its_shutdown_grace(live: LiveDeployment) -> None:
    grace = load_config(live.config_file, env=live.env).config.shutdown_grace
    broken = live.processes[1]
    started = time.monotonic()
    assert broken.stop(timeout=grace + 5) == 0
    assert time.monotonic() - started < grace
    assert not Path(f"/proc/{broken.process.pid}").exists()
