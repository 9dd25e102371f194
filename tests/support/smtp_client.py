# An async SMTP client for the ops tests: every reply is returned, none raises.
from __future__ import annotations

from dataclasses import dataclass, field

import aiosmtplib

MSG = b"From: app@sender.test\r\nTo: x@y.test\r\nSubject: ops test\r\n\r\nHello.\r\n"


@dataclass
class Sent:
    mail: int
    rcpt: dict[str, tuple[int, str]] = field(default_factory=dict)
    data: tuple[int, str] | None = None


async def open_client(host: str, port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=host, port=port, local_hostname="app.test", start_tls=False, timeout=20
    )
    await client.connect()
    await client.ehlo()
    return client


async def transaction(
    client: aiosmtplib.SMTP, sender: str, rcpts: list[str], data: bytes = MSG
) -> Sent:
    """MAIL, each RCPT, DATA when one was accepted; RSET after a refused MAIL."""
    mail = await client.execute_command(f"MAIL FROM:<{sender}>".encode())
    out = Sent(mail.code)
    if mail.code != 250:
        await client.rset()
        return out
    for rcpt in rcpts:
        reply = await client.execute_command(f"RCPT TO:<{rcpt}>".encode())
        out.rcpt[rcpt] = (reply.code, reply.message)
    if any(code == 250 for code, _ in out.rcpt.values()):
        try:
            reply = await client.data(data)
            out.data = (reply.code, reply.message)
        except aiosmtplib.SMTPDataError as exc:
            out.data = (exc.code, exc.message)
    else:
        await client.rset()
    return out


async def send(host: str, port: int, sender: str, rcpts: list[str], data: bytes = MSG) -> Sent:
    client = await open_client(host, port)
    try:
        return await transaction(client, sender, rcpts, data)
    finally:
        try:
            await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()
