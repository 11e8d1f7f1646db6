"""`modelyard`: the command a person reaches for, talking to the running
orchestrator's admin API (docs/CLI.md).

    modelyard status | models | load ID | unload ID [--drain S] | logs ID [-n N] [-f]
    modelyard keys create --name N ... | keys list | keys revoke ID | keys rotate ID [--grace D]
    modelyard drift status [MONITOR | --model M]
    modelyard simulate MODEL --input-tokens N --output-tokens N [--concurrency N] [--device NAME[:COUNT]] ...
    modelyard measure MODEL [--concurrency 1,4,16] [--lengths 128:64,...] [--requests-per-point N] [--no-retrain]
                      [--detach] | measure --cancel JOB_ID
    modelyard bench [SUITE] [ARGS...]          (scripts/bench.sh)
    modelyard config check [FILE]              (offline)

Global options, before or after the command: --url (env MODELYARD_URL),
--api-key (env MODELYARD_API_KEY), --json, --timeout. Exit status: 0 ok, 1
the orchestrator refused or could not be reached (or config check found
problems, or a measure job ended other than done), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from core.config import ROOT_DIR
from orchestrator import cli_format as fmt
from orchestrator.cli_client import AdminClient, ApiError, CliError, model_path, segment
from orchestrator.cli_config import DEFAULT_CONFIG, check_config, render_check
from orchestrator.cli_logs import FOLLOW_WINDOW, MAX_WINDOW, LogFollower
from orchestrator.keys_cli import add_create_options, duration, positive

DEFAULT_URL = "http://127.0.0.1:9000"
DEFAULT_TIMEOUT = 30.0
BENCH_SCRIPT = ROOT_DIR / "scripts" / "bench.sh"
MAX_GRACE = 30 * 86400.0  # POST /admin/keys/{id}/rotate?grace=
EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C
MAX_SWEEP = 16  # values per list of a benchmark job (models/simulator/schemas.py BenchmarkRequest)
ESTIMATE_CAP = 0.99  # a bar against a guessed end never shows done before the work is
POLL_SECONDS = 1.0  # between two questions about a benchmark job
# Said after the orchestrator's own message, for the refusals a person can fix from here.
HINTS = {
    "missing_api_key": "give an admin key with --api-key or in MODELYARD_API_KEY",
    "invalid_api_key": "check --api-key or MODELYARD_API_KEY (python -m orchestrator.keys_cli list shows the keys "
                       "of this host)",
    "revoked_api_key": "make a new key: python -m orchestrator.keys_cli create --name NAME --role admin",
    "expired_api_key": "make a new key: python -m orchestrator.keys_cli create --name NAME --role admin",
    "insufficient_scope": "this needs a key with the admin role (or the scope named above)",
    "drift_disabled": "drift is read at start: restart the orchestrator after turning it on (a reload keeps it "
                      "as it was)",
    "simulator_disabled": "the simulator is read at start: restart the orchestrator after turning it on",
}


# --- argument types: a bad value is a usage error (exit 2) ----------------


def url_argument(text: str) -> str:
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"{text!r}: give the orchestrator's URL, e.g. {DEFAULT_URL}")
    return text.rstrip("/")


def usable_key(key: str) -> bool:
    """What an HTTP header can carry as it is: printable ASCII, no spaces (our keys and JWTs are such)."""
    return key.isascii() and key.isprintable() and not any(char.isspace() for char in key)


def ranged(kind: type, low: float, high: float, example: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}, "
                                             f"e.g. {example}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: give {low:g} to {high:g}")
        return value

    return parse


def grace_duration(text: str) -> float:
    """keys_cli's durations (90s, 12h, 7d), up to the 30 days the rotate route allows."""
    seconds = duration(text)
    if seconds > MAX_GRACE:
        raise argparse.ArgumentTypeError(f"{text!r}: the grace period is at most 30d")
    return seconds


def device_choice(text: str) -> dict[str, Any]:
    """NAME or NAME:COUNT (a catalog entry or host-cpu; GET /simulator/hardware lists them)."""
    name, _, count = text.rpartition(":") if ":" in text else (text, "", "1")
    if not name or not count.isdigit() or not 1 <= int(count) <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: give a device as NAME or NAME:COUNT, e.g. H100-SXM:8")
    return {"name": name, "count": int(count)}


