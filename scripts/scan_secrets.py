"""Fail when a log file under a directory holds a credential: what the test
suite runs after every test (scripts/test.sh), over the logs of every
orchestrator and service the tests started.

    python scripts/scan_secrets.py DIR

Looks for modelyard API keys, JWTs, OpenAI-style sk- keys and unredacted
bearer credentials in every *.log file (and rotated *.log.N) (core/logs.py redacts them as
[REDACTED]). Prints file:line and the kind for each one found, not the
secret, and exits 1; 0 when there are none.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PATTERNS = {
    "API key": re.compile(r"my-[0-9a-f]{12}-[A-Za-z0-9_-]{43}"),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{10,}"),
    "sk- key": re.compile(r"\bsk-(?!\[REDACTED\])[A-Za-z0-9_-]{16,}"),
    "bearer credential": re.compile(r"(?i)bearer\s+(?!\[REDACTED\])[A-Za-z0-9._~+/-]{8,}"),
}


def findings(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.log*")):  # rotated ones (.log.1 ...) too
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path}:{number}: {kind}" for kind, pattern in PATTERNS.items() if pattern.search(line)]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python scripts/scan_secrets.py DIR (a directory of logs)", file=sys.stderr)
        return 2
    found = findings(Path(argv[0]))
    files = len(list(Path(argv[0]).rglob("*.log*")))
    if found:
        print(f"secrets in logs: {len(found)} line(s) in {files} log files", file=sys.stderr)
        print("\n".join(found[:50]), file=sys.stderr)
        return 1
    print(f"secret scan: {files} log files, no key, token or secret in them")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
