"""``saga-sidecar check`` as a subprocess: it reports every problem, where it is, and what to do.

A definitions glob that matches nothing is an error; a broken config does not hide broken saga
files; an error names the value given and the values allowed, suggests the key meant by a
misspelt one, and points at the offending key's own line. ``check --connect`` also reaches every
store the config names and says which one fails and why (exit 3). A missing config file is one
plain sentence.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import env_database_url, env_redis_url, find_free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

SAGA = """
name: pay
trigger: {method: POST, path: /pay}
steps:
  - name: charge
    action: {service: payments, method: POST, path: /charges}
"""


def run_check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m proxy check --config config [extra...]`` in a clean ``${VAR}`` environment."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config), *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def config_with(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "sidecar.yaml", text)


def test_a_definitions_glob_that_matches_no_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "sagas" / "pay.yaml", SAGA)
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000"}
        services: {payments: "http://127.0.0.1:3002"}
        sagas:
          store: "sqlite:///sagas.db"
          definitions:
            - "sagas/*.yaml"
            - "sgas/*.yaml"
            - "extra/refund.yaml"
        """,
    )

    result = run_check(config)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{config}:7: sagas.definitions[1]: no file matches 'sgas/*.yaml' "
        f"(looked for {tmp_path}/sgas/*.yaml)",
        f"{config}:8: sagas.definitions[2]: no file matches 'extra/refund.yaml' "
        f"(looked for {tmp_path}/extra/refund.yaml)",
    ]


def test_the_default_glob_matching_nothing_is_located_at_the_sagas_section(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000"}
        sagas: {store: "sqlite:///sagas.db"}
        """,
    )

    result = run_check(config)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:2: sagas.definitions[0]: no file matches 'sagas/*.yaml' "
        f"(looked for {tmp_path}/sagas/*.yaml)"
    ]


def test_config_errors_do_not_hide_saga_file_errors(tmp_path: Path) -> None:
    saga = write(
        tmp_path / "sagas" / "pay.yaml",
        SAGA.replace("method: POST, path: /c", "method: FETCH, path: /c"),
    )
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000"}
        services: {payments: "http://127.0.0.1:3002"}
        log: {format: xml}
        sagas: {store: "sqlite:///sagas.db", definitions: ["sagas/*.yaml"]}
        """,
    )

    result = run_check(config)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:3: log.format: 'xml' is not one of 'json', 'text'",
        f"{saga}:5: steps[0].action.method: unsupported HTTP method 'FETCH' "
        "(use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
    ]


def test_saga_files_are_checked_against_services_even_when_another_section_is_broken(
    tmp_path: Path,
) -> None:
    saga = write(tmp_path / "sagas" / "pay.yaml", SAGA.replace("service: payments", "service: pay"))
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000", timeout: soon}
        services: {payments: "http://127.0.0.1:3002"}
        sagas: {definitions: ["sagas/*.yaml"]}
        """,
    )

    result = run_check(config)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"{config}:1: upstream.timeout: expected a duration like 250ms, 30s, 5m or 24h, got 'soon'"
    )
    assert lines[1].startswith(f"{saga}:5: steps[0].action.service: unknown service 'pay'")
    assert len(lines) == 2


def test_errors_name_the_value_given_and_the_values_allowed(tmp_path: Path) -> None:
    saga = write(tmp_path / "sagas" / "pay.yaml", SAGA.replace("trigger:", "mode: later\ntrigger:"))
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000"}
        services: {payments: "http://127.0.0.1:3002"}
        idempotency:
          concurrent: block
          require_key: maybe
          routes:
            - {path: /a, unknown_outcome: forget}
        log: {level: verbose}
        sagas: {definitions: ["sagas/*.yaml"]}
        """,
    )

    result = run_check(config)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:4: idempotency.concurrent: 'block' is not one of 'reject', 'wait'",
        f"{config}:5: idempotency.require_key: expected true or false, got 'maybe'",
        f"{config}:7: idempotency.routes[0].unknown_outcome: 'forget' is not one of "
        "'hold', 'release'",
        f"{config}:8: log.level: 'verbose' is not one of 'debug', 'info', 'warning', 'error'",
        f"{saga}:2: mode: 'later' is not one of 'sync', 'async'",
    ]


def test_an_unknown_key_suggests_the_key_meant(tmp_path: Path) -> None:
    saga = write(
        tmp_path / "sagas" / "pay.yaml",
        SAGA + "    compensaton: {service: payments, method: DELETE, path: /charges}\n",
    )
    config = config_with(
        tmp_path,
        """
        upstream:
          url: "http://127.0.0.1:3000"
          timout: 5s
        services: {payments: "http://127.0.0.1:3002"}
        limits: {colour: blue}
        sagas: {definitions: ["sagas/*.yaml"]}
        """,
    )

    result = run_check(config)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:3: upstream.timout: unknown key, did you mean 'timeout'?",
        f"{config}:5: limits.colour: unknown key (expected one of max_request_body, "
        "max_header_size, read_timeout, write_timeout)",
        f"{saga}:6: steps[0].compensaton: unknown key, did you mean 'compensation'?",
    ]


