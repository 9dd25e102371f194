# What every part of the running service agrees on: the component contract and the startup
# errors with their exit codes. It imports nothing of relay/, so any part may import it.
"""The `Component` contract and the startup errors (exit 3, or 75 for a taken address).

A component is built by `relay.wiring` from the parts it needs, then started after
the SMTP listeners, in order, and stopped in reverse at shutdown.
"""

from __future__ import annotations

import errno
from typing import Protocol

EXIT_OK, EXIT_STARTUP = 0, 3
EXIT_BUSY = 75  # a listen address in use: transient (sysexits EX_TEMPFAIL), systemd restarts


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class StartupError(Exception):
    """The service cannot start (state directory, TLS files, listen address): exit 3."""

    exit_code = EXIT_STARTUP


class AddressInUse(StartupError):
    """A listen address is taken by another process: exit 75, which systemd retries
    (RestartPreventExitStatus=3 only), since the other process may go away."""

    exit_code = EXIT_BUSY


def listen_error(what: str, exc: OSError) -> StartupError:
    cls = AddressInUse if exc.errno == errno.EADDRINUSE else StartupError
    return cls(f"{what}: {exc}")
