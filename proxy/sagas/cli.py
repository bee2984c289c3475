"""``saga-sidecar sagas list|show|retry|abort``: operator commands over the saga store.

They open the store named by the config's ``sagas.store`` (no migration, no recovery loop) and
use the same operations as the admin API. ``retry`` and ``abort`` run the saga in this process
until it ends (its definition comes from the snapshot stored when it started; step calls use the
config's ``services``), then print the final state. Output is readable text, or with ``--json``
the admin API's JSON. Exit codes: 0 done (for retry/abort: the saga ended ``compensated`` or
``completed``), 1 failure (store error, action refused, saga ended ``failed``), 2 bad input,
3 saga not found.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final

from proxy.config import LoadedConfig
from proxy.sagas.brokers import broker_settings
from proxy.sagas.settings import runtime_settings
from proxy.sagas.text import detail_text, page_text, saga_line
from saga_runner.brokers.registry import BrokerRegistry
from saga_runner.catalog import SagaCatalog
from saga_runner.errors import (
    OperationRefused,
    OperatorInputError,
    SagaError,
    SagaNotFound,
    StoreError,
)
from saga_runner.operations import ListQuery, SagaOperations, clean_actor, clean_reason
from saga_runner.runtime import SagaRuntime
from saga_runner.states import SagaStatus
from saga_runner.views import catalog_step_names, detail_view, page_view, saga_view

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_INVALID: Final = 2
EXIT_NOT_FOUND: Final = 3
SUCCESSFUL_ENDS: Final = frozenset({SagaStatus.COMPENSATED, SagaStatus.COMPLETED})

Command = Callable[[SagaOperations, argparse.Namespace], Awaitable[int]]


def add_sagas_parser(commands: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``sagas`` and its sub-commands to the top-level sub-parsers."""
    sagas = commands.add_parser("sagas", help="list, show, retry or abort saga instances")
    actions = sagas.add_subparsers(dest="sagas_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list sagas, newest first")
    listing.add_argument("--status", choices=[s.value for s in SagaStatus])
    listing.add_argument("--name", help="only sagas with this name")
    listing.add_argument("--business-id", help="only sagas with this business id")
    listing.add_argument("--limit", type=int, default=50, help="page size (1-1000, default 50)")
    listing.add_argument("--before", help="the next_cursor printed by the previous page")
    show = actions.add_parser("show", help="one saga with its step timeline and events")
    retry = actions.add_parser(
        "retry", help="resume a failed saga's compensation (or a stuck saga) and wait for it"
    )
    retry.add_argument(
        "--force", action="store_true", help="take the saga even from a live replica"
    )
    abort = actions.add_parser("abort", help="compensate a running saga now and wait for it")
    for action in (show, retry, abort):
        action.add_argument("saga_id", metavar="ID", help="the saga's id")
    for action in (retry, abort):
        action.add_argument("--actor", help="who acts (default: your user name)")
        action.add_argument("--reason", help="a note kept on the saga's event")
    for action in (listing, show, retry, abort):
        config_arg(action)
        action.add_argument("--json", action="store_true", help="print JSON instead of text")


def print_json(value: Any) -> None:
    """Print a JSON document."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


async def cmd_list(operations: SagaOperations, args: argparse.Namespace) -> int:
    """Print one page of sagas."""
    query = ListQuery.parse(
        status=args.status,
        name=args.name,
        business_id=args.business_id,
        limit=args.limit,
        before=args.before,
    )
    page = await operations.list(query)
    view = page_view(page, catalog_step_names(operations.runtime.catalog))
    if args.json:
        print_json(view)
    else:
        print(page_text(view))
    return EXIT_OK


async def cmd_show(operations: SagaOperations, args: argparse.Namespace) -> int:
    """Print one saga with its steps, attempts and events."""
    view = detail_view(await operations.show(args.saga_id), operations.redact)
    if args.json:
        print_json(view)
    else:
        print(detail_text(view))
    return EXIT_OK


async def cmd_act(operations: SagaOperations, args: argparse.Namespace) -> int:
    """Retry or abort a saga, run it to its end, and print how it ended."""
    actor = f"cli:{clean_actor(args.actor or getpass.getuser())}"
    reason = clean_reason(args.reason)
    if args.sagas_command == "retry":
        run = await operations.retry(args.saga_id, actor, force=args.force, reason=reason)
    else:
        run = await operations.abort(args.saga_id, actor, reason=reason)
    names = catalog_step_names(operations.runtime.catalog)
    if not args.json:
        print(f"{run.action} by {actor}: {saga_line(saga_view(run.saga, operations.redact))}")
    final = await run.run()
    view = saga_view(final, operations.redact, names(final))
    if args.json:
        print_json(view)
    else:
        print(f"ended: {saga_line(view)}")
    return EXIT_OK if final.status in SUCCESSFUL_ENDS else EXIT_FAILURE


COMMANDS: Final[dict[str, Command]] = {
    "list": cmd_list,
    "show": cmd_show,
    "retry": cmd_act,
    "abort": cmd_act,
}


async def run_command(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    """Open the runtime, run the sub-command, close the runtime."""
    # The config's store, services and brokers (a retried step may publish), never migrating
    # (that is `migrate`'s job). Nothing here consumes a broker's completions.
    sagas = loaded.config.sagas
    brokers = BrokerRegistry.from_settings(
        broker_settings(sagas.brokers if sagas is not None else {}), lambda reason: None
    )
    await brokers.open()
    try:
        runtime = await SagaRuntime.open(
            replace(runtime_settings(loaded), migrate=False), SagaCatalog(), brokers=brokers
        )
        try:
            return await COMMANDS[args.sagas_command](SagaOperations(runtime), args)
        finally:
            await runtime.close()
    finally:
        await brokers.close(loaded.config.shutdown_grace)


def cmd_sagas(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    """Run a ``sagas`` sub-command and map its errors to exit codes (messages on stderr)."""
    if loaded.config.sagas is None:
        print(f"{args.config}: no sagas section, so no saga store", file=sys.stderr)
        return EXIT_INVALID
    try:
        return asyncio.run(run_command(loaded, args))
    except OperatorInputError as exc:
        print(f"invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except SagaNotFound as exc:
        print(f"not found: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OperationRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except StoreError as exc:
        print(f"saga store error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except SagaError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
