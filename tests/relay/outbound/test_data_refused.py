"""Review: a DATA command the remote refused before 354 leaves its transaction open.

Postfix keeps MAIL in effect after refusing the DATA command (smtpd_data_restrictions,
say); the session went back to the pool without RSET, and the next transaction reusing
it got "503 nested MAIL command", passed to the client as a permanent refusal.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.test_relay import converse, send
from tests.support.scripted_mx import ScriptedMX


async def test_session_is_reset_after_the_remote_refused_the_data_command(
    relay_service: Any,
) -> None:
    # Postfix keeps MAIL in effect after refusing DATA (e.g. smtpd_data_restrictions): the
    # pooled session must be RSET before the next transaction reuses it.
    async with ScriptedMX(
        data_command_reply=lambda n: "554 5.7.1 Rejected at DATA" if n == 1 else "354 Go ahead"
    ) as mx:
        svc = await relay_service({"delivery": {"routes": {"example.test": mx.address}}})
        first = await converse(svc, send("s@sender.test", ["a@example.test"]))
        assert first["rcpt"]["a@example.test"][0] == 250
        assert first["data"][0] == 554
        second = await converse(svc, send("s@sender.test", ["b@example.test"]))
        assert second["rcpt"]["b@example.test"][0] == 250, (second, mx.commands)
        assert second["data"][0] == 250
        assert [r for _, r, _ in mx.messages] == [("b@example.test",)]
