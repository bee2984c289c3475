"""``sagas.brokers`` in the config file: named brokers, each a known URL scheme and a callbacks
name; every mistake is reported as ``FILE:LINE: key.path: message`` by ``check``."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import find_free_port

from brokers.conftest import NatsServer
from proxy.cli import main
from proxy.config import load_config
from saga_runner.brokers.jetstream import stream_name
from saga_runner.brokers.urls import BrokerKind, broker_kind


def write(tmp_path: Path, brokers: str) -> Path:
    (tmp_path / "sagas").mkdir(exist_ok=True)
    path = tmp_path / "sidecar.yaml"
    text = f"""
        upstream: {{url: "http://127.0.0.1:3000"}}
        sagas:
          store: "sqlite:///sagas.db"
          definitions: []
          brokers:
{textwrap.indent(textwrap.dedent(brokers).strip(), " " * 12)}
        """
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(path)])
    return code, capsys.readouterr().err.splitlines()


def test_named_rabbitmq_and_nats_brokers_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        jobs: {url: "amqp://guest:guest@127.0.0.1:5672/", callbacks: "saga.callbacks"}
        secure: {url: "amqps://u:p@mq.internal:5671/prod", callbacks: "saga.callbacks"}
        events: {url: "nats://127.0.0.1:4222", callbacks: "saga.callbacks"}
        events-tls: {url: "tls://nats.internal:4222", callbacks: "shop.saga.>"}
        """,
    )
    brokers = load_config(path).config.sagas.brokers  # type: ignore[union-attr]
    assert {name: broker_kind(b.url) for name, b in brokers.items()} == {
        "jobs": BrokerKind.RABBITMQ,
        "secure": BrokerKind.RABBITMQ,
        "events": BrokerKind.NATS,
        "events-tls": BrokerKind.NATS,
    }
    assert brokers["events"].callbacks == "saga.callbacks"


def test_without_brokers_there_are_none(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text('upstream: {url: "http://127.0.0.1:3000"}\nsagas: {definitions: []}\n')
    assert load_config(path).config.sagas.brokers == {}  # type: ignore[union-attr]


def test_every_broker_mistake_is_reported_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        jobs:
          url: "kafka://127.0.0.1:9092"
          callbacks: "saga.callbacks"
        events:
          url: "nats://127.0.0.1:4222"
          callbacks: "saga..callbacks"
        spaced: {url: "amqp://guest:hunter2@127.0.0.1/", callbacks: "saga callbacks"}
        hostless: {url: "amqp:///vhost", callbacks: "q"}
        nocallbacks: {url: "amqp://127.0.0.1/"}
        "bad name!": {url: "amqp://127.0.0.1/", callbacks: "q"}
        http: {url: "amqp://127.0.0.1/", callbacks: "q"}
        """,
    )
    code, errors = check(path, capsys)
    assert code == 2
    joined = "\n".join(errors)
    assert f"{path}:7: sagas.brokers.jobs.url: unknown broker URL scheme" in joined
    assert "amqp://, amqps://, nats://, tls://" in joined
    assert (
        f"{path}:11: sagas.brokers.events.callbacks: 'saga..callbacks' is not a NATS subject"
        in (joined)
    )
    assert f"{path}:12: sagas.brokers.spaced.callbacks:" in joined
    assert f"{path}:13: sagas.brokers.hostless.url: the broker URL" in joined
    assert f"{path}:14: sagas.brokers.nocallbacks.callbacks:" in joined
    assert f"{path}:15: sagas.brokers.bad name!:" in joined
    assert f"{path}:16: sagas.brokers.http: broker name 'http' is reserved" in joined
    assert "hunter2" not in joined
    assert len(errors) == 7, errors


def test_check_connect_reaches_each_broker_and_says_why_one_cannot_be_reached(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rabbitmq_url: str,
    nats_url: str,
    nats_server: Callable[..., NatsServer],
) -> None:
    plain = nats_server(jetstream=False)
    plain.start()
    refused = find_free_port()
    path = write(
        tmp_path,
        f"""
        jobs: {{url: "{rabbitmq_url}", callbacks: "q"}}
        events: {{url: "{nats_url}", callbacks: "q"}}
        down: {{url: "amqp://guest:hunter2@127.0.0.1:{refused}/", callbacks: "q"}}
        nojs: {{url: "{plain.url}", callbacks: "q"}}
        """,
    )
    code = main(["check", "--config", str(path), "--connect"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "rabbitmq (sagas.brokers.jobs): ok" in out
    assert "nats (sagas.brokers.events): ok" in out
    assert (
        f"rabbitmq (sagas.brokers.down) amqp://guest:***@127.0.0.1:{refused}/: cannot connect: "
        in err
    )
    assert "(Connection refused)" in err
    assert f"nats (sagas.brokers.nojs) {plain.url}: cannot connect: JetStream is not enabled" in err
    assert "hunter2" not in out + err


def test_the_callbacks_stream_is_named_after_its_subject() -> None:
    assert stream_name("saga.callbacks") == "saga_callbacks"
    assert stream_name("shop.saga.>") == "shop_saga__"
