"""The ``saga-sidecar`` command line: serve, check, migrate, and operator commands over sagas."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.config import LoadedConfig, load_config
from proxy.logs import setup_logging
from proxy.server import install_uvloop, serve
from saga_runner.errors import ConfigError

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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve", help="run the proxy and admin listeners until SIGTERM/SIGINT, then drain"
    )
    _config_arg(serve_cmd)
    check_cmd = commands.add_parser(
        "check", help="validate the config and every saga file it names (exit 0, or 2 with errors)"
    )
    _config_arg(check_cmd)
    return parser


def load_or_report(path: Path) -> LoadedConfig | None:
    """Load the config, printing every ``FILE:LINE: message`` to stderr when it is invalid."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config file; exit 2 listing every problem."""
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    print(f"{args.config}: ok")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the sidecar until a stop signal."""
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    setup_logging(loaded.config.log.format, loaded.config.log.level)
    install_uvloop()
    asyncio.run(serve(loaded))
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "check": cmd_check}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``saga-sidecar`` console script."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
