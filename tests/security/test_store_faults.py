# State-store faults: LMDB's map full, and the state directory's filesystem
# turning read-only under a running server (ext4 errors=remount-ro, the real-world way it
# happens). Each gives 451 4.3.0 and an ERROR log line, and the server keeps serving.
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from relay.service import Service
from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient

MSG = b"From: a@sender.test\r\nSubject: store fault\r\n\r\nHello.\r\n"


def port_of(svc: Service) -> int:
    return svc.addresses[0][1]


async def rcpt_reply(svc: Service, rcpt: str) -> Any:
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    reply = await c.cmd(f"RCPT TO:<{rcpt}>".encode())
    data = None
    if reply.code == 250:
        assert (await c.cmd(b"DATA")).code == 354
        c.send(MSG + b".\r\n")
        data = await c.reply()
    await c.cmd(b"QUIT")
    await c.close()
    return reply, data


async def assert_still_serving(svc: Service) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()


def store_errors(caplog: pytest.LogCaptureFixture, address: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and address in r.getMessage()
    ]


def fill(env: lmdb.Environment) -> lmdb.Transaction:
    """Fill the map with junk until not even a tiny record fits; returns a read txn to abort.

    The read transaction is opened first and kept: it pins the old snapshot, so pages
    freed while filling cannot be recycled and the map stays full (LMDB reuses pages
    only when no reader can still see them).
    """
    pin = env.begin()
    junk = env.open_db(b"test-junk")
    i = 0
    for size, batch in ((4000, 64), (4000, 1), (200, 1), (1, 1)):
        while True:
            try:
                with env.begin(write=True, db=junk) as txn:
                    for _ in range(batch):
                        txn.put(i.to_bytes(8, "big"), b"x" * size)
                        i += 1
            except lmdb.MapFullError:
                break
    with pytest.raises(lmdb.MapFullError), env.begin(write=True) as txn:
        txn.put(b"last", b"x", db=env.open_db(b"test-other", txn=txn))
    return pin


def mapping(mx: FakeMX, mode: str = "pass", **store: Any) -> dict[str, Any]:
    return {
        "delivery": {"routes": {"example.test": mx.address}, "command_timeout": 1.0},
        "policy": {"soft_bounce": mode},
        "store": store,
    }


async def test_map_full_gives_451_and_a_log_line(
    relay_service: Any, fake_mx: FakeMX, caplog: pytest.LogCaptureFixture
) -> None:
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    svc = await relay_service(mapping(fake_mx, map_size=1 << 20))
    assert svc.env is not None
    pin = fill(svc.env)
    reply, _ = await rcpt_reply(svc, "dead@example.test")
    pin.abort()
    # The hard bounce cannot be recorded: a temporary failure, so the client tries again.
    assert reply.code == 451 and reply.text.startswith("4.3.0"), str(reply)
    assert store_errors(caplog, "dead@example.test"), "no ERROR log line naming the address"
    await assert_still_serving(svc)


async def test_map_full_never_250_for_a_message_it_cannot_queue(
    relay_service: Any, make_fake_mx: Any
) -> None:
    mx: FakeMX = await make_fake_mx(greeting="hang")  # soft failure: would need the spool
    svc = await relay_service(mapping(mx, "queue", map_size=1 << 20))
    assert svc.env is not None
    pin = fill(svc.env)
    reply, data = await rcpt_reply(svc, "b@example.test")
    pin.abort()
    final = data or reply
    assert final.code == 451 and final.text.startswith("4.3.0"), f"{reply} / {data}"
    await assert_still_serving(svc)


@pytest.fixture
def readonly_fs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, sysfs error trigger) of a small ext4 mounted with errors=remount-ro."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    image, mnt = tmp_path / "state.img", tmp_path / "mnt"
    with open(image, "wb") as fh:
        fh.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {done.stderr.decode().strip()}")
    try:
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True
        ).stdout.strip()
        trigger = Path("/sys/fs/ext4") / os.path.basename(source) / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip("this kernel has no ext4 trigger_fs_error")
        yield mnt, trigger
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


async def test_state_dir_turns_read_only_under_a_running_server(
    readonly_fs: tuple[Path, Path],
    relay_service: Any,
    fake_mx: FakeMX,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mnt, trigger = readonly_fs
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    fake_mx.rcpt_replies["gone@example.test"] = "550 5.1.1 No such user"
    svc = await relay_service(mapping(fake_mx, path=str(mnt / "state"), map_size=16 << 20))
    # While the filesystem is fine, a hard bounce is recorded and refused as usual.
    reply, _ = await rcpt_reply(svc, "gone@example.test")
    assert reply.code == 550
    trigger.write_text("bouncer test\n")  # the kernel remounts the filesystem read-only
    reply, _ = await rcpt_reply(svc, "dead@example.test")
    assert reply.code == 451 and reply.text.startswith("4.3.0"), str(reply)
    assert store_errors(caplog, "dead@example.test"), "no ERROR log line naming the address"
    # The address suppressed before the fault is never let through: refused from the
    # (still readable) store, or 451 because its synthesized bounce cannot be counted.
    reply, _ = await rcpt_reply(svc, "gone@example.test")
    assert reply.code in (550, 451), str(reply)
    assert fake_mx.rcpts.count("gone@example.test") == 1  # the remote was not asked again
    await assert_still_serving(svc)
