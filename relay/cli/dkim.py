# `bouncer dkim keygen DOMAIN SELECTOR`: write a new private key and print the DNS record to
# publish. It writes one new file (never over an existing one) and changes no config.
"""The `dkim` subcommand (keys for `[[dkim.keys]]`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from policy.address import is_valid_domain
from relay.config.load import SELECTOR_SYNTAX
from relay.outbound.dkim import ALGORITHMS, dns_record, load_key, new_key


def _keygen(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    if not is_valid_domain(domain) or domain.startswith("["):
        print(f"bouncer: dkim keygen: not a domain name: {args.domain!r}", file=sys.stderr)
        return 2
    if not SELECTOR_SYNTAX.match(args.selector):
        print(f"bouncer: dkim keygen: not a selector: {args.selector!r}", file=sys.stderr)
        return 2
    suffix = "" if args.algorithm == "rsa-sha256" else ".ed25519"
    path = Path(args.dir) / f"{domain}.{args.selector}{suffix}.pem"
    try:
        # O_EXCL: an existing key is never replaced (its public half may be published).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"bouncer: dkim keygen: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as fh:
        fh.write(new_key(args.algorithm, args.bits))
    key = load_key(domain, args.selector, str(path), args.algorithm)
    print(f"# private key: {path} (readable by bouncer's user only)")
    print("# bouncer.toml:")
    print("[[dkim.keys]]")
    print(f'domain = "{domain}"')
    print(f'selector = "{args.selector}"')
    print(f'key_file = "{path.resolve()}"')
    if args.algorithm != "rsa-sha256":
        print(f'algorithm = "{args.algorithm}"')
    print("# DNS: publish this TXT record:")
    record = dns_record(key.key)
    # A TXT string holds at most 255 octets (RFC 1035 §3.3); longer values are several strings.
    strings = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    print(f"{args.selector}._domainkey.{domain}. IN TXT {strings}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dkim", help="DKIM signing keys")
    sub = parser.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = sub.add_parser(
        "keygen", help="write a new private key and print the DNS TXT record to publish"
    )
    keygen.add_argument("domain", help="the signing domain (d=)")
    keygen.add_argument("selector", help="the selector (s=), e.g. 2026a")
    keygen.add_argument("--dir", default=".", help="where to write the key (default: here)")
    keygen.add_argument("--algorithm", choices=ALGORITHMS, default="rsa-sha256")
    keygen.add_argument("--bits", type=int, choices=(1024, 2048, 3072, 4096), default=2048)
    keygen.set_defaults(handler=_keygen)
