# This module parses the command line and hands off to a subcommand module; no decisions.
"""The `bouncer` command: parses arguments and hands off; it decides nothing itself.

Each subcommand lives in its own module with a `register(subparsers)` that adds
its parser and sets `handler(args) -> int`. Exit codes: 0 ok, 1 the operation
failed, 2 bad usage, 3 bad config (systemd's RestartPreventExitStatus=3), 4 the state
store is damaged (relay/store/integrity.py; `bouncer store check|repair`), 75 a listen
address in use at `serve` (EX_TEMPFAIL: systemd restarts it, the conflict may pass).

Without `--config`, commands read $BOUNCER_CONFIG, else /etc/bouncer/bouncer.toml when
it exists, else the embedded defaults (relay/config/load.py `find_config`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from relay import __version__
from relay.config.load import DEFAULT_CONFIG, Config, ConfigError, find_config, load_config
from relay.store.integrity import EXIT_DAMAGED, StoreDamaged

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: a listen address is in use; systemd retries

# Modules that contribute subcommands, in the order `bouncer --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "relay.cli.serve",
    "relay.cli.passwd",
    "relay.cli.dkim",
    "relay.cli.stats",
    "relay.cli.suppression",
    "relay.cli.queue",
    "relay.cli.parse",
    "relay.cli.classify",
    "relay.cli.store",
)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML config file (default: $BOUNCER_CONFIG, else {DEFAULT_CONFIG} "
        "if it exists, else the embedded defaults)",
    )


def config_name(args: argparse.Namespace) -> str:
    return str(args.config) if args.config else "(embedded defaults)"


def config_or_exit(args: argparse.Namespace) -> Config:
    """Load the subcommand's config (see `find_config`), or print every problem and exit 3.

    `args.config` is set to the file actually read, so later steps (serve's reload,
    messages naming where the store was looked for) use the same one.
    """
    args.config = find_config(args.config)
    try:
        return load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"bouncer: config: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from exc


def open_state_for(args: argparse.Namespace, cfg: Config, *, create: bool) -> Any:
    """The configured state directory's LMDB environment, for a CLI command.

    A command that only reads never creates the directory: an empty store made
    in the wrong place would answer "nothing" where the server holds records.
    Raises StateError saying where it looked and which config named that place.
    """
    from relay.store.env import StateError, open_state

    path = cfg.store.path
    if not create and not os.path.isdir(path):
        raise StateError(
            f"no state directory at {os.path.abspath(path)} ([store] path from "
            f"{config_name(args)}); the server creates it when it first starts"
        )
    return open_state(path, cfg.store.map_size)


def _check_config(args: argparse.Namespace) -> int:
    from relay.config import preflight

    cfg = config_or_exit(args)
    for warning in preflight.warnings(cfg):
        print(f"bouncer: config: warning: {warning}", file=sys.stderr)
    problems = preflight.problems(cfg)
    for problem in problems:
        print(f"bouncer: config: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    print(f"{config_name(args)}: ok; listening on {', '.join(cfg.server.listen)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bouncer",
        description="SMTP relay that bounces in-transaction and keeps a suppression list.",
    )
    parser.add_argument("--version", action="version", version=f"bouncer {__version__}")
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
