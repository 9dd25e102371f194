# As a new sysadmin meets bouncer: the CLI finds the server's config and store
# from any directory and never makes an empty one; logrotate's mv + SIGHUP gives a new
# file; names default to the host's FQDN; check-config catches what serve would fail on;
# operator actions reach the mail log with who and why; --version, --listen, LICENSE.
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay import __version__
from relay.cli.main import main
from relay.config import schema as config_schema
from relay.config.load import DeliveryConfig, ServerConfig, find_config, load_config
from relay.observe.events import AdminEvent, MessageEvent
from relay.observe.logfmt import json_line, postfix_lines
from relay.observe.oplog import record
from relay.queue.queue import DsnSettings
from tests.support.postfix import free_port, wait_port
from tests.support.serve import bouncer_process

ROOT = Path(__file__).resolve().parents[3]


def _bouncer(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`bouncer ARGV` as a shell runs it: another process, another working directory."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "relay", *argv],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- 1. the CLI finds the server's store -----------------------------------------------------


def test_config_is_found_flag_then_env_then_etc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "bouncer.toml"
    monkeypatch.setattr("relay.config.load.DEFAULT_CONFIG", str(etc))
    assert find_config(None, env={}) is None  # a fresh machine: the embedded defaults
    etc.write_text("")
    assert find_config(None, env={}) == str(etc)
    assert find_config(None, env={"BOUNCER_CONFIG": "/x.toml"}) == "/x.toml"
    assert find_config("/y.toml", env={"BOUNCER_CONFIG": "/x.toml"}) == "/y.toml"


def test_a_read_from_another_directory_uses_the_configured_store_and_creates_none(
    tmp_path: Path,
) -> None:
    state = tmp_path / "srv" / "state"
    conf = tmp_path / "bouncer.toml"
    conf.write_text(f'[store]\npath = "{state}"\nmap_size = 16777216\n')
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    env = {"BOUNCER_CONFIG": str(conf)}
    for argv in (("suppression", "list"), ("queue", "list"), ("stats",), ("suppression", "count")):
        got = _bouncer(*argv, cwd=elsewhere, env=env)
        assert got.returncode == 1, (argv, got.stderr)
        assert f"no state directory at {state}" in got.stderr and str(conf) in got.stderr, argv
    assert not state.exists() and list(elsewhere.iterdir()) == []  # no ./bouncer-state either
    # A write creates it where the config says; the read from elsewhere then sees the record.
    got = _bouncer(
        "suppression",
        "add",
        "dead@example.com",
        "--category",
        "bad-mailbox",
        cwd=elsewhere,
        env=env,
    )
    assert got.returncode == 0, got.stderr
    got = _bouncer("suppression", "list", "--format", "json", cwd=tmp_path, env=env)
    assert got.returncode == 0 and json.loads(got.stdout)["address"] == "dead@example.com"
    assert list(elsewhere.iterdir()) == []


def test_shipped_config_names_the_state_directory() -> None:
    cfg = load_config(ROOT / "conf" / "bouncer.toml")
    assert cfg.store.path == "/var/lib/bouncer"
    unit = (ROOT / "systemd" / "bouncer.service").read_text()
    assert "StateDirectory=bouncer" in unit and "--config /etc/bouncer/bouncer.toml" in unit


# -- 2. logrotate: mv + SIGHUP with an unchanged config ----------------------------------------


def _file_with(path: Path, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"{needle!r} not in {path}: {text!r}"
        time.sleep(0.05)


def test_sighup_reopens_the_log_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    with bouncer_process(tmp_path) as b:
        _file_with(b.log_path, "connect from")  # bouncer_process's own probe connection
        rotated = b.log_path.with_suffix(".log.1")
        b.log_path.rename(rotated)  # logrotate's mv; the config is unchanged
        b.proc.send_signal(signal.SIGHUP)
        b.wait_log("reloaded")  # the diagnostics in the process's output
        before = rotated.read_text()
        with socket.create_connection(("127.0.0.1", b.port)) as s:
            s.recv(512)
        _file_with(b.log_path, "connect from unknown[127.0.0.1]")  # in the new file
        assert rotated.read_text() == before  # nothing more went to the rotated file


# -- 4. names from the machine ----------------------------------------------------------------


def test_names_default_to_the_hosts_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    fqdn = config_schema.host_fqdn
    assert ServerConfig().hostname == DeliveryConfig().helo == fqdn()
    try:
        fqdn.cache_clear()
        monkeypatch.setattr(socket, "gethostname", lambda: "vm")
        # /etc/hosts lists "127.0.1.1 vm.example.net vm": the canonical name is the FQDN.
        monkeypatch.setattr(
            socket, "getaddrinfo", lambda *a, **k: [(0, 0, 0, "vm.example.net", ("127.0.1.1", 0))]
        )
        assert fqdn() == "vm.example.net"
        fqdn.cache_clear()
        # "127.0.0.1 localhost vm" (where socket.getfqdn() says "localhost"): the short name.
        monkeypatch.setattr(
            socket, "getaddrinfo", lambda *a, **k: [(0, 0, 0, "localhost", ("127.0.0.1", 0))]
        )
        assert fqdn() == "vm"
        fqdn.cache_clear()
        monkeypatch.setattr(socket, "gethostname", lambda: "mx1.example.org")
        assert fqdn() == "mx1.example.org"
    finally:
        fqdn.cache_clear()


def test_dsn_from_is_mailer_daemon_at_the_fqdn(tmp_path: Path) -> None:
    from relay.queue.queue import spool_from_config
    from relay.store.env import open_state

    cfg = load_config(None)
    spool = spool_from_config(open_state(tmp_path, 1 << 24), cfg)
    try:
        assert spool.dsn.from_header == f"MAILER-DAEMON@{config_schema.host_fqdn()}"
    finally:
        spool.env.close()
    assert DsnSettings().from_header == f"MAILER-DAEMON@{config_schema.host_fqdn()}"
    assert config_schema.host_fqdn() != "localhost" or socket.gethostname() == "localhost"


def _check(conf: Path) -> int:
    """`bouncer check-config --config CONF`'s exit code (a bad key exits from inside)."""
    try:
        return main(["check-config", "--config", str(conf)])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_check_config_warns_about_an_undotted_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[server]\nhostname = "vm"\n[delivery]\nhelo = "mx.example.com"\n'
        f'[store]\npath = "{tmp_path}/s"\n'
    )
    assert main(["check-config", "--config", str(conf)]) == 0
    err = capsys.readouterr().err
    assert "warning: server.hostname: 'vm' is not a fully qualified domain name" in err
    assert "delivery.helo" not in err


# -- 5. check-config catches what serve would fail on -------------------------------------------

BROKEN = {
    "missing TLS files": (
        '[server]\ntls_cert = "{d}/no.pem"\ntls_key = "{d}/no.key"\n',
        "server.tls_cert: no such file",
    ),
    "missing users file": (
        '[server]\nusers_file = "{d}/users"\n',
        "server.users_file: cannot read users file",
    ),
    "log in a missing directory": (
        '[log]\nfile = "{d}/nodir/mail.log"\n',
        "log.file: directory {d}/nodir does not exist",
    ),
    "no listener": ("[server]\nlisten = []\n", "server.listen: needs at least one address"),
    "metrics without a port": (
        '[metrics]\nlisten = "localhost"\n',
        "metrics.listen: give host:port",
    ),
    "api without a port": (
        '[api]\nlisten = "127.0.0.1"\ntoken = "0123456789abcdef"\n',
        "api.listen: give host:port",
    ),
    "verp without secret": ("[verp]\nenabled = true\n", "verp.enabled: needs verp.bounce_domain"),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_check_config_names_the_key_serve_would_fail_on(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BROKEN[case]
    conf = tmp_path / "c.toml"
    conf.write_text(text.format(d=tmp_path) + f'[store]\npath = "{tmp_path}/s"\n')
    assert _check(conf) == 3
    assert expected.format(d=tmp_path) in capsys.readouterr().err


def test_serve_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[log]\nfile = "{tmp_path}/nodir/mail.log"\n[store]\npath = "{tmp_path}/s"\n')
    got = _bouncer("serve", "--config", str(conf), cwd=tmp_path)
    assert got.returncode == 3 and "log.file: directory" in got.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ('allowed_clients = ["0.0.0.0/0"]', "server.allowed_clients[0]: 0.0.0.0/0 lets every host"),
        ('allowed_clients = ["::/0"]', "(an open relay)"),
        ('users_file = "{d}/users"', "server.users_file: set without server.tls_cert"),
    ],
)
def test_check_config_warns_open_relay_and_auth_without_tls(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "users").write_text("")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\n{text.format(d=tmp_path)}\n[store]\npath = "{tmp_path}/s"\n')
    assert main(["check-config", "--config", str(conf)]) == 0
    assert expected in capsys.readouterr().err


def test_unit_retries_everything_but_a_bad_config_or_a_damaged_store() -> None:
    unit = (ROOT / "systemd" / "bouncer.service").read_text()
    assert re.findall(r"^RestartPreventExitStatus=(.*)$", unit, re.M) == ["3 4"]
    readme = (ROOT / "README.md").read_text()
    assert "| 75 | a listen address" in readme  # the exit code is documented


# -- 7. operator actions and mail-log lines ----------------------------------------------------


def test_admin_and_message_lines() -> None:
    when = datetime(2026, 11, 22, 10, 15, 1, tzinfo=UTC)
    event = AdminEvent(
        "postsuper",
        "3F2A1B9C0D4E",
        "removed",
        "root",
        "ticket 123",
        when,
        (("to", "<a@b.example>"),),
    )
    (line,) = postfix_lines(event, "mx1", 7)
    assert line.endswith(
        "mx1 bouncer/postsuper[7]: 3F2A1B9C0D4E: removed, to=<a@b.example>, by=root "
        "(reason: ticket 123)"
    )
    assert json.loads(json_line(event, "mx1", 7))["by"] == "root"
    msg = MessageEvent(
        "3F2A1B9C0D4E", "a@x.example", 10, 1, when, "c[192.0.2.1]", "<id@x>", "alice"
    )
    text = "\n".join(postfix_lines(msg, "mx1", 7))
    assert "bouncer/smtpd[7]: 3F2A1B9C0D4E: client=c[192.0.2.1], sasl_username=alice" in text
    assert "bouncer/cleanup[7]: 3F2A1B9C0D4E: message-id=<id@x>" in text
    record_ = json.loads(json_line(msg, "mx1", 7))
    assert record_["message_id"] == "<id@x>" and record_["sasl_username"] == "alice"


def test_cli_actions_reach_the_configured_log_file(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    conf = tmp_path / "bouncer.toml"
    conf.write_text(
        f'[store]\npath = "{tmp_path}/state"\nmap_size = 16777216\n[log]\nfile = "{log}"\n'
    )
    env = {"BOUNCER_CONFIG": str(conf), "SUDO_USER": "alice"}
    steps = [
        (
            "suppression",
            "add",
            "bob@example.com",
            "--category",
            "bad-mailbox",
            "--why",
            "left the firm",
        ),
        ("suppression", "remove", "bob@example.com", "--force", "--why", "ticket 123"),
    ]
    for argv in steps:
        got = _bouncer(*argv, cwd=tmp_path, env=env)
        assert got.returncode == 0, got.stderr
    lines = log.read_text().splitlines()
    assert re.search(
        r"bouncer/suppression\[\d+\]: bob@example\.com: added, category=bad-mailbox, "
        r"until=permanent, "
        r"by=\S+, sudo_user=alice \(reason: left the firm\)$",
        lines[0],
    ), lines
    assert re.search(
        r": bob@example\.com: lifted, state=\w+, by=\S+, sudo_user=alice \(reason: ticket 123\)$",
        lines[1],
    )


def test_queue_drop_is_logged_with_who_and_why(tmp_path: Path) -> None:
    from relay.queue.queue import SpoolMessage, spool_from_config
    from relay.store.env import open_state
    from tests.relay.cli.test_queue import DATA, SOFT

    log = tmp_path / "mail.log"
    conf = tmp_path / "bouncer.toml"
    conf.write_text(
        f'[store]\npath = "{tmp_path}/state"\nmap_size = 16777216\n[log]\nfile = "{log}"\n'
    )
    cfg = load_config(conf)
    spool = spool_from_config(open_state(cfg.store.path, cfg.store.map_size), cfg)
    now = datetime.now(UTC)
    spool.accept(SpoolMessage("AAA111", "a@a.example", DATA, now, (("b@b.example", SOFT),)), now)
    spool.env.close()
    got = _bouncer(
        "queue",
        "drop",
        "AAA111",
        "--why",
        "spam run",
        cwd=tmp_path,
        env={"BOUNCER_CONFIG": str(conf)},
    )
    assert got.returncode == 0, got.stderr
    (line,) = log.read_text().splitlines()
    assert re.search(
        r"bouncer/postsuper\[\d+\]: AAA111: removed, from=<a@a\.example>, to=<b@b\.example>, "
        r"dsn=false, "
        r"by=\S+ \(reason: spam run\)$",
        line,
    ), line


def test_cli_action_goes_to_journald_when_it_runs(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(journal))
    try:
        cfg = load_config(None).log
        when = datetime.now(UTC)
        record(
            cfg,
            [AdminEvent("suppression", "x@y.example", "added", "root", "why", when)],
            str(journal),
        )
        datagram = sock.recv(4096).decode()
    finally:
        sock.close()
    assert (
        "SYSLOG_IDENTIFIER=bouncer/suppression\n" in datagram and "SYSLOG_FACILITY=2\n" in datagram
    )
    assert "MESSAGE=x@y.example: added, by=root (reason: why)\n" in datagram


async def test_api_actions_reach_the_mail_log(relay_service: Any) -> None:
    import aiohttp

    token = "0123456789abcdef0123"
    port = free_port()
    svc = await relay_service({"api": {"listen": f"127.0.0.1:{port}", "token": token}})
    events: list[Any] = []
    svc.events.subscribe(events.append)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        base = f"http://127.0.0.1:{port}/suppressions/bob@example.com"
        async with http.put(base, json={"category": "bad-mailbox", "why": "crm"}) as r:
            assert r.status == 200
        async with http.delete(base, params={"force": "1", "why": "ticket 9"}) as r:
            assert r.status == 200
    lines = [line for e in events if isinstance(e, AdminEvent) for line in postfix_lines(e, "h", 1)]
    assert len(lines) == 2
    assert lines[0].endswith(
        "bob@example.com: added, category=bad-mailbox, until=permanent, by=api, "
        "client=127.0.0.1 (reason: crm)"
    )
    assert "bob@example.com: lifted," in lines[1] and lines[1].endswith("(reason: ticket 9)")


def test_startup_line_names_version_config_state_and_listeners(tmp_path: Path) -> None:
    with bouncer_process(tmp_path) as b:
        text = b.wait_log("started:")
    line = next(x for x in text.splitlines() if "started:" in x)
    assert f"bouncer {__version__} started: config {b.config_path}, " in line
    assert f"state directory {tmp_path / 'state'}, listening on 127.0.0.1:{b.port}" in line


# -- 10. project basics ---------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bouncer {__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "relay.__version__" }' in pyproject  # one place for the number


def test_license_is_mit_as_pyproject_says() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the bouncer authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_serve_listen_overrides_the_config(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[store]\npath = "{tmp_path}/s"\n'
        '[server]\nhostname = "relay.test"\n[delivery]\nhelo = "relay.test"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(conf),
         "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port("127.0.0.1", port, timeout=20)
        with socket.create_connection(("127.0.0.1", port)) as s:
            assert s.recv(512).startswith(b"220 relay.test")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"listening on 127.0.0.1:{port}" in err.decode() and "2525" not in err.decode()
    got = _bouncer("serve", "--config", str(conf), "--listen", "127.0.0.1:http", cwd=tmp_path)
    assert got.returncode == 2 and "--listen: not host:port" in got.stderr
