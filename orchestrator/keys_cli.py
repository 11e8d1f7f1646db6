"""`python -m orchestrator.keys_cli`: API keys from the command line, straight
in the state directory's keys.db (a running orchestrator notices within a
second). This is how the first admin key is made.

    python -m orchestrator.keys_cli create --name NAME [--role admin|member|viewer] [--scope S]...
        [--model ID]... [--owner WHO] [--expires-in 30d] [--rpm 60] [--quota 1000/day]
    python -m orchestrator.keys_cli list
    python -m orchestrator.keys_cli revoke ID
    python -m orchestrator.keys_cli rotate ID [--grace 1h]

Options before the command: --config FILE (its state directory), --state-dir DIR,
--json (machine-readable output). The key itself is printed once, by create
and rotate, and stored nowhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from core.config import ROOT_DIR, ConfigError, load_config
from core.protocol import parse_keep_alive
from orchestrator.auth import SCOPES
from orchestrator.keys import QUOTA_PERIODS, ROLES, ApiKey, KeyStore

TEN_YEARS = 10 * 365 * 86400.0


def duration(text: str) -> float:
    """'3600', '90s', '30m', '12h', or with d for days: seconds."""
    try:
        if text.endswith("d") and text[:-1].replace(".", "", 1).isdigit():
            seconds = float(text[:-1]) * 86400
        else:
            seconds = parse_keep_alive(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= TEN_YEARS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive duration of at most ten years, such as 3600, "
                                         "30m, 12h or 30d")
    return seconds


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def quota_of(text: str) -> tuple[int, str]:
    """'1000/day' or '50000/month'."""
    count, _, period = text.partition("/")
    if not count.isdigit() or period not in QUOTA_PERIODS:
        raise argparse.ArgumentTypeError(f"{text!r}: give requests per period, e.g. 1000/day or 50000/month")
    return int(count), period


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.keys_cli", description="Manage modelyard API keys.")
    parser.add_argument("--config", default=os.environ.get("MODELYARD_CONFIG", str(ROOT_DIR / "configs/models.yaml")))
    parser.add_argument("--state-dir", help="state directory (env MODELYARD_STATE_DIR; default: the config's)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=ROLES, default="member")
    create.add_argument("--scope", action="append", choices=SCOPES, default=[], help="extra scope (repeatable)")
    create.add_argument("--model", action="append", help="a model it may use (repeatable; default: every model)")
    create.add_argument("--owner")
    create.add_argument("--expires-in", type=duration, help="e.g. 3600, 12h, 30d (default: never)")
    create.add_argument("--rpm", type=positive, help="requests per minute (default: no limit)")
    create.add_argument("--quota", type=quota_of, help="requests per UTC day or month, e.g. 1000/day (default: none)")
    commands.add_parser("list", help="every key, without secrets")
    revoke = commands.add_parser("revoke", help="end a key now")
    revoke.add_argument("id")
    rotate = commands.add_parser("rotate", help="a new key with the same settings; the old one ends")
    rotate.add_argument("id")
    rotate.add_argument("--grace", type=duration, default=None, help="keep the old key working this long")
    return parser.parse_args(argv)


def open_store(args: argparse.Namespace) -> KeyStore:
    if args.state_dir:
        os.environ["MODELYARD_STATE_DIR"] = str(Path(args.state_dir).resolve())
        return KeyStore(Path(os.environ["MODELYARD_STATE_DIR"]) / "keys.db")
    config = load_config(args.config)
    return KeyStore(config.state_path() / "keys.db")


def describe(key: ApiKey) -> str:
    models = ",".join(key.models) if key.models is not None else "all models"
    try:
        expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.expires)) if key.expires else "never"
    except (OverflowError, OSError, ValueError):
        expires = str(key.expires)
    scopes = f" +{','.join(key.scopes)}" if key.scopes else ""
    limits = f"; {key.rpm:g}/min" if key.rpm else ""
    limits += f"; {key.quota_requests}/{key.quota_period}" if key.quota_requests is not None else ""
    return f"{key.id}  {key.state():8} {key.role:7}{scopes}  {key.name}  ({models}; expires {expires}{limits})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        store = open_store(args)
    except ConfigError as err:
        print(f"modelyard: invalid configuration\n{err}", file=sys.stderr)
        return 2
    try:
        output: Any
        if args.command == "create":
            expires = time.time() + args.expires_in if args.expires_in else None
            models = tuple(args.model) if args.model else None
            key, secret = store.create(args.name, args.role, tuple(args.scope), models, args.owner, expires,
                                       args.rpm, args.quota)
            output = {"key": secret, **key.public()}
            lines = [secret, lambda: f"(shown once) {describe(key)}"]
        elif args.command == "list":
            keys = store.all()
            output = {"keys": [key.public() for key in keys]}
            lines = [lambda: "\n".join(describe(key) for key in keys) or "no keys"]
        elif args.command == "revoke":
            key = store.revoke(args.id)
            output, lines = key.public(), [lambda: f"revoked {describe(key)}"]
        else:
            new, secret, old = store.rotate(args.id, args.grace or 0.0)
            output = {"key": secret, **new.public(), "replaces": old.public()}
            lines = [secret, lambda: f"(shown once) {describe(new)}", lambda: f"replaces {describe(old)}"]
    except KeyError:
        print(f"modelyard: no API key with id '{args.id}'", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        print(json.dumps(output, indent=2))
    else:  # the secret first: whatever happens next, it has been shown
        for line in lines:
            print(line() if callable(line) else line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
