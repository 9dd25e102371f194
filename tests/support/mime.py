"""Typed access to the parts of a parsed email, for tests that read DSNs.

`email.message.Message.get_payload()` returns a string, bytes or a list depending on the
part; these helpers check which one the test expects, so a wrong structure fails there.
"""

from __future__ import annotations

from email.message import Message


def subparts(msg: Message) -> list[Message]:
    """The parts of a multipart message, or the header blocks of a delivery-status part."""
    payload = msg.get_payload()
    assert isinstance(payload, list), f"{msg.get_content_type()} has no parts"
    parts = [p for p in payload if isinstance(p, Message)]
    assert len(parts) == len(payload)
    return parts


def decoded(msg: Message) -> bytes:
    """The body of a single part, transfer-decoded."""
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes), f"{msg.get_content_type()} is multipart"
    return payload


def status_blocks(msg: Message) -> list[Message]:
    """The per-message and per-recipient blocks of a DSN's delivery-status part."""
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    return subparts(status)
