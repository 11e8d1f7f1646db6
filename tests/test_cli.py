"""The `modelyard` command (orchestrator/cli.py) against one real orchestrator
with auth on and two fake models: every subcommand's human and --json output,
usage errors (exit 2), the orchestrator's refusals and an unreachable URL
(exit 1, a message, never a traceback or the key), and the bash wrapper.
The pure parts (new log lines, tables, the progress line) are tested in
process at the end."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.process import free_port
from orchestrator import cli, cli_format
from orchestrator.cli_logs import LogFollower, end_of_old
from tests.conftest import ROOT, Orchestrator, fake_model
from tests.test_limits import create_key

GPU_SHARE = "--gpu-memory-utilization ${GPU_MEMORY_FRACTION}"
CONFIG = {
    "settings": {"auth": {"enabled": True}, "gpus": [{"name": "L4 (simulated)", "memory_gb": 24}],
                 "gpu_reserve_gb": 0},
    "models": {
        "alpha": fake_model(GPU_SHARE, memory_gb=4, aliases=["first"], ttl=600),
        "beta": fake_model(memory_gb=1, gpus=0),
    },
}
WRONG_KEY = "my-0123456789ab-" + "W" * 43  # well formed, unknown


@dataclass
class Yard:
    orch: Orchestrator
    admin_key: str

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "MODELYARD_URL": self.orch.url, "MODELYARD_API_KEY": self.admin_key, **extra}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator.cli", *args]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env=self.env(**env))

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def admin(self, method: str, path: str) -> httpx.Response:
        with self.orch.client(headers={"Authorization": f"Bearer {self.admin_key}"}) as client:
            return client.request(method, path)


@pytest.fixture(scope="module")
def yard(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Yard:
    state = tmp_path_factory.mktemp("cli") / "state"
    admin = create_key(state, "--role", "admin")
    return Yard(module_orchestrator(CONFIG, state_dir=state), admin["key"])


def row_of(text: str, name: str) -> list[str]:
    """A table row's cells (split on the two-space column gaps), by its first cell."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{text}")


def test_load_shows_in_status_with_its_gpu_and_memory_then_unload(yard: Yard) -> None:
    assert yard.ok("load", "alpha").startswith("alpha: ready (loaded in ")
    loaded = yard.json("load", "beta")  # already --json: the service as the API describes it
    assert (loaded["id"], loaded["state"], loaded["pools"]) == ("beta", "ready", ["host"])

    text = yard.ok("status")
    assert text.splitlines()[0].split() == ["NAME", "STATE", "GPUS", "MEMORY", "(reserved/measured)", "IN-FLIGHT",
                                            "IDLE", "/", "UNTIL"]
    alpha = row_of(text, "alpha")
    assert alpha[1:3] == ["ready", "0"] and alpha[3].startswith("4.0/") and alpha[4] == "0"
    assert re.fullmatch(r"\d+s / (9m[45]\ds|10m00s)", alpha[5]), alpha  # idle / what is left of its ttl, 600 s
    assert row_of(text, "beta")[1:3] == ["ready", "cpu"]
    assert "GPUs (simulated):" in text
    gpu = row_of(text, "0")
    assert gpu[1] == "L4 (simulated)" and gpu[2] == "0.0/24.0 GB" and gpu[4:] == ["4.0/24.0 GB", "alpha 4.0"]
    assert "host memory: 1.0 GB reserved" in text and "(beta 1.0)" in text

    body = yard.json("status")
    services = {s["id"]: s for s in body["services"]["services"]}
    assert services["alpha"]["state"] == "ready" and services["alpha"]["cuda_visible_devices"] == "0"
    assert body["gpus"]["source"] == "simulated" and body["gpus"]["gpus"][0]["reserved"] == {"alpha": 4.0}

    assert yard.ok("unload", "alpha", "--drain", "1").strip() == "alpha: stopped"
    assert row_of(yard.ok("status"), "alpha")[1:] == ["stopped", "-", "-", "0", "-"]
    assert yard.json("unload", "alpha")["state"] == "stopped"  # a stopped model stays stopped


