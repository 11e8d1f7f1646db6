"""`python -m orchestrator.keys_cli`: API keys from the command line, straight
in the state directory's keys.db (a running orchestrator notices within a
second). This is how the first admin key is made.

    python -m orchestrator.keys_cli create --name NAME [--role admin|member|viewer] [--scope S]...
        [--model ID]... [--owner WHO] [--expires-in 30d] [--rpm 60] [--tpm 20000] [--quota 1000/day]
        [--token-quota 500000/day]
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
import sys
import time
from typing import Any

from core.config import ConfigError
from core.protocol import parse_keep_alive
from orchestrator.audit import AuditLog
from orchestrator.auth import SCOPES
from orchestrator.cli_state import add_state_arguments, state_file
from orchestrator.keys import QUOTA_PERIODS, ROLES, ApiKey, KeyLimits, KeyStore

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
        raise argparse.ArgumentTypeError(f"{text!r}: give a count per period, e.g. 1000/day or 50000/month")
    return int(count), period


def limits_of(args: argparse.Namespace) -> KeyLimits:
    """The key's limits from --rpm, --tpm, --quota and --token-quota (one period for both quotas)."""
    periods = {quota[1] for quota in (args.quota, args.token_quota) if quota is not None}
    if len(periods) > 1:
        raise ValueError("--quota and --token-quota must count over the same period (both /day or both /month)")
    return KeyLimits(rpm=args.rpm, tpm=args.tpm, quota_requests=args.quota[0] if args.quota else None,
                     quota_tokens=args.token_quota[0] if args.token_quota else None,
                     quota_period=periods.pop() if periods else None)


def add_create_options(create: argparse.ArgumentParser) -> None:
    """A key's settings, as `keys_cli create` and `modelyard keys create` take them."""
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=ROLES, default="member")
    create.add_argument("--scope", action="append", choices=SCOPES, default=[], help="extra scope (repeatable)")
    create.add_argument("--model", action="append", help="a model it may use (repeatable; default: every model)")
    create.add_argument("--owner")
    create.add_argument("--expires-in", type=duration, help="e.g. 3600, 12h, 30d (default: never)")
    create.add_argument("--rpm", type=positive, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=positive, help="tokens per minute, prompt and completion (default: no limit)")
    create.add_argument("--quota", type=quota_of, help="requests per UTC day or month, e.g. 1000/day (default: none)")
    create.add_argument("--token-quota", type=quota_of,
                        help="tokens per UTC day or month, e.g. 500000/day (default: none)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.keys_cli", description="Manage modelyard API keys.")
    add_state_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    add_create_options(commands.add_parser("create", help="make a key (printed once)"))
    commands.add_parser("list", help="every key, without secrets")
    revoke = commands.add_parser("revoke", help="end a key now")
    revoke.add_argument("id")
    rotate = commands.add_parser("rotate", help="a new key with the same settings; the old one ends")
    rotate.add_argument("id")
    rotate.add_argument("--grace", type=duration, default=None, help="keep the old key working this long")
    return parser.parse_args(argv)


def open_store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(state_file(args, "keys.db"))


def describe(key: ApiKey) -> str:
    models = ",".join(key.models) if key.models is not None else "all models"
    try:
        expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.expires)) if key.expires else "never"
    except (OverflowError, OSError, ValueError):
        expires = str(key.expires)
    scopes = f" +{','.join(key.scopes)}" if key.scopes else ""
    limits = f"; {key.rpm:g}/min" if key.rpm else ""
    limits += f"; {key.tpm:g} tokens/min" if key.tpm else ""
    limits += f"; {key.quota_requests}/{key.quota_period}" if key.quota_requests is not None else ""
    limits += f"; {key.quota_tokens} tokens/{key.quota_period}" if key.quota_tokens is not None else ""
    return f"{key.id}  {key.state():8} {key.role:7}{scopes}  {key.name}  ({models}; expires {expires}{limits})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        store = open_store(args)
    except ConfigError as err:
        print(f"modelyard: invalid configuration\n{err}", file=sys.stderr)
        return 2
    audited: tuple[str, str, dict[str, Any]] | None = None  # (action, key id, detail) for the audit log
    try:
        output: Any
        if args.command == "create":
            expires = time.time() + args.expires_in if args.expires_in else None
            models = tuple(args.model) if args.model else None
            key, secret = store.create(args.name, args.role, tuple(args.scope), models, args.owner, expires,
                                       limits_of(args))
            output = {"key": secret, **key.public()}
            lines = [secret, lambda: f"(shown once) {describe(key)}"]
            audited = ("keys.create", key.id, {"name": key.name, "role": key.role})
        elif args.command == "list":
            keys = store.all()
            output = {"keys": [key.public() for key in keys]}
            lines = [lambda: "\n".join(describe(key) for key in keys) or "no keys"]
        elif args.command == "revoke":
            key = store.revoke(args.id)
            output, lines = key.public(), [lambda: f"revoked {describe(key)}"]
            audited = ("keys.revoke", key.id, {})
        else:
            new, secret, old = store.rotate(args.id, args.grace or 0.0)
            output = {"key": secret, **new.public(), "replaces": old.public()}
            lines = [secret, lambda: f"(shown once) {describe(new)}", lambda: f"replaces {describe(old)}"]
            audited = ("keys.rotate", new.id, {"replaces": old.id})
    except KeyError:
        print(f"modelyard: no API key with id '{args.id}'", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        print(json.dumps(output, indent=2), flush=True)
    else:  # the secret first: whatever happens next, it has been shown
        for line in lines:
            print(line() if callable(line) else line, flush=True)
    if audited is not None:
        try:
            audit = AuditLog(store.path.parent / "audit.db")  # beside keys.db: the orchestrator's own log
            audit.record("admin", audited[0], actor="cli", detail={"key_id": audited[1], **audited[2]})
            audit.close()
        except Exception as exc:  # noqa: BLE001 - the key is made either way; say what the log lacks
            print(f"modelyard: warning: the audit log did not record {audited[0]} of {audited[1]}: {exc}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
