# The DKIM signing child's main loop: length-prefixed messages in on stdin, signature
# blocks out on stdout (relay/outbound/signer_process.py starts it and speaks this framing).
"""`python -m relay.outbound.signer_child SPEC`: sign messages for the parent process."""

from __future__ import annotations

import json
import sys

from relay.outbound.dkim import DkimSigner, load_key
from relay.outbound.signer_process import LENGTH


def _serve(spec: str) -> int:
    table = json.loads(spec)
    keys = [
        load_key(k["domain"], k["selector"], k["key_file"], k["algorithm"]) for k in table["keys"]
    ]
    signer = DkimSigner(keys, table["headers"])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while header := stdin.read(LENGTH.size):
        if len(header) != LENGTH.size:
            return 1
        (length,) = LENGTH.unpack(header)
        message = stdin.read(length)
        if len(message) != length:
            return 1
        block = signer.signatures(message)
        stdout.write(LENGTH.pack(len(block)) + block)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
