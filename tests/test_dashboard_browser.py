"""The dashboard in a real browser: Debian's headless Chromium driven by
Playwright, against a real orchestrator with auth on, the drift monitor and
the simulator running, SmolLM2 on vLLM and tiny diffusers and MusicGen
models. Every page must load without a console error; the screenshots are
kept as test artefacts (MODELYARD_ARTIFACTS, by default state/test-artifacts/).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.engine_process import engine_python
from tests.test_limits import create_key

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("MODELYARD_CHROMIUM", "/usr/bin/chromium"))
# What a closed network needs: no background fetches, no GPU, no sandbox (the tests may run as root).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("MODELYARD_ARTIFACTS", ROOT / "state" / "test-artifacts")) / "dashboard"
SMOLLM2 = Path(os.environ.get("MODELYARD_SMOLLM2_DIR", ROOT / "state" / "models" / "smollm2-135m"))
PAGES = ["/ui", "/ui/services/smollm2-135m", "/ui/playground", "/ui/simulator", "/ui/drift"]


def build(engine: str, script: str, out: Path, *argv: str) -> Path:
    built = subprocess.run([str(engine_python(engine)), str(ROOT / "tests" / "support" / script), str(out), *argv],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def yard(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Any:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package"
    assert SMOLLM2.exists(), f"{SMOLLM2} is missing: run ./scripts/install.sh"
    work = tmp_path_factory.mktemp("dashboard")
    state = work / "state"
    admin = create_key(state, "--role", "admin", "--name", "dashboard-admin")
    config = {
        "settings": {"auth": {"enabled": True}, "drift": {"enabled": True}, "simulator": {"enabled": True},
                     "file_ttl": 600},
        "models": {
            "smollm2-135m": {"type": "text", "engine": "vllm", "model": str(SMOLLM2), "memory_gb": 4,
                             "startup_timeout": 300,
                             "args": {"max_model_len": 2048,
                                      "override_generation_config": '{"temperature": 0, "max_new_tokens": 64}'}},
            "tiny-sd": {"type": "image", "engine": "diffusers", "memory_gb": 1, "startup_timeout": 180,
                        "model": str(build("diffusers", "tiny_sd.py", work / "tiny-sd")),
                        "args": {"default_steps": 2}},
            "tiny-musicgen": {"type": "audio", "engine": "musicgen", "memory_gb": 1, "startup_timeout": 180,
                              "model": str(build("musicgen", "tiny_musicgen.py", work / "tiny-musicgen")),
                              "args": {"default_duration": 0.5}},
        },
    }
    envs = str(engine_python("vllm").parent.parent.parent)
    orch = module_orchestrator(config, state_dir=state, extra_env={"MODELYARD_ENVS_DIR": envs})
    orch.admin = admin["key"]
    return orch


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


class Page:
    """A browser tab that keeps every console error and uncaught exception."""

    def __init__(self, browser: Any, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.base = base
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def open(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page

    def sign_in(self, key: str) -> None:
        page = self.open("/ui")
        assert "/ui/login" in page.url  # no session yet: sent to sign in
        page.fill("#api-key", key)
        page.click("#login button[type=submit]")
        page.wait_for_url(self.base + "/ui")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(yard: Any, browser: Any) -> Iterator[Page]:
    page = Page(browser, yard.url)
    yield page
    page.close()


def test_sign_in_then_every_page_loads_without_a_console_error(yard: Any, tab: Page) -> None:
    page = tab.open("/ui/drift")
    assert "/ui/login" in page.url
    page.fill("#api-key", "my-000000000000-not-a-key")
    page.click("#login button[type=submit]")
    assert "not valid" in page.inner_text("#login-error") or "malformed" in page.inner_text("#login-error")
    tab.shot("login-refused")
    tab.problems.clear()  # the refused sign-in's 401 is the browser's one expected complaint

    tab.sign_in(yard.admin)
    for path in PAGES:
        page = tab.open(path)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(2500)  # a round of the parts' refreshes
        assert page.inner_text("#signed-in").startswith("dashboard-admin (admin)")
        tab.shot("page" + path.replace("/", "-"))
    assert tab.problems == []


def test_load_from_the_service_page_then_the_services_table_shows_it_ready(yard: Any, tab: Page) -> None:
    tab.sign_in(yard.admin)
    page = tab.open("/ui/services/smollm2-135m")
    page.click("button[data-action=load]")
    page.wait_for_selector("#action-progress:not([hidden])", timeout=5000)  # the bar while vLLM starts
    tab.shot("service-loading")
    page.wait_for_selector("#service[data-state=ready]", timeout=300_000)
    assert "vllm" in page.inner_text("#log").lower()  # its log, as it grew
    tab.shot("service-ready")

    page = tab.open("/ui")
    row = page.wait_for_selector("#services tr[data-model=smollm2-135m][data-state=ready]", timeout=10_000)
    assert "ready" in row.inner_text()
    assert page.locator("figure.bar[data-pool=host] rect.c0, figure.bar[data-pool=host] rect[class^=c]").count() >= 1
    tab.shot("overview-loaded")
    assert tab.problems == []


def test_the_playground_gets_an_answer_from_smollm2_and_the_request_is_listed(yard: Any, tab: Page) -> None:
    tab.sign_in(yard.admin)
    page = tab.open("/ui/playground")
    page.select_option("#pg-model", "smollm2-135m")
    page.fill("#pg-prompt", "What is the capital of France?")
    page.click("#pg-send")
    page.wait_for_selector("#pg-status:has-text('tokens')", timeout=300_000)  # the answer's summary: it is done
    answer = page.inner_text("#pg-answer")
    assert "Paris" in answer, answer
    assert "first token" in page.inner_text("#pg-status")
    tab.shot("playground-chat")

    page = tab.open("/ui")
    rows = page.locator("#requests tbody tr")
    rows.first.wait_for(timeout=10_000)
    text = rows.first.inner_text()
    assert "smollm2-135m" in text and "/v1/chat/completions" in text and "200" in text
    assert "dashboard-admin" in text
    tab.shot("overview-requests")
    assert tab.problems == []


def test_the_image_and_audio_try_outs_show_what_the_models_made(yard: Any, tab: Page) -> None:
    tab.sign_in(yard.admin)
    page = tab.open("/ui/playground")
    page.select_option("#pg-model", "tiny-sd")
    page.fill("#pg-prompt", "a red cat")
    page.click("#pg-send")
    image = page.wait_for_selector("#pg-media img", timeout=300_000)
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", image)  # a PNG the browser decoded
    tab.shot("playground-image")

    page.select_option("#pg-model", "tiny-musicgen")
    page.fill("#pg-duration", "1")
    page.fill("#pg-prompt", "calm piano")
    page.click("#pg-send")
    player = page.wait_for_selector("#pg-media audio", timeout=300_000)
    # A WAV of the asked second, decoded by the browser. (wait_for_function would evaluate a string,
    # which the pages' CSP forbids; evaluate calls a function.)
    deadline = time.monotonic() + 20
    while page.evaluate("(a) => a.readyState", player) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 0.9 < page.evaluate("(a) => a.duration", player) < 1.1
    tab.shot("playground-audio")
    assert tab.problems == []


def test_simulator_runs_and_drift_histograms_are_drawn(yard: Any, tab: Page) -> None:
    auth = {"Authorization": f"Bearer {yard.admin}"}
    with httpx.Client(base_url=yard.url, headers=auth, timeout=120) as client:
        run = client.post("/simulator/run", json={"model": "smollm2-135m", "input_tokens": 128,
                                                  "output_tokens": 32, "concurrency": 4})
        assert run.status_code == 200, run.text
        monitor = client.post("/drift/monitors", json={
            "name": "latency-watch", "features": [{"name": "latency_ms", "kind": "numeric"}],
            "window": {"kind": "fixed", "size": 50, "reference_size": 50}})
        assert monitor.status_code == 201, monitor.text
        events = [{"latency_ms": 100 + i % 10} for i in range(50)] + [{"latency_ms": 300 + i % 10} for i in range(50)]
        pushed = client.post("/drift/ingest", json={"monitor": monitor.json()["id"], "events": events})
        assert pushed.status_code == 200, pushed.text

    tab.sign_in(yard.admin)
    page = tab.open("/ui/simulator")
    section = page.wait_for_selector(f"section.run[data-workflow='{run.json()['workflow_id']}']", timeout=10_000)
    assert "host-cpu" in section.inner_text()
    tab.shot("simulator")

    page = tab.open("/ui/drift")
    figure = page.wait_for_selector("section.monitor figure.feature", timeout=10_000)
    assert "latency_ms" in figure.inner_text() and "critical" in figure.inner_text()
    assert page.locator("svg.histogram rect.reference").count() > 0
    assert page.locator("svg.histogram rect.current").count() > 0
    tab.shot("drift")
    assert tab.problems == []


def test_a_viewer_sees_what_its_key_allows_and_no_more(yard: Any, tab: Page) -> None:
    with httpx.Client(base_url=yard.url, timeout=30) as client:
        made = client.post("/admin/keys", json={"name": "dashboard-viewer", "role": "viewer"},
                           headers={"Authorization": f"Bearer {yard.admin}"})
        assert made.status_code == 201, made.text
    tab.sign_in(made.json()["key"])
    page = tab.open("/ui")
    assert "lacks the scope" in page.inner_text("main")
    assert page.locator("#services").count() == 0
    page = tab.open("/ui/playground")
    assert "inference" in page.inner_text("main") and page.locator("#playground").count() == 0
    tab.shot("viewer")
    assert tab.problems == []
