"""The dashboard under /ui, through a real orchestrator (auth on, one fake text
model) and one with auth off: signing in with an API key for a session cookie,
where a missing or ended session leads (a page: to the sign-in page; a part or
the API: a 401), what a session may do (its key's scopes, changes only with
the x-modelyard-ui header), the recent requests, the sign-in's audit entries;
and, without processes, the session cookie's signing and parsing and what the
pages draw (memory bars, drift histograms).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from orchestrator.keys import KeyStore
from orchestrator.ui_session import COOKIE, UiSessions, safe_next, session_cookie
from orchestrator.ui_views import BAR_WIDTH, CHART_HEIGHT, GIB, ago, histogram, memory_bars
from tests.conftest import fake_model, wait_until
from tests.support.api_errors import assert_error

CONFIG = {"settings": {"auth": {"enabled": True}},
          "models": {"chat": fake_model(memory_gb=1), "hidden": fake_model(memory_gb=1)}}
OPEN_CONFIG = {"models": {"chat": fake_model(memory_gb=1)}}
UI = {"x-modelyard-ui": "1"}
DENIED = "lacks the scope"
WRONG_KEY = "my-000000000000-" + "W" * 43


class Dashboard:
    """The auth-enabled orchestrator, its admin key, and requests made as a browser would."""

    def __init__(self, orch: Any, admin_key: str, admin_id: str) -> None:
        self.orch, self.admin_key, self.admin_id = orch, admin_key, admin_id
        self.admin = {"Authorization": f"Bearer {admin_key}"}

    def request(self, method: str, path: str, cookie: str | None = None, headers: dict[str, str] | None = None,
                **kwargs: Any) -> httpx.Response:
        sent = dict(headers or {})
        if cookie is not None:
            sent["cookie"] = f"{COOKIE}={cookie}"
        with httpx.Client(base_url=self.orch.url, timeout=60, follow_redirects=False) as client:
            return client.request(method, path, headers=sent, **kwargs)

    def login(self, api_key: str, next: str | None = "/ui") -> httpx.Response:
        form = {"api_key": api_key} if next is None else {"api_key": api_key, "next": next}
        return self.request("POST", "/ui/login", data=form)

    def session(self, api_key: str) -> str:
        """Sign in with api_key; the session cookie's value."""
        answer = self.login(api_key)
        assert answer.status_code == 303, answer.text
        return cookie_of(answer)["value"]

    def make_key(self, name: str, role: str) -> dict[str, Any]:
        made = self.request("POST", "/admin/keys", json={"name": name, "role": role}, headers=self.admin)
        assert made.status_code == 201, made.text
        return made.json()


def cookie_of(answer: httpx.Response) -> dict[str, Any]:
    """The Set-Cookie of answer: its value and attributes (names lower-cased)."""
    headers = answer.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    first, *attributes = [part.strip() for part in headers[0].split(";")]
    name, _, value = first.partition("=")
    assert name == COOKIE
    parsed: dict[str, Any] = {"value": value}
    for attribute in attributes:
        key, _, setting = attribute.partition("=")
        parsed[key.lower()] = setting if setting else True
    return parsed


