"""The console in headless Debian Chromium (Selenium with Debian's chromedriver; nothing is downloaded).

Log in, connect an API key against a fake upstream and see the profile, make a /v1 request and see it
in usage and the chart, run a cron job now and see its run, create a token. Each test saves a
screenshot in its own tmp dir and fails on any browser console error it did not expect.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from conftest import Daemon, start_daemon
from fakes import FakeOpenAI
from fakes.oauth_server import FakeAuthServer

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])"
)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

GOOD_KEY = "sk-proj-CONSOLEKEY-canary-5e6f7a8b9c"
CHROMIUM = os.environ.get("PALYRA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PALYRA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
HEADLESS_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=GOOD_KEY).start()  # answers 401 to any other key, like OpenAI
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def auth_server() -> Iterator[FakeAuthServer]:
    fake = FakeAuthServer().start()  # approves at once: /authorize redirects straight to the callback
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(
    upstream: FakeOpenAI, auth_server: FakeAuthServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    oauth = auth_server.endpoints
    config = (
        '[model_provider]\nfailover_enabled = false\ndefault_embeddings_model_id = "embed"\n'
        "[[model_provider.providers]]\n"
        f'provider_id = "openai"\nkind = "openai_compatible"\nbase_url = "{upstream.base_url}"\n'
        'allow_private_base_url = true\nmax_retries = 0\nauth_profile_id = "openai-main"\n'
        '[[model_provider.models]]\nmodel_id = "gpt-4o-mini"\nprovider_id = "openai"\n'
        '[[model_provider.models]]\nmodel_id = "embed"\nprovider_id = "openai"\nrole = "embeddings"\n'
        'upstream_model = "text-embedding-3-small"\n'
        "[auth.oauth.openai]\n"
        f'authorize_url = "{oauth.authorize_url}"\ntoken_url = "{oauth.token_url}"\n'
        f'revoke_url = "{oauth.revoke_url}"\nallow_private = true\n'
    )
    d = start_daemon(tmp_path_factory.mktemp("console-browser"), config=config)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            pytest.skip(f"{path} is not installed (apt-get install chromium chromium-driver)")
    # Selenium Manager would download a browser or a driver if asked to find one; it is never asked.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(20)
    yield browser
    browser.quit()


class Console:
    """One test's view of the browser: waits, expected errors, the screenshot and the log check."""

    def __init__(self, driver: WebDriver, gw: Daemon) -> None:
        self.d = driver
        self.gw = gw
        self.allowed: list[re.Pattern[str]] = []
        self.loads = 0

    def expect_error(self, pattern: str) -> None:
        """A console error this test provokes on purpose (an API error the page must show)."""
        self.allowed.append(re.compile(pattern))

    def wait(self, until: Callable[[WebDriver], Any], what: str, timeout: float = 10) -> Any:
        try:
            # A page re-renders a section by replacing it: an element may vanish between two polls.
            return WebDriverWait(
                self.d,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(until)
        except TimeoutException:
            raise AssertionError(f"timed out waiting for {what}; page: {self.d.current_url}") from None

    def find(self, css: str) -> WebElement:
        return self.d.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def login(self) -> None:
        self.d.get(self.gw.base_url + "/console/")
        if "/console/login" in self.d.current_url:
            self.find("#admin_token").send_keys(self.gw.admin_token)
            self.find("#login-submit").click()
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#main[data-ready]"), "the console to load")

    def open(self, page: str) -> None:
        """Load the console afresh on ``page`` (a real page load, so nothing is left from before)."""
        if "/console/" not in self.d.current_url or "/console/login" in self.d.current_url:
            self.login()
        self.loads += 1
        self.d.get(f"{self.gw.base_url}/console/?load={self.loads}#/{page}")
        self.wait(
            lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == page, f"the {page} page"
        )
        assert not self.d.find_elements(By.CSS_SELECTOR, "#main .flash.error"), self.text(
            "#main .flash.error"
        )

    def flash(self) -> str:
        return str(self.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#flash .flash").text, "a message"))

    def severe_logs(self) -> list[dict[str, Any]]:
        entries = [e for e in self.d.get_log("browser") if e["level"] == "SEVERE"]
        return [e for e in entries if not any(p.search(e["message"]) for p in self.allowed)]


@pytest.fixture
def ui(driver: WebDriver, gw: Daemon, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Console]:
    driver.get_log("browser")  # start from a clean log
    console = Console(driver, gw)
    yield console
    shot = tmp_path / f"{request.node.name}.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    errors = console.severe_logs()
    assert not errors, f"browser console errors (screenshot {shot}): {errors}"


def ensure_profile(gw: Daemon) -> None:
    with gw.admin() as c:
        if c.get("/auth/profiles/openai-main").status_code == 404:
            r = c.post(
                "/auth/providers/openai/api-key",
                json={"profile_id": "openai-main", "profile_name": "OpenAI main", "api_key": GOOD_KEY},
            )
            assert r.status_code == 200, r.text


def test_login_refuses_a_wrong_token_then_opens_the_overview(ui: Console, gw: Daemon) -> None:
    ui.d.delete_all_cookies()
    ui.d.get(gw.base_url + "/console/")
    ui.wait(lambda d: "/console/login" in d.current_url, "the login page")
    ui.expect_error(r"/console/login - Failed to load resource: .* 401")
    ui.find("#admin_token").send_keys("not-the-admin-token")
    ui.find("#login-submit").click()
    ui.wait(lambda d: "not the admin token" in d.find_element(By.ID, "login-message").text, "the refusal")
    ui.find("#admin_token").send_keys(gw.admin_token)
    ui.find("#login-submit").click()
    ui.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#main[data-ready='overview']"), "the overview")
    assert ui.text("#requests-today .card-value") == "0" or ui.text("#requests-today .card-value").isdigit()
    assert "openai" in ui.text("#main")
    assert gw.admin_token not in ui.d.page_source


def test_connect_an_api_key_and_see_the_profile(ui: Console, gw: Daemon, upstream: FakeOpenAI) -> None:
    with gw.admin() as c:
        c.delete("/auth/profiles/openai-main")
    ui.open("auth")
    assert "No auth profiles yet" in ui.text("#main")

    # A key the upstream refuses: the API's own message is shown, the field is cleared, nothing saved.
    ui.expect_error(r"/api/v1/auth/providers/openai/api-key - Failed to load resource: .* 400")
    ui.find("#api-key-profile-name").send_keys("OpenAI main")
    ui.find("#api-key-profile-id").send_keys("openai-main")
    ui.find("#api-key-input").send_keys("sk-wrong-key-000000")
    ui.find("#api-key-submit").click()
    assert ui.flash() == "the credential is invalid or does not have the required access"
    assert ui.find("#api-key-input").get_attribute("value") == ""
    assert "No auth profiles yet" in ui.text("#main")

    ui.find("#api-key-input").send_keys(GOOD_KEY)
    ui.find("#api-key-submit").click()
    ui.wait(lambda d: "API key profile saved" in d.find_element(By.ID, "flash").text, "the saved message")
    ui.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#profiles-table .profile-id"), "the profile row")
    row = ui.text("#profiles-table")
    assert "openai-main" in row and "static" in row and "never (static key)" in row
    assert ui.find("#api-key-input").get_attribute("value") == ""
    assert GOOD_KEY not in ui.d.page_source
    # The key reached the fake upstream exactly as typed, for validation.
    assert any(
        r.headers.get("authorization") == f"Bearer {GOOD_KEY}" for r in upstream.requests_for("/v1/models")
    )


def test_a_v1_request_shows_in_usage_and_the_chart(ui: Console, gw: Daemon) -> None:
    ensure_profile(gw)
    token, _ = gw.create_token(name="console-usage", scopes=["*"])
    r = httpx.post(
        gw.v1 + "/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello from the console test"}],
        },
        headers={"Authorization": f"Bearer {token}", "X-Palyra-Session": "console-session-1"},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    tokens = gw.run(request_id)["total_tokens"]
    assert tokens > 0

    ui.open("usage")
    assert request_id in ui.text("#usage-runs")
    chart = ui.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#usage-chart[data-points]"), "the chart")
    assert int(chart.get_attribute("data-points")) >= 1
    assert int(chart.get_attribute("data-tokens")) >= tokens
    assert ui.d.find_elements(By.CSS_SELECTOR, "#usage-chart canvas")
    assert "gpt-4o-mini" in ui.text("#usage-breakdown")
    Select(ui.find("#usage-by")).select_by_value("session")
    ui.wait(
        lambda d: "console-session-1" in d.find_element(By.ID, "usage-breakdown").text, "totals by session"
    )
    export = ui.find("#usage-export").get_attribute("href")
    assert export.endswith("/api/v1/usage/export?format=csv&since=24h")

    ui.open("overview")
    assert int(ui.text("#requests-today .card-value").replace(",", "")) >= 1