def test_models_lists_types_states_and_aliases(yard: Yard) -> None:
    text = yard.ok("models")
    assert text.splitlines()[0].split() == ["ID", "TYPE", "STATE", "ALIASES"]
    assert row_of(text, "alpha")[1] == "text" and row_of(text, "alpha")[3] == "first"
    assert row_of(text, "beta")[3] == "-"
    body = yard.json("models")
    assert [m["id"] for m in body["data"]] == ["alpha", "beta"] and body["data"][0]["aliases"] == ["first"]


def test_logs_prints_the_last_lines(yard: Yard) -> None:
    assert yard.admin("POST", "/admin/services/beta/load").status_code == 200
    full = yard.json("logs", "beta", "-n", "10000")
    assert full["id"] == "beta" and any("--- modelyard: starting beta" in line for line in full["lines"])
    assert yard.ok("logs", "beta", "-n", "3").splitlines() == full["lines"][-3:]
    assert yard.json("logs", "beta", "--lines", "2")["lines"] == full["lines"][-2:]


def test_logs_follow_prints_each_new_line_once_until_ctrl_c(yard: Yard) -> None:
    assert yard.admin("POST", "/admin/services/beta/load").status_code == 200
    before = yard.json("logs", "beta", "-n", "10000")["lines"]
    follow = subprocess.Popen(yard.argv("logs", "beta", "-f", "-n", "2", "--interval", "0.2"), cwd=ROOT,
                              env=yard.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in follow.stdout or []])
    reader.start()
    try:
        printed = [lines.get(timeout=20) for _ in range(2)]
        assert printed == before[-2:]
        # A restart appends lines: the stop, then a new start's.
        assert yard.admin("POST", "/admin/services/beta/unload?drain=0").status_code == 200
        assert yard.admin("POST", "/admin/services/beta/load").status_code == 200
        while not any("--- modelyard: starting beta" in line for line in printed):
            printed.append(lines.get(timeout=20))
    finally:
        follow.send_signal(signal.SIGINT)
        code = follow.wait(timeout=20)
        reader.join(timeout=5)
    while not lines.empty():
        printed.append(lines.get())
    assert code == 0 and "Traceback" not in (follow.stderr.read() if follow.stderr else "")
    after = yard.json("logs", "beta", "-n", "10000")["lines"]
    start = len(before) - 2
    assert printed == after[start:start + len(printed)], "a line missing, repeated or out of order"


def test_keys_create_list_revoke_and_rotate(yard: Yard) -> None:
    made = yard.run("keys", "create", "--name", "carol", "--model", "alpha", "--rpm", "60", "--quota", "100/day",
                    "--expires-in", "1d")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()  # the key alone on stdout: KEY=$(modelyard keys create ...)
    assert key.startswith("my-") and "\n" not in key
    assert "shown once" in made.stderr and "carol" in made.stderr and key not in made.stderr
    key_id = key.split("-")[1]
    with yard.orch.client(headers={"Authorization": f"Bearer {key}"}) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["alpha"]

    carol = row_of(yard.ok("keys", "list"), key_id)
    assert carol[1:6] == ["carol", "-", "member", "active", "alpha"] and carol[7] == "60 rpm, 100/day"
    listed = {k["id"]: k for k in yard.json("keys", "list")["keys"]}
    assert listed[key_id]["rpm"] == 60 and listed[key_id]["quota_requests"] == 100 and "key" not in listed[key_id]

    assert yard.ok("keys", "revoke", key_id).startswith(f"revoked {key_id} 'carol'")
    with yard.orch.client(headers={"Authorization": f"Bearer {key}"}) as client:
        refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key"
    assert {k["id"]: k for k in yard.json("keys", "list")["keys"]}[key_id]["state"] == "revoked"

    dave = yard.json("keys", "create", "--name", "dave", "--role", "viewer")
    assert dave["key"].startswith("my-") and dave["role"] == "viewer" and dave["state"] == "active"
    rotated = yard.json("keys", "rotate", dave["id"])
    assert rotated["replaces"]["id"] == dave["id"] and rotated["key"] != dave["key"]


