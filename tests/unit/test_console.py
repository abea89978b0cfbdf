"""The console at `/console` (docs/console.md): its files and headers, read over HTTP;
then real clicks in headless Chromium against a gateway over the fake engine: sign in,
a streamed chat, a classify template's bars, a key created and shown once, an adapter
version uploaded and activated after a confirmation, an adapter uploaded for a chosen
`models:` entry, a tenant's alias pointed and
deleted, one tenant's key seeing nothing of another's, and the key in no URL the page
loaded and in no log."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import httpx
import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.console import CONTENT_SECURITY_POLICY
from tests.helpers import (
    ADMIN_KEY,
    API_KEY,
    CONTACT,
    SENTIMENT,
    Browser,
    RunningGateway,
    console_sign_in,
    free_port,
    new_tenant,
    tar_gz,
    tenant_admin_key,
    wait_for,
    wait_for_usage,
)

STATIC = resources.files("adaptserve.console").joinpath("static")
ENTER = "\ue007"  # WebDriver's Enter key
FILES = sorted(f.name for f in STATIC.iterdir() if f.is_file())


class _Page(HTMLParser):
    """What the CSP forbids, found in the page: inline scripts, handlers, styles."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inline += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on") or name == "style"]
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data.strip()[:40]}")


def test_console_files_carry_a_strict_csp_and_no_inline_script(gateway: RunningGateway) -> None:
    assert {"index.html", "app.js", "api.js", "console.css"} <= set(FILES)
    for name in FILES:
        response = httpx.get(f"{gateway.url}/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    policy = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == policy["script-src"] == policy["connect-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    page = httpx.get(gateway.url + "/console", follow_redirects=True)
    assert page.url.path == "/console/" and page.headers["content-type"].startswith("text/html")
    parsed = _Page()
    parsed.feed(page.text)
    assert parsed.scripts == [{"type": "module", "src": "app.js"}] and parsed.inline == []
    for name in [n for n in FILES if n.endswith(".js")]:  # the DOM is built, never parsed from strings
        code = (STATIC / name).read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", code), name
        assert "localStorage" not in code, name


OUTSIDE = ["/console/nope.js", "/console/__init__.py", "/console/..%2F__init__.py", "/console/a/b"]


@pytest.mark.parametrize("path", OUTSIDE)
def test_console_serves_only_its_files(gateway: RunningGateway, path: str) -> None:
    response = httpx.get(gateway.url + path)
    assert response.status_code == 404 and response.json()["error"]["message"] == "Not Found"


def test_console_is_served_on_both_listeners_with_a_separate_admin_port(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gw = start_gateway(admin_port=free_port())
    assert gw.admin_url != gw.url
    for url in (gw.url, gw.admin_url):
        assert httpx.get(url + "/console/app.js").status_code == 200
    assert httpx.get(gw.url + "/admin/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 404


def test_an_admin_key_on_the_tenant_port_is_told_where_the_admin_console_is(
    start_gateway: Callable[..., RunningGateway], browser: Browser
) -> None:
    gw = start_gateway(admin_port=free_port())
    browser.get(gw.url + "/console/")
    browser.type("#key", ADMIN_KEY)
    browser.click("input[name=kind][value=admin]")
    browser.click("#signin-button")
    assert "admin_port" in browser.wait_text("#signin-error", "not served on this port")
    console_sign_in(browser, gw.admin_url, ADMIN_KEY, admin=True)  # and on the admin port it works
    assert "default" in browser.wait_text("#page-tenants", "default")


def _page_ids(browser: Browser, css: str) -> list[str]:
    return browser.js("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);", css)


def test_tenant_signs_in_sees_its_models_and_chats_with_streaming(gateway: RunningGateway, browser: Browser) -> None:
    console_sign_in(browser, gateway.url, API_KEY)
    listed = [m.id for m in gateway.client().models.list()]
    wait_for(lambda: _page_ids(browser, ".model-id") == listed, what="the models page lists /v1/models")
    browser.click("#nav-chat")
    browser.click("#chat-model option[value=default]")
    browser.type("#chat-input", "hello from the console")
    browser.click("#chat-send")
    stats = browser.wait_text("#chat-stats", "completion tokens")
    messages = [{"role": "user", "content": "hello from the console"}]
    chunks = list(
        gateway.client().chat.completions.create(
            model="default", messages=messages, stream=True, stream_options={"include_usage": True}, max_tokens=256
        )
    )
    expected = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert expected and browser.text(".message.assistant .reply-text") == expected
    assert re.search(r"first token \d+ ms", stats), stats
    assert f"{usage.prompt_tokens} prompt tokens" in stats and f"{usage.completion_tokens} completion tokens" in stats
    assert browser.console_errors() == []


def test_classify_template_shows_the_api_probabilities_as_bars(gateway: RunningGateway, browser: Browser) -> None:
    doc = json.dumps(SENTIMENT | {"model": "default"})
    assert gateway.admin("PUT", "/templates/sent", content=doc).status_code == 201
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-templates")
    browser.click("[data-template=sent]")
    browser.type("#input-text", "what a lovely film")
    browser.click("#template-run")
    browser.wait_text("#template-result", "label")
    shown = browser.js(
        "return [...document.querySelectorAll('#template-bars li')].map(li =>"
        " [li.dataset.label, Number(li.dataset.probability), li.querySelector('.fill').style.width]);"
    )
    answer = gateway.post("/v1/templates/sent", {"inputs": {"text": "what a lovely film"}}).json()
    assert {label: p for label, p, _ in shown} == answer["scores"]
    assert [p for _, p, _ in shown] == sorted(answer["scores"].values(), reverse=True)
    for _, p, width in shown:  # each bar as long as its probability
        assert float(width.rstrip("%")) == pytest.approx(p * 100, abs=1e-3)
    assert browser.text("#template-label") == answer["label"]
    assert browser.console_errors() == []


def test_a_calibrated_template_shows_raw_bars_and_attribution_highlights(
    gateway: RunningGateway, browser: Browser
) -> None:
    doc = json.dumps(SENTIMENT | {"model": "default", "calibration": True})
    assert gateway.admin("PUT", "/templates/sent", content=doc).status_code == 201
    text = "great 🎬 film, awful ending"  # offsets count code points; JavaScript strings count UTF-16 units
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-templates")
    browser.click("[data-template=sent]")
    browser.type("#input-text", text)
    browser.click("#template-explain")
    browser.click("#template-run")
    browser.find("#template-attributions")
    answer = gateway.post("/v1/templates/sent", {"inputs": {"text": text}, "explain": "attributions"}).json()
    assert answer["calibrated"] is True
    read = (
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(e => [e.dataset.label, Number(e.dataset.probability)]);"
    )
    assert dict(browser.js(read, "#template-bars li")) == answer["scores"]
    logprobs = answer["explain"]["logprobs"]
    total = sum(math.exp(v) for v in logprobs.values())
    raw = dict(browser.js(read, "#template-raw-bars li"))
    assert raw == pytest.approx({label: math.exp(v) / total for label, v in logprobs.items()})
    spans = answer["explain"]["attributions"]["spans"]
    marks = browser.js(
        "return [...document.querySelectorAll('#template-attributions mark')]"
        ".map(m => [m.textContent, Number(m.dataset.contribution)]);"
    )
    assert spans and marks == [[text[s["start"] : s["end"]], s["contribution"]] for s in spans]
    assert browser.text("#template-attributions [data-field=text]") == f"text: {text}"
    assert browser.console_errors() == []


def test_a_generate_templates_error_is_shown_as_is(gateway: RunningGateway, browser: Browser) -> None:
    doc = json.dumps(CONTACT | {"model": "default"})
    assert gateway.admin("PUT", "/templates/contact", content=doc).status_code == 201
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-templates")
    browser.click("[data-template=contact]")
    browser.type("#input-message", "write to me at someone@example.com")
    browser.click("#template-run")
    answer = gateway.post("/v1/templates/contact", {"inputs": {"message": "write to me at someone@example.com"}})
    assert answer.status_code >= 400  # the fake engine's answer does not fit the schema
    assert browser.wait_text("#template-result", answer.json()["error"]["message"])


def test_admin_creates_a_key_that_is_shown_once(gateway: RunningGateway, browser: Browser) -> None:
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("[data-tenant=default]")
    browser.click("#key-role option[value=api]")
    browser.click("#key-create-button")
    browser.find("#new-key")
    key = browser.js("return document.querySelector('#new-key').value;")
    assert key.startswith("sk-")
    models = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200  # a real key of the tenant
    key_ids = [k["id"] for k in gateway.admin("GET", "/tenants/default/keys").json()["data"]]
    assert len(key_ids) == 2 and all(i in browser.text("#tenant-detail") for i in key_ids)
    browser.click("#nav-audit")
    browser.wait_text("#audit-rows", "/admin/tenants/default/keys")
    browser.click("#nav-tenants")
    browser.click("[data-tenant=default]")
    browser.find("[data-revoke]")
    assert browser.js("return document.querySelector('#new-key');") is None  # no implicit wait for absence
    assert key not in browser.js("return document.documentElement.outerHTML + JSON.stringify(sessionStorage);")


def test_admin_uploads_and_activates_an_adapter_version_after_confirming(
    gateway: RunningGateway, browser: Browser, adapters: dict[str, Path], tmp_path: Path
) -> None:
    first = gateway.admin("GET", "/adapters/alpha").json()["active_version"]
    archive = tmp_path / "alpha.tar.gz"
    archive.write_bytes(tar_gz(adapters["beta"], top="alpha"))  # other weights: a second version of alpha
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-adapters")
    browser.type("#upload-name", "alpha")
    browser.type("#upload-file", str(archive), clear=False)
    browser.click("#upload button[type=submit]")
    browser.wait_text("#adapter-status", "Uploaded alpha")
    described = gateway.admin("GET", "/adapters/alpha").json()
    (second,) = [v["version"] for v in described["versions"] if v["version"] != first]
    assert described["active_version"] == first  # an upload of a known name is not activated
    browser.click(f"[data-adapter=alpha] [data-activate='{second}']")
    assert "default/alpha" in browser.text("#confirm")  # the alias that follows the active version
    browser.click("#confirm-no")
    assert gateway.admin("GET", "/adapters/alpha").json()["active_version"] == first  # nothing without a yes
    browser.click(f"[data-adapter=alpha] [data-activate='{second}']")
    browser.click("#confirm-yes")
    browser.wait_text("#adapter-status", f"{first} → {second}")
    assert gateway.admin("GET", "/adapters/alpha").json()["active_version"] == second
    assert browser.find_all(f"[data-adapter=alpha] [data-activate='{first}']")  # the old one: activatable again
    assert browser.text("[data-adapter=alpha] .active-version") == "active"
    assert browser.text("[data-adapter=alpha] .adapter-base") == f"for {described['base']}"  # the base model's name
    assert described["base"] == gateway.settings.base_name
    assert browser.console_errors() == []


def test_admin_uploads_an_adapter_for_a_models_entry_it_chooses(
    start_gateway: Callable[..., RunningGateway],
    second_fake: FakeState,
    browser: Browser,
    adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    """The upload form's base choice: the base model and the generate entries with
    adapters the key may call (sent as `base`); a key that may call none gets no choice."""
    second_fake.served = ["second-llm"]
    entry = {"name": "llm2", "role": "generate", "adapters": True, "upstreams": [second_fake.url]}
    gw = start_gateway(models=[entry | {"served_model_name": "second-llm", "tenants": ["default"]}])
    archive = tmp_path / "tone.tar.gz"
    archive.write_bytes(tar_gz(adapters["alpha"], top="tone"))
    console_sign_in(browser, gw.url, ADMIN_KEY, admin=True)
    browser.click("#nav-adapters")
    browser.find("#upload-base")
    options = browser.js("return [...document.querySelectorAll('#upload-base option')].map(o => [o.value, o.text])")
    assert options == [["", f"the base model ({gw.settings.base_name})"], ["llm2", "model llm2"]]
    browser.type("#upload-name", "tone")
    browser.type("#upload-file", str(archive), clear=False)
    browser.click("#upload-base option[value=llm2]")
    browser.click("#upload button[type=submit]")
    browser.wait_text("#adapter-status", "Uploaded tone")
    assert gw.admin("GET", "/adapters/tone").json()["base"] == "llm2"
    assert browser.text("[data-adapter=tone] .adapter-base") == "for llm2"
    browser.type("#upload-name", "plain")  # the base model, the form's first choice
    browser.type("#upload-file", str(archive), clear=False)
    browser.click("#upload button[type=submit]")
    browser.wait_text("#adapter-status", "Uploaded plain")
    assert gw.admin("GET", "/adapters/plain").json()["base"] == gw.settings.base_name
    assert browser.console_errors() == []

    new_tenant(gw, "other")  # llm2 serves only the default tenant: no choice for other's admin
    browser.click("#signout")
    console_sign_in(browser, gw.url, tenant_admin_key(gw, "other"), admin=True)
    browser.click("#nav-adapters")
    browser.find("#upload-name")
    assert browser.js("return document.querySelector('#upload-base') === null")  # only the base model: no choice


def _alias(gateway: RunningGateway, alias: str) -> dict | None:
    found = gateway.admin("GET", "/tenants/default/models").json()["data"]
    return next((a for a in found if a["alias"] == alias), None)


def test_admin_points_and_deletes_a_tenants_alias_after_confirming(gateway: RunningGateway, browser: Browser) -> None:
    beta = gateway.admin("GET", "/adapters/beta").json()["active_version"]
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("[data-tenant=default]")
    browser.type("#alias-name", "support")
    browser.click("#alias-target option[value=beta]")
    browser.click(f"#alias-version option[value='{beta}']")
    browser.click("#alias-set button[type=submit]")
    assert f"beta @ {beta}" in browser.text("#confirm")
    browser.click("#confirm-no")
    assert _alias(gateway, "support") is None  # nothing without a yes
    browser.click("#alias-set button[type=submit]")
    browser.click("#confirm-yes")
    browser.wait_text("#alias-status", f"support → beta @ {beta}")
    pointed = {"tenant": "default", "alias": "support", "base": False, "adapter": "beta", "version": beta}
    assert _alias(gateway, "support") == pointed
    browser.click("[data-alias-delete=support]")
    browser.click("#confirm-yes")
    browser.wait_text("#alias-status", "Deleted support")
    assert _alias(gateway, "support") is None and browser.console_errors() == []
    browser.click("#signout")  # a tenant admin may not give its tenant the base model: the API's message
    console_sign_in(browser, gateway.url, tenant_admin_key(gateway, "default"), admin=True)
    browser.click("[data-tenant=default]")
    browser.type("#alias-name", "raw")
    browser.click("#alias-target option[value='']")
    browser.click("#alias-set button[type=submit]")
    browser.click("#confirm-yes")
    browser.wait_text("#alias-status", "Only the operator gives a tenant the base model.")
    assert _alias(gateway, "raw") is None


def _tenant(gateway: RunningGateway, name: str) -> str:
    """A tenant with alias `NAME-chat` (adapter alpha) and template `NAME-sent`, used
    once each; returns its API key."""
    assert gateway.admin("POST", "/tenants", json={"name": name}).status_code == 201
    assert gateway.admin("PUT", f"/tenants/{name}/models/{name}-chat", json={"adapter": "alpha"}).status_code == 200
    doc = json.dumps(SENTIMENT | {"name": f"{name}-sent", "model": f"{name}-chat"})
    assert gateway.admin("PUT", f"/templates/{name}-sent?tenant={name}", content=doc).status_code == 201
    key = gateway.admin("POST", f"/tenants/{name}/keys").json()["key"]
    gateway.client(key).chat.completions.create(model=f"{name}-chat", messages=[{"role": "user", "content": "hi"}])
    assert gateway.post(f"/v1/templates/{name}-sent", {"inputs": {"text": "fine"}}, key=key).status_code == 200
    wait_for_usage(gateway, key, requests=2)
    return key


def test_a_tenant_key_sees_nothing_of_another_tenants(gateway: RunningGateway, browser: Browser) -> None:
    acme, _ = _tenant(gateway, "acme"), _tenant(gateway, "globex")
    console_sign_in(browser, gateway.url, acme)
    pages = {}
    for page, mine in (("models", "acme-chat"), ("templates", "acme-sent"), ("usage", "acme-chat")):
        browser.click(f"#nav-{page}")
        pages[page] = browser.wait_text(f"#page-{page}", mine)
    assert all("globex" not in text for text in pages.values()), pages
    assert "default" not in pages["models"] and "sent\n" not in pages["templates"]
    browser.click("#signout")
    admin = gateway.admin("POST", "/tenants/acme/keys", json={"role": "admin"}).json()["key"]
    console_sign_in(browser, gateway.url, admin, admin=True)  # a tenant admin: its own tenant only
    assert "acme" in browser.wait_text("#page-tenants", "acme")
    assert "globex" not in browser.text("#page") and "default" not in browser.text("#page-tenants table")


def test_a_refused_key_shows_the_api_message_as_is(gateway: RunningGateway, browser: Browser) -> None:
    browser.get(gateway.url + "/console/")
    browser.type("#key", "sk-not-a-key")
    browser.click("#signin-button")
    message = httpx.get(gateway.url + "/v1/models", headers={"Authorization": "Bearer sk-not-a-key"}).json()
    assert browser.wait_text("#signin-error", message["error"]["message"])
    assert browser.js("return sessionStorage.length;") == 0


def test_the_key_is_in_no_url_and_no_log(
    gateway: RunningGateway, browser: Browser, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    browser.get(gateway.url + "/console/")
    browser.type("#key", API_KEY + ENTER)  # by keyboard: Enter in the field signs in
    browser.find("#signout")
    for page in ("chat", "templates", "usage", "models"):
        browser.click(f"#nav-{page}")
        browser.find(f"#page-{page}")
    browser.click("#nav-chat")
    browser.type("#chat-input", "hi")
    browser.click("#chat-send")
    browser.wait_text("#chat-stats", "completion tokens")
    urls = browser.loaded_urls()
    assert any(u.endswith("/v1/chat/completions") for u in urls) and not [u for u in urls if API_KEY in u]
    assert browser.js("return sessionStorage.getItem('adaptserve.console.key');") == API_KEY
    assert browser.js("return localStorage.length + document.cookie.length;") == 0
    browser.click("#signout")
    browser.find("#signin")
    assert browser.js("return sessionStorage.length;") == 0
    captured = capfd.readouterr()
    assert API_KEY not in caplog.text + captured.out + captured.err


def test_console_follows_the_color_scheme_and_fits_a_narrow_window(gateway: RunningGateway, browser: Browser) -> None:
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-chat")
    browser.find("#chat-input")
    background = "return getComputedStyle(document.body).backgroundColor;"
    columns = "return getComputedStyle(document.querySelector('form.chat')).gridTemplateColumns.split(' ').length;"
    light = browser.js(background)
    assert browser.js(columns) == 2  # settings beside the conversation at 1280x800
    browser.color_scheme("dark")
    assert browser.js(background) != light
    browser.window(420, 800)
    wait_for(lambda: browser.js(columns) == 1, what="a narrow window stacks the chat's columns")
    assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth;")  # no sideways scroll
    browser.type("#chat-input", "narrow")
    browser.click("#chat-send")
    browser.wait_text("#chat-stats", "completion tokens")


def _usage_requests(browser: Browser, model: str) -> int:
    rows = browser.js(
        "return [...document.querySelectorAll('#usage-table tbody tr')].map(tr =>"
        " [...tr.children].map(td => td.textContent));"
    )
    return sum(int(row[2]) for row in rows if row[1] == model)


def test_usage_moves_after_a_chat(start_gateway: Callable[..., RunningGateway], browser: Browser) -> None:
    gw = start_gateway(usage_flush_interval_s=0.2)
    console_sign_in(browser, gw.url, API_KEY)
    browser.click("#nav-usage")
    assert browser.text("#usage-empty") == "No usage recorded yet."
    for sent in (1, 2):
        browser.click("#nav-chat")
        browser.click("#chat-model option[value=default]")
        browser.type("#chat-input", f"message {sent}")
        browser.click("#chat-send")
        browser.wait_text("#chat-stats", "completion tokens")
        wait_for_usage(gw, API_KEY, requests=sent)
        browser.click("#nav-usage")
        browser.find("#usage-table")
        assert _usage_requests(browser, "default") == sent