def test_provider_test_connection_shows_the_result(ui: Console, gw: Daemon) -> None:
    ensure_profile(gw)
    ui.open("providers")
    ui.find("button[data-provider='openai'][data-action='test']").click()
    result = ui.wait(lambda d: d.find_element(By.ID, "probe-openai"), "the probe result")
    assert "provider connection succeeded" in result.text


def test_run_a_cron_job_now_and_see_its_run(ui: Console) -> None:
    ui.open("cron")
    ui.find("[data-job='skill_reaudit'] button[data-action='run']").click()
    message = ui.flash()
    run_id = re.search(r"run (cr_[0-9a-f]+)", message)
    assert run_id, message
    ui.wait(
        lambda d: re.search(
            rf"{run_id.group(1)} skill_reaudit manual succeeded", d.find_element(By.ID, "runs-table").text
        ),
        "the run to succeed",
    )


def test_create_a_token_shown_once(ui: Console, gw: Daemon) -> None:
    ui.open("tokens")
    ui.find("#token-name").send_keys("made-in-console")
    ui.find("#token-submit").click()
    value = ui.wait(
        lambda d: d.find_element(By.ID, "new-token-value").get_attribute("value"), "the new token"
    )
    assert value.startswith("palyra_")
    ui.wait(lambda d: "made-in-console" in d.find_element(By.ID, "tokens-table").text, "the token row")
    assert httpx.get(gw.v1 + "/models", headers={"Authorization": f"Bearer {value}"}).status_code == 200
    # Shown once: the page does not get it back.
    ui.open("tokens")
    assert value not in ui.d.page_source
    assert not ui.d.find_elements(By.ID, "new-token-value")


