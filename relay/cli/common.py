# What every subcommand shares: exit codes, the --config option, loading the config and
# opening the state directory. Subcommand modules import this, never relay/cli/main.py.
"""Shared pieces of the `bouncer` subcommands (see relay/cli/main.py for the exit codes)."""

from __future__ import annotations

import argparse
import os
import sys

import lmdb

from relay.config.load import DEFAULT_CONFIG, Config, ConfigError, find_config, load_config
from relay.store.env import StateError, open_state

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: a listen address is in use; systemd retries


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


def open_state_for(args: argparse.Namespace, cfg: Config, *, create: bool) -> lmdb.Environment:
    """The configured state directory's LMDB environment, for a CLI command.

    A command that only reads never creates the directory: an empty store made
    in the wrong place would answer "nothing" where the server holds records.
    Raises StateError saying where it looked and which config named that place.
    """
    path = cfg.store.path
    if not create and not os.path.isdir(path):
        raise StateError(
            f"no state directory at {os.path.abspath(path)} ([store] path from "
            f"{config_name(args)}); the server creates it when it first starts"
        )
    return open_state(path, cfg.store.map_size)
