# `bouncer passwd USER`: print a users-file line with an scrypt hash of a password.
# It never writes the users file itself: the operator decides where the line goes.
"""The `passwd` subcommand (hashes for `[server] users_file`)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from relay.inbound.auth import MAX_PASSWORD_BYTES, hash_password


def _passwd(args: argparse.Namespace) -> int:
    if ":" in args.user or not args.user.strip():
        print("bouncer: passwd: user name must be non-empty and contain no ':'", file=sys.stderr)
        return 2
    if args.stdin or not sys.stdin.isatty():
        # One line from stdin, so scripts can pipe a generated password in.
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("bouncer: passwd: passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("bouncer: passwd: empty password refused", file=sys.stderr)
        return 1
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
        # AUTH refuses a longer password unhashed (relay/inbound/auth.py): it never
        # logs in.
        print(
            f"bouncer: passwd: password longer than {MAX_PASSWORD_BYTES} bytes refused",
            file=sys.stderr,
        )
        return 1
    print(f"{args.user}:{hash_password(password)}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "passwd", help="print a users_file line (user:scrypt hash) for SMTP AUTH"
    )
    parser.add_argument("user", help="the SMTP AUTH login name")
    parser.add_argument(
        "--stdin", action="store_true", help="read the password from stdin (one line)"
    )
    parser.set_defaults(handler=_passwd)
