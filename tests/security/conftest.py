# Fixtures for the security tests: a throw-away self-signed certificate for STARTTLS,
# and a users file with a cheap scrypt cost (the format stores N, so tests stay fast).
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from relay.inbound.auth import hash_password

USER, PASSWORD = "alice", "correct horse battery staple"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(cert.pem, key.pem) for CN=localhost, IP 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "users"
    path.write_text(f"# test users\n{USER}:{hash_password(PASSWORD, n=1 << 10)}\n")
    return str(path)
