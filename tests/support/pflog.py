# Helpers to run pflogsumm over a log and read its grand totals, shared by the ops tests.
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PFLOGSUMM = shutil.which("pflogsumm") or (
    "/usr/sbin/pflogsumm" if Path("/usr/sbin/pflogsumm").exists() else None
)

_TOTAL = re.compile(r"^\s*(\d+)\s+(received|delivered|deferred|bounced|rejected)\b(.*)$")
_DEFERRALS = re.compile(r"\((\d+)\s*deferrals\)")


def require_pflogsumm() -> str:
    if PFLOGSUMM is None:
        pytest.skip("pflogsumm is not installed (Debian package pflogsumm)")
    return PFLOGSUMM


def pflogsumm_totals(log: Path) -> dict[str, int]:
    """Run pflogsumm --syslog-name=bouncer on `log`; the 'messages' grand totals by name."""
    out = subprocess.run(
        [require_pflogsumm(), "--syslog-name=bouncer", str(log)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    totals: dict[str, int] = {}
    for line in out.splitlines():
        m = _TOTAL.match(line)
        if m and m.group(2) not in totals:
            totals[m.group(2)] = int(m.group(1))
            d = _DEFERRALS.search(m.group(3))
            if d:
                totals["deferrals"] = int(d.group(1))
        if line.startswith("Per-") or "bytes received" in line:
            break
    totals.setdefault("deferrals", 0)
    return totals
