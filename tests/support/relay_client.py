# Test support: one message through a running bouncer Service with smtplib, in a thread
# (smtplib blocks; bouncer and the fake remotes run on the test's loop).
"""`await send_one(svc, "b@example.test")` -> the reply that decided the message."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

BODY = b"From: a@sender.test\r\nSubject: t\r\n\r\nhi\r\n"


async def send_one(
    svc: Any, rcpt: str, sender: str = "a@sender.test", data: bytes = BODY
) -> tuple[int, bytes]:
    """EHLO, MAIL, RCPT and DATA: the RCPT reply when the recipient is refused (the live
    relay reaches the remote at RCPT), else the reply to DATA."""
    host, port = svc.addresses[0]

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as client:
            client.ehlo()
            client.mail(sender)
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text
            return client.data(data)

    return await asyncio.to_thread(run)
