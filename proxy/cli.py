"""The ``saga-sidecar`` command line: serve, check, migrate, schema, and operator commands over
sagas."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.check import missing_file
from proxy.check import run as run_check
from proxy.config import LoadedConfig, load_config
from proxy.logs import setup_logging
from proxy.sagas.cli import add_sagas_parser, cmd_sagas
from proxy.schemas import SCHEMAS
from proxy.schemas import render as render_schema
from proxy.version import version
from saga_runner.errors import SagaError, StoreError
from saga_runner.store import SagaStore
from yamlconfig.errors import ConfigError

if TYPE_CHECKING:
    from proxy.workers import WorkerSlot

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("config/sidecar.yaml"),
        help="sidecar config file (default: config/sidecar.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per operation."""
    parser = argparse.ArgumentParser(
        prog="saga-sidecar",
        description="Sidecar reverse proxy with Idempotency-Key protection and YAML sagas.",
    )
    parser.add_argument("--version", action="version", version=f"saga-sidecar {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve",
        help="run the proxy and admin listeners until SIGTERM/SIGINT, then drain; SIGHUP "
        "reloads the config and saga files",
    )
    _config_arg(serve_cmd)
    check_cmd = commands.add_parser(
        "check",
        help="validate the config and every saga file it names (exit 0, or 2 with errors); "
        "--connect also reaches the stores (exit 3 when one cannot be reached)",
    )
    _config_arg(check_cmd)
    check_cmd.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the Redis, saga store and brokers the config names",
    )
    check_cmd.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for each store with --connect (default: 5)",
    )
    migrate_cmd = commands.add_parser(
        "migrate", help="create or upgrade the saga tables in sagas.store"
    )
    _config_arg(migrate_cmd)
    schema_cmd = commands.add_parser(
        "schema",
        help="print the JSON Schema of the config file or of a saga file (for editors)",
    )
    schema_cmd.add_argument("kind", choices=sorted(SCHEMAS), help="which file's schema")
    add_sagas_parser(commands, _config_arg)
    idem_cmd = commands.add_parser("idempotency", help="operator commands over idempotency keys")
    idem_actions = idem_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    release_cmd = idem_actions.add_parser(
        "release",
        help="delete one key's lock, may-have-been-sent marker or stored answer, so a retry "
        "executes again (exit 0; 1 when nothing was held or stored)",
    )
    _config_arg(release_cmd)
    release_cmd.add_argument("key", help="the Idempotency-Key value as the client sends it")
    release_cmd.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="HEADER=VALUE",
        help="a scope header's value as the client sends it (repeat for each scope header)",
    )
    return parser


def load_or_report(path: Path) -> LoadedConfig | None:
    """Load the config, printing every ``FILE:LINE: message`` to stderr when it is invalid."""
    sentence = missing_file(path)
    if sentence is not None:
        print(f"saga-sidecar: {sentence}", file=sys.stderr)
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        _report(exc)
        return None


def _report(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(issue, file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and every saga file it names; with ``--connect``, reach the stores."""
    return run_check(args.config, connect=args.connect, timeout=args.timeout)


async def _migrate(loaded: LoadedConfig) -> list[int]:
    assert loaded.config.sagas is not None
    store = await SagaStore.from_url(loaded.config.sagas.store, loaded.base_dir)
    try:
        return await store.migrate()
    finally:
        await store.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the saga store's schema migrations."""
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    if loaded.config.sagas is None:
        print(f"{args.config}: no sagas section, nothing to migrate", file=sys.stderr)
        return EXIT_INVALID
    try:
        applied = asyncio.run(_migrate(loaded))
    except StoreError as exc:
        print(f"migrate failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the sidecar (``workers`` processes) until a stop signal; SIGHUP reloads."""
    # Until the listeners handle it, a SIGHUP must not end the process (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    # Imported here: the whole proxy is only needed to serve, not to check or operate on sagas.
    from proxy.server import install_uvloop
    from proxy.workers import Supervisor

    setup_logging(loaded.config.log.format, loaded.config.log.level)
    install_uvloop()
    count = loaded.config.worker_count()
    if count == 1:
        return _serve(loaded)
    supervisor = Supervisor(count, loaded.config.shutdown_grace)
    return supervisor.run(lambda slot: _serve(loaded, slot))


def _serve(loaded: LoadedConfig, worker: WorkerSlot | None = None) -> int:
    from proxy.server import serve

    try:
        asyncio.run(serve(loaded, worker=worker))
    except ConfigError as exc:
        _report(exc)
        return EXIT_INVALID
    except SagaError as exc:
        print(f"saga-sidecar cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the config or of a saga file (``docs/schema/KIND.json``)."""
    sys.stdout.write(render_schema(args.kind))
    return EXIT_OK


def cmd_sagas_entry(args: argparse.Namespace) -> int:
    """Operator commands over the saga store (see ``proxy.sagas.cli``)."""
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    return cmd_sagas(loaded, args)


async def _release_key(loaded: LoadedConfig, key: str, scope: list[tuple[str, str]]) -> bool:
    from proxy.idempotency import store_from_url
    from proxy.idempotency.keys import KeyScoper
    from proxy.idempotency.operator import forget_key, scope_headers

    section = loaded.config.idempotency
    store = store_from_url(section.store)
    try:
        scoper = KeyScoper(section.scope_headers, section.key_secret, store)
        return await forget_key(store, scoper, key, scope_headers(scope))
    finally:
        await store.close()


def cmd_idempotency(args: argparse.Namespace) -> int:
    """``idempotency release KEY [--scope Header=value]``: release one key in the store."""
    from proxy.errors import InvalidKey, StoreUnavailable
    from proxy.idempotency.keys import parse_key

    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    pairs = [item.partition("=") for item in args.scope]
    if any(not sep or not name for name, sep, _ in pairs):
        print("--scope takes HEADER=VALUE", file=sys.stderr)
        return EXIT_INVALID
    try:
        key = parse_key([args.key], "key")
        assert key is not None
        deleted = asyncio.run(_release_key(loaded, key, [(n, v) for n, _, v in pairs]))
    except InvalidKey as exc:
        print(f"invalid key: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except StoreUnavailable as exc:
        print(f"the idempotency store is unavailable: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    print("released" if deleted else "nothing is held or stored under this key and scope")
    return EXIT_OK if deleted else EXIT_FAILURE


COMMANDS = {
    "serve": cmd_serve,
    "check": cmd_check,
    "migrate": cmd_migrate,
    "sagas": cmd_sagas_entry,
    "schema": cmd_schema,
    "idempotency": cmd_idempotency,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``saga-sidecar`` console script."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
