"""The console's admin pages for templates, quotas and PII policy, and fit reports
(docs/console.md), by real clicks in headless Chromium against a gateway over the fake
engine: a template's YAML edited and applied (a refusal names its line, and the editor
selects it), a version activated after a confirmation, two versions diffed; a tenant's
quotas and PII policy read and set; a fit report's table, decision and plot; a tenant admin
key's view of them. (Beside test_console.py, which holds the other pages.)"""

from __future__ import annotations

import json

import yaml

from tests.helpers import (
    ADMIN_KEY,
    SENTIMENT,
    Browser,
    RunningGateway,
    call_as,
    console_sign_in,
    fit_report,
    png,
    tenant_admin_key,
    wait_for,
)

_SELECTED = (
    "const a = document.querySelector('#template-yaml'); return a.value.slice(a.selectionStart, a.selectionEnd);"
)


def _versions(gateway: RunningGateway, name: str) -> dict:
    response = gateway.admin("GET", f"/templates/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _apply(browser: Browser, text: str) -> None:
    browser.type("#template-yaml", text)
    browser.click("#template-apply")


def test_admin_edits_a_template_sees_the_line_of_a_refusal_activates_and_diffs(
    gateway: RunningGateway, browser: Browser
) -> None:
    assert (
        gateway.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT | {"model": "default"})).status_code == 201
    )
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-templates")
    browser.click("[data-template=sent][data-owner='']")
    browser.find("#template-yaml")
    shown = browser.js("return document.querySelector('#template-yaml').value;")
    stored = _versions(gateway, "sent")["versions"][0]["document"]
    assert yaml.safe_load(shown) == stored  # the active version's document, as YAML
    lines = shown.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("instruction:"))

    broken = "\n".join([*lines[:at], "instruction: [Is this", *lines[at + 1 :]])
    _apply(browser, broken)
    said = browser.wait_text("#template-edit-status", "not a YAML or JSON document at line")
    line = int(said.split("at line ")[1].split(",")[0])
    assert browser.text("#template-error-line") == broken.split("\n")[line - 1]
    assert browser.js(_SELECTED) == broken.split("\n")[line - 1]  # the editor selects it

    labels = lines.index("labels:")
    second = [i for i, line in enumerate(lines) if i > labels and line.startswith("  - name:")][1]
    unnamed = [*lines[:second], lines[second].replace("- name:", "- nam:"), *lines[second + 1 :]]
    _apply(browser, "\n".join(unnamed))
    said = browser.wait_text("#template-edit-status", "labels[1].name")
    assert f"invalid template at line {second + 1}: labels[1].name: Field required" in said
    assert browser.text("#template-error-line") == unnamed[second].strip()
    assert _versions(gateway, "sent")["active_version"] == 1  # nothing stored

    changed = "\n".join([*lines[:at], "instruction: Is this review glad or sad?", *lines[at + 1 :]])
    _apply(browser, changed)
    browser.wait_text("#template-admin-status", "Applied sent: version 2, active")
    after = _versions(gateway, "sent")
    assert (
        after["active_version"] == 2
        and after["versions"][1]["document"]["instruction"] == "Is this review glad or sad?"
    )

    browser.click("#diff-from option[value='1']")
    browser.click("#diff-to option[value='2']")
    browser.click("#template-diff-form button[type=submit]")
    browser.wait_text("#template-diff", "2 lines differ")
    signs = browser.js(
        "return [...document.querySelectorAll('#template-diff .added, #template-diff .removed')]"
        ".map(e => e.textContent);"
    )
    assert signs == [f"- {lines[at]}\n", '+ instruction: "Is this review glad or sad?"\n']

    browser.click("[data-template-activate='1']")
    assert "version 2 now" in browser.text("#confirm")
    browser.click("#confirm-no")  # Cancel changes nothing
    assert _versions(gateway, "sent")["active_version"] == 2
    browser.click("[data-template-activate='1']")
    browser.click("#confirm-yes")
    browser.wait_text("#template-admin-status", "version 1 is active")
    assert _versions(gateway, "sent")["active_version"] == 1
    answer = gateway.post("/v1/templates/sent", {"inputs": {"text": "fine"}}).json()
    assert answer["version"] == 1
    assert [e for e in browser.console_errors() if "status of 400" not in e] == []  # the two refusals


def test_admin_creates_a_template_for_a_tenant_from_the_editor(gateway: RunningGateway, browser: Browser) -> None:
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-templates")
    browser.click("#template-new")
    browser.type("#template-edit-name", "mood")
    browser.click("#template-edit-owner option[value=default]")
    doc = (
        "kind: classify\ninstruction: Happy or not?\ninputs: {text: {type: string}}\n"
        "labels: [{name: happy}, {name: sad}]\nmodel: default\n"
    )
    _apply(browser, doc)
    browser.wait_text("#template-admin-status", "Applied mood: version 1, active")
    described = gateway.admin("GET", "/templates/mood", params={"tenant": "default"}).json()
    assert described["owner"] == "default" and described["versions"][0]["document"]["instruction"] == "Happy or not?"
    wait_for(lambda: bool(browser.find_all("[data-template=mood][data-owner=default]")), what="the list shows it")


def _tenant(gateway: RunningGateway, name: str) -> dict:
    return next(t for t in gateway.admin("GET", "/tenants").json()["data"] if t["name"] == name)


