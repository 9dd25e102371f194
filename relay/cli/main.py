# This module parses the command line and hands off to a subcommand module; no decisions.
"""The `bouncer` command: parses arguments and hands off; it decides nothing itself.

Each subcommand lives in its own module, imported here by name, with a
`register(subparsers)` that adds its parser and sets `handler(args) -> int`. Exit
codes (relay/cli/common.py): 0 ok, 1 the operation failed, 2 bad usage, 3 bad config
(systemd's RestartPreventExitStatus=3), 4 the state store is damaged
(relay/store/integrity.py; `bouncer store check|repair`), 75 a listen address in use
at `serve` (EX_TEMPFAIL: systemd restarts it, the conflict may pass).

Without `--config`, commands read $BOUNCER_CONFIG, else /etc/bouncer/bouncer.toml when
it exists, else the embedded defaults (relay/config/load.py `find_config`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__
from relay.cli import classify, dkim, parse, passwd, queue, serve, stats, store, suppression
from relay.cli.common import EXIT_CONFIG, EXIT_OK, add_config_option, config_name, config_or_exit
from relay.store.integrity import EXIT_DAMAGED, StoreDamaged

# The modules that contribute subcommands, in the order `bouncer --help` lists them.
COMMAND_MODULES = (serve, passwd, dkim, stats, suppression, queue, parse, classify, store)


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
    lmtp = "".join(f", LMTP on {a}" for a in cfg.server.lmtp_listen)
    print(f"{config_name(args)}: ok; listening on {', '.join(cfg.server.listen)}{lmtp}")
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
    for module in COMMAND_MODULES:
        module.register(sub)
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
