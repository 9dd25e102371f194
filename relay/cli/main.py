# This module parses the command line and hands off to a subcommand module; no decisions.
"""The `bouncer` command: parses arguments and hands off; it decides nothing itself.

Each subcommand lives in its own module with a `register(subparsers)` that adds
its parser and sets `handler(args) -> int`. Exit codes: 0 ok, 1 the operation
failed, 2 bad usage, 3 bad config (systemd's RestartPreventExitStatus=3), 4 the state
store is damaged (relay/store/integrity.py; `bouncer store check|repair`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from relay.config.load import Config, ConfigError, load_config
from relay.store.integrity import EXIT_DAMAGED, StoreDamaged

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3

# Modules that contribute subcommands, in the order `bouncer --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "relay.cli.serve",
    "relay.cli.passwd",
    "relay.cli.stats",
    "relay.cli.suppression",
    "relay.cli.queue",
    "relay.cli.parse",
    "relay.cli.classify",
    "relay.cli.store",
)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", help="TOML config file (default: embedded defaults)"
    )


def config_or_exit(args: argparse.Namespace) -> Config:
    """Load --config for a subcommand, or print every problem and exit 3."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"bouncer: config: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from exc


def _check_config(args: argparse.Namespace) -> int:
    cfg = config_or_exit(args)
    print(
        f"{args.config or '(embedded defaults)'}: ok; listening on {', '.join(cfg.server.listen)}"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bouncer",
        description="SMTP relay that bounces in-transaction and keeps a suppression list.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate a config file, naming every bad key")
    add_config_option(check)
    check.set_defaults(handler=_check_config)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except BrokenPipeError:
        return EXIT_OK  # `bouncer suppression export | head` is not an error
    except StoreDamaged as exc:  # any subcommand that opens the state directory
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    return code
