"""Pure parts: key and Prefer parsing, scoping, fingerprints, route policy, record encoding."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import IdempotencyConfig
from proxy.errors import InvalidKey, RecordFormatError, StoreFull
from proxy.idempotency.fingerprint import fingerprint
from proxy.idempotency.keys import KeyScoper, parse_key, parse_prefer_wait
from proxy.idempotency.memory_store import MemoryStore
from proxy.idempotency.policy import IdempotencyPolicy, keeps_answer
from proxy.idempotency.record import (
    StoredResponse,
    decode_record,
    encode_record,
    headers_to_store,
)
from proxy.idempotency.redis_client import parse_redis_url
from proxy.idempotency.store import Acquired, new_token


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ("  8e03978e-40d5-43e8-bc93-6894a57f9324 ", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("a" * 255, "a" * 255),
        ("!#$%&'*+-.^_`|~{}[]<>=?@;:,/", "!#$%&'*+-.^_`|~{}[]<>=?@;:,/"),
    ],
)
def test_valid_keys_parse_to_the_same_name(raw: str, key: str) -> None:
    assert parse_key([raw]) == key


def test_escapes_in_a_quoted_key_are_resolved() -> None:
    assert parse_key(['"a\\"b\\\\c"']) == 'a"b\\c'


@pytest.mark.parametrize(
    "raw", ["", '""', "a" * 256, "a b", "tab\tkey", "caf\u00e9", '"open', '"a"b', '"a\\x"', '"a b"']
)
def test_invalid_keys_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidKey):
        parse_key([raw])


def test_no_header_is_no_key_and_two_lines_are_invalid() -> None:
    assert parse_key([]) is None
    with pytest.raises(InvalidKey, match="more than one"):
        parse_key(["a", "a"])


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        (["wait=10"], 10),
        (["respond-async, wait=3"], 3),
        (["return=minimal", "Wait = 7 ; x=1"], 7),
        (['wait="4"'], 4),
        (["wait=100000"], 300),
        (["wait=-1"], None),
        (["wait=abc"], None),
        (["respond-async"], None),
        ([], None),
    ],
)
def test_prefer_wait_is_parsed_and_capped(values: list[str], seconds: int | None) -> None:
    assert parse_prefer_wait(values) == seconds


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Request headers as aiohttp hands them over."""
    return CIMultiDictProxy(CIMultiDict(pairs))


async def test_scoped_keys_differ_per_tenant_and_hide_raw_values() -> None:
    scoper = KeyScoper(["Authorization"], "configured-secret", MemoryStore())
    alice = await scoper.lookup_key(headers(("Authorization", "Bearer alice")), "k")
    bob = await scoper.lookup_key(headers(("Authorization", "Bearer bob")), "k")
    nobody = await scoper.lookup_key(headers(), "k")
    empty = await scoper.lookup_key(headers(("Authorization", "")), "k")
    again = await scoper.lookup_key(headers(("authorization", "Bearer alice")), "k")
    assert len({alice, bob, nobody, empty}) == 4
    assert alice == again
    assert all(len(key) == 64 and "alice" not in key for key in (alice, bob))


async def test_scope_material_is_unambiguous() -> None:
    scoper = KeyScoper(["A", "B"], "s", MemoryStore())
    joined = await scoper.lookup_key(headers(("A", "x,y")), "k")
    split = await scoper.lookup_key(headers(("A", "x"), ("A", "y")), "k")
    shifted = await scoper.lookup_key(headers(("B", "x")), "k")
    unshifted = await scoper.lookup_key(headers(("A", "x")), "k")
    assert len({joined, split, shifted, unshifted}) == 4


async def test_secret_changes_every_scoped_key() -> None:
    store = MemoryStore()
    first = await KeyScoper(["Authorization"], "one", store).lookup_key(headers(), "k")
    second = await KeyScoper(["Authorization"], "two", store).lookup_key(headers(), "k")
    from_store = await KeyScoper(["Authorization"], "", store).lookup_key(headers(), "k")
    assert len({first, second, from_store}) == 3