@pytest.fixture(scope="module")
def ui(module_orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Dashboard:
    state = tmp_path_factory.mktemp("ui") / "state"
    store = KeyStore(state / "keys.db")
    try:
        key, secret = store.create("root", "admin")
    finally:
        store.close()
    return Dashboard(module_orchestrator(CONFIG, state_dir=state), secret, key.id)


@pytest.fixture(scope="module")
def open_ui(module_orchestrator) -> Any:
    return module_orchestrator(OPEN_CONFIG)


def assert_login_redirect(answer: httpx.Response, target: str) -> None:
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/login?" + urlencode({"next": target})


# --- without a session ------------------------------------------------------------------


def test_pages_send_a_person_without_a_session_to_sign_in(ui: Dashboard) -> None:
    assert_login_redirect(ui.request("GET", "/ui"), "/ui")
    assert_login_redirect(ui.request("GET", "/ui/playground"), "/ui/playground")
    assert_login_redirect(ui.request("GET", "/ui/services/chat?tab=log"), "/ui/services/chat?tab=log")
    assert ui.request("GET", "/ui").headers["location"] == "/ui/login?next=%2Fui"


def test_parts_and_the_api_answer_a_script_without_a_session_with_a_401(ui: Dashboard) -> None:
    for path in ("/ui/part/services", "/ui/part/requests", "/admin/services"):
        answer = ui.request("GET", path)
        assert "location" not in answer.headers
        assert_error(answer, 401, None, "missing_api_key")


def test_the_sign_in_page_and_the_static_files_need_nothing(ui: Dashboard) -> None:
    script = ui.request("GET", "/ui/static/ui.js")
    assert script.status_code == 200 and "x-modelyard-ui" in script.text
    assert ui.request("GET", "/ui/static/ui.css").status_code == 200
    login = ui.request("GET", "/ui/login", params={"next": "/ui/drift"})
    assert login.status_code == 200
    assert 'id="login"' in login.text and 'name="api_key"' in login.text
    assert 'name="next" value="/ui/drift"' in login.text
    assert 'id="login-error"' not in login.text
    elsewhere = ui.request("GET", "/ui/login", params={"next": "//evil.example/"})
    assert 'name="next" value="/ui"' in elsewhere.text and "evil.example" not in elsewhere.text


# --- signing in ---------------------------------------------------------------------------


def test_a_wrong_key_is_refused_on_the_page_without_a_cookie(ui: Dashboard) -> None:
    for wrong in (WRONG_KEY, "not-a-key", ""):
        answer = ui.login(wrong, "/ui/playground")
        assert answer.status_code == 401, answer.text
        assert 'id="login-error"' in answer.text
        assert 'name="next" value="/ui/playground"' in answer.text  # signing in again goes where it meant to
        assert "set-cookie" not in answer.headers
        assert answer.headers["cache-control"] == "no-store"


def test_the_right_key_gives_a_session_cookie_that_holds_no_secret(ui: Dashboard) -> None:
    answer = ui.login(ui.admin_key, "/ui/playground")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/playground"
    cookie = cookie_of(answer)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "43200"
    assert "secure" not in cookie  # plain http here: a Secure cookie would never come back
    secret = ui.admin_key.split("-", 2)[2]
    assert secret not in answer.headers["set-cookie"] and ui.admin_key not in answer.headers["set-cookie"]
    # And it works where it was sent to.
    assert ui.request("GET", "/ui/playground", cookie["value"]).status_code == 200


def test_sign_in_without_next_goes_to_the_overview(ui: Dashboard) -> None:
    answer = ui.login(ui.admin_key, None)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "/admin/keys", "/\\evil.example",
                                    "http://127.0.0.1/ui"])
def test_sign_in_never_sends_anyone_to_another_site(ui: Dashboard, target: str) -> None:
    answer = ui.login(ui.admin_key, target)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"


# --- what a session may do ---------------------------------------------------------------


def test_a_sign_in_posted_by_another_sites_page_is_refused(ui: Dashboard) -> None:
    """Login CSRF: another site's form must not sign a browser in with a key of the other's choosing."""
    foreign = ui.request("POST", "/ui/login", data={"api_key": ui.admin_key, "next": "/ui"},
                         headers={"origin": "https://evil.example"})
    assert_error(foreign, 403, None, "cross_site_login")
    assert "set-cookie" not in foreign.headers
    host = ui.orch.url.removeprefix("http://")
    ours = ui.request("POST", "/ui/login", data={"api_key": ui.admin_key, "next": "/ui"},
                      headers={"origin": f"http://{host}"})
    assert ours.status_code == 303 and cookie_of(ours)["value"]