def listed(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A comma-separated list of up to MAX_SWEEP values, each checked by `item`."""
    def parse(text: str) -> list[Any]:
        parts = text.split(",")
        if len(parts) > MAX_SWEEP:
            raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_SWEEP} values")
        return [item(part.strip()) for part in parts]

    return parse


def length_pair(text: str) -> dict[str, int]:
    """IN:OUT, a benchmark job's prompt and output tokens."""
    prompt, colon, output = text.partition(":")
    try:
        pair = {"input_tokens": sweep_tokens(prompt), "output_tokens": sweep_tokens(output)} if colon else None
    except argparse.ArgumentTypeError:
        pair = None
    if pair is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give lengths as IN:OUT tokens (1 to 100000 each), e.g. 128:64")
    return pair


line_count = ranged(int, 1, MAX_WINDOW, "100")
token_count = ranged(int, 1, 1_000_000, "512")
user_count = ranged(int, 1, 100_000, "8")
target_value = ranged(float, 1e-9, 1e12, "2000")
drain_seconds = ranged(float, 0, 3600, "30")
poll_seconds = ranged(float, 0.05, 60, "1")
sweep_tokens = ranged(int, 1, 100_000, "128")
sweep_users = listed(ranged(int, 1, 1024, "4"))
sweep_lengths = listed(length_pair)


# --- the parser -----------------------------------------------------------


def global_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name. SUPPRESS: a
    command's parser must not reset what was given before the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", type=url_argument, default=argparse.SUPPRESS,
                        help=f"the orchestrator (env MODELYARD_URL; default {DEFAULT_URL})")
    common.add_argument("--api-key", default=argparse.SUPPRESS, metavar="KEY",
                        help="an admin API key, when auth is on (env MODELYARD_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON, one document on stdout")
    common.add_argument("--timeout", type=positive, default=argparse.SUPPRESS, metavar="S",
                        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT:g}; a load or an unload "
                        "waits as long as the orchestrator takes)")
    return common