def test_drift_status_with_drift_off_says_how_to_turn_it_on(yard: Yard) -> None:
    done = yard.run("drift", "status")
    assert done.returncode == 1 and done.stdout == ""
    assert "settings.drift.enabled" in done.stderr and "drift_disabled, HTTP 404" in done.stderr
    assert "restart the orchestrator" in done.stderr and "Traceback" not in done.stderr
    as_json = yard.run("--json", "drift", "status", "some-monitor")
    error = json.loads(as_json.stdout)["error"]
    assert as_json.returncode == 1 and (error["code"], error["status"]) == ("drift_disabled", 404)
    assert "settings.drift.enabled" in error["message"]


def test_simulate_with_the_simulator_off_says_how_to_turn_it_on(yard: Yard) -> None:
    done = yard.run("simulate", "alpha", "--input-tokens", "128", "--output-tokens", "32")
    assert done.returncode == 1 and done.stdout == ""
    assert "settings.simulator.enabled" in done.stderr and "simulator_disabled, HTTP 404" in done.stderr
    assert "restart the orchestrator" in done.stderr and "Traceback" not in done.stderr


def test_measure_with_the_simulator_off_says_how_to_turn_it_on(yard: Yard) -> None:
    done = yard.run("measure", "alpha", "--concurrency", "1,4")
    assert done.returncode == 1 and done.stdout == ""
    assert "settings.simulator.enabled" in done.stderr and "simulator_disabled, HTTP 404" in done.stderr
    assert "restart the orchestrator" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, complaint", [
    (["--device", "H100-SXM:0"], "NAME:COUNT"),
    (["--device", ":8"], "NAME:COUNT"),
    (["--concurrency", "0"], "give 1 to 100000"),
    (["--ttft-ms", "fast"], "is not a number"),
])
def test_simulate_refuses_bad_arguments_with_exit_2(yard: Yard, args: list[str], complaint: str) -> None:
    done = yard.run("simulate", "alpha", "--input-tokens", "128", "--output-tokens", "32", *args)
    assert done.returncode == 2 and complaint in done.stderr and "Traceback" not in done.stderr
    missing = yard.run("simulate", "alpha", "--input-tokens", "128")
    assert missing.returncode == 2 and "--output-tokens" in missing.stderr


def test_config_check_validates_offline(yard: Yard, tmp_path: Path) -> None:
    unreachable = {"MODELYARD_URL": f"http://127.0.0.1:{free_port()}"}  # it needs no orchestrator
    good = yard.run("config", "check", str(yard.orch.config_path), **unreachable)
    assert good.returncode == 0 and good.stdout.strip().endswith(": ok (2 models: alpha, beta)")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models:\n  m:\n    engine: command\n    cmd: 'x ${PORT}'\n    memory_gb: lots\n")
    bad = yard.run("config", "check", str(broken), **unreachable)
    assert bad.returncode == 1 and "invalid (1 problem)" in bad.stdout
    assert f"{broken}: model 'm', field 'memory_gb'" in bad.stdout and "'lots'" in bad.stdout
    body = json.loads(yard.run("config", "check", str(broken), "--json").stdout)
    assert body["ok"] is False and len(body["problems"]) == 1 and "field 'memory_gb'" in body["problems"][0]


def test_bench_passes_its_arguments_and_exit_status_through(yard: Yard) -> None:
    helped = yard.run("bench", "--help")
    assert helped.returncode == 0 and "scripts/bench.sh proxy [OPTIONS]" in helped.stdout
    unknown = yard.run("bench", "nosuch")
    assert unknown.returncode == 1 and "unknown benchmark suite 'nosuch'" in unknown.stderr


