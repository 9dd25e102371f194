"""What relay/inbound/ relies on inside aiosmtpd: stock reply texts it matches or rewrites,
and private hooks it overrides or calls. An aiosmtpd release that changes one fails here,
by name, instead of as a changed reply on the wire."""

from __future__ import annotations

import inspect

import aiosmtpd
import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP, Session

from relay.inbound import replies

SOURCE = inspect.getsource(aiosmtpd.smtp)

# Stock texts: matched in InboundSMTP.push (malformed RCPT, the bogus-command goodbye),
# repeated by its smtp_DATA, and given codes by replies.enhance().
STOCK = [
    "Error: malformed address",
    "Too many unrecognized commands",
    replies.STOCK_NEED_RCPT,
    replies.STOCK_DATA_SYNTAX,
    replies.STOCK_GO_AHEAD,
    "500 Line too long",
    "500 Command line too long",
    "500 Error: strict ASCII mode",
    "250 OK",
    "221 Bye",
    "220 Ready to start TLS",
]


@pytest.mark.parametrize("text", STOCK)
def test_stock_text_is_still_aiosmtpds(text: str) -> None:
    assert text in SOURCE


def test_malformed_and_goodbye_carry_the_codes_the_server_matches() -> None:
    # aiosmtpd writes these with their enhanced code already; the server compares whole lines.
    assert '"553 5.1.3 Error: malformed address"' in SOURCE
    assert replies.STOCK_MALFORMED == "553 5.1.3 Error: malformed address"
    assert replies.STOCK_BOGUS_GOODBYE in SOURCE or "5.5.1 Too many unrecognized" in SOURCE


# Private and semi-private members InboundSMTP overrides or calls (relay/inbound/server.py).
HOOKS = [
    "_getaddr",
    "_create_session",
    "_set_post_data_state",
    "_call_handler_hook",
    "check_helo_needed",
    "check_auth_needed",
    "smtp_RCPT",
    "smtp_DATA",
    "push",
    "connection_made",
    "connection_lost",
    "eof_received",
]


@pytest.mark.parametrize("name", HOOKS)
def test_hook_exists(name: str) -> None:
    assert callable(getattr(SMTP, name, None)), name


def test_attributes_the_server_reads_are_set_by_smtp_init() -> None:
    init = inspect.getsource(SMTP.__init__)
    for attr in ("event_handler", "data_size_limit", "line_length_limit"):
        assert f"self.{attr}" in init, attr
    assert isinstance(SMTP.local_part_limit, int)
    assert "self._reader" in SOURCE
    # _Session shadows this deprecated property with a plain attribute.
    assert isinstance(inspect.getattr_static(Session, "login_data"), property)


def test_version_within_the_pinned_range() -> None:
    major, minor, *_ = (int(p) for p in aiosmtpd.__version__.split(".")[:3])
    assert (major, minor) == (1, 4)  # pyproject.toml: aiosmtpd>=1.4.6,<1.5
