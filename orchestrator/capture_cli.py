"""`python -m orchestrator.capture_cli`: read and maintain the encrypted
captures (<state>/captures.db, orchestrator/capture.py) from the command line,
beside a running orchestrator.

    python -m orchestrator.capture_cli new-key
    python -m orchestrator.capture_cli list [--since T] [--until T] [--model M] [--key-id ID] [--limit N]
    python -m orchestrator.capture_cli show ID [--part request|response] [--raw] KEYS
    python -m orchestrator.capture_cli rotate KEYS

    KEYS: (--key-file F | --key-env VAR) [--old-key-file F]... [--old-key-env VAR]...
    T: unix seconds, or an ISO date or datetime (UTC when no zone is given)

Options before the command: --config FILE (its state directory) or --state-dir
DIR, --json (machine-readable output). list needs no key: metadata is in clear.
To change the master key: make one (new-key), configure it as the current key
with the old one as previous, reload the orchestrator, then run rotate with
both; afterwards the old key can go.

Exit status: 0 done, 1 the record is missing or cannot be decrypted,
2 bad arguments, no database, or a key that cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from core.config import ConfigError
from core.times import time_argument
from orchestrator.capture import (
    PARTS,
    CaptureNotFound,
    CaptureStore,
    CaptureUnreadable,
    Keyring,
    load_master_key,
    new_master_key,
    parse_json,
    present_body,
)
from orchestrator.cli_state import add_state_arguments, state_file


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def key_options() -> argparse.ArgumentParser:
    """--key-file/--key-env (the current key) and the old keys, for the commands that decrypt."""
    keys = argparse.ArgumentParser(add_help=False)
    current = keys.add_mutually_exclusive_group(required=True)
    current.add_argument("--key-file", help="file holding the current master key")
    current.add_argument("--key-env", help="environment variable holding the current master key")
    keys.add_argument("--old-key-file", action="append", default=[], help="an older key's file (repeatable)")
    keys.add_argument("--old-key-env", action="append", default=[], help="an older key's variable (repeatable)")
    return keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.capture_cli",
                                     description="Read and maintain modelyard's encrypted captures.")
    add_state_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("new-key", help="print a fresh master key (64 hex characters)")
    listing = commands.add_parser("list", help="records' metadata, newest first (no key needed)")
    listing.add_argument("--since", type=time_argument, help="from this time on")
    listing.add_argument("--until", type=time_argument, help="before this time")
    listing.add_argument("--model")
    listing.add_argument("--key-id", help="the API key id that made the requests")
    listing.add_argument("--limit", type=positive_int, default=100)
    show = commands.add_parser("show", parents=[key_options()], help="one record, decrypted")
    show.add_argument("id", type=positive_int)
    show.add_argument("--part", choices=PARTS, help="only this body")
    show.add_argument("--raw", action="store_true", help="write the body's bytes to stdout (needs --part)")
    commands.add_parser("rotate", parents=[key_options()],
                        help="re-wrap every record under the current key (old keys needed for reading)")
    args = parser.parse_args(argv)
    if args.command == "show" and args.raw and (args.part is None or args.json):
        parser.error("--raw writes one body as it is: give --part, and leave out --json")
    return args


def database_path(args: argparse.Namespace) -> Path:
    return state_file(args, "captures.db")


def keyring_of(args: argparse.Namespace) -> Keyring:
    current = load_master_key(args.key_file, args.key_env)
    previous = [load_master_key(file=file) for file in args.old_key_file]
    previous += [load_master_key(env=env) for env in args.old_key_env]
    return Keyring(current, previous)


def describe(record: dict[str, Any]) -> str:
    flags = "  truncated" if record["truncated"] else ""
    return (f"{record['id']:>6}  {record['time']}  {record['status'] or '-'}  {record['model'] or '-'}  "
            f"{record['route'] or '-'}  request {record['request_id'] or '-'}  key {record['key_id'] or '-'}  "
            f"{record['request_bytes']}/{record['response_bytes']} bytes{flags}")


def body_text(body: bytes, content_type: str | None) -> str:
    """Pretty JSON when the body is JSON; otherwise its size and type only (--raw shows it)."""
    try:
        return json.dumps(parse_json(body), indent=2, ensure_ascii=False)
    except ValueError:
        return f"<{len(body)} bytes of content-type {content_type or 'unknown'}>"


def show_record(args: argparse.Namespace, record: dict[str, Any]) -> None:
    parts = [args.part] if args.part else list(PARTS)
    if args.raw:
        sys.stdout.buffer.write(record[args.part])
        sys.stdout.buffer.flush()
    elif args.json:
        shown = {name: value for name, value in record.items() if name not in PARTS}
        shown.update({part: present_body(record[part], record[f"{part}_type"]) for part in parts})
        print(json.dumps(shown, indent=2))
    else:
        print(describe(record))
        for part in parts:
            print(f"--- {part}: {record[f'{part}_type']}, {len(record[part])} bytes ---")
            print(body_text(record[part], record[f"{part}_type"]))


def run(args: argparse.Namespace, store: CaptureStore) -> None:
    if args.command == "list":
        records = store.list(args.since, args.until, args.model, args.key_id, args.limit)
        if args.json:
            print(json.dumps({"captures": records}, indent=2))
        else:
            print("\n".join(describe(record) for record in records) or "no captures")
    elif args.command == "show":
        show_record(args, store.read(args.id))
    else:
        rewrapped = store.rotate()
        keyring = store.keyring
        assert keyring is not None
        if args.json:
            print(json.dumps({"rewrapped": rewrapped, "kek_id": keyring.current_id}))
        else:
            print(f"re-wrapped {rewrapped} record(s) under key {keyring.current_id}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "new-key":  # needs no state directory, nor a valid configuration
        key = new_master_key()
        print(json.dumps({"key": key}) if args.json else key)
        return 0
    try:
        path = database_path(args)
    except ConfigError as err:
        print(f"modelyard: invalid configuration\n{err}", file=sys.stderr)
        return 2
    if not path.is_file():  # opening would create it: an empty database helps nobody
        print(f"modelyard: no capture database at {path}: capture was never enabled there "
              "(settings.capture.enabled), or the --state-dir/--config is not the orchestrator's", file=sys.stderr)
        return 2
    try:
        keyring = keyring_of(args) if args.command in ("show", "rotate") else None
    except ValueError as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    try:
        store = CaptureStore(path, keyring)
    except (RuntimeError, sqlite3.DatabaseError) as exc:  # a newer schema, or not a database at all
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    try:
        run(args, store)
    except (CaptureNotFound, CaptureUnreadable) as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
