# `bouncer serve`: load the config, set up diagnostics logging, run the service on uvloop
# (in N worker processes when [server] workers > 1). It builds nothing else itself.
"""The `serve` subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from relay.cli.common import EXIT_CONFIG, EXIT_USAGE, add_config_option, config_or_exit
from relay.config.load import Config, parse_hostport


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the SMTP relay (defaults: 127.0.0.1:2525, relays for loopback)"
    )
    add_config_option(parser)
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="listen here instead of [server] listen (repeat for several addresses)",
    )
    parser.set_defaults(handler=_serve)


def serve_one(
    cfg: Config, config_path: str | None = None, listen: tuple[str, ...] | None = None
) -> int:
    """Run one service process to completion on uvloop; returns its exit code."""
    import uvloop

    from relay.service import Service

    return int(uvloop.run(Service(cfg, config_path=config_path, listen_override=listen).run()))


def with_listen(cfg: Config, listen: list[str]) -> Config:
    """`cfg` with [server] listen replaced by --listen; ValueError names a bad address."""
    for text in listen:
        try:
            parse_hostport(text, 25)
        except ValueError as exc:
            raise ValueError(f"--listen: not host:port: {text!r}") from exc
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, listen=tuple(listen)))


def _serve(args: argparse.Namespace) -> int:
    from relay.config import preflight

    cfg = config_or_exit(args)
    listen = tuple(args.listen) if args.listen else None
    if listen:
        try:
            cfg = with_listen(cfg, list(listen))
        except ValueError as exc:
            print(f"bouncer: {exc}", file=sys.stderr)
            return EXIT_USAGE
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, cfg.log.level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every command line at INFO: that is diagnosis, not the mail log.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    log = logging.getLogger("relay.serve")
    for warning in preflight.warnings(cfg):
        log.warning("config: %s", warning)
    problems = preflight.problems(cfg)
    for problem in problems:
        log.error("config: %s", problem)
    if problems:
        return EXIT_CONFIG
    from relay.workers import run_workers

    return run_workers(cfg.server.workers, lambda index: serve_one(cfg, args.config, listen))