def test_oauth_connect_in_a_popup_lists_the_profile(ui: Console) -> None:
    ui.open("auth")
    main_window = ui.d.current_window_handle
    form = "#oauth-form "
    ui.find(form + "input[name='client_id']").send_keys("palyra-test-client")
    ui.find(form + "input[name='client_secret']").send_keys("not-checked-by-this-fake")
    ui.find(form + "input[name='profile_id']").send_keys("openai-oauth")
    ui.find("#oauth-submit").click()
    assert ui.find(form + "input[name='client_secret']").get_attribute("value") == ""
    # The popup goes to the fake authorization server, which sends it back to the daemon's callback;
    # the callback page tells the console (postMessage), and the console polls the attempt as well.
    status = ui.wait(
        lambda d: d.find_element(By.CSS_SELECTOR, "#oauth-status .flash.ok"), "the connected message", 15
    )
    assert "openai connected as profile openai-oauth" in status.text
    for handle in ui.d.window_handles:
        if handle != main_window:
            ui.d.switch_to.window(handle)
            ui.d.close()
    ui.d.switch_to.window(main_window)

    def oauth_row(d: WebDriver) -> str | None:
        rows = d.find_elements(By.CSS_SELECTOR, "#profiles-table tr")
        return next((r.text for r in rows if "openai-oauth" in r.text), None)

    row = ui.wait(oauth_row, "the OAuth profile")
    assert "OAuth" in row and "ok" in row and "(in " in row  # health and expiry


def test_memory_search_finds_an_item(ui: Console, gw: Daemon) -> None:
    ensure_profile(gw)
    with gw.admin() as c:
        r = c.post("/memory/items", json={"agent_id": "agent-7", "text": "the deploy window is Tuesday"})
        assert r.status_code == 201, r.text
    ui.open("memory")
    ui.find("#memory-form input[name='agent_id']").send_keys("agent-7")
    ui.find("#memory-form input[name='query']").send_keys("when do we deploy?")
    ui.find("#memory-form button[type='submit']").click()
    results = ui.wait(lambda d: d.find_element(By.ID, "memory-results"), "the search results")
    ui.wait(lambda d: "the deploy window is Tuesday" in results.text, "the item in the results")
    assert "Search results for agent agent-7" in results.text


def test_logout_ends_the_session(ui: Console, gw: Daemon) -> None:
    ui.open("overview")
    ui.find("#logout").click()
    ui.wait(lambda d: "logged out" in d.find_element(By.ID, "login-message").text, "the logged-out page")
    ui.d.get(gw.base_url + "/console/")
    ui.wait(lambda d: "/console/login" in d.current_url, "the login page again")
    assert all(c["name"] != "palyra_console_session" for c in ui.d.get_cookies())
