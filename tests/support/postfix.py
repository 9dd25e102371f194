# Test support: a private Postfix instance and Postfix's smtp-sink / smtp-source load tools.
# Everything lives under one throw-away directory and listens on free loopback ports only,
# so parallel test runs and the distribution's own Postfix (if any) never collide.
"""Start and stop a private Postfix (`postfix -c DIR`), smtp-sink, and run smtp-source.

Postfix must be started as root (it drops to the `postfix` user), so the base
directory is made under /tmp with mode 0755: pytest's tmp_path is 0700 and the
postfix user could not traverse it. There is no syslog daemon here, so the
instance logs through postlogd to `maillog_file` (which needs
`maillog_file_prefixes` to allow the /tmp path).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SWAKS = "/usr/bin/swaks"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def missing_tools(*tools: str) -> list[str]:
    """The given executables that are not installed (tests skip naming them)."""
    return [t for t in tools if not (os.path.exists(t) and os.access(t, os.X_OK))]


def postfix_skip_reason() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    missing = missing_tools(POSTFIX, SMTP_SINK, SMTP_SOURCE)
    if missing:
        return f"Postfix tools not installed: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user on this machine"
    return None


def _master_cf(port: int) -> str:
    # chroot is off everywhere: a chroot would need copies of /etc files in the queue dir.
    rows = [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "proxywrite unix - - n - 1 proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "lmtp unix - - n - - lmtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "local unix - n n - - local",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(rows) + "\n"


@dataclass
class PostfixInstance:
    """A private Postfix: its smtpd on 127.0.0.1:`port`, relaying everything to `relayhost`."""

    base: Path
    port: int
    relayhost: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.base / "spool"

    @property
    def maillog(self) -> Path:
        return self.base / "maillog"

    def main_cf(self) -> dict[str, str]:
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.base / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bouncer.test",
            "mydomain": "bouncer.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": self.relayhost,
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "syslog_name": f"postfix-{self.port}",
            # The instance is short-lived: fail fast when its relayhost is down.
            "smtp_connect_timeout": "5s",
            "queue_run_delay": "300s",
        }
        params.update(self.extra)
        return params

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def start(self) -> None:
        """Write main.cf/master.cf, create the directories and start the master daemon."""
        self.base.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.base, 0o755)  # the postfix user must traverse it
        self.config_dir.mkdir(exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)
        data = self.base / "data"
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postfix", "postfix")
        self.maillog.touch()
        shutil.chown(self.maillog, "postfix", "postfix")
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text(_master_cf(self.port))
        proc = self._run("start", check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
                f"\n--- maillog ---\n{self.log_text()}"
            )
        wait_port("127.0.0.1", self.port, timeout=20)

    def stop(self) -> None:
        """Stop the master daemon and its children (abort: no graceful drain needed in tests)."""
        self._run("abort", check=False)
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.05)

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now."""
        self._run("flush", check=False)

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until the maillog has a line matching `pattern` (a regex); return the match."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no maillog line matching {pattern!r} after {timeout}s:\n{self.log_text()}"
                )
            time.sleep(0.1)

    def queue_ids_deferred(self) -> list[str]:
        """Queue ids present in the deferred queue directory (Postfix's own on-disk queue)."""
        deferred = self.queue_dir / "deferred"
        if not deferred.exists():
            return []
        return [p.name for p in deferred.rglob("*") if p.is_file()]


@contextlib.contextmanager
def postfix_instance(relayhost: str, **extra: str) -> Iterator[PostfixInstance]:
    """Run a private Postfix relaying to `relayhost` (e.g. "[127.0.0.1]:2525") for a block."""
    base = Path(tempfile.mkdtemp(prefix="bouncer-postfix-", dir="/tmp"))
    inst = PostfixInstance(base=base, port=free_port(), relayhost=relayhost, extra=dict(extra))
    try:
        inst.start()
        yield inst
    finally:
        inst.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1:`port`: accepts and discards mail, as fast as it can."""

    port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def smtp_sink(backlog: int = 256, extra_args: tuple[str, ...] = ()) -> Iterator[SmtpSink]:
    """Run smtp-sink on a free loopback port for a block.

    `-c` makes it print a running count of messages to stdout; `extra_args` may
    add e.g. `-h host` or reply-shaping options from smtp-sink(1).
    """
    port = free_port()
    # smtp-sink refuses to run as root without -u: it drops privileges after binding.
    user = ("-u", "nobody") if os.geteuid() == 0 else ()
    proc = subprocess.Popen(
        [SMTP_SINK, *user, *extra_args, f"127.0.0.1:{port}", str(backlog)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sink = SmtpSink(port=port, proc=proc)
    try:
        try:
            wait_port("127.0.0.1", port)
        except TimeoutError:
            sink.stop()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"smtp-sink did not start: {err}") from None
        yield sink
    finally:
        sink.stop()
        if proc.stderr:
            proc.stderr.close()


def smtp_source(
    port: int,
    messages: int,
    concurrency: int = 1,
    size: int = 5120,
    recipient: str = "rcpt@sink.test",
    sender: str = "sender@source.test",
    host: str = "127.0.0.1",
    reuse: bool = True,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Send `messages` messages of `size` body bytes over `concurrency` sessions (smtp-source(1)).

    `reuse` (-d) keeps each session open for the next message, as an MTA's
    connection cache would; without it every message pays a new connection.
    """
    args = [SMTP_SOURCE, "-s", str(concurrency), "-m", str(messages), "-l", str(size)]
    args += ["-f", sender, "-t", recipient, "-M", "source.test"]
    if reuse:
        args.append("-d")
    args.append(f"{host}:{port}")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
