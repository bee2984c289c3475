"""Redis clients for the idempotency store, built from the configured URL.

Accepted URLs (``prefix`` sets the key prefix, default ``idem``; other query parameters of a
``redis://`` URL go to redis-py, e.g. ``max_connections``, ``socket_timeout``):

- ``redis://[user:password@]host:port/db`` and ``rediss://…`` (TLS)
- ``redis+sentinel://[user:password@]host:port[,host:port…]/service_name[/db]``
  (``ssl=true``, ``sentinel_password=…``)
- ``redis+cluster://[user:password@]host:port[,host:port…]`` (``ssl=true``)

Every client uses one connection pool with short socket timeouts, one immediate retry (a stale
pooled connection after a Redis restart is replaced transparently), periodic health checks, and
reconnects by itself once Redis is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

DEFAULT_PREFIX = "idem"
POOL_SIZE = 64  # a blocking pool: callers wait (up to 2 s) for a free connection
CLUSTER_NODE_POOL_SIZE = 1000  # the cluster pool does not block: size it for the peak

RedisClient = Redis | RedisCluster


def connection_options() -> dict[str, Any]:
    """Socket timeouts, retry and health checks shared by every kind of client."""
    return {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 1.0,
        "health_check_interval": 15,
        "retry": Retry(NoBackoff(), 1),
        "client_name": "saga-sidecar",
    }


@dataclass(frozen=True)
class RedisTarget:
    """A parsed store URL: which kind of deployment, where, and the key prefix."""

    kind: str
    prefix: str
    url: str = ""
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def ssl(self) -> bool:
        """Whether ``ssl=true`` was given (sentinel and cluster URLs)."""
        return self.options.get("ssl", "").lower() in ("1", "true", "yes")


def _split_nodes(netloc: str) -> tuple[str | None, str | None, tuple[tuple[str, int], ...]]:
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port in {netloc!r}, got {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    return unquote(username) or None, unquote(password) or None, tuple(nodes)


def _prefix(options: dict[str, str]) -> str:
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
    return prefix


def parse_redis_url(url: str) -> RedisTarget:
    """Parse an idempotency store URL (see the module docstring).

    Raises:
        ValueError: the URL is malformed.
    """
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    prefix = _prefix(options)
    if parts.scheme in ("redis", "rediss"):
        clean = urlunsplit(parts._replace(query=urlencode(options)))
        return RedisTarget(kind="redis", prefix=prefix, url=clean)
    username, password, nodes = _split_nodes(parts.netloc)
    if parts.scheme == "redis+cluster":
        return RedisTarget(
            "cluster", prefix, nodes=nodes, username=username, password=password, options=options
        )
    if parts.scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ValueError(f"expected redis+sentinel://hosts/service_name[/db], got {url!r}")
        db = int(path[1]) if len(path) == 2 else 0
        return RedisTarget(
            "sentinel",
            prefix,
            nodes=nodes,
            service=path[0],
            db=db,
            username=username,
            password=password,
            options=options,
        )
    raise ValueError(f"not a Redis URL: {url!r}")


def _auth(target: RedisTarget) -> dict[str, Any]:
    return {"username": target.username, "password": target.password}


@dataclass(frozen=True)
class RedisConnection:
    """The client commands go through, plus helper clients (Sentinel's) closed with it."""

    client: RedisClient
    helpers: tuple[Redis, ...] = ()

    async def aclose(self) -> None:
        """Close the client's pool and every helper client."""
        await self.client.aclose()
        for helper in self.helpers:
            await helper.aclose()


def connect(target: RedisTarget) -> RedisConnection:
    """A connection to ``target`` (no I/O happens until the first command)."""
    if target.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=target.ssl,
            max_connections=CLUSTER_NODE_POOL_SIZE,
            **_auth(target),
            **connection_options(),
        )
        return RedisConnection(cluster)
    if target.kind == "sentinel":
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        if "sentinel_password" in target.options:
            sentinel_kwargs["password"] = target.options["sentinel_password"]
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)
        master: Redis = sentinel.master_for(
            target.service, db=target.db, ssl=target.ssl, **_auth(target), **connection_options()
        )
        return RedisConnection(master, tuple(sentinel.sentinels))
    pool = BlockingConnectionPool.from_url(
        target.url, max_connections=POOL_SIZE, timeout=2.0, **connection_options()
    )
    return RedisConnection(Redis.from_pool(pool))
