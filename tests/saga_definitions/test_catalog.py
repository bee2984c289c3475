"""The saga catalog: every file named by the globs, validated and cross-checked together."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga_runner.catalog import SagaCatalog, load_definitions
from yamlconfig.errors import ConfigError
from yamlconfig.loader import load_yaml

from .helpers import SERVICES, VALID, write

REPO = Path(__file__).resolve().parents[2]


def saga(name: str, method: str = "POST", path: str = "/api/x") -> str:
    return (
        f"name: {name}\n"
        f"trigger: {{method: {method}, path: {path}}}\n"
        "steps:\n"
        "  - name: only\n"
        "    action: {service: orders, method: POST, path: /orders}\n"
    )


def catalog_errors(
    tmp_path: Path, globs: list[str], reserved: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_definitions(tmp_path, globs, SERVICES, reserved_routes=reserved, env={})
    return [str(issue).replace(f"{tmp_path}/", "") for issue in caught.value.issues]


def test_bundled_config_glob_loads_the_demo_sagas() -> None:
    services = load_yaml(REPO / "config" / "sidecar.yaml", env={}).data["services"]
    catalog = load_definitions(REPO / "config", ["sagas/*.yaml"], services, env={})
    payment = catalog.by_name["payment"]
    withdrawal = catalog.by_name["withdrawal"]
    checkout = catalog.by_name["checkout"]
    transfer = catalog.by_name["transfer"]
    assert catalog.by_route[("POST", "/api/v1/payments")] is payment
    assert catalog.by_hash[payment.definition_hash] is payment
    assert catalog.match("post", "/api/v1/payments") is payment
    assert catalog.match("GET", "/api/v1/payments") is None
    assert catalog.match("POST", "/api/v1/withdrawals") is withdrawal
    assert catalog.sources["payment"] == (REPO / "config" / "sagas" / "payment.yaml").resolve()
    assert catalog.match("POST", "/api/v1/checkouts") is checkout
    assert catalog.match("POST", "/api/v1/transfers") is transfer
    assert [len(stage.orders) for stage in checkout.stages] == [3, 1]  # a group, then the charge
    assert (checkout.kind, transfer.kind) == ("saga", "tcc")
    card = catalog.by_name["card_payment"]
    assert catalog.match("POST", "/api/v1/card-payments") is card
    assert (card.mode, card.deadline) == ("async", 120.0)
    awaits = [s.await_ for s in card.steps]
    assert awaits[0] is None
    assert awaits[1] is not None and awaits[1].callback is not None
    assert awaits[2] is not None and awaits[2].poll is not None
    assert sorted(catalog, key=lambda d: d.name) == [
        card,
        checkout,
        payment,
        transfer,
        withdrawal,
    ]
    assert len(catalog) == 5


def test_every_matching_file_is_loaded_once(tmp_path: Path) -> None:
    write(tmp_path, saga("a", path="/a"), "sagas/a.yaml")
    write(tmp_path, saga("b", path="/b"), "sagas/nested/b.yaml")
    write(tmp_path, "not: a saga\n", "sagas/readme.txt")
    catalog = load_definitions(
        tmp_path, ["sagas/*.yaml", "sagas/**/*.yaml", "sagas/a.yaml"], SERVICES, env={}
    )
    assert sorted(catalog.by_name) == ["a", "b"]
    assert sorted(catalog.by_route) == [("POST", "/a"), ("POST", "/b")]


def test_a_glob_matching_nothing_is_an_error(tmp_path: Path) -> None:
    assert catalog_errors(tmp_path, ["sagas/*.yaml"]) == [
        "<config>:1: sagas.definitions[0]: no file matches 'sagas/*.yaml' (looked for sagas/*.yaml)"
    ]


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, saga("a"), "sagas/a.yaml")
    assert catalog_errors(tmp_path, ["sagas/a.yaml", "sagas/payment.yaml"]) == [
        "<config>:1: sagas.definitions[1]: no file matches 'sagas/payment.yaml' "
        "(looked for sagas/payment.yaml)"
    ]


def test_absolute_globs_are_used_as_given(tmp_path: Path) -> None:
    write(tmp_path, saga("a"), "elsewhere/a.yaml")
    catalog = load_definitions(Path("/nonexistent"), [f"{tmp_path}/elsewhere/*.yaml"], SERVICES)
    assert list(catalog.by_name) == ["a"]


def test_problems_in_every_file_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path, saga("a").replace("service: orders", "service: nope"), "sagas/a.yaml")
    write(
        tmp_path,
        saga("b", path="/b").replace("method: POST, path: /orders", "method: GO, path: /orders"),
        "sagas/b.yaml",
    )
    assert catalog_errors(tmp_path, ["sagas/*.yaml"]) == [
        "sagas/a.yaml:5: steps[0].action.service: "
        "unknown service 'nope' (services: orders, payments)",
        "sagas/b.yaml:5: steps[0].action.method: unsupported HTTP method 'GO' "
        "(use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)",
    ]


def test_duplicate_saga_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, saga("pay", path="/a"), "sagas/a.yaml")
    write(tmp_path, "# second copy\n" + saga("pay", path="/b"), "sagas/b.yaml")
    assert catalog_errors(tmp_path, ["sagas/*.yaml"]) == [
        "sagas/b.yaml:2: name: saga 'pay' is already defined at sagas/a.yaml:1",
    ]


def test_two_sagas_on_the_same_trigger(tmp_path: Path) -> None:
    write(tmp_path, saga("a", path="/same"), "sagas/a.yaml")
    write(tmp_path, saga("b", method="post", path="/same"), "sagas/b.yaml")
    write(tmp_path, saga("c", method="PUT", path="/same"), "sagas/c.yaml")
    assert catalog_errors(tmp_path, ["sagas/*.yaml"]) == [
        "sagas/b.yaml:2: trigger: POST /same is already the trigger of the saga at sagas/a.yaml:2",
    ]


def test_a_trigger_on_a_reserved_route(tmp_path: Path) -> None:
    write(tmp_path, saga("a", path="/healthz"), "sagas/a.yaml")
    write(tmp_path, saga("b", method="GET", path="/internal/x"), "sagas/b.yaml")
    write(tmp_path, saga("c", method="GET", path="/public"), "sagas/c.yaml")
    reserved = (("*", "/healthz"), ("GET", "/internal/*"), ("POST", "/public"))
    assert catalog_errors(tmp_path, ["sagas/*.yaml"], reserved) == [
        "sagas/a.yaml:2: trigger.path: POST /healthz is a reserved route of the sidecar",
        "sagas/b.yaml:2: trigger.path: GET /internal/x is a reserved route of the sidecar",
    ]


def test_catalog_of_indexes_definitions(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    catalog = load_definitions(tmp_path, ["saga.yaml"], SERVICES, env={})
    definition = catalog.by_name["demo"]
    rebuilt = SagaCatalog.of([(definition, path)])
    assert rebuilt.by_route == {("POST", "/api/demo"): definition}
    assert rebuilt.by_hash == {definition.definition_hash: definition}


def test_environment_is_substituted_in_saga_files(tmp_path: Path) -> None:
    write(tmp_path, saga("a", path='"${TRIGGER_PATH:-/default}"'), "sagas/a.yaml")
    catalog = load_definitions(tmp_path, ["sagas/*.yaml"], SERVICES, env={"TRIGGER_PATH": "/env"})
    assert list(catalog.by_route) == [("POST", "/env")]