def test_fingerprint_covers_method_path_query_and_exact_body_bytes() -> None:
    base = fingerprint("POST", "/pay?a=1", b'{"a": 1}')
    assert base == fingerprint("post", "/pay?a=1", b'{"a": 1}')
    variants = [
        fingerprint("PUT", "/pay?a=1", b'{"a": 1}'),
        fingerprint("POST", "/pay?a=2", b'{"a": 1}'),
        fingerprint("POST", "/pay", b'{"a": 1}'),
        fingerprint("POST", "/pay?a=1", b'{"a":1}'),
        fingerprint("POST", "/pay?a=1\n", b'{"a": 1}'),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_route_overrides_first_match_wins_with_globs() -> None:
    config = IdempotencyConfig(
        methods=("post", "PUT"),
        require_key=False,
        ttl=100,
        routes=(
            {"path": "/api/v1/payments", "require_key": True, "ttl": 200},
            {"path": "/webhooks/keep/*", "concurrent": "wait"},
            {"path": "/webhooks/*", "enabled": False},
            {"path": "/api/*", "unknown_outcome": "release"},
        ),
    )
    policy = IdempotencyPolicy(config)
    payments = policy.for_request("POST", "/api/v1/payments")
    assert payments is not None and payments.require_key and payments.ttl == 200
    assert payments.unknown_outcome == "hold"
    assert policy.for_request("POST", "/webhooks/github") is None
    kept = policy.for_request("PUT", "/webhooks/keep/a/b")
    assert kept is not None and kept.concurrent == "wait"
    other = policy.for_request("POST", "/api/v1/refunds")
    assert other is not None and other.unknown_outcome == "release" and not other.require_key
    assert policy.for_request("PATCH", "/api/v1/payments") is None
    assert policy.for_request("GET", "/anything") is None
    assert policy.for_request("POST", "/elsewhere") == policy.default


@pytest.mark.parametrize(
    ("status", "hold", "release"),
    [
        (200, True, True),
        (201, True, True),
        (302, True, True),
        (400, True, True),
        (404, True, True),
        (408, False, False),
        (409, True, True),
        (422, True, True),
        (425, False, False),
        (429, False, False),
        (500, True, False),
        (502, True, False),
        (503, False, False),
        (504, True, False),
    ],
)
def test_which_answers_are_kept(status: int, hold: bool, release: bool) -> None:
    assert keeps_answer(status, "hold") is hold
    assert keeps_answer(status, "release") is release


def test_record_round_trips_and_compresses_large_bodies() -> None:
    record = StoredResponse(
        status=201,
        headers=(("Content-Type", "application/json"), ("X-Odd", "\udcff\u00e9")),
        body=b"x" * 100_000,
        fingerprint="f" * 64,
        created=1700000000.123,
        reason="Created",
    )
    encoded = encode_record(record)
    assert len(encoded) < 2_000
    assert decode_record(encoded) == record
    small = StoredResponse(204, (), b"", "f", 1.0, body_retained=False)
    assert decode_record(encode_record(small)) == small


@pytest.mark.parametrize(
    "data", [b"", b"L" + b"0" * 40, b"R1", b"R1\x00\x00\x00\x00\x05{bad", b"R9xx"]
)
def test_unreadable_records_are_rejected(data: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode_record(data)


def test_stored_headers_drop_hop_by_hop_cookies_date_and_length() -> None:
    kept = headers_to_store(
        [
            ("Content-Type", "text/plain"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("ETag", '"x"'),
            ("Location", "/a"),
            ("Content-Encoding", "gzip"),
            ("X-Request-Id", "r1"),
        ]
    )
    assert kept == (
        ("Content-Type", "text/plain"),
        ("ETag", '"x"'),
        ("Location", "/a"),
        ("Content-Encoding", "gzip"),
    )


@pytest.mark.parametrize(
    ("url", "kind", "prefix", "nodes"),
    [
        ("redis://127.0.0.1:6379/0", "redis", "idem", ()),
        ("rediss://u:p@h:6380/1?prefix=pay&socket_timeout=1", "redis", "pay", ()),
        ("redis+cluster://h1:7000,h2:7001?prefix=c", "cluster", "c", (("h1", 7000), ("h2", 7001))),
        ("redis+sentinel://:pw@s1:26379,[::1]:26380/mymaster/2", "sentinel", "idem",
         (("s1", 26379), ("::1", 26380))),
    ],
)  # fmt: skip
def test_store_urls_are_parsed(
    url: str, kind: str, prefix: str, nodes: tuple[tuple[str, int], ...]
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.prefix, target.nodes) == (kind, prefix, nodes)
    assert "prefix=" not in target.url


def test_sentinel_url_names_service_and_db() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:26379/mymaster/2?ssl=true")
    assert (target.service, target.db, target.password, target.ssl) == ("mymaster", 2, "pw", True)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/0?prefix=a{b}",
        "redis+sentinel://s1:26379",
        "redis+cluster://h1",
        "redis+sentinel://s1:x/m",
    ],
)
def test_bad_store_urls_are_errors(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)


async def test_memory_store_refuses_new_keys_when_full_but_completes_held_ones() -> None:
    store = MemoryStore(max_bytes=2_000)
    held = await store.acquire("held", "fp", new_token(), 60)
    for index in range(30):
        try:
            await store.acquire(f"k{index}", "fp", new_token(), 60)
        except StoreFull:
            break
    else:
        pytest.fail("the store never reported being full")
    assert store.used_bytes <= 2_000
    record = StoredResponse(200, (), b"r" * 1000, "fp", 0.0)
    assert isinstance(held, Acquired)
    assert await store.complete(held, record, 60)


async def test_memory_store_frees_space_when_entries_expire() -> None:
    store = MemoryStore(max_bytes=1_000)
    for index in range(3):
        await store.acquire(f"k{index}", "fp", new_token(), 0.05)
    await asyncio.sleep(0.1)
    for index in range(3):
        await store.acquire(f"n{index}", "fp", new_token(), 60)
    assert store.used_bytes < 1_000


def test_memory_store_url_sets_the_bound() -> None:
    assert MemoryStore.from_url("memory://?max_bytes=64KiB").max_bytes == 65536
    assert MemoryStore.from_url("memory://").max_bytes == 256 * 1024**2
