# The late-bounce parser on a second public corpus (tests/data/bounces2), side by
# side with flufl.bounce (GNU Mailman's parser) and Mail::DeliveryStatus::BounceParser
# (Perl), each file scored against its source's own expected recipients. Prints figures;
# asserts nothing. A parser that is not installed is reported as such.
"""python tests/bench/bench_bounces2.py [--list]

Other parsers: `pip install flufl.bounce`; `apt-get install
libmail-deliverystatus-bounceparser-perl` (run through bounceparser_perl.pl).

Per part (rules written / held out) and per parser:
- recall: expected recipients reported / expected recipients;
- extra: reported recipients the source does not expect (per file, summed);
- files exact: files whose reported set equals the expected set;
- permanent read as permanent: expected permanent recipients reported as a final
  failure (ours: Action failed, or no delay and no 4xx code or status; the others:
  not temporary), of which ours says "undetermined" (docs/behaviour.md#verdicts:
  nothing clear about the address);
- temporary read as temporary: expected temporary recipients reported as a delay
  (ours: Action delayed, a delay notice, or a 4xx code or status).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.bounces2 import CORPUS, Case, Result, load_cases, ours, score  # noqa: E402


def flufl(data: bytes) -> Result | None:
    try:
        from flufl.bounce import all_failures
    except ImportError:
        return None
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    temporary, permanent = all_failures(msg)
    out: Result = {}
    for raw in temporary:
        out[_text(raw)] = "temporary"
    for raw in permanent:
        out[_text(raw)] = "permanent"
    return out


PERL_SCRIPT = Path(__file__).with_name("bounceparser_perl.pl")
_perl_cache: dict[bytes, Result] = {}


def bounceparser(data: bytes) -> Result | None:
    """Mail::DeliveryStatus::BounceParser through bounceparser_perl.pl (None: not installed)."""
    if not _perl_ready():
        return None
    return _perl_cache.get(data, {})


def _perl_ready() -> bool:
    return shutil.which("perl") is not None and (
        subprocess.run(
            ["perl", "-MMail::DeliveryStatus::BounceParser", "-e", "1"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def run_bounceparser(cases: list[Case]) -> None:
    """One perl process for every file (each file alone would cost a start-up each)."""
    if not _perl_ready():
        return
    paths = {str(CORPUS / c.source / c.file): c.data for c in cases}
    out = subprocess.run(
        ["perl", str(PERL_SCRIPT), *paths], capture_output=True, check=True, text=True
    ).stdout
    for line in out.splitlines():
        path, address, action, status, _reason = (line.split("\t") + [""] * 5)[:5]
        temporary = action.lower() == "delayed" or status.startswith("4")
        _perl_cache.setdefault(paths[path], {})[address] = "temporary" if temporary else "permanent"


def _text(raw: bytes | str) -> str:
    return (raw.decode("latin-1") if isinstance(raw, bytes) else raw).lower()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list every file a parser got wrong")
    args = ap.parse_args()
    cases = load_cases()
    run_bounceparser(cases)
    sources = sorted({c.source for c in cases})
    print(f"corpus: {len(cases)} files from {', '.join(sources)} ({CORPUS})")
    held_out = [c for c in cases if c.held_out]
    parts = [
        ("rules written", [c for c in cases if not c.held_out]),
        ("held out", held_out),
        *((f"held out: {src}", [c for c in held_out if c.source == src]) for src in sources),
        ("all", cases),
    ]
    for title, part in parts:
        print(f"{title}: {len(part)} files")
        parsers = (("bouncer", ours), ("flufl.bounce", flufl), ("BounceParser", bounceparser))
        for name, parser in parsers:
            s = score(part, parser)
            if s is None:
                print(f"  {name:13} not installed")
                continue
            print(s.line(name))
            if args.list and title == "rules written":
                print("\n".join("    " + w for w in s.wrong))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