def test_errors_are_at_the_line_of_the_offending_key_not_its_parent(tmp_path: Path) -> None:
    saga = write(
        tmp_path / "sagas" / "pay.yaml",
        SAGA
        + """\
    retry:
      attempts: 3
      backoff: 2s
      max_backoff: 1s
""",
    )
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000"}
        services:
          payments: "http://127.0.0.1:3002"
          ledger: "ftp://ledger"
        admin:
          token: ""
          listen: "0.0.0.0:9901"
        idempotency:
          methods:
            - POST
            - "PU T"
        sagas: {definitions: ["sagas/*.yaml"]}
        """,
    )

    result = run_check(config)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:4: services.ledger: expected an http:// or https:// URL, got 'ftp://ledger'",
        f"{config}:7: admin.listen: listen '0.0.0.0:9901' is not a loopback address, so the admin "
        "API would be open to the network: set admin.token (or "
        "admin.allow_public_without_token: true on a trusted network), or listen on 127.0.0.1",
        f"{config}:11: idempotency.methods[1]: not a valid HTTP method: 'PU T'",
        f"{saga}:9: steps[0].retry.max_backoff: max_backoff (1s) must not be less than "
        "backoff (2s)",
    ]


def test_a_missing_config_file_is_one_plain_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    result = run_check(missing)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"saga-sidecar: there is no config file at {missing} (give one with --config FILE)\n"
    )


def test_a_config_path_that_is_a_directory_is_one_plain_sentence(tmp_path: Path) -> None:
    result = run_check(tmp_path)

    assert result.returncode == 2
    assert result.stderr == f"saga-sidecar: the config file {tmp_path} is a directory\n"


def stores_config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    write(tmp_path / "sagas" / "pay.yaml", SAGA)
    return config_with(
        tmp_path,
        f"""
        upstream: {{url: "http://127.0.0.1:3000"}}
        services: {{payments: "http://127.0.0.1:3002"}}
        idempotency: {{store: "{redis_url}"}}
        sagas: {{store: "{database_url}", definitions: ["sagas/*.yaml"]}}
        """,
    )


def test_connect_reaches_every_store_and_exits_0(tmp_path: Path) -> None:
    config = stores_config(tmp_path, env_redis_url(), env_database_url())

    result = run_check(config, "--connect")

    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.splitlines() == [
        f"{config}: ok (1 saga definition)",
        "redis (idempotency.store): ok",
        "postgresql (sagas.store): ok",
    ]


def test_connect_names_the_store_that_fails_and_why_and_exits_3(tmp_path: Path) -> None:
    port = find_free_port()
    database = env_database_url().rsplit("/", 1)[0] + "/no_such_database"
    config = stores_config(tmp_path, f"redis://:hunter2@127.0.0.1:{port}/0", database)

    result = run_check(config, "--connect")

    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [f"{config}: ok (1 saga definition)"]
    redis_line, pg_line = result.stderr.splitlines()
    assert redis_line.startswith(
        f"redis (idempotency.store) redis://:***@127.0.0.1:{port}/0: cannot connect: "
    )
    assert "refused" in redis_line.lower()
    assert "hunter2" not in result.stderr
    assert pg_line.startswith("postgresql (sagas.store) ")
    assert 'database "no_such_database" does not exist' in pg_line


def test_connect_is_not_tried_when_the_files_are_invalid(tmp_path: Path) -> None:
    port = find_free_port()
    config = stores_config(tmp_path, f"redis://127.0.0.1:{port}/0", env_database_url())
    config.write_text(config.read_text() + "log: {format: xml}\n")

    result = run_check(config, "--connect")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:5: log.format: 'xml' is not one of 'json', 'text'"
    ]


def test_serve_warns_of_a_definitions_glob_that_matches_no_file_that_check_refuses(
    tmp_path: Path,
) -> None:
    config = config_with(
        tmp_path,
        """
        listen: "127.0.0.1:0"
        admin: {listen: "127.0.0.1:0"}
        upstream: {url: "http://127.0.0.1:3000"}
        sagas: {store: "sqlite:///sagas.db", definitions: ["sgas/*.yaml"]}
        """,
    )
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}

    checked = run_check(config)
    served = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert served.stdout is not None
        first = served.stdout.readline()
    finally:
        served.terminate()
        served.wait(10)
        if served.stdout is not None:
            served.stdout.close()

    assert checked.returncode == 2
    (refusal,) = checked.stderr.splitlines()
    assert "no file matches 'sgas/*.yaml'" in refusal
    # serve starts (instances of sagas whose files were removed must still be failed with a
    # reason) and says the same thing as its first line
    assert "definitions_glob_empty" in first and "no file matches 'sgas/*.yaml'" in first


def test_a_saga_that_publishes_to_an_unconfigured_broker_is_named_at_its_line(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "sagas" / "ship.yaml",
        """
        name: ship
        trigger: {method: POST, path: /ship}
        mode: async
        steps:
          - name: ship
            action:
              publish: {broker: warehouse, to: ship.orders}
            await: {message: {timeout: 1h}}
        """,
    )
    config = config_with(
        tmp_path,
        """
        upstream: {url: "http://127.0.0.1:3000"}
        services: {payments: "http://127.0.0.1:3002"}
        sagas:
          store: "sqlite:///sagas.db"
          definitions: ["sagas/*.yaml"]
          brokers:
            jobs: {url: "amqp://guest:guest@127.0.0.1:5672/", callbacks: saga.callbacks}
        """,
    )
    checked = run_check(config)
    assert checked.returncode == 2, checked
    ship = tmp_path / "sagas" / "ship.yaml"
    assert (
        f"{ship}:7: steps[0].action.publish.broker: unknown broker 'warehouse' (brokers: jobs)"
        in checked.stderr
    ), checked.stderr
