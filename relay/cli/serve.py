# `bouncer serve`: load the config, set up diagnostics logging, run the service on uvloop
# (in N worker processes when [server] workers > 1). It builds nothing else itself.
"""The `serve` subcommand."""

from __future__ import annotations

import argparse
import logging
import sys

from relay.cli.main import add_config_option, config_or_exit
from relay.config.load import Config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the SMTP relay (defaults: 127.0.0.1:2525, relays for loopback)"
    )
    add_config_option(parser)
    parser.set_defaults(handler=_serve)


def serve_one(cfg: Config, config_path: str | None = None) -> int:
    """Run one service process to completion on uvloop; returns its exit code."""
    import uvloop

    from relay.service import Service

    return int(uvloop.run(Service(cfg, config_path=config_path).run()))


def _serve(args: argparse.Namespace) -> int:
    cfg = config_or_exit(args)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, cfg.log.level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every command line at INFO: that is diagnosis, not the mail log.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    from relay.workers import run_workers

    return run_workers(cfg.server.workers, lambda index: serve_one(cfg, args.config))
