"""The console's tenant pages beyond test_console.py (docs/console.md), by real clicks in
headless Chromium against a gateway over the fake engine: the usage charts (requests and
tokens per alias, per hour and per day) and the quota's headroom; a template run on two
versions side by side; one message streamed from two aliases side by side; both in a narrow window."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import httpx

from tests.helpers import API_KEY, SENTIMENT, Browser, RunningGateway, console_sign_in, wait_for, wait_for_usage

Q = [{"role": "user", "content": "one two three"}]
_BARS = (
    "return [...document.querySelectorAll(`figure[data-model='${arguments[0]}'] rect.usage-bar`)]"
    ".map(r => [r.dataset.bucket, Number(r.dataset.value), Number(r.getAttribute('height'))]);"
)
_SCORES = (
    "return [...document.querySelectorAll(arguments[0])].map(e => [e.dataset.label, Number(e.dataset.probability)]);"
)


def _bars(browser: Browser, model: str) -> list[list]:
    browser.find(f"figure[data-model='{model}'] rect.usage-bar")
    return list(browser.js(_BARS, model))


def test_usage_charts_per_alias_hour_and_day_and_the_quota_headroom(
    start_gateway: Callable[..., RunningGateway], browser: Browser
) -> None:
    gw = start_gateway(usage_flush_interval_s=0.2)
    assert gw.admin("PUT", "/tenants/default/quotas", json={"requests_per_minute": 50}).status_code == 200
    assert gw.admin("PUT", "/tenants/default/models/second", json={"base": True}).status_code == 200
    client = gw.client()
    for model, max_tokens in (("default", 3), ("default", 4), ("second", 5)):
        client.chat.completions.create(model=model, messages=Q, max_tokens=max_tokens)
    rows = wait_for_usage(gw, API_KEY, requests=3)
    console_sign_in(browser, gw.url, API_KEY)
    browser.click("#nav-usage")

    hour = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H")
    default, second = _bars(browser, "default"), _bars(browser, "second")
    assert len(default) == len(second) == 48 and default[-1][0] == hour  # the last 48 hours, now last
    assert {b: v for b, v, _ in default if v} == {hour: 2} and {b: v for b, v, _ in second if v} == {hour: 1}
    assert default[-1][2] == 2 * second[-1][2] > 0  # one scale for every alias

    browser.click("#usage-metric option[value=tokens]")
    tokens = {
        m: sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows if r["model"] == m)
        for m in ("default", "second")
    }
    assert sum(v for _, v, _ in _bars(browser, "default")) == tokens["default"] == 3 * 2 + 3 + 4
    assert sum(v for _, v, _ in _bars(browser, "second")) == tokens["second"]

    browser.click("#usage-span option[value=day]")
    days = _bars(browser, "default")
    assert len(days) == 14 and days[-1][:2] == [hour[:10], tokens["default"]]

    quota = httpx.get(gw.url + "/v1/quota", headers={"Authorization": f"Bearer {API_KEY}"}).json()["limits"]
    assert quota["requests_per_minute"] == {"limit": 50, "used": 3, "left": 47}
    shown = browser.text("#quota-requests_per_minute")
    assert shown == "3 of 50 requests this minute: 47 left"
    assert "no limit" in browser.text("#quota-tokens_per_minute")
    assert browser.console_errors() == []


def test_a_template_runs_on_two_versions_side_by_side(gateway: RunningGateway, browser: Browser) -> None:
    first = SENTIMENT | {"model": "default"}
    second = first | {"labels": [{"name": "bad"}, {"name": "good"}, {"name": "mixed"}]}
    for doc in (first, second):
        assert gateway.admin("PUT", "/templates/sent", content=json.dumps(doc)).status_code == 201
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-templates")
    browser.click("[data-template=sent]")
    browser.type("#input-text", "a fine film")
    browser.click("#template-compare")
    browser.click("#template-run")
    browser.find("#template-compare-result")
    for suffix, version in (("a", 2), ("b", 1)):
        answer = gateway.post("/v1/templates/sent", {"inputs": {"text": "a fine film"}, "version": version}).json()
        assert browser.text(f".side[data-version='{version}'] h3") == f"version {version}"
        assert dict(browser.js(_SCORES, f"#template-bars-{suffix} li")) == answer["scores"]
        assert browser.text(f"#template-label-{suffix}") == answer["label"]
    assert set(
        browser.js("return [...document.querySelectorAll('#template-bars-a li')].map(e => e.dataset.label);")
    ) == {
        "bad",
        "good",
        "mixed",
    }

    browser.type("#compare-b", "7")  # no such version: that column says what the API says
    browser.click("#template-run")
    browser.wait_text(".side[data-version='7']", "does not exist")
    missing = gateway.post("/v1/templates/sent", {"inputs": {"text": "a fine film"}, "version": 7}).json()
    assert browser.text(".side[data-version='7'] .notice") == missing["error"]["message"]
    assert browser.find_all("#template-bars-a li")  # the other column still answers


def test_side_by_side_and_usage_fit_a_narrow_window(gateway: RunningGateway, browser: Browser) -> None:
    assert (
        gateway.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT | {"model": "default"})).status_code == 201
    )
    gateway.client().chat.completions.create(model="default", messages=Q, max_tokens=3)
    wait_for_usage(gateway, API_KEY, requests=1)
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-templates")
    browser.click("[data-template=sent]")
    browser.type("#input-text", "fine")
    browser.click("#template-compare")
    browser.type("#compare-b", "1")
    browser.click("#template-run")
    browser.find("#template-bars-b")
    columns = "return getComputedStyle(document.querySelector('.side-by-side')).gridTemplateColumns.split(' ').length;"
    assert browser.js(columns) == 2  # two columns at 1280x800
    browser.window(420, 800)
    wait_for(lambda: browser.js(columns) == 1, what="a narrow window stacks the two columns")
    fits = "return document.documentElement.scrollWidth <= window.innerWidth;"
    assert browser.js(fits)  # no sideways scroll
    browser.click("#nav-usage")
    browser.find("figure[data-model=default] svg")
    assert browser.js(fits)
    width = "return document.querySelector('figure[data-model=default] svg').getBoundingClientRect().width;"
    assert 0 < browser.js(width) <= 420


def test_one_message_streams_from_two_aliases_side_by_side(gateway: RunningGateway, browser: Browser) -> None:
    assert gateway.admin("PUT", "/tenants/default/models/second", json={"base": True}).status_code == 200
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-compare")
    browser.click("#compare-model-a option[value=default]")
    browser.click("#compare-model-b option[value=second]")
    browser.type("#compare-max-tokens", "7")
    browser.type("#compare-input", "tell me two things")
    browser.click("#compare-run")
    for side, model in (("a", "default"), ("b", "second")):
        stats = browser.wait_text(f"#compare-stats-{side}", "completion tokens")
        answer = gateway.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "tell me two things"}], max_tokens=7, temperature=0
        )
        shown = browser.text(f".side[data-model='{model}'] .reply-text")
        assert shown == answer.choices[0].message.content
        assert f"{answer.usage.completion_tokens} completion tokens" in stats
        assert browser.text(f".side[data-model='{model}'] .role") == model
    assert browser.console_errors() == []
