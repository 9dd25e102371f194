# This module reads MTA-STS records and policies and decides which MX hosts a policy
# allows (RFC 8461). It performs no I/O: fetching and caching are relay/outbound/mta_sts.py's.
"""MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, and MX matching."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["enforce", "testing", "none"]
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: max_age is at most one year (in seconds)
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3: senders may refuse larger policy bodies

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # RFC 8461 §3.1: id is 1-32 alphanumerics


@dataclass(frozen=True)
class StsPolicy:
    mode: Mode
    mx: tuple[str, ...]  # patterns: "mx.example.com" or "*.example.com"
    max_age: int
    id: str = ""  # the TXT record's id the policy was fetched under

    def allows(self, host: str) -> bool:
        """Whether `host` (an MX name) matches one of the policy's `mx` patterns (§4.1):
        a leading "*." stands for exactly one label; names compare case-insensitively."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                first, _, rest = host.partition(".")
                if first and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def to_json(self) -> str:
        return json.dumps(
            {"mode": self.mode, "mx": list(self.mx), "max_age": self.max_age, "id": self.id}
        )

    @classmethod
    def from_json(cls, text: str) -> StsPolicy:
        data = json.loads(text)
        return cls(data["mode"], tuple(data["mx"]), int(data["max_age"]), data["id"])


def record_id(txt_strings: list[str]) -> str | None:
    """The `id` of the one valid `v=STSv1` record among the TXT records (§3.1), else None
    (no record, several, or a malformed one: "as if no policy")."""
    found = []
    for text in txt_strings:
        fields = [f.strip() for f in text.split(";") if f.strip()]
        if not fields or fields[0].replace(" ", "") != "v=STSv1":
            continue
        pairs = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        ident = pairs.get("id", "").strip()
        if not _ID.match(ident):
            return None
        found.append(ident)
    return found[0] if len(found) == 1 else None


def parse_policy(body: str, ident: str = "") -> StsPolicy:
    """The policy file's fields (§3.2); raises ValueError naming what is wrong."""
    values: dict[str, list[str]] = {}
    for line in body.splitlines():
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a key: value line: {line[:60]!r}")
        values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise ValueError("version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise ValueError(f"mode is not enforce, testing or none: {mode!r}")
    age = (values.get("max_age") or [""])[0]
    if not age.isdigit() or len(age) > 10:
        raise ValueError(f"max_age is not a number of seconds: {age!r}")
    mx = tuple(values.get("mx", []))
    if mode != "none" and not mx:
        raise ValueError("no mx patterns")
    return StsPolicy(mode, mx, min(int(age), MAX_AGE_LIMIT), ident)  # type: ignore[arg-type]