def add_key_commands(keys: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_create_options(actions.add_parser("create", parents=[common], help="make a key (printed once)"))
    actions.add_parser("list", parents=[common], help="every key, without secrets")
    revoke = actions.add_parser("revoke", parents=[common], help="end a key now")
    revoke.add_argument("id")
    rotate = actions.add_parser("rotate", parents=[common], help="a new key with the same settings")
    rotate.add_argument("id")
    rotate.add_argument("--grace", type=grace_duration,
                        help="keep the old key working this long, e.g. 1h (at most 30d)")


def build_parser() -> argparse.ArgumentParser:
    common = global_options()
    parser = argparse.ArgumentParser(prog="modelyard", parents=[common],
                                     description="Manage the models of a running modelyard orchestrator.",
                                     epilog="docs/CLI.md has every command, its output and exit codes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help, description=help)

    command("status", "services, their state, GPUs and memory; the GPUs")
    command("models", "the models clients can name (GET /v1/models)")
    command("load", "start a model and wait until it is ready").add_argument("id", metavar="ID")
    unload = command("unload", "stop a model once its requests finish")
    unload.add_argument("id", metavar="ID")
    unload.add_argument("--drain", type=drain_seconds, metavar="S",
                        help="wait at most S seconds (0-3600) for its requests (default: the orchestrator's, 30)")
    logs = command("logs", "a model service's log")
    logs.add_argument("id", metavar="ID")
    logs.add_argument("-n", "--lines", type=line_count, default=100, metavar="N", help="last N lines (1-10000)")
    logs.add_argument("-f", "--follow", action="store_true", help="then print new lines until Ctrl-C")
    logs.add_argument("--interval", type=poll_seconds, default=1.0, metavar="S", help="seconds between polls")
    add_key_commands(command("keys", "API keys: create, list, revoke, rotate"), common)
    drift = command("drift", "the drift monitor")
    drift_actions = drift.add_subparsers(dest="action", required=True, metavar="ACTION")
    drift_status = drift_actions.add_parser("status", parents=[common], help="monitors and their severity")
    which = drift_status.add_mutually_exclusive_group()
    which.add_argument("monitor", nargs="?", help="one monitor (id or name): its per-feature status")
    which.add_argument("--model", help="the worst severity over the monitors of this model")
    simulate = command("simulate", "predict a model's deployments and the best configurations (the simulator)")
    simulate.add_argument("model", metavar="MODEL", help="a text model of models.yaml")
    simulate.add_argument("--input-tokens", type=token_count, required=True, metavar="N")
    simulate.add_argument("--output-tokens", type=token_count, required=True, metavar="N")
    simulate.add_argument("--concurrency", type=user_count, default=1, metavar="N", help="users at once (default 1)")
    simulate.add_argument("--ttft-ms", type=target_value, metavar="MS", help="target time to first token")
    simulate.add_argument("--tokens-per-s", type=target_value, metavar="R", help="target per-user throughput")
    simulate.add_argument("--latency-s", type=target_value, metavar="S", help="target end-to-end latency")
    simulate.add_argument("--device", type=device_choice, action="append", metavar="NAME[:COUNT]",
                          help="a device to consider, repeatable (default: this host's)")
    simulate.add_argument("--method", choices=["regressor", "heuristic"], default="regressor")
    simulate.add_argument("--top", type=ranged(int, 1, 50, "5"), default=5, metavar="N",
                          help="configurations shown (default 5)")
    measure = command("measure", "measure a model through the orchestrator and retrain the simulator on it "
                      "(the simulator's benchmark job)")
    job = measure.add_mutually_exclusive_group(required=True)
    job.add_argument("model", nargs="?", metavar="MODEL", help="a text model of models.yaml served by vLLM")
    job.add_argument("--cancel", metavar="JOB_ID", help="stop a running job (its measured points stay)")
    measure.add_argument("--concurrency", type=sweep_users, metavar="N,N,...",
                         help="users at once per point, 1-1024 (default the simulator's: 1,4,16)")
    measure.add_argument("--lengths", type=sweep_lengths, metavar="IN:OUT,...",
                         help="prompt and output tokens per point (default the simulator's: 128:64)")
    measure.add_argument("--requests-per-point", type=ranged(int, 1, 10_000, "20"), metavar="N",
                         help="requests per point, 1-10000 (at least its concurrency; default: that)")
    measure.add_argument("--no-retrain", action="store_true", help="store the records, leave the regressor")
    measure.add_argument("--detach", action="store_true", help="start the job and return (no waiting)")
    # Everything after `bench` is the benchmark's own (scripts/bench.sh --help), --help included.
    commands.add_parser("bench", add_help=False, help="run scripts/bench.sh [SUITE] [ARGS...]")
    config = command("config", "models.yaml")
    config_actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_actions.add_parser("check", parents=[common], help="validate it, offline")
    check.add_argument("file", nargs="?", default=DEFAULT_CONFIG,
                       help="default: $MODELYARD_CONFIG, else configs/models.yaml")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # Known args only, so that bench's own options pass through; any other command with leftovers is an error.
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.bench_args = rest
    args.url = getattr(args, "url", None) or url_from_env(parser)
    args.api_key = getattr(args, "api_key", None) or os.environ.get("MODELYARD_API_KEY") or None
    if args.api_key is not None and not usable_key(args.api_key):  # said without echoing it
        parser.error("the API key (--api-key or MODELYARD_API_KEY) holds a space, a line break or a character "
                     "that is not printable ASCII; give it exactly as it was issued")
    args.json = getattr(args, "json", False)
    args.timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    if args.command == "keys" and args.action == "create":
        args.quota_body = quota_body(parser, args)
    return args


def url_from_env(parser: argparse.ArgumentParser) -> str:
    try:
        return url_argument(os.environ.get("MODELYARD_URL") or DEFAULT_URL)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"MODELYARD_URL: {exc}")
        raise  # parser.error exits; this keeps type checkers content


def quota_body(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any] | None:
    """--quota and --token-quota as the API's one quota object (one period for both)."""
    quotas = {"requests": args.quota, "tokens": args.token_quota}
    given = {name: quota for name, quota in quotas.items() if quota is not None}
    if not given:
        return None
    periods = {period for _, period in given.values()}
    if len(periods) > 1:
        parser.error("--quota and --token-quota must count over the same period (both /day or both /month)")
    return {**{name: count for name, (count, _) in given.items()}, "period": periods.pop()}


# --- output ---------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    """The JSON document with --json, else the human text."""
    print(json.dumps(data, indent=2) if args.json else human(), flush=True)


def report(args: argparse.Namespace, error: CliError) -> None:
    """An error: the message (and a hint) on stderr; with --json also its body on stdout."""
    if args.json:
        print(json.dumps(error.body, indent=2), flush=True)
    print(f"modelyard: error: {error.message}", file=sys.stderr)
    hint = HINTS.get(error.code) if isinstance(error, ApiError) and error.code else None
    if hint:
        print(f"modelyard: hint: {hint}", file=sys.stderr)


class Progress:
    """One line of a terminal, redrawn while a command waits: a bar when how
    far along is known, else the seconds so far ('loading x: 12 s'); on
    anything else (a pipe, a CI log) nothing at all."""

    def __init__(self, label: str, stream: TextIO | None = None, tick: float = 0.25) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tick = tick
        self.began = time.monotonic()

    @property
    def shown(self) -> bool:
        return self.stream.isatty()

    def draw(self, fraction: float | None = None, count: str | None = None, estimate: float | None = None) -> None:
        if self.shown:
            line = fmt.progress_line(self.label, time.monotonic() - self.began, fraction, count, estimate)
            self.stream.write(f"\r{line}\033[K")  # \033[K: nothing left of a longer line before
            self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")  # clear the line for what comes next
            self.stream.flush()

    def run(self, work: Callable[[], Any], estimate: float | None = None) -> Any:
        """work() in a thread; with `estimate` (seconds, a guess) a bar against it, else the seconds so far."""
        if not self.shown:
            return work()
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread as it is
                outcome["error"] = exc

        # A daemon: Ctrl-C stops the wait at once; the orchestrator goes on with the load.
        worker = threading.Thread(target=target, daemon=True)
        self.began = time.monotonic()
        worker.start()
        try:
            while worker.is_alive():
                if estimate:
                    self.draw(min((time.monotonic() - self.began) / estimate, ESTIMATE_CAP), estimate=estimate)
                else:
                    self.draw()
                worker.join(self.tick)
        finally:
            self.clear()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


# --- commands that talk to the orchestrator -------------------------------


def status(args: argparse.Namespace, client: AdminClient) -> int:
    services, gpus = client.get("/admin/services"), client.get("/admin/gpus")
    emit(args, {"services": services, "gpus": gpus}, lambda: fmt.render_status(services, gpus))
    return 0


def models(args: argparse.Namespace, client: AdminClient) -> int:
    body = client.get("/v1/models")
    emit(args, body, lambda: fmt.render_models(body))
    return 0


def last_load_seconds(client: AdminClient, model_id: str) -> float | None:
    """How long the model's last load took, as a guess at this one; None when
    unknown, when it is ready already, or when asking failed (the load then
    reports its own errors)."""
    try:
        service = client.get(f"/admin/services/{model_path(model_id)}")
    except CliError:
        return None
    if not isinstance(service, dict) or service.get("state") == "ready":
        return None
    seconds = service.get("load_seconds")
    return float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else None


def load(args: argparse.Namespace, client: AdminClient) -> int:
    path = f"/admin/services/{model_path(args.id)}/load"
    progress = Progress(f"loading {args.id}")
    estimate = last_load_seconds(client, args.id) if progress.shown else None  # only a bar needs it
    try:
        service = progress.run(lambda: client.request("POST", path, wait=True), estimate)
    except KeyboardInterrupt:
        print(f"modelyard: stopped waiting; the orchestrator goes on loading {args.id} (modelyard status)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    emit(args, service, lambda: fmt.render_service_line(service))
    return 0


def unload(args: argparse.Namespace, client: AdminClient) -> int:
    params = {"drain": args.drain} if args.drain is not None else None
    path = f"/admin/services/{model_path(args.id)}/unload"
    service = Progress(f"unloading {args.id}").run(lambda: client.request("POST", path, params=params, wait=True))
    emit(args, service, lambda: fmt.render_service_line(service))
    return 0


def log_lines(client: AdminClient, model_id: str, count: int) -> list[str]:
    return client.get(f"/admin/services/{model_path(model_id)}/logs", lines=count)["lines"]


def logs(args: argparse.Namespace, client: AdminClient) -> int:
    if not args.follow:
        body = client.get(f"/admin/services/{model_path(args.id)}/logs", lines=args.lines)
        if args.json or body["lines"]:
            emit(args, body, lambda: "\n".join(body["lines"]))
        else:  # said aside: stdout carries log lines only
            print(f"modelyard: the log of {args.id} is empty", file=sys.stderr)
        return 0
    follower = LogFollower(max(FOLLOW_WINDOW, args.lines))
    try:
        print_log(args, follower.update(log_lines(client, args.id, follower.window))[-args.lines:])
        while True:
            time.sleep(args.interval)
            asked = follower.window  # update() may widen it for the next poll
            print_log(args, follower.update(log_lines(client, args.id, asked)))
            if follower.skipped:
                print(f"modelyard: more than {asked} new lines since the last poll (or a rotated log): some may "
                      "not have been shown", file=sys.stderr)
    except KeyboardInterrupt:  # how a follow ends: not an error
        return 0


def print_log(args: argparse.Namespace, lines: list[str]) -> None:
    """-f output: the lines, or with --json one {"id", "line"} object a line (JSON Lines)."""
    for line in lines:
        print(json.dumps({"id": args.id, "line": line}) if args.json else line)
    sys.stdout.flush()


def keys_create(args: argparse.Namespace, client: AdminClient) -> int:
    body = {"name": args.name, "role": args.role, "scopes": args.scope, "models": args.model, "owner": args.owner,
            "expires_in": args.expires_in, "rpm": args.rpm, "tpm": args.tpm, "quota": args.quota_body}
    made = client.request("POST", "/admin/keys", body={k: v for k, v in body.items() if v is not None})
    print_new_key(args, made)
    return 0


def print_new_key(args: argparse.Namespace, made: dict[str, Any]) -> None:
    """The key alone on stdout (KEY=$(modelyard keys create ...) works); what it is on stderr."""
    if args.json:
        print(json.dumps(made, indent=2), flush=True)
        return
    print(made["key"], flush=True)
    print(f"(shown once, stored nowhere) {fmt.describe_key(made)}", file=sys.stderr)
    if made.get("replaces"):
        print(f"replaces {fmt.describe_key(made['replaces'])}", file=sys.stderr)


def keys_list(args: argparse.Namespace, client: AdminClient) -> int:
    body = client.get("/admin/keys")
    emit(args, body, lambda: fmt.render_keys(body))
    return 0


def keys_revoke(args: argparse.Namespace, client: AdminClient) -> int:
    key = client.request("DELETE", f"/admin/keys/{segment(args.id)}")
    emit(args, key, lambda: f"revoked {fmt.describe_key(key)}")
    return 0


def keys_rotate(args: argparse.Namespace, client: AdminClient) -> int:
    params = {"grace": args.grace} if args.grace is not None else None
    print_new_key(args, client.request("POST", f"/admin/keys/{segment(args.id)}/rotate", params=params))
    return 0


def drift_status(args: argparse.Namespace, client: AdminClient) -> int:
    if args.model:
        body = client.get(f"/drift/models/{segment(args.model)}/status")
        emit(args, body, lambda: fmt.render_model_drift(body))
    elif args.monitor:
        body = client.get(f"/drift/monitors/{segment(args.monitor)}/status")
        emit(args, body, lambda: fmt.render_monitor_status(body))
    else:
        body = client.get("/drift/monitors")
        emit(args, body, lambda: fmt.render_monitors(body))
    return 0


def simulate(args: argparse.Namespace, client: AdminClient) -> int:
    body: dict[str, Any] = {"model": args.model, "input_tokens": args.input_tokens,
                            "output_tokens": args.output_tokens, "concurrency": args.concurrency,
                            "method": args.method, "top_k": args.top}
    for field, value in (("target_ttft_ms", args.ttft_ms), ("target_throughput_per_user", args.tokens_per_s),
                         ("target_e2e_latency_s", args.latency_s), ("devices", args.device)):
        if value is not None:
            body[field] = value
    answer = client.request("POST", "/simulator/run", body=body, wait=True)  # a search takes seconds
    emit(args, answer, lambda: fmt.render_simulation(answer))
    return 0


def benchmark_body(args: argparse.Namespace) -> dict[str, Any]:
    """The options given, and only those: the simulator's defaults apply to the rest."""
    body: dict[str, Any] = {"model": args.model}
    for field, value in (("concurrency", args.concurrency), ("lengths", args.lengths),
                         ("requests_per_point", args.requests_per_point)):
        if value is not None:
            body[field] = value
    if args.no_retrain:
        body["retrain"] = False
    return body


def wait_for_job(client: AdminClient, job: dict[str, Any], model: str) -> dict[str, Any]:
    """Ask about the job every POLL_SECONDS until it no longer runs; on a terminal, its points as a bar."""
    progress = Progress(f"measuring {model}")
    path = f"/simulator/benchmarks/{segment(job['id'])}"
    try:
        while job["state"] == "running":
            records, points = job.get("records") or 0, job.get("points")
            if points:
                progress.draw(records / points, f"{records}/{points} points")
            else:  # a simulator that does not say: the seconds so far
                progress.draw()
            time.sleep(POLL_SECONDS)
            job = client.get(path)
    finally:
        progress.clear()
    return job


def measure(args: argparse.Namespace, client: AdminClient) -> int:
    if args.cancel:
        job = client.request("DELETE", f"/simulator/benchmarks/{segment(args.cancel)}")
        emit(args, job, lambda: f"{job['id']}: {job['state']} (the points measured so far stay: "
                                f"{job.get('records', 0)} of {job.get('points') or '?'})")
        return 0
    started = client.request("POST", "/simulator/benchmarks", body=benchmark_body(args))
    job_id = started["id"]
    cancel = f"modelyard measure --cancel {job_id}"
    if args.detach:
        emit(args, started, lambda: f"{job_id}: measuring {args.model}, {started.get('points')} points "
                                    f"(GET /simulator/benchmarks/{job_id} follows it; {cancel} stops it)")
        return 0
    try:
        job = wait_for_job(client, started, args.model)
    except KeyboardInterrupt:
        print(f"modelyard: stopped waiting; benchmark job {job_id} goes on in the simulator ({cancel} stops it)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    emit(args, job, lambda: fmt.render_benchmark_job(job))
    if job["state"] == "done":
        return 0
    reason = f": {job['error']}" if job.get("error") else ""
    print(f"modelyard: error: benchmark job {job_id} {job['state']}{reason}", file=sys.stderr)
    return 1


REMOTE: dict[tuple[str, str | None], Callable[[argparse.Namespace, AdminClient], int]] = {
    ("status", None): status,
    ("models", None): models,
    ("load", None): load,
    ("unload", None): unload,
    ("logs", None): logs,
    ("keys", "create"): keys_create,
    ("keys", "list"): keys_list,
    ("keys", "revoke"): keys_revoke,
    ("keys", "rotate"): keys_rotate,
    ("drift", "status"): drift_status,
    ("simulate", None): simulate,
    ("measure", None): measure,
}


# --- commands that run here -------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    """scripts/bench.sh in this process's place: its output, signals and exit status are the command's."""
    sys.stdout.flush()
    os.execvp("bash", ["bash", str(BENCH_SCRIPT), *args.bench_args])
    return 1  # not reached: execv returns only by raising


def config_check(args: argparse.Namespace) -> int:
    result = check_config(args.file)
    emit(args, result, lambda: render_check(result))
    return 0 if result["ok"] else 1


def run(args: argparse.Namespace) -> int:
    if args.command == "bench":
        return bench(args)
    if args.command == "config":
        return config_check(args)
    handler = REMOTE[(args.command, getattr(args, "action", None))]
    with AdminClient(args.url, args.api_key, args.timeout) as client:
        try:
            return handler(args, client)
        except (KeyError, TypeError, AttributeError, IndexError):  # an answer of another shape than the API's
            raise CliError(f"the orchestrator at {args.url} answered in a shape this command does not know "
                           "(is that URL a modelyard orchestrator of this version?)") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        try:
            return run(args)
        except CliError as error:
            report(args, error)
            return 1
    except KeyboardInterrupt:
        print("modelyard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `modelyard logs -n 5000 | head` (or an error's body): the reader is done, so are we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
