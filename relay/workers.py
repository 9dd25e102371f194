# `[server] workers = N`: N forked processes, each a complete bouncer with its own event loop,
# listening on the same addresses with SO_REUSEPORT so the kernel spreads connections over
# them, and sharing the one LMDB state directory (LMDB's lock file arbitrates the writers).
# The parent only forwards signals and reports: it supervises nothing, systemd restarts.
"""Run the server in several processes sharing the listen ports and the state directory.

Rules the callers rely on:

- The parent must not open LMDB, sockets or an event loop before `run_workers`:
  LMDB environments must not cross a fork, and each worker binds its own
  listening sockets with `reuse_port=True` (see `listen_reuse_port`).
- Work that must happen once per machine, not once per worker (the retry queue
  scheduler, the metrics/API/intake listeners), asks `is_primary()` and runs in
  worker 0 only.
- If any worker exits on its own, the others are stopped and the parent exits
  with that worker's code (3 stays 3, so systemd's RestartPreventExitStatus=3
  still stops a crash loop on bad config).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_worker_index = 0
_worker_count = 1


def current_worker() -> tuple[int, int]:
    """(index, count) of this process: (0, 1) when not running under `run_workers`."""
    return _worker_index, _worker_count


def is_primary() -> bool:
    """True in worker 0, which runs the once-per-machine components."""
    return _worker_index == 0


def listen_reuse_port(workers: int) -> bool:
    """Whether listeners must set SO_REUSEPORT: always when several workers share a port."""
    return workers > 1


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


def _child(index: int, count: int, serve_one: Callable[[int], int]) -> None:
    """Body of a forked worker: never returns into the parent's code."""
    global _worker_index, _worker_count
    _worker_index, _worker_count = index, count
    code = 1
    try:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # Blocked by the parent around fork(): a SIGTERM that arrived meanwhile now
        # ends this worker by default instead of running the parent's forwarder here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        code = serve_one(index)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_workers(count: int, serve_one: Callable[[int], int]) -> int:
    """Run `serve_one(index)` in `count` processes; return the exit code for the parent.

    With `count == 1` it simply calls `serve_one(0)` in this process.
    SIGTERM/SIGINT/SIGHUP received by the parent are forwarded to every worker;
    each worker drains and exits by itself (`serve_one` owns its signal handling).
    """
    if count <= 1:
        return serve_one(0)
    global _worker_count
    _worker_count = count
    children: dict[int, int] = {}
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in _SIGNALS}
    try:
        for index in range(count):
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:
                    _child(index, count, serve_one)
                children[pid] = index
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        log.info("started %d workers: %s", count, sorted(children))
        result = 0
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = children.pop(pid, -1)
            code = _exit_code(status)
            if code == 3 or (result != 3 and code > result):
                result = code
            if not stopping:
                # A worker ended on its own: bring the rest down so systemd restarts us whole.
                log.error(
                    "worker %d (pid %d) exited with %d; stopping the others", index, pid, code
                )
                result = code if code else 1
                forward(signal.SIGTERM, None)
        return result
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
