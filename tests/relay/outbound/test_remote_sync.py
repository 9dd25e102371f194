"""Review: a remote command that timed out must not leave the session in use.

The session stayed open, so the remote's late reply was read as the answer to the next
command: a late RCPT "250" taken for DATA's reply, the message never sent, the client
told 250 (nothing is acknowledged unless delivered or safe on disk).
"""

from __future__ import annotations

from typing import Any

from tests.e2e.test_relay import MSG, converse, send
from tests.support.scripted_mx import ScriptedMX


def _route(mx: ScriptedMX, **delivery: Any) -> dict[str, Any]:
    return {"delivery": {"routes": {"example.test": mx.address}, **delivery}}


async def test_late_rcpt_reply_is_never_taken_for_the_data_reply(relay_service: Any) -> None:
    # a@ is accepted; slow@ times out at RCPT (queued, 250 to the client); the remote's late
    # "250" for slow@ must not be read as the answer to DATA: a@ is either delivered or queued.
    async with ScriptedMX(rcpt_delay={"slow@example.test": 0.8}) as mx:
        svc = await relay_service(_route(mx, command_timeout=0.5))
        out = await converse(svc, send("s@sender.test", ["a@example.test", "slow@example.test"]))
        assert out["rcpt"]["a@example.test"][0] == 250
        assert out["rcpt"]["slow@example.test"][0] == 250  # queued for retry
        assert out["data"][0] == 250
        delivered = {r for _, rcpts, body in mx.messages for r in rcpts if body.endswith(MSG)}
        queued = {r.recipient for m in svc.spool.messages() for r in m.recipients}
        assert "a@example.test" in delivered | queued, (mx.commands, delivered, queued)