def test_an_oversized_sign_in_form_is_refused_unread(ui: Dashboard) -> None:
    answer = ui.request("POST", "/ui/login", content=b"api_key=" + b"x" * 100_000,
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(answer, 413, None, "body_too_large")


def test_an_admin_session_loads_a_model_and_sees_its_requests(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    overview = ui.request("GET", "/ui", session)
    assert overview.status_code == 200, overview.text
    assert 'id="services"' in overview.text
    assert '<tr data-model="chat" data-state="stopped">' in overview.text
    assert 'data-pool="host"' in overview.text  # its memory bar
    assert 'id="signed-in">root (admin)' in overview.text
    listed = ui.request("GET", "/admin/services", session)
    assert listed.status_code == 200 and [s["id"] for s in listed.json()["services"]] == ["chat", "hidden"]

    # A change made with the cookie alone could come from another site's page: refused.
    refused = ui.request("POST", "/admin/services/chat/load", session)
    assert_error(refused, 403, None, "csrf_header_missing")
    assert ui.request("GET", "/admin/services/chat", session).json()["state"] == "stopped"
    loaded = ui.request("POST", "/admin/services/chat/load", session, UI)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["state"] == "ready"
    part = ui.request("GET", "/ui/part/services", session)
    assert part.status_code == 200 and '<tr data-model="chat" data-state="ready">' in part.text
    page = ui.request("GET", "/ui/services/chat", session)
    assert page.status_code == 200 and 'id="service" data-state="ready"' in page.text
    assert 'id="log"' in page.text and 'data-action="unload"' in page.text

    chatter = ui.make_key("chatter", "member")
    chat = ui.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {chatter['key']}"},
                      json={"model": "chat", "messages": [{"role": "user", "content": "hi there friend"}]})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "echo: hi there friend"

    def recorded() -> list[dict[str, Any]]:
        answer = ui.request("GET", "/admin/requests", session, params={"model": "chat"})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    assert wait_until(lambda: recorded(), 5)
    answer = ui.request("GET", "/admin/requests", session, params={"model": "chat", "limit": 5})
    (row,) = answer.json()["data"]
    assert row["model"] == "chat" and row["route"] == "/v1/chat/completions"
    assert row["status"] == 200 and row["error"] is None
    assert row["latency_ms"] > 0
    assert row["prompt_tokens"] == 3 and row["completion_tokens"] == 4
    assert row["key"] == "chatter"
    assert row["request_id"] == chat.headers["x-request-id"]
    for secret in (chatter["key"], chatter["key"].split("-", 2)[2], ui.admin_key.split("-", 2)[2]):
        assert secret not in answer.text
    assert ui.request("GET", "/admin/requests", session, params={"model": "other"}).json()["data"] == []

    requests = ui.request("GET", "/ui/part/requests", session)
    assert requests.status_code == 200
    assert 'id="requests"' in requests.text and 'id="no-requests"' not in requests.text
    assert '<tr data-status="200">' in requests.text
    assert "chatter" in requests.text and chat.headers["x-request-id"] in requests.text
    assert chatter["key"].split("-", 2)[2] not in requests.text
    for_other = ui.request("GET", "/ui/part/requests", session, params={"model": "other"})
    assert 'id="no-requests"' in for_other.text and 'id="requests"' not in for_other.text


def test_a_viewer_session_sees_pages_but_not_what_its_key_may_not_read(ui: Dashboard) -> None:
    viewer = ui.make_key("looker", "viewer")
    session = ui.session(viewer["key"])
    overview = ui.request("GET", "/ui", session)
    assert overview.status_code == 200, overview.text
    assert DENIED in overview.text and "services:read" in overview.text and "admin:read" in overview.text
    assert 'id="services"' not in overview.text and 'data-model="chat"' not in overview.text
    assert 'id="requests"' not in overview.text
    service = ui.request("GET", "/ui/services/chat", session)
    assert service.status_code == 200 and DENIED in service.text
    assert 'id="service"' not in service.text and 'id="log"' not in service.text
    playground = ui.request("GET", "/ui/playground", session)
    assert playground.status_code == 200 and DENIED in playground.text and 'id="playground"' not in playground.text
    assert_error(ui.request("GET", "/admin/services", session), 403, None, "insufficient_scope")
    assert_error(ui.request("GET", "/admin/requests", session), 403, None, "insufficient_scope")
    assert_error(ui.request("POST", "/admin/services/chat/unload", session, UI), 403, None, "insufficient_scope")


def test_a_key_limited_to_some_models_learns_nothing_of_the_others(ui: Dashboard) -> None:
    made = ui.request("POST", "/admin/keys", headers=ui.admin,
                      json={"name": "limited", "role": "admin", "models": ["chat"]})
    assert made.status_code == 201, made.text
    session = ui.session(made.json()["key"])
    assert ui.request("GET", "/ui/services/chat", session).status_code == 200
    for path in ("/ui/services/hidden", "/ui/part/service/hidden", "/ui/part/logs/hidden"):
        hidden, unknown = ui.request("GET", path, session), ui.request("GET", path.replace("hidden", "nope"), session)
        assert_error(hidden, 404, None, "model_not_found")
        assert hidden.json()["error"]["message"] == unknown.json()["error"]["message"].replace("nope", "hidden")


def test_a_proxys_basic_auth_beside_the_cookie_does_not_lock_the_dashboard_out(ui: Dashboard) -> None:
    """Browsers resend a proxy's Authorization: Basic; the session cookie is then the credential."""
    session = ui.session(ui.admin_key)
    answer = ui.request("GET", "/ui/part/services", session, {"authorization": "Basic dXNlcjpwYXNz"})
    assert answer.status_code == 200 and 'data-model="chat"' in answer.text
    assert_error(ui.request("GET", "/ui/part/services", None, {"authorization": "Basic dXNlcjpwYXNz"}), 401, None,
                 "invalid_api_key")


def test_another_site_cannot_sign_people_out(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    answer = ui.request("POST", "/ui/logout", session, {"origin": "https://evil.example"})
    assert_error(answer, 403, None, "cross_site_logout")
    assert "set-cookie" not in answer.headers


def test_revoking_the_key_ends_its_sessions_at_once(ui: Dashboard) -> None:
    member = ui.make_key("leaving", "member")
    session = ui.session(member["key"])
    assert ui.request("GET", "/ui/part/services", session).status_code == 200
    assert ui.request("GET", "/ui", session).status_code == 200
    revoked = ui.request("DELETE", f"/admin/keys/{member['id']}", headers=ui.admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert_error(ui.request("GET", "/ui/part/services", session), 401, None, "session_expired")
    assert_login_redirect(ui.request("GET", "/ui", session), "/ui")
    assert_error(ui.request("GET", "/v1/models", session), 401, None, "session_expired")


def test_a_tampered_forged_or_expired_cookie_is_no_session(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    mac = session.rsplit(".", 1)[1]
    tampered = session[:-1] + ("0" if mac[-1] != "0" else "1")
    assert_error(ui.request("GET", "/ui/part/services", tampered), 401, None, "session_expired")
    assert_login_redirect(ui.request("GET", "/ui", tampered), "/ui")
    version, key_id, expires, mac = session.split(".")
    longer = f"{version}.{key_id}.{int(expires) + 86400 * 365}.{mac}"  # the expiry pushed out, same MAC
    assert_error(ui.request("GET", "/ui/part/services", longer), 401, None, "session_expired")
    forged = UiSessions(b"x" * 32).issue(ui.admin_id)  # signed by anyone but this host
    assert_error(ui.request("GET", "/ui/part/services", forged), 401, None, "session_expired")
    host = UiSessions((ui.orch.state_dir / "ui.key").read_bytes())
    expired = host.issue(ui.admin_id, now=time.time() - host.ttl - 60)
    assert_error(ui.request("GET", "/ui/part/services", expired), 401, None, "session_expired")
    assert ui.request("GET", "/ui/part/services", host.issue(ui.admin_id)).status_code == 200  # the control
    assert_error(ui.request("GET", "/ui/part/services", "garbage"), 401, None, "session_expired")


def test_a_cookie_with_non_ascii_bytes_is_refused_like_any_bad_cookie(ui: Dashboard) -> None:
    # A quoted cookie value may hold any byte; the server must refuse it with a 401, not fail with a 500.
    for value in (f'"v1.{ui.admin_id}.9999999999.\xe9"', f'"v1.{ui.admin_id}.\xb2.00"'):
        with httpx.Client(base_url=ui.orch.url, timeout=60, follow_redirects=False) as client:
            answer = client.get("/ui/part/services", headers={"cookie": f"{COOKIE}={value}".encode("latin-1")})
        assert_error(answer, 401, None, "session_expired")


def test_signing_out_clears_the_cookie(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    answer = ui.request("POST", "/ui/logout", session)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    cookie = cookie_of(answer)
    assert cookie["value"] == "" and cookie["max-age"] == "0" and cookie["path"] == "/"


def test_pages_and_parts_carry_the_security_headers(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    answers = [ui.request("GET", path, session) for path in ("/ui", "/ui/playground", "/ui/part/services",
                                                               "/ui/services/chat", "/ui/drift")]
    answers.append(ui.request("GET", "/ui/login"))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        policy = [part.strip() for part in answer.headers["content-security-policy"].split(";")]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-type"].startswith("text/html")


def test_sign_ins_are_audited_without_the_key(ui: Dashboard) -> None:
    since = time.time()
    assert ui.login(WRONG_KEY).status_code == 401
    assert ui.login(ui.admin_key).status_code == 303

    def entries() -> list[dict[str, Any]]:
        answer = ui.request("GET", "/admin/audit", headers=ui.admin, params={"since": since})
        assert answer.status_code == 200, answer.text
        return [e for e in answer.json()["entries"] if e["action"] == "ui.login"]

    assert wait_until(lambda: len(entries()) >= 2, 5), entries()
    refused, admitted = sorted(entries(), key=lambda e: -e["status"])
    assert refused["status"] == 401 and admitted["status"] == 303
    assert refused["kind"] == admitted["kind"] == "access"
    assert refused["detail"] == {"code": "invalid_api_key"} and refused["key_id"] is None
    assert admitted["actor"] == "root" and admitted["key_id"] == ui.admin_id
    assert refused["route"] == admitted["route"] == "POST /ui/login"
    found = [refused, admitted]
    text = str(found)
    assert WRONG_KEY not in text and ui.admin_key.split("-", 2)[2] not in text


def test_an_unknown_service_page_is_a_404(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    for path in ("/ui/services/nope", "/ui/part/service/nope", "/ui/part/logs/nope"):
        answer = ui.request("GET", path, session)
        assert_error(answer, 404, None, "model_not_found")
        assert "Traceback" not in answer.text


def test_drift_and_simulator_pages_say_when_their_service_is_off(ui: Dashboard) -> None:
    session = ui.session(ui.admin_key)
    drift = ui.request("GET", "/ui/drift", session)
    assert drift.status_code == 200
    assert 'id="drift-problem"' in drift.text and "the drift service is off (settings.drift.enabled)" in drift.text
    simulator = ui.request("GET", "/ui/simulator", session)
    assert simulator.status_code == 200
    assert 'id="simulator-problem"' in simulator.text
    assert "the simulator service is off (settings.simulator.enabled)" in simulator.text


# --- auth off ---------------------------------------------------------------------------


def test_with_auth_off_the_dashboard_is_open_and_there_is_no_sign_in(open_ui: Any) -> None:
    with httpx.Client(base_url=open_ui.url, timeout=60, follow_redirects=False) as client:
        overview = client.get("/ui")
        assert overview.status_code == 200, overview.text
        assert '<tr data-model="chat" data-state="stopped">' in overview.text
        assert "auth off" in overview.text and 'id="signed-in"' not in overview.text
        login = client.get("/ui/login", params={"next": "/ui/drift"})
        assert login.status_code == 303 and login.headers["location"] == "/ui/drift"
        assert client.get("/ui/login").headers["location"] == "/ui"
        posted = client.post("/ui/login", data={"api_key": "anything"})
        assert posted.status_code == 303 and posted.headers["location"] == "/ui" and "set-cookie" not in posted.headers
        assert client.get("/ui/part/services").status_code == 200


# --- without processes: the session cookie -----------------------------------------------


def test_a_session_stands_for_its_key_until_it_expires() -> None:
    sessions = UiSessions(b"s" * 32, ttl=100)
    value = sessions.issue("0123456789ab", now=1000.0)
    assert sessions.key_id_of(value, now=1000.0) == "0123456789ab"
    assert sessions.key_id_of(value, now=1099.0) == "0123456789ab"
    assert sessions.key_id_of(value, now=1100.0) is None
    assert sessions.key_id_of(value, now=5000.0) is None
    assert UiSessions(b"t" * 32, ttl=100).key_id_of(value, now=1000.0) is None  # another host's secret
    assert UiSessions(b"s" * 32).ttl == 12 * 3600


def test_a_forged_or_altered_session_is_none() -> None:
    sessions = UiSessions(b"s" * 32)
    value = sessions.issue("0123456789ab")
    version, key_id, expires, mac = value.split(".")
    assert len(mac) == 64
    flipped = mac[:10] + ("a" if mac[10] != "a" else "b") + mac[11:]
    for altered in (f"{version}.{key_id}.{expires}.{flipped}", f"{version}.ba9876543210.{expires}.{mac}",
                    f"{version}.{key_id}.{int(expires) + 1}.{mac}", f"v2.{key_id}.{expires}.{mac}"):
        assert sessions.key_id_of(altered) is None, altered


@pytest.mark.parametrize("value", ["", "v1", "v1.abc", "v1.abc.123", "v1.abc.123.ff.extra", "v1.abc.-5.ff",
                                   "v1.abc.12x.ff", "v1.abc.1.5e3", "v1..99999999999.", "v1.abc.\u00b2.00",
                                   "v1.abc.9999999999.\u00e9"])
def test_a_malformed_session_is_none(value: str) -> None:
    assert UiSessions(b"s" * 32).key_id_of(value) is None


def test_the_session_cookie_is_found_among_several() -> None:
    value = "v1.0123456789ab.1700000000." + "f" * 64
    headers = [(b"host", b"example"), (b"cookie", f"theme=dark; {COOKIE}={value}; _ga=GA1.1.42.7".encode())]
    assert session_cookie(headers) == value
    assert session_cookie([(b"cookie", f"{COOKIE}={value}".encode())]) == value
    assert session_cookie([(b"cookie", b"theme=dark; other_session=v1.x.1.ff")]) is None
    assert session_cookie([(b"host", b"example")]) is None
    assert session_cookie([(b"x-cookie", f"{COOKIE}={value}".encode())]) is None


def test_the_session_cookie_is_found_beside_a_cookie_python_finds_odd() -> None:
    # Cookies are not scoped by port: another app on the same host (localhost) may have set one
    # with a JSON value or a space, which browsers send as they are. The session must still be found.
    value = "v1.0123456789ab.1700000000." + "f" * 64
    for other in ('consent={"ads":false}', "greeting=hello world"):
        header = f"{other}; {COOKIE}={value}".encode()
        assert session_cookie([(b"cookie", header)]) == value, other


@pytest.mark.parametrize(("target", "expected"), [
    (None, "/ui"), ("", "/ui"), ("/ui", "/ui"), ("/ui/playground", "/ui/playground"),
    ("/ui/services/chat?tab=log", "/ui/services/chat?tab=log"), ("//evil.example", "/ui"),
    ("https://evil.example/ui", "/ui"), ("/admin/keys", "/ui"), ("/ui\\..\\evil", "/ui"), ("ui", "/ui"),
])
def test_safe_next(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


# --- without processes: what the pages draw ---------------------------------------------


def service_row(model_id: str, rss_gb: float, pools: list[str]) -> dict[str, Any]:
    return {"id": model_id, "rss_bytes": int(rss_gb * GIB), "pools": pools}


def test_a_host_bar_stacks_reservations_in_proportion_with_measured_and_budget_markers() -> None:
    services = [service_row("a", 2.0, ["host"]), service_row("b", 0, ["host"]), service_row("g", 3.0, ["gpu0"])]
    pools = [{"name": "host", "label": "host memory", "gpu_index": None, "total_gb": 64.0, "budget_gb": 48.0,
              "reserved_gb": 12.0, "services": {"b": 8.0, "a": 4.0}}]
    (bar,) = memory_bars(services, pools, {"source": "none", "gpus": []})
    scale = 64.0 / BAR_WIDTH  # the largest of total, budget, reserved and measured fills the bar
    assert bar.name == "host" and bar.total_gb == 64.0 and bar.budget_gb == 48.0 and bar.reserved_gb == 12.0
    assert [(s.label, s.gb) for s in bar.segments] == [("a", 4.0), ("b", 8.0)]
    a, b = bar.segments
    assert a.x == 0 and a.width == pytest.approx(4.0 / scale)
    assert b.x == pytest.approx(a.width) and b.width == pytest.approx(2 * a.width)
    assert (a.colour, b.colour) == ("c0", "c1")
    assert bar.measured_by == {"a": 2.0}  # b holds nothing; g is not on this pool
    assert bar.measured_gb == 2.0 and bar.measured_x == pytest.approx(2.0 / scale)
    assert bar.budget_x == pytest.approx(48.0 / scale) == pytest.approx(750.0)


def test_a_bar_scales_to_what_was_measured_when_that_is_more_than_the_total() -> None:
    services = [service_row("a", 10.0, ["host"])]
    pools = [{"name": "host", "label": "host", "gpu_index": None, "total_gb": 8.0, "budget_gb": None,
              "reserved_gb": 4.0, "services": {"a": 4.0}}]
    (bar,) = memory_bars(services, pools, {"gpus": []})
    assert bar.measured_x == pytest.approx(BAR_WIDTH)
    assert bar.segments[0].width == pytest.approx(BAR_WIDTH * 4.0 / 10.0)
    assert bar.budget_x is None


def test_a_gpu_bar_takes_its_total_and_measurements_from_the_gpu_report() -> None:
    services = [service_row("host-model", 5.0, ["host"]), service_row("big", 6.0, ["gpu0"])]
    pools = [{"name": "gpu0", "label": "NVIDIA H100", "gpu_index": 0, "total_gb": None, "budget_gb": 72.0,
              "reserved_gb": 20.0, "services": {"big": 20.0}}]
    gpus = {"source": "nvml", "gpus": [{"index": 0, "total_gb": 80.0, "measured": {"big": 30 * GIB}}]}
    (bar,) = memory_bars(services, pools, gpus)
    scale = 80.0 / BAR_WIDTH
    assert bar.total_gb == 80.0
    assert bar.measured_by == {"big": 30.0}  # NVML's bytes, not the process's resident memory
    assert bar.measured_gb == 30.0 and bar.measured_x == pytest.approx(30.0 / scale)
    assert [(s.label, s.x) for s in bar.segments] == [("big", 0.0)]
    assert bar.segments[0].width == pytest.approx(20.0 / scale) and bar.segments[0].colour == "c1"
    assert bar.budget_x == pytest.approx(72.0 / scale)


def test_a_histogram_has_a_bin_per_edge_gap_and_bars_in_proportion() -> None:
    drift = {"results": [
        {"name": "ks", "value": 0.3, "p_value": 0.01},  # no bins: skipped
        {"name": "psi", "value": 0.4, "edges": [1.0, 2.0], "reference": [0.5, 0.3, 0.2],
         "current": [0.2, 0.3, 0.5]},
    ]}
    chart = histogram(drift)
    assert chart is not None
    assert chart.labels == ["< 1", "1–2", "≥ 2"]
    assert chart.top == 0.5
    assert len(chart.bars) == 3
    reference = [b["reference_h"] for b in chart.bars]
    current = [b["current_h"] for b in chart.bars]
    assert reference[0] == pytest.approx(CHART_HEIGHT - 4)  # the largest proportion fills the chart
    assert reference[1] / reference[0] == pytest.approx(0.3 / 0.5)
    assert reference[2] / reference[0] == pytest.approx(0.2 / 0.5)
    assert current == pytest.approx([reference[2], reference[1], reference[0]])
    for bar in chart.bars:
        assert bar["reference_y"] + bar["reference_h"] == pytest.approx(CHART_HEIGHT)
        assert bar["current_y"] + bar["current_h"] == pytest.approx(CHART_HEIGHT)
    xs = [b["x"] for b in chart.bars]
    assert xs == sorted(xs) and len(set(xs)) == 3


def test_a_histogram_of_categories_is_labelled_by_them() -> None:
    chart = histogram({"results": [{"name": "js", "categories": ["cat", "dog"], "reference": [0.25, 0.75],
                                     "current": [0.5, 0.5]}]})
    assert chart is not None and chart.labels == ["cat", "dog"] and chart.top == 0.75


@pytest.mark.parametrize("drift", [None, {}, {"results": []},
                                   {"results": [{"name": "ks", "value": 0.1, "p_value": 0.5}]},
                                   {"results": [{"name": "psi", "edges": [1.0], "current": [0.5, 0.5]}]}])
def test_no_histogram_without_reference_bins(drift: dict[str, Any] | None) -> None:
    assert histogram(drift) is None


def test_ago() -> None:
    assert ago(None) == "–"
    assert ago(100.0, now=112.0) == "12 s ago"
    assert ago(100.0, now=400.0) == "5 min ago"
    assert ago(0.0, now=3 * 3600.0) == "3 h ago"
    assert ago(200.0, now=100.0) == "0 s ago"  # a clock that stepped back
