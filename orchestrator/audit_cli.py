"""`python -m orchestrator.audit_cli`: check and export the audit log
(<state>/audit.db) from the command line, read-only, while the orchestrator
keeps writing it.

    python -m orchestrator.audit_cli verify
    python -m orchestrator.audit_cli export [--since T] [--until T] [--format jsonl|csv] [--output FILE]

Options before the command: --config FILE (its state directory) or
--state-dir DIR, and --json (machine-readable output of verify). T is unix
seconds or an ISO date/datetime (2026-11-01, 2026-11-01T12:00:00, with Z or an
offset; without one it is UTC); since is inclusive, until exclusive.

Exit status: 0 ok, 1 the chain is broken (verify), 2 bad arguments, no audit
log or an unreadable one.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from contextlib import nullcontext
from pathlib import Path

from core.config import ConfigError
from core.times import time_argument
from orchestrator.audit import EXPORT_FORMATS, AuditReader
from orchestrator.cli_state import add_state_arguments, state_file

AUDIT_FILE = "audit.db"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.audit_cli",
                                     description="Verify or export the modelyard audit log.")
    add_state_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check the hash chain of every entry")
    export = commands.add_parser("export", help="write entries as JSON lines or CSV")
    export.add_argument("--since", type=time_argument, help="first time included (unix seconds or ISO date/datetime)")
    export.add_argument("--until", type=time_argument, help="first time excluded (unix seconds or ISO date/datetime)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if args.command == "export" and None not in (args.since, args.until) and args.since >= args.until:
        parser.error("--since must be before --until")
    return args


def audit_path(args: argparse.Namespace) -> Path:
    return state_file(args, AUDIT_FILE)


def verify(reader: AuditReader, as_json: bool) -> int:
    result = reader.verify()
    if as_json:
        print(json.dumps(result.public(), indent=2))
    elif result.ok:
        print(f"ok: {result.checked} entries, head {result.head}")
    else:
        print(f"broken at row {result.row_id}: {result.problem}")
        print(f"({result.checked} entries intact before it, last intact hash {result.head})")
    return 0 if result.ok else 1


def export(reader: AuditReader, args: argparse.Namespace) -> int:
    # newline="": the csv module writes its own line ends.
    target = open(args.output, "w", newline="", encoding="utf-8") if args.output else nullcontext(sys.stdout)
    with target as out:
        written = reader.export(out, args.format, args.since, args.until)
    if args.output:  # stdout carries the data; the count goes where it cannot mix in
        print(f"{written} entries written to {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = audit_path(args)
    except ConfigError as err:
        print(f"modelyard: invalid configuration\n{err}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"modelyard: no audit log at {path} (the orchestrator creates it when it starts; "
              "give --state-dir or --config for another state directory)", file=sys.stderr)
        return 2
    try:
        reader = AuditReader(path)
        return verify(reader, args.json) if args.command == "verify" else export(reader, args)
    except (sqlite3.DatabaseError, ValueError, RuntimeError) as exc:
        print(f"modelyard: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