@pytest.mark.parametrize("argv", [["frob"], ["load"], ["logs", "beta", "-n", "0"]])
def test_usage_errors_exit_2(yard: Yard, argv: list[str]) -> None:
    done = yard.run(*argv)
    assert done.returncode == 2 and "usage: modelyard" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("argv", [
    [], ["keys"], ["config"], ["logs", "beta", "-n", "lots"], ["logs", "beta", "-n", "10001"],
    ["unload", "alpha", "--drain", "-1"], ["status", "--bogus"], ["--url", "ftp://host", "status"],
    ["--timeout", "0", "status"], ["keys", "create"], ["keys", "create", "--name", "x", "--role", "root"],
    ["keys", "create", "--name", "x", "--quota", "5/day", "--token-quota", "5/month"],
    ["drift", "status", "mon", "--model", "m"], ["keys", "rotate", "abc", "--grace", "31d"],
    ["--url", "http://", "status"], ["--url", "http://[::1", "status"],
])
def test_more_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and "usage: modelyard" in capsys.readouterr().err


@pytest.mark.parametrize("args, complaint", [
    (["m", "--concurrency", "0"], "'0': give 1 to 1024"),
    (["m", "--concurrency", "1,four"], "'four' is not an integer"),
    (["m", "--concurrency", ",".join(["1"] * 17)], "at most 16 values"),
    (["m", "--lengths", "128"], "IN:OUT"),
    (["m", "--lengths", "128:64,512:0"], "'512:0': give lengths as IN:OUT"),
    (["m", "--requests-per-point", "0"], "give 1 to 10000"),
    ([], "one of the arguments MODEL --cancel is required"),
    (["m", "--cancel", "bench-1"], "not allowed with"),
])
def test_measure_refuses_bad_arguments_with_exit_2(args: list[str], complaint: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["measure", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and complaint in err and "usage: modelyard measure" in err


def test_a_wrong_api_key_exits_1_with_the_orchestrators_message_and_not_the_key(yard: Yard) -> None:
    done = yard.run("--api-key", WRONG_KEY, "status")
    assert done.returncode == 1 and "the API key is not valid (invalid_api_key, HTTP 401)" in done.stderr
    assert WRONG_KEY not in done.stdout + done.stderr and "Traceback" not in done.stderr
    missing = yard.run("models", MODELYARD_API_KEY="")
    assert missing.returncode == 1 and "missing_api_key" in missing.stderr and "--api-key" in missing.stderr
    body = json.loads(yard.run("keys", "list", "--json", "--api-key", WRONG_KEY).stdout)
    assert body["error"]["code"] == "invalid_api_key" and WRONG_KEY not in json.dumps(body)
    not_found = yard.run("load", "nosuch")
    assert not_found.returncode == 1 and "no model 'nosuch' is configured (model_not_found" in not_found.stderr


def test_a_key_a_header_cannot_carry_is_a_usage_error_that_does_not_echo_it(yard: Yard) -> None:
    for key in ("my-secret-key\r", " my-secret-key", "my-sécret-key"):  # a key file with CRLF, say
        done = yard.run("status", MODELYARD_API_KEY=key)
        assert done.returncode == 2 and "API key" in done.stderr and "Traceback" not in done.stderr
        assert "secret" not in done.stdout + done.stderr


class ForeignServer(ThreadingHTTPServer):
    """Something at the URL that is not a modelyard orchestrator: 200 with a JSON list."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = b"[]"
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_an_answer_of_another_shape_exits_1_without_a_traceback(yard: Yard) -> None:
    server = ForeignServer()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for argv in (["status"], ["logs", "x"], ["keys", "list"]):
            done = yard.run("--url", url, *argv)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert "a shape this command does not know" in done.stderr
    finally:
        server.shutdown()


def test_an_error_into_a_closed_pipe_ends_quietly(yard: Yard) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(" ".join([*yard.argv("--url", url, "--json", "status"), "| true"]), shell=True,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=yard.env())
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_an_unreachable_orchestrator_exits_1_with_a_clear_message(yard: Yard) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = yard.run("--url", url, "status")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot reach the orchestrator at {url} (is it running? scripts/start-all.sh)" in done.stderr
    body = json.loads(yard.run("status", "--json", MODELYARD_URL=url).stdout)
    assert body["error"]["code"] == "orchestrator_unreachable"


def test_the_bash_wrapper_runs_the_command_with_the_orchestrators_python(yard: Yard, tmp_path: Path) -> None:
    python = tmp_path / "envs" / "orchestrator" / "bin" / "python"  # where common.sh looks, pointing at ours
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = yard.env(MODELYARD_ENVS_DIR=str(tmp_path / "envs"))

    def wrapper(*args: str) -> subprocess.CompletedProcess[str]:  # from elsewhere: the wrapper finds the checkout
        return subprocess.run(["bash", str(ROOT / "scripts" / "modelyard"), *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path, env=env)

    helped = wrapper("--help")
    assert helped.returncode == 0 and "usage: modelyard" in helped.stdout and yard.admin_key not in helped.stdout
    (tmp_path / "models.yaml").write_text(yard.orch.config_path.read_text())
    checked = wrapper("config", "check", "models.yaml")  # a path relative to where it runs
    assert checked.returncode == 0 and checked.stdout.strip() == "models.yaml: ok (2 models: alpha, beta)"
    assert row_of(wrapper("models").stdout, "alpha")[1] == "text"


# --- in process: the parts that need no orchestrator --------------------------


def follow(window: int, *answers: list[str]) -> list[list[str]]:
    follower = LogFollower(window)
    return [follower.update(lines) for lines in answers]


def test_new_log_lines_are_counted_exactly_while_the_log_fits_the_window_even_when_lines_repeat() -> None:
    assert follow(10, ["a", "b"], ["a", "b", "b"], ["a", "b", "b", "b", "a"]) == [["a", "b"], ["b"], ["b", "a"]]
    assert follow(10, ["x", "x"], ["x", "x"]) == [["x", "x"], []]


def test_a_rotated_or_truncated_log_is_printed_from_its_start() -> None:
    assert follow(10, ["a", "b", "c"], ["d"]) == [["a", "b", "c"], ["d"]]  # shorter
    assert follow(10, ["a", "b"], ["c", "d", "e"]) == [["a", "b"], ["c", "d", "e"]]  # another start
    assert follow(3, ["a", "b", "c"], ["x", "y"]) == [["a", "b", "c"], ["x", "y"]]  # below a full window


def test_past_the_window_new_lines_follow_where_the_old_answer_ends() -> None:
    assert follow(3, ["a", "b", "c"], ["b", "c", "d"], ["c", "d", "e"]) == [["a", "b", "c"], ["d"], ["e"]]
    assert follow(3, ["a", "b", "c"], ["a", "b", "c"]) == [["a", "b", "c"], []]
    assert follow(4, ["a", "b", "a", "b"], ["a", "b", "a", "b"]) == [["a", "b", "a", "b"], []]  # read as unchanged
    assert end_of_old(["p", "q", "r"], ["q", "r", "s", "t"]) == 2
    follower = LogFollower(3)
    follower.update(["a", "b", "c"])
    assert follower.update(["x", "y", "z"]) == ["x", "y", "z"] and follower.skipped and follower.window == 6
    # The wider window now shows the whole file: its end still lines up with what was seen.
    assert follower.update(["v", "w", "x", "y", "z"]) == [] and not follower.skipped


def test_tables_are_aligned_and_a_host_without_gpus_says_why() -> None:
    assert cli_format.table(["A", "LONG"], [["xyz", 1], ["q", ""]]).splitlines() == ["A    LONG", "xyz  1", "q"]
    assert cli_format.render_gpus({"source": "none", "reason": "nvidia-ml-py is not installed", "gpus": []}) == \
        "no GPU: nvidia-ml-py is not installed"
    assert [cli_format.seconds(s) for s in (None, 5, 65, 3700, 90000)] == ["-", "5s", "1m05s", "1h01m", "1d1h"]

    ready = {"state": "ready", "in_flight": 0, "idle_s": 42, "keep_alive_s": None}
    assert cli_format.idle_until({**ready, "ttl": 0}) == "42s / forever"  # models.yaml's ttl 0: kept running
    assert cli_format.idle_until({**ready, "ttl": 600}) == "42s / 9m18s"
    rotated = {"expires": None, "revoked": time.time() + 3600}  # a rotated key, in its grace period
    assert cli_format.key_ends(rotated) != "never" and cli_format.key_ends({"expires": None}) == "never"


def test_drift_status_tables() -> None:
    monitors = {"object": "list", "data": [{"id": "m1", "name": "lat", "model": "alpha", "source": "requests",
                                            "severity": "high", "events_seen": 1200}]}
    assert row_of(cli_format.render_monitors(monitors), "lat") == ["lat", "m1", "alpha", "requests", "high", "1200"]
    status = {"monitor": "m1", "name": "lat", "model": None, "severity": "low", "alert_severity": "medium",
              "events_seen": 40, "last_alert": None,
              "features": {"latency_ms": {"kind": "numeric", "severity": "low", "ready": True, "dropped": 0,
                                          "worst": {"algorithm": "psi", "value": 0.123456}},
                           "route": {"kind": "categorical", "severity": "none", "ready": False, "dropped": 2,
                                     "worst": None, "note": "waiting for the reference"}}}
    text = cli_format.render_monitor_status(status)
    assert text.splitlines()[0].startswith("monitor lat (m1), model (all): severity low, 40 events seen")
    assert row_of(text, "latency_ms") == ["latency_ms", "numeric", "low", "yes", "psi=0.1235", "0"]
    assert row_of(text, "route")[3:] == ["no", "-", "2", "waiting for the reference"]
    model = {"model": "alpha", "severity": "high", "monitors": [{"id": "m1", "name": "lat", "severity": "high",
                                                                 "events_seen": 9}]}
    assert cli_format.render_model_drift(model).splitlines()[0] == "model alpha: severity high"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_shows_on_a_terminal_only() -> None:
    screen = Terminal()
    assert cli.Progress("loading m", screen, tick=0.05).run(lambda: time.sleep(0.3) or 7) == 7
    assert "\rloading m: 0 s" in screen.getvalue() and screen.getvalue().endswith("\r\033[K")
    piped = io.StringIO()
    assert cli.Progress("loading m", piped).run(lambda: 8) == 8 and piped.getvalue() == ""
    assert cli.Progress("loading m", piped).run(lambda: 9, estimate=5) == 9 and piped.getvalue() == ""
    cli.Progress("measuring m", piped).draw(0.5, "1/2 points")
    assert piped.getvalue() == ""
    with pytest.raises(ValueError):
        cli.Progress("loading m", Terminal(), tick=0.05).run(lambda: int("x"))


def test_a_known_end_draws_a_bar_and_a_guessed_one_never_shows_done() -> None:
    assert cli_format.progress_line("loading m", 12.3, 0.45, estimate=26.2) == \
        "loading m  [###########.............]  45%  12 s / ~27 s"
    assert cli_format.progress_line("measuring m", 41, 1 / 3, "3/9 points") == \
        "measuring m  [########................]  3/9 points  41 s"
    assert cli_format.progress_line("loading m", 3.4) == "loading m: 3 s"
    screen = Terminal()
    assert cli.Progress("loading m", screen, tick=0.02).run(lambda: time.sleep(0.4) or 7, estimate=0.2) == 7
    drawn = [line for line in (part.removesuffix("\033[K") for part in screen.getvalue().split("\r")) if line]
    assert drawn and all(re.fullmatch(r"loading m  \[#*\.*\]  \d+%  \d+ s / ~1 s", line) for line in drawn), drawn
    assert drawn[-1].startswith("loading m  [" + "#" * 24 + "]  99%  ")  # past the guess: 99%, not 100%
    assert screen.getvalue().endswith("\r\033[K")


class FakeAdmin:
    """AdminClient's two calls, answering from a script: (method, path) -> an answer or an exception."""

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = {key: list(value) if isinstance(value, list) else [value] for key, value in answers.items()}
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        queued = self.answers[(method, path)]
        answer = queued.pop(0) if len(queued) > 1 else queued[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else answer

    def get(self, path: str, **_: Any) -> Any:
        return self.request("GET", path)


def slow(answer: Any, seconds: float = 0.3) -> Any:
    return lambda: time.sleep(seconds) or answer


def test_load_shows_its_last_load_time_as_an_estimate(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    ready = {"id": "m", "state": "ready", "load_seconds": 0.3}
    known = FakeAdmin({("GET", "/admin/services/m"): {"id": "m", "state": "stopped", "load_seconds": 2.5},
                       ("POST", "/admin/services/m/load"): slow(ready)})
    assert cli.load(cli.parse_args(["load", "m"]), known) == 0
    assert "\rloading m  [" in screen.getvalue() and re.search(r"%  \d+ s / ~3 s", screen.getvalue())
    assert capsys.readouterr().out.startswith("m: ready (loaded in 0.3 s")

    # Asking failed, or nothing is known: the seconds so far, and the load goes on.
    for answer in (cli.ApiError(403, "insufficient_scope", "no"), {"id": "m", "state": "stopped",
                                                                   "load_seconds": None}):
        screen.seek(0)
        screen.truncate()
        unknown = FakeAdmin({("GET", "/admin/services/m"): answer, ("POST", "/admin/services/m/load"): slow(ready)})
        assert cli.load(cli.parse_args(["load", "m"]), unknown) == 0
        assert "\rloading m: 0 s" in screen.getvalue() and "%" not in screen.getvalue()


JOB = "/simulator/benchmarks/bench-1"
STARTED = {"object": "benchmark_job", "id": "bench-1", "state": "running", "points": 2}
EVALUATION = {"records": 33, "method": "leave-one-out",
              "mean_abs_pct_error": {"heuristic": {"ttft_ms": 45.25, "tpot_ms": 30.0},
                                     "regressor": {"ttft_ms": 12.0, "tpot_ms": 8.5}}}


def job(state: str, records: int, **fields: Any) -> dict[str, Any]:
    return {**STARTED, "state": state, "records": records, "request": {"model": "m"}, "error": None,
            "evaluation": None, **fields}


def test_measure_polls_its_job_with_a_bar_then_sums_it_up(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "POLL_SECONDS", 0.01)
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    admin = FakeAdmin({("POST", "/simulator/benchmarks"): STARTED,
                       ("GET", JOB): [job("running", 1), job("done", 2, evaluation=EVALUATION)]})
    assert cli.measure(cli.parse_args(["measure", "m", "--concurrency", "1,4"]), admin) == 0
    assert admin.calls[0] == ("POST", "/simulator/benchmarks", {"model": "m", "concurrency": [1, 4]})
    assert "\rmeasuring m  [" + "." * 24 + "]  0/2 points  0 s" in screen.getvalue()
    assert "\rmeasuring m  [" + "#" * 12 + "." * 12 + "]  1/2 points  0 s" in screen.getvalue()
    assert screen.getvalue().endswith("\r\033[K")
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "bench-1 (m): done, 2 of 2 points measured"
    assert "retrained on 33 records; mean absolute error (leave-one-out):" in text
    assert row_of(text, "ttft_ms") == ["ttft_ms", "45.2%", "12.0%"]


def test_a_measure_that_fails_exits_1_and_detach_or_cancel_do_not_wait(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "POLL_SECONDS", 0.01)
    failing = FakeAdmin({("POST", "/simulator/benchmarks"): STARTED,
                         ("GET", JOB): job("failed", 1, error="the model answered 500")})
    assert cli.measure(cli.parse_args(["--json", "measure", "m"]), failing) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["state"] == "failed"
    assert "modelyard: error: benchmark job bench-1 failed: the model answered 500" in err

    detached = FakeAdmin({("POST", "/simulator/benchmarks"): STARTED})
    assert cli.measure(cli.parse_args(["measure", "m", "--detach", "--no-retrain"]), detached) == 0
    assert detached.calls == [("POST", "/simulator/benchmarks", {"model": "m", "retrain": False})]
    assert "modelyard measure --cancel bench-1" in capsys.readouterr().out

    cancelled = FakeAdmin({("DELETE", JOB): job("cancelling", 1)})
    assert cli.measure(cli.parse_args(["measure", "--cancel", "bench-1"]), cancelled) == 0
    assert capsys.readouterr().out.startswith("bench-1: cancelling (the points measured so far stay: 1 of 2)")


def test_ctrl_c_while_measuring_says_the_job_goes_on_and_how_to_stop_it(capsys: pytest.CaptureFixture[str]) -> None:
    admin = FakeAdmin({("POST", "/simulator/benchmarks"): STARTED, ("GET", JOB): KeyboardInterrupt()})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "POLL_SECONDS", 0.01)
        assert cli.measure(cli.parse_args(["measure", "m"]), admin) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "benchmark job bench-1 goes on" in err and "modelyard measure --cancel bench-1" in err


def test_benchmark_job_summary_without_a_retrain() -> None:
    text = cli_format.render_benchmark_job(job("done", 2))
    assert text == "bench-1 (m): done, 2 of 2 points measured\nthe regressor was not retrained"
    assert cli_format.render_benchmark_job(job("cancelled", 0, points=None)) == \
        "bench-1 (m): cancelled, 0 points measured"


def test_simulation_table() -> None:
    answer = {
        "workflow_id": "w1", "model": {"name": "tiny"},
        "workload": {"input_tokens": 128, "output_tokens": 32, "concurrency": 4},
        "recommendations": [{"device": "H100-SXM", "config": {"tensor_parallel": 2, "pipeline_parallel": 1,
                                                              "replicas": 3, "max_num_seqs": 32,
                                                              "block_size": 16, "chunked_prefill": True,
                                                              "prefix_caching": False, "quantization": "int4"},
                             "metrics": {"ttft_ms": 959.35, "tpot_ms": 15.02, "throughput_per_user": 72.36,
                                         "total_throughput": 3448.1, "memory_gb_per_device": 23.22,
                                         "error_rate": 0.0, "cost_per_million_tokens": 1.445,
                                         "method": "heuristic"}}],
        "devices": [{"device": "H100-SXM", "count": 8, "search": "genetic", "evaluations": 771,
                     "space_size": 27648, "invalid": 341, "seconds": 0.87}],
    }
    text = cli_format.render_simulation(answer)
    assert text.splitlines()[0] == "tiny: 128 tokens in, 32 out, 4 at once (run w1)"
    assert row_of(text, "H100-SXM") == ["H100-SXM", "2x1", "3", "32", "16", "chunked", "int4", "959", "15.0", "72.4",
                                        "3448", "23.2", "0.00", "1.45", "heuristic"]
    assert text.splitlines()[-1] == ("H100-SXM x8: genetic search, 771 of 27648 configurations evaluated, "
                                     "341 impossible, 0.87 s")
