# Property-based test (hypothesis) of the command parser as a client sees it: whatever line
# a client sends, a running `bouncer serve` answers with a well-formed reply, never with
# aiosmtpd's exception reply ("500 Error: (SomeError) ...") or our catch-all 451 4.3.0,
# and the session is still usable afterwards. DNS points at a closed loopback port, so
# recipients exercise the whole RCPT path without leaving the machine.
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.postfix import free_port
from tests.support.rawsmtp import LineClient
from tests.support.serve import BouncerProcess, bouncer_process

CRASH = re.compile(r"^500 .*Error: \(|^451 4\.3\.0 .*internal")


@pytest.fixture(scope="module")
def bouncer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BouncerProcess]:
    table = {
        "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": 0.3},
        "delivery": {"connect_timeout": 0.5, "command_timeout": 0.5},
        "policy": {"soft_bounce": "pass"},
        "server": {"max_message_size": 100_000},
    }
    with bouncer_process(Path(tmp_path_factory.mktemp("fuzz")), table) as b:
        yield b


VERBS = [
    "HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "VRFY", "EXPN",
    "HELP", "STARTTLS", "AUTH", "BDAT", "XCLIENT", "mail from:", "Rcpt To:", "",
]  # fmt: skip
args = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
        max_size=60,
    ),
    st.sampled_from(
        [
            "<a@b.test>", "<>", "<a@b.test> SIZE=abc", "<a@b.test> SIZE=99999999999",
            "<a@b.test> BODY=8BITMIME SMTPUTF8", "<a@b.test> SMTPUTF8=x", "<@route:a@b.test>",
            "<a@[127.0.0.1]>", "<a@[IPv6:::1]>", "<\"q u\"@b.test>", "<a@b.test> NOTIFY=NEVER",
            "<ü@ü.test> SMTPUTF8", "<a@b.test", "a@b.test>", "<<a@b.test>>", "PLAIN", "LOGIN",
            "PLAIN AGFsaWNlAHB3", "=", "<a@" + "x" * 300 + ".test>",
        ]
    ),
)  # fmt: skip
commands = st.builds(
    lambda v, a: v + (" " if v and not v.endswith(":") else "") + a, st.sampled_from(VERBS), args
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(commands, min_size=1, max_size=6))
def test_any_command_sequence_gets_a_clean_reply(bouncer: BouncerProcess, lines: list[str]) -> None:
    s = LineClient(bouncer.port)
    try:
        assert s.cmd(b"EHLO fuzz.test")[-1].startswith("250")
        for line in lines:
            reply = s.cmd(line.encode("utf-8", "surrogatepass"))
            last = reply[-1]
            assert not CRASH.match(last), f"{line!r} -> {reply}"
            if last.startswith("354"):  # DATA accepted: end the message at once
                reply = s.cmd(b".")
                assert not CRASH.match(reply[-1]), f"DATA -> {reply}"
            elif last.startswith("334"):  # an AUTH challenge: cancel it (RFC 4954 §4)
                reply = s.cmd(b"*")
            if reply[-1].startswith("221") or reply[-1].startswith("421"):
                return  # the server ended the session on purpose
        assert s.cmd(b"NOOP")[-1].startswith("250")
    finally:
        s.close()


def test_no_traceback_in_the_server_log(bouncer: BouncerProcess) -> None:
    # Runs after the property test in this module (same process): nothing escaped.
    s = LineClient(bouncer.port)
    s.cmd(b"QUIT")
    s.close()
    assert "Traceback" not in bouncer.log_text(), bouncer.log_text()[-3000:]