def test_admin_sets_a_tenants_quotas_and_pii_policy_and_reads_them_back(
    gateway: RunningGateway, browser: Browser
) -> None:
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("[data-tenant=default]")
    browser.type("#quota-requests_per_minute", "60")
    browser.type("#quota-max_concurrent", "3")
    browser.click("#quota-form button[type=submit]")
    browser.wait_text("#quota-status", "Saved")
    assert _tenant(gateway, "default")["quotas"] == {
        "requests_per_minute": 60,
        "tokens_per_minute": None,
        "max_concurrent": 3,
    }

    browser.click("#pii-mode option[value=mask]")
    browser.type("#pii-deny", "Zebulon\nQuixote")
    browser.click("#pii-add")
    browser.type(".pattern-row .pattern-entity", "order id")  # not an entity name: the API says so
    browser.type(".pattern-row .pattern-regex", r"ORD-\d{6}")
    browser.click("#pii-form button[type=submit]")
    bad = {
        "mode": "mask",
        "deny_list": ["Zebulon", "Quixote"],
        "patterns": [{"entity": "order id", "regex": r"ORD-\d{6}", "score": 0.9}],
    }
    refused = gateway.admin("PUT", "/tenants/default/pii", json=bad)
    assert refused.status_code == 400
    browser.wait_text("#pii-status", refused.json()["error"]["message"])
    assert gateway.admin("GET", "/tenants/default/pii").json()["mode"] == "log"  # nothing stored

    browser.type(".pattern-row .pattern-entity", "ORDER_ID")
    browser.click("#pii-form button[type=submit]")
    browser.wait_text("#pii-status", "Saved: mode mask, 2 denied words, 1 patterns")
    policy = gateway.admin("GET", "/tenants/default/pii").json()
    assert policy == {
        "mode": "mask",
        "deny_list": ["Zebulon", "Quixote"],
        "patterns": [{"entity": "ORDER_ID", "regex": r"ORD-\d{6}", "score": 0.9}],
    }

    browser.click("#nav-adapters")  # leave and come back: the forms show the stored values
    browser.find("#page-adapters")
    browser.click("#nav-tenants")
    browser.click("[data-tenant=default]")
    browser.find("#pii-form")
    read = browser.js(
        "return [document.querySelector('#quota-requests_per_minute').value,"
        " document.querySelector('#quota-tokens_per_minute').value, document.querySelector('#pii-mode').value,"
        " document.querySelector('#pii-deny').value, document.querySelector('.pattern-row .pattern-regex').value];"
    )
    assert read == ["60", "", "mask", "Zebulon\nQuixote", r"ORD-\d{6}"]
    assert [e for e in browser.console_errors() if "status of 400" not in e] == []  # the refusal


def test_admin_reads_a_fit_report_its_table_decision_and_plot(gateway: RunningGateway, browser: Browser) -> None:
    report = fit_report(png(5, 3, (200, 40, 10)))
    assert gateway.admin("PUT", "/fit-reports/reviews", json=report, params={"tenant": "default"}).status_code == 201
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-fits")
    browser.click("[data-fit=reviews][data-owner=default]")
    assert browser.wait_text("#fit-verdict", "tie") == "Decision: lora and minilm tie; minilm is cheaper"
    rows = browser.js(
        "return [...document.querySelectorAll('#fit-table tbody tr')]"
        ".map(tr => [...tr.children].map(td => td.textContent));"
    )
    assert [r[:5] for r in rows] == [
        ["lora", "llm", "64", "0.810", "0.700 – 0.890"],
        ["minilm", "baseline", "64", "0.750", "0.630 – 0.840"],
    ]
    assert browser.text("#fit-served") == "Served: template reviews."
    wait_for(
        lambda: browser.js("return document.querySelector('#fit-plot').dataset.drawn === 'true';"), what="the plot"
    )
    drawn = browser.js(
        "const c = document.querySelector('#fit-plot');"
        "return [c.width, c.height, [...c.getContext('2d').getImageData(2, 1, 1, 1).data]];"
    )
    assert drawn == [5, 3, [200, 40, 10, 255]]  # the pushed PNG, pixel for pixel
    assert browser.console_errors() == []


def test_a_tenant_admin_key_sees_its_own_reports_and_is_told_quotas_are_the_operators(
    gateway: RunningGateway, browser: Browser
) -> None:
    for name in ("acme", "globex"):
        assert gateway.admin("POST", "/tenants", json={"name": name}).status_code == 201
        put = gateway.admin("PUT", f"/fit-reports/{name}-fit", json=fit_report(), params={"tenant": name})
        assert put.status_code == 201
    assert gateway.admin("PUT", "/fit-reports/shared", json=fit_report()).status_code == 201
    key = tenant_admin_key(gateway, "acme")
    console_sign_in(browser, gateway.url, key, admin=True)
    browser.click("#nav-fits")
    browser.find("[data-fit]")
    listed = browser.js(
        "return [...document.querySelectorAll('[data-fit]')].map(b => [b.dataset.fit, b.dataset.owner]);"
    )
    assert sorted(listed) == [["acme-fit", "acme"], ["shared", ""]]  # never globex's

    browser.click("#nav-tenants")
    browser.click("[data-tenant=acme]")
    browser.type("#quota-requests_per_minute", "5")
    browser.click("#quota-form button[type=submit]")
    refused = call_as(gateway, key, "PUT", "/admin/tenants/acme/quotas", json={"requests_per_minute": 5})
    assert refused.status_code == 403
    browser.wait_text("#quota-status", refused.json()["error"]["message"])
